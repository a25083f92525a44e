/**
 * The distribution API calls haul makes (OCI distribution-spec v1.1), over a
 * {@link Fetch} stack that already does user agent, redirects, auth and retry.
 */
import { sha256Digest } from "../digest.ts";
import {
  ExitCode,
  IntegrityError,
  ManifestError,
  NetworkError,
  NotFoundError,
  type OciErrorDetail,
  RegistryError,
} from "../errors.ts";
import { MANIFEST_ACCEPT, MAX_MANIFEST_BYTES } from "./manifest.ts";
import { type Fetch, finalUrl } from "../transport/fetch.ts";
import { parseRateLimit, type RateLimit } from "../transport/retry.ts";

/** Builds a RegistryError from a failed response, reading a capped JSON error body. */
export async function errorFromResponse(
  res: Response,
  method: string,
  url: string,
): Promise<RegistryError> {
  let codes: OciErrorDetail[] = [];
  try {
    const text = new TextDecoder().decode(await readBody(res, 64 << 10));
    const body = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] };
    if (Array.isArray(body.errors)) {
      codes = body.errors.filter((e) => typeof e?.code === "string").map((e) => ({
        code: String(e.code),
        message: typeof e.message === "string" ? e.message.slice(0, 200) : undefined,
      }));
    }
  } catch {
    // Not JSON, too big or cut short: the status says enough.
  }
  const rl = res.status === 429 ? parseRateLimit(res.headers) : undefined;
  if (rl && (rl.remaining === 0 || rl.waitMs !== undefined)) {
    return new RegistryError({
      status: 429,
      method,
      url,
      codes,
      exitCode: ExitCode.rateLimited,
      message: rateLimitMessage(new URL(url).host, rl),
    });
  }
  return new RegistryError({ status: res.status, method, url, codes });
}

/** "…pull rate limit reached (100 per 6 h): try again in 5 h 59 min; …" */
function rateLimitMessage(host: string, rl: RateLimit): string {
  const terms = rl.limit !== undefined && rl.windowSec !== undefined
    ? ` (${rl.limit} per ${formatWait(rl.windowSec * 1000)})`
    : "";
  const wait = rl.waitMs !== undefined ? `: try again in ${formatWait(rl.waitMs)}` : "";
  return `${host}: pull rate limit reached${terms}${wait}; a login (haul login ${host}) ` +
    `may raise it`;
}

function formatWait(ms: number): string {
  const min = Math.ceil(ms / 60_000);
  if (min < 60) return `${min} min`;
  const h = Math.floor(min / 60);
  return min % 60 ? `${h} h ${min % 60} min` : `${h} h`;
}

/**
 * Reads a whole body, refusing more than `max` bytes, and failing with a
 * NetworkError when no data arrives for `idleMs` (@default 30000).
 */
export async function readBody(res: Response, max: number, idleMs = 30_000): Promise<Uint8Array> {
  const cl = res.headers.get("content-length");
  if (cl !== null && Number(cl) > max) {
    await res.body?.cancel().catch(() => {});
    throw new ManifestError(`Response of ${cl} bytes is over the ${max}-byte limit`);
  }
  if (!res.body) return new Uint8Array();
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const idle = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reader.cancel().catch(() => {});
        reject(new NetworkError(`The server stopped sending data for ${idleMs / 1000} s`));
      }, idleMs);
    });
    const { done, value } = await Promise.race([reader.read(), idle]).finally(() =>
      clearTimeout(timer)
    );
    if (done) break;
    n += value.byteLength;
    if (n > max) {
      await reader.cancel().catch(() => {});
      throw new ManifestError(`Response is over the ${max}-byte limit`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.byteLength;
  }
  return out;
}

export interface FetchedManifest {
  bytes: Uint8Array;
  mediaType: string;
  digest: string;
}

export interface RegistryClientOptions {
  /** `https://host[:port]` or `http://…`. */
  baseUrl: string;
  fetch: Fetch;
}

export class RegistryClient {
  readonly baseUrl: string;
  readonly fetch: Fetch;
  constructor(options: RegistryClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.fetch = options.fetch;
  }

  blobUrl(repository: string, digest: string): string {
    return `${this.baseUrl}/v2/${repository}/blobs/${digest}`;
  }

  manifestUrl(repository: string, reference: string): string {
    return `${this.baseUrl}/v2/${repository}/manifests/${reference}`;
  }

  /**
   * GETs a manifest, refusing documents over 4 MiB, and checks its digest against
   * `Docker-Content-Digest` and against `reference` when that is a digest.
   */
  async getManifest(
    repository: string,
    reference: string,
    options: { signal?: AbortSignal; accept?: string } = {},
  ): Promise<FetchedManifest> {
    const url = this.manifestUrl(repository, reference);
    const res = await this.fetch(
      new Request(url, {
        headers: { accept: options.accept ?? MANIFEST_ACCEPT },
        signal: options.signal,
      }),
    );
    if (res.status === 404) {
      const err = await errorFromResponse(res, "GET", url);
      throw new NotFoundError(
        `Manifest ${repository}:${reference} not found on ${new URL(url).host}` +
          (err.codes.length ? ` (${err.codes.map((c) => c.code).join(", ")})` : ""),
        { cause: err },
      );
    }
    if (!res.ok) throw await errorFromResponse(res, "GET", url);
    const bytes = await readBody(res, MAX_MANIFEST_BYTES);
    const digest = sha256Digest(bytes);
    const claimed = res.headers.get("docker-content-digest");
    if (claimed?.startsWith("sha256:") && claimed !== digest) {
      throw new IntegrityError(
        `Manifest ${repository}:${reference} hashes to ${digest} but the registry says ${claimed}`,
      );
    }
    if (reference.startsWith("sha256:") && reference !== digest) {
      throw new IntegrityError(`Manifest hashes to ${digest}, not the pinned ${reference}`);
    }
    const mediaType = (res.headers.get("content-type") ?? "").split(";")[0].trim();
    return { bytes, mediaType, digest };
  }

  /**
   * Resolves where a blob's bytes are served from: follows redirects (the auth
   * layer strips credentials on other hosts) and returns the final URL and size.
   */
  async resolveBlob(
    repository: string,
    digest: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<{ url: string; size?: number }> {
    const url = this.blobUrl(repository, digest);
    const res = await this.fetch(new Request(url, { method: "HEAD", signal: options.signal }));
    await res.body?.cancel().catch(() => {});
    if (res.status === 404) throw new NotFoundError(`Blob ${digest} not found in ${repository}`);
    if (res.status === 405 || res.status === 501) return { url }; // no HEAD: GET it directly
    if (!res.ok) throw await errorFromResponse(res, "HEAD", url);
    const cl = res.headers.get("content-length");
    return { url: finalUrl(res, url), size: cl === null ? undefined : Number(cl) };
  }

  /** HEAD a blob: true when present. */
  async hasBlob(repository: string, digest: string, signal?: AbortSignal): Promise<boolean> {
    const url = this.blobUrl(repository, digest);
    const res = await this.fetch(new Request(url, { method: "HEAD", signal }));
    await res.body?.cancel().catch(() => {});
    if (res.ok) return true;
    if (res.status === 404) return false;
    throw await errorFromResponse(res, "HEAD", url);
  }
}
