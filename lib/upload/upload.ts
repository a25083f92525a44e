/**
 * Blob-level upload (the shape of Ollama's transfer package): put a set of
 * content-addressed blobs into one repository, in parallel, then optionally the
 * manifest that references them. Per blob (OCI distribution-spec v1.1, "Pushing
 * blobs"; go-containerregistry's `remote.Write`):
 *
 *   HEAD   /v2/<name>/blobs/<digest>                     200 → already there
 *   POST   /v2/<name>/blobs/uploads/?mount=<d>&from=<r>  201 → mounted, 202 → session
 *   small: POST /v2/<name>/blobs/uploads/, PUT <location>?digest=<d> with the bytes
 *   large: PATCH <location> chunk by chunk (following each Location), PUT ?digest=
 *
 * Chunk bodies are `Uint8Array`s: the transport can clone them, so a 401 refresh
 * or a 307 replays the chunk, and only one chunk per blob is ever in memory.
 *
 * A large blob's session URL and acknowledged offset are saved after every chunk
 * in a state file next to the blob. When a chunk fails, or a later run finds the
 * file, the registry is asked where the session stands (`GET <location>` → 204,
 * `Range: 0-<last byte>`) and the upload continues from there; a session the
 * registry no longer knows (404) is replaced by a new one.
 *
 * distribution 2.8 (Debian's `docker-registry`) keeps the bytes of a PATCH that
 * was cut off mid-body and then rejects the session's state token as stale: the
 * next request gets 404 BLOB_UPLOAD_INVALID and the upload starts over. Behind a
 * request-buffering proxy (nginx's default) a cut-off chunk never reaches the
 * registry and the upload continues from the last acknowledged chunk.
 */
import { createHash } from "node:crypto";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { checkDigest, digestToFileName, sha256Digest } from "../digest.ts";
import type { Blob } from "../registry/manifest.ts";
import { type BlobReader, openStoreBlob } from "../disk/blob_file.ts";
import {
  HaulError,
  IntegrityError,
  InterruptedError,
  ManifestError,
  NetworkError,
  NotFoundError,
  redactUrl,
  RegistryError,
} from "../errors.ts";
import { MAX_BLOB_SIZE, MAX_MANIFEST_BYTES } from "../registry/manifest.ts";
import { Semaphore } from "../transport/pool.ts";
import type { OnProgress } from "../progress_events.ts";
import { errorFromResponse } from "../registry/client.ts";
import {
  backoffDelay,
  DEFAULT_RETRY,
  isRetryableStatus,
  isTransientError,
  type RetryPolicy,
  sleep,
} from "../transport/retry.ts";
import { type ConnectionOptions, createSession, type Session } from "../registry/session.ts";
import { finalUrl, ReplayNeeded, SEND_ONCE } from "../transport/fetch.ts";

/** Tuning for uploads; every field has a measured default (see {@link DEFAULT_UPLOAD_TUNING}). */
export interface UploadTuning {
  /** Blobs uploading at once (each blob is one sequential session). @default 8 */
  concurrency?: number;
  /**
   * Bytes per PATCH request; blobs up to this size go up in a single PUT. Without
   * it: blobs up to 16 MiB go up in one PUT, larger ones from a file are streamed
   * in 256 MiB PATCHes (read as they are sent, so memory does not grow with the
   * chunk), and sources that cannot stream (copy) send 16 MiB chunks from memory.
   * @default see above
   */
  chunkSize?: number;
}

/**
 * Defaults. 16 MiB chunks, measured with scripts/bench_push.ts (2 GiB blob, empty
 * docker-registry on loopback, medians of 3): on disk 16/32/64 MiB took 22.3/21.3/
 * 20.7 s, within noise, as the registry syncs each PATCH to disk; on tmpfs 16 MiB
 * took 14.5 s and 64 MiB 24.1 s. Peak RSS under Deno was 268/381/956 MiB: Deno
 * copies a `Uint8Array` body into the Request and again on each `clone()` (the
 * redirect and auth layers keep one for replays), so memory grows with the chunk.
 * Smaller chunks pay the registry's per-request sync more often: 256 MiB went up
 * in 8.2 s with 4 MiB chunks and 5.1 s with 16 MiB ones (curl, for scale: 7.3 s in
 * 16 MiB PATCHes, 4.2 s in 64 MiB ones, 2.2 s as one PUT).
 */
export const DEFAULT_UPLOAD_TUNING = {
  concurrency: 8,
  /** Single-PUT limit and chunk size for sources that cannot stream. */
  chunkSize: 16 << 20,
  /** Chunk size for streamed chunks (store and OCI layout files). */
  streamChunkSize: 256 << 20,
} as const;

/** Opens a blob for reading; the upload calls it only for blobs it has to send. */
export type OpenBlob = (blob: Blob, signal?: AbortSignal) => Promise<BlobReader>;

export type { BlobReader } from "../disk/blob_file.ts";

export interface UploadOptions extends ConnectionOptions, UploadTuning {
  /** Blobs to put in place; `from` names a repository on the same registry to mount from. */
  blobs: Blob[];
  /** Registry base URL, e.g. `https://registry.ollama.ai`. */
  baseUrl: string;
  /** Destination repository, e.g. `library/llama3.2`. */
  repository: string;
  /** Directory holding the blobs as `sha256-<hex>` (Ollama's `blobs/`); needed unless `open` is given. */
  srcDir?: string;
  /** Reads blob bytes from somewhere else than `srcDir` (copy streams from another registry). */
  open?: OpenBlob;
  /**
   * Directory for upload state files (`sha256-<hex>-upload-<dest hash>.json`), which let a
   * later run resume a large blob's session. `null`: resume only within this run.
   * @default srcDir
   */
  stateDir?: string | null;
  /** Aggregate progress: bytes in place (present, mounted or sent) and the total. */
  onProgress?: (completed: number, total: number) => void;
  /** Per-blob events (for renderers), with op "push". */
  onEvent?: OnProgress;
  signal?: AbortSignal;
  /** Manifest bytes to PUT after every blob is in place, unchanged. */
  manifest?: Uint8Array;
  /** Tag or digest to PUT the manifest under. @default the manifest's digest */
  manifestRef?: string;
  /** Content-Type of the manifest PUT. @default the manifest's own `mediaType` field */
  manifestMediaType?: string;
  /** Reuse an existing session (push and copy build one with the mount scopes). */
  session?: Session;
}

export interface UploadResult {
  /** Blob bytes sent in request bodies, failed attempts included. */
  transferred: number;
  /** Blobs the destination already had. */
  skipped: number;
  /** Blobs mounted from another repository (no bytes sent). */
  mounted: number;
  /** Blobs uploaded. */
  uploaded: number;
  /** Uploads that continued an existing session instead of starting over. */
  resumed: number;
  /** Digest of the manifest, when one was pushed. */
  manifestDigest?: string;
}

/** What a state file holds: enough to find and check a session again. */
interface SessionState {
  version: 1;
  digest: string;
  size: number;
  /** `<origin>/<repository>` the session belongs to. */
  dest: string;
  /** The session URL the registry gave last (absolute). */
  location: string;
  /** Bytes the registry has acknowledged. */
  offset: number;
}

/** Where the state file of `digest`'s upload to `baseUrl`/`repository` lives. */
export function uploadStatePath(
  dir: string,
  digest: string,
  baseUrl: string,
  repository: string,
): string {
  const key = createHash("sha256").update(destKey(baseUrl, repository)).digest("hex");
  return join(dir, `${digestToFileName(digest)}-upload-${key.slice(0, 16)}.json`);
}

function destKey(baseUrl: string, repository: string): string {
  return `${new URL(baseUrl).origin}/${repository}`;
}

/** `location` with `digest=` added (`&` when it already has a query; any fragment dropped). */
export function withDigest(location: string, digest: string): string {
  const u = new URL(location);
  u.hash = "";
  return `${u.href}${u.search ? "&" : "?"}digest=${encodeURIComponent(digest)}`;
}

/**
 * Bytes a registry holds for a session, from its `Range: 0-<last>` header
 * (distribution also sends `bytes=0-<last>` in places). `0-0` means 0 or 1 bytes:
 * `hint` (what we believe) decides. Undefined when absent or malformed.
 */
export function parseUploadRange(value: string | null, hint = 0): number | undefined {
  const m = /^\s*(?:bytes=)?0-(\d+)\s*$/.exec(value ?? "");
  if (!m) return undefined;
  const last = Number(m[1]);
  if (!Number.isSafeInteger(last)) return undefined;
  return last === 0 ? (hint === 1 ? 1 : 0) : last + 1;
}

/** A failure while talking to the registry, and whether trying again may help. */
class UploadStepError extends Error {
  readonly retryable: boolean;
  readonly sessionGone: boolean;
  constructor(cause: unknown, retryable: boolean, sessionGone = false) {
    super((cause as Error)?.message ?? String(cause), { cause });
    this.retryable = retryable;
    this.sessionGone = sessionGone;
  }
}

/** The OCI error codes that say a session is unknown or unusable. */
function isSessionGone(err: RegistryError): boolean {
  return err.status === 404 ||
    err.codes.some((c) => c.code === "BLOB_UPLOAD_UNKNOWN" || c.code === "BLOB_UPLOAD_INVALID");
}

function isDigestInvalid(err: unknown): boolean {
  return err instanceof RegistryError && err.codes.some((c) => c.code === "DIGEST_INVALID");
}

const OCTET = "application/octet-stream";

/** One registry repository's upload endpoints, over a session's transport. */
class UploadTarget {
  readonly #session: Session;
  readonly repository: string;
  readonly base: string;
  readonly #timeoutMs: number;
  constructor(session: Session, repository: string, timeoutMs = 30_000) {
    this.#session = session;
    this.repository = repository;
    this.base = session.client.baseUrl;
    this.#timeoutMs = timeoutMs;
  }

  /**
   * Sends `req`. A request with a body (`bytes` > 0) gets a deadline of its own: the
   * transport's header timeout skips bodies, and a registry that reads a chunk and never
   * answers must not hang the push. The runtime does not say when a body has gone out,
   * so the deadline is the request timeout plus the body's time at {@link MIN_SEND_RATE}.
   */
  async #send(req: Request, bytes = 0): Promise<Response> {
    const ac = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let timedOut: NetworkError | undefined;
    const onAbort = () => ac.abort(req.signal.reason);
    req.signal.addEventListener("abort", onAbort, { once: true });
    if (req.signal.aborted) onAbort();
    if (bytes > 0 && this.#timeoutMs > 0) {
      const ms = this.#timeoutMs + Math.ceil((bytes / MIN_SEND_RATE) * 1000);
      timer = setTimeout(() => {
        timedOut = new NetworkError(
          `${req.method} ${shortUploadUrl(req.url)}: no response within ${
            Math.round(ms / 1000)
          } s of sending ${bytes} bytes (timed out)`,
        );
        ac.abort(timedOut);
      }, ms);
    }
    try {
      return await this.#session.fetch(new Request(req, { signal: ac.signal }));
    } catch (err) {
      if (req.signal.aborted) throw new InterruptedError();
      if (timedOut) throw new UploadStepError(timedOut, true);
      // A NetworkError from the transport (too many redirects, retries spent on a bodiless
      // request) may pass on a later try, as pull retries it.
      if (err instanceof NetworkError) throw new UploadStepError(err, true);
      if (err instanceof ReplayNeeded) throw new UploadStepError(err, true);
      if (err instanceof HaulError) throw err;
      if (isTransientError(err)) throw new UploadStepError(err, true);
      throw err;
    } finally {
      clearTimeout(timer);
      req.signal.removeEventListener("abort", onAbort);
    }
  }

  /** Turns a failed response into a step error (RegistryError inside). */
  async #fail(res: Response, method: string, url: string): Promise<never> {
    const raw = await errorFromResponse(res, method, url);
    const err = url.includes("/blobs/uploads/") ? withShortUrls(raw) : raw;
    throw new UploadStepError(
      err,
      isRetryableStatus(err.status) || isSessionGone(err),
      isSessionGone(err),
    );
  }

  #location(res: Response, requested: string, method: string): string {
    const loc = res.headers.get("location");
    if (!loc) {
      throw new RegistryError({
        status: res.status,
        method,
        url: requested,
        message: `${method} ${redactUrl(requested)} answered ${res.status} without a Location`,
      });
    }
    const u = new URL(loc, finalUrl(res, requested));
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw new RegistryError({
        status: res.status,
        method,
        url: requested,
        message: `${method} ${redactUrl(requested)} gave a ${u.protocol} upload URL`,
      });
    }
    return u.href;
  }

  exists(digest: string, signal: AbortSignal): Promise<boolean> {
    return this.#session.client.hasBlob(this.repository, digest, signal);
  }

  /**
   * Opens a session, mounting from `from` when given: `{mounted: true}` on 201.
   * A refused mount (no access to `from`) falls back to a plain session.
   */
  async start(
    signal: AbortSignal,
    mount?: { digest: string; from: string },
  ): Promise<{ mounted: true } | { mounted: false; location: string }> {
    let url = `${this.base}/v2/${this.repository}/blobs/uploads/`;
    if (mount) {
      url += `?mount=${encodeURIComponent(mount.digest)}&from=${encodeURIComponent(mount.from)}`;
    }
    const res = await this.#send(
      new Request(url, { method: "POST", headers: { "content-length": "0" }, signal }),
    );
    if (mount && res.status === 201) {
      await res.body?.cancel().catch(() => {});
      return { mounted: true };
    }
    if (res.status === 202) {
      await res.body?.cancel().catch(() => {});
      return { mounted: false, location: this.#location(res, url, "POST") };
    }
    if (mount && (res.status === 401 || res.status === 403 || res.status === 404)) {
      await res.body?.cancel().catch(() => {});
      return this.start(signal);
    }
    return await this.#fail(res, "POST", url);
  }

  /** Where a session stands: its offset and URL, or undefined when the registry forgot it. */
  async status(
    location: string,
    hint: number,
    signal: AbortSignal,
  ): Promise<{ location: string; offset: number } | undefined> {
    const res = await this.#send(new Request(location, { signal }));
    await res.body?.cancel().catch(() => {});
    if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) {
      if (res.status === 401 || res.status === 403) await this.#fail(res, "GET", location);
      return undefined;
    }
    if (!res.ok) return await this.#fail(res, "GET", location);
    const offset = parseUploadRange(res.headers.get("range"), hint);
    if (offset === undefined) return undefined;
    const next = res.headers.get("location") ? this.#location(res, location, "GET") : location;
    return { location: next, offset };
  }

  /**
   * Sends one chunk, from memory or streamed (`{ stream, length }`, sent once:
   * see SEND_ONCE); returns the next URL and the offset the registry reports.
   */
  async patch(
    location: string,
    offset: number,
    data: Uint8Array | {
      stream: ReadableStream<Uint8Array<ArrayBuffer>> | globalThis.Blob;
      length: number;
    },
    signal: AbortSignal,
  ): Promise<{ location: string; offset: number; range: string | null }> {
    const streamed = !(data instanceof Uint8Array);
    const length = streamed ? data.length : data.byteLength;
    const headers: Record<string, string> = {
      "content-type": OCTET,
      "content-length": String(length),
      "content-range": `${offset}-${offset + length - 1}`,
    };
    const once = streamed && !(data.stream instanceof globalThis.Blob);
    if (once) headers[SEND_ONCE] = "1";
    const res = await this.#send(
      new Request(location, {
        method: "PATCH",
        headers,
        body: streamed ? data.stream : data as Uint8Array<ArrayBuffer>,
        signal,
        // deno-lint-ignore no-explicit-any
        ...(once ? { duplex: "half" } as any : {}),
      }),
      length,
    );
    if (res.status !== 202 && res.status !== 204) return await this.#fail(res, "PATCH", location);
    await res.body?.cancel().catch(() => {});
    const expected = offset + length;
    const reported = parseUploadRange(res.headers.get("range"), expected);
    return {
      location: res.headers.get("location") ? this.#location(res, location, "PATCH") : location,
      offset: reported !== undefined && reported < expected ? reported : expected,
      range: res.headers.get("range"),
    };
  }

  /** Closes a session with `PUT ?digest=`, sending `data` as the (last) body when given. */
  async finish(
    location: string,
    digest: string,
    data: Uint8Array | undefined,
    signal: AbortSignal,
  ): Promise<void> {
    const url = withDigest(location, digest);
    const headers: Record<string, string> = {
      "content-type": OCTET,
      "content-length": String(data?.byteLength ?? 0),
    };
    const res = await this.#send(
      new Request(url, {
        method: "PUT",
        headers,
        body: data ? data as Uint8Array<ArrayBuffer> : null,
        signal,
      }),
      data?.byteLength ?? 0,
    );
    if (res.status !== 201 && res.status !== 204 && res.status !== 200) {
      return await this.#fail(res, "PUT", url);
    }
    await res.body?.cancel().catch(() => {});
    const claimed = res.headers.get("docker-content-digest");
    if (claimed?.startsWith("sha256:") && claimed !== digest) {
      throw new IntegrityError(
        `${this.repository}: the registry stored ${digest} as ${claimed}`,
      );
    }
  }

  /** Best effort: tells the registry to drop a session we give up on. */
  async cancel(location: string): Promise<void> {
    try {
      const res = await this.#session.fetch(
        new Request(location, { method: "DELETE", signal: AbortSignal.timeout(5000) }),
      );
      await res.body?.cancel().catch(() => {});
    } catch {
      // The registry purges abandoned sessions itself.
    }
  }
}

/**
 * Puts an index after the manifests it lists (each by digest), so the
 * registry never holds an index naming a manifest it lacks. Returns the
 * index's digest as the registry reports it.
 */
/**
 * Uploads an image: its blobs through {@link upload}, then either the manifest
 * (`top.kind` "manifest") or every manifest the index lists, by digest, and the
 * index last ({@link putIndex}), both under `manifestRef`. The result carries
 * the digest the registry gave the top-level document.
 */
export async function uploadImage(
  options: UploadOptions & { session: Session },
  top: { kind: "manifest" | "index"; bytes: Uint8Array; mediaType: string },
  children: { digest: string; bytes: Uint8Array; mediaType: string }[],
  manifestRef: string,
): Promise<UploadResult> {
  const res = await upload({
    ...options,
    ...(top.kind === "manifest"
      ? { manifest: top.bytes, manifestRef, manifestMediaType: top.mediaType }
      : {}),
  });
  if (top.kind === "index") {
    res.manifestDigest = await putIndex(
      options.session,
      options.repository,
      manifestRef,
      top,
      children,
      options,
    );
  }
  return res;
}

async function putIndex(
  session: Session,
  repository: string,
  reference: string,
  index: { bytes: Uint8Array; mediaType: string },
  children: { digest: string; bytes: Uint8Array; mediaType: string }[],
  options: { signal?: AbortSignal; onEvent?: OnProgress } = {},
): Promise<string> {
  options.onEvent?.({ type: "manifest-write", op: "push" });
  for (const c of children) {
    await putManifest(session, repository, c.digest, c.bytes, {
      mediaType: c.mediaType,
      signal: options.signal,
    });
  }
  return await putManifest(session, repository, reference, index.bytes, {
    mediaType: index.mediaType,
    signal: options.signal,
  });
}

/**
 * PUTs manifest bytes unchanged under `reference`, with their own media type as
 * Content-Type; checks the digest the registry reports.
 *
 * @throws {RegistryError} when the registry refuses the manifest.
 */
export async function putManifest(
  session: Session,
  repository: string,
  reference: string,
  bytes: Uint8Array,
  options: { mediaType?: string; signal?: AbortSignal } = {},
): Promise<string> {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw new ManifestError(`Manifest is ${bytes.byteLength} bytes, over ${MAX_MANIFEST_BYTES}`);
  }
  const digest = sha256Digest(bytes);
  const mediaType = options.mediaType ?? manifestMediaType(bytes);
  const url = session.client.manifestUrl(repository, reference);
  const res = await session.fetch(
    new Request(url, {
      method: "PUT",
      headers: { "content-type": mediaType, "content-length": String(bytes.byteLength) },
      body: bytes as Uint8Array<ArrayBuffer>,
      signal: options.signal,
    }),
  );
  if (res.status < 200 || res.status > 299) {
    const err = await errorFromResponse(res, "PUT", url);
    const codes = err.codes.length
      ? ": " + err.codes.map((c) => c.message ? `${c.code} (${c.message})` : c.code).join(", ")
      : "";
    throw new RegistryError({
      status: err.status,
      method: "PUT",
      url,
      codes: err.codes,
      message: `${new URL(url).host} refused the manifest for ${repository}:${reference} ` +
        `(HTTP ${err.status}${codes})`,
    }, { cause: err });
  }
  await res.body?.cancel().catch(() => {});
  const claimed = res.headers.get("docker-content-digest");
  if (claimed?.startsWith("sha256:") && claimed !== digest) {
    throw new IntegrityError(
      `${repository}:${reference} was stored as ${claimed}, not ${digest}: the registry rewrote the manifest`,
    );
  }
  return digest;
}

/** The `mediaType` field of a manifest document, else Docker's schema2 type. */
function manifestMediaType(bytes: Uint8Array): string {
  try {
    const doc = JSON.parse(new TextDecoder().decode(bytes)) as { mediaType?: unknown };
    if (typeof doc.mediaType === "string" && doc.mediaType) return doc.mediaType;
  } catch {
    // Not JSON: the registry will say so.
  }
  return "application/vnd.docker.distribution.manifest.v2+json";
}

function tuningFrom(
  o: UploadTuning,
): Required<UploadTuning> & { streamChunkSize: number } {
  const concurrency = o.concurrency ?? DEFAULT_UPLOAD_TUNING.concurrency;
  const chunkSize = o.chunkSize ?? DEFAULT_UPLOAD_TUNING.chunkSize;
  const streamChunkSize = o.chunkSize ?? DEFAULT_UPLOAD_TUNING.streamChunkSize;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new RangeError(`concurrency must be a positive integer, got ${concurrency}`);
  }
  if (!Number.isInteger(chunkSize) || chunkSize < 1 << 16 || chunkSize > 1 << 30) {
    throw new RangeError(`chunkSize must be an integer from 64 KiB to 1 GiB, got ${chunkSize}`);
  }
  return { concurrency, chunkSize, streamChunkSize };
}

async function loadState(path: string): Promise<SessionState | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    return undefined;
  }
  try {
    const s = JSON.parse(text) as Partial<SessionState>;
    if (
      s.version !== 1 || typeof s.digest !== "string" || typeof s.size !== "number" ||
      typeof s.dest !== "string" || typeof s.location !== "string" ||
      typeof s.offset !== "number" || !Number.isSafeInteger(s.offset) || s.offset < 0
    ) return undefined;
    const u = new URL(s.location);
    if (u.protocol !== "http:" && u.protocol !== "https:") return undefined;
    return s as SessionState;
  } catch {
    return undefined;
  }
}

/** Writes the state file atomically; a store we cannot write only costs cross-run resume. */
async function saveState(path: string, state: SessionState): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    await writeFile(tmp, JSON.stringify(state));
    await rename(tmp, path);
  } catch {
    await rm(tmp, { force: true }).catch(() => {});
  }
}

/**
 * Uploads `blobs` to `repository`, then the manifest when given; resolves when
 * every blob is in place (and the manifest accepted).
 */
export async function upload(options: UploadOptions): Promise<UploadResult> {
  const tuning = tuningFrom(options);
  const policy: RetryPolicy = { ...DEFAULT_RETRY, ...options.retry };
  for (const b of options.blobs) {
    checkDigest(b.digest, "blob digest");
    if (!Number.isSafeInteger(b.size) || b.size < 0 || b.size > MAX_BLOB_SIZE) {
      throw new RangeError(`Blob ${b.digest} has an invalid size ${b.size}`);
    }
  }
  const srcDir = options.srcDir;
  const openBlob: OpenBlob = options.open ??
    ((b) => {
      if (srcDir === undefined) throw new TypeError("upload() needs srcDir or open");
      return openStoreBlob(srcDir, b);
    });
  const stateDir = options.stateDir === undefined ? srcDir : options.stateDir ?? undefined;
  const session = options.session ??
    createSession(options.baseUrl, [`repository:${options.repository}:pull,push`], options);
  for (const b of options.blobs) {
    if (b.from && b.from !== options.repository) {
      session.auth.addScope(`repository:${b.from}:pull`);
    }
  }
  const target = new UploadTarget(
    session,
    options.repository,
    (options.requestTimeout ?? 30) * 1000,
  );
  const seen = new Set<string>();
  const blobs = options.blobs.filter((b) => !seen.has(b.digest) && seen.add(b.digest));
  const total = blobs.reduce((a, b) => a + b.size, 0);
  const credited = new Map<string, number>();
  let completed = 0;
  const emit = options.onEvent ?? (() => {});
  const result: UploadResult = { transferred: 0, skipped: 0, mounted: 0, uploaded: 0, resumed: 0 };
  const setDone = (b: Blob, n: number) => {
    completed += n - (credited.get(b.digest) ?? 0);
    credited.set(b.digest, n);
    options.onProgress?.(completed, total);
  };

  const abort = new AbortController();
  const onOuter = () => abort.abort(new InterruptedError());
  options.signal?.addEventListener("abort", onOuter, { once: true });
  if (options.signal?.aborted) onOuter();
  const signal = abort.signal;
  const slots = new Semaphore(tuning.concurrency);

  const one = async (b: Blob) => {
    const release = await slots.acquire(signal);
    try {
      await uploadBlob(b);
    } finally {
      release();
    }
  };

  // Ollama sends one line for a layer the registry has; blob-done alone renders as that.
  const present = (b: Blob, mounted: boolean) => {
    setDone(b, b.size);
    emit({
      type: "blob-done",
      op: "push",
      digest: b.digest,
      total: b.size,
      skipped: true,
      ...(mounted ? { mounted: true } : {}),
    });
  };

  const progress = (b: Blob, n: number) => {
    setDone(b, n);
    emit({ type: "blob-progress", op: "push", digest: b.digest, total: b.size, completed: n });
  };

  const uploadBlob = async (b: Blob) => {
    if (await target.exists(b.digest, signal)) {
      result.skipped++;
      present(b, false);
      return;
    }
    const large = b.size > tuning.chunkSize;
    // Looked up for every blob: an earlier run may have used a smaller chunk size.
    const statePath = stateDir
      ? uploadStatePath(stateDir, b.digest, options.baseUrl, options.repository)
      : undefined;
    const dest = destKey(options.baseUrl, options.repository);

    let location: string | undefined;
    let offset = 0;
    let resumed = false;
    if (statePath) {
      const saved = await loadState(statePath);
      if (saved && saved.digest === b.digest && saved.size === b.size && saved.dest === dest) {
        // A session we cannot ask about is as good as gone: start a new one.
        const at = await target.status(saved.location, saved.offset, signal).catch((e) => {
          if (e instanceof UploadStepError && e.retryable) return undefined;
          throw unwrap(e);
        });
        if (at && at.offset <= b.size) {
          location = at.location;
          offset = at.offset;
          resumed = true;
        }
      }
      if (!location) await rm(statePath, { force: true }).catch(() => {});
    }
    if (!location) {
      const mount = b.from && b.from !== options.repository
        ? { digest: b.digest, from: b.from }
        : undefined;
      const started = await withRetries(() => target.start(signal, mount), policy, signal, b, emit);
      if (started.mounted) {
        result.mounted++;
        present(b, true);
        return;
      }
      location = started.location;
    }
    if (resumed) result.resumed++;
    emit({ type: "blob-start", op: "push", digest: b.digest, total: b.size, completed: offset });
    setDone(b, offset);

    const reader = await openBlob(b, signal);
    try {
      if (!large && !resumed) {
        await sendWhole(b, location, reader);
      } else {
        await sendChunked(b, location, offset, reader, statePath, dest, resumed);
      }
    } finally {
      await reader.close();
    }
    result.uploaded++;
    setDone(b, b.size);
    emit({ type: "blob-done", op: "push", digest: b.digest, total: b.size, skipped: false });
  };

  /** A small blob: one PUT with the bytes; a failed attempt starts a new session. */
  const sendWhole = async (b: Blob, first: string, reader: BlobReader) => {
    let data: Uint8Array;
    try {
      data = await reader.read(0, b.size, signal);
    } catch (err) {
      // A source that sent other bytes once (copy) gets one more read.
      if (!(err instanceof SourceDigestError)) throw err;
      data = await reader.read(0, b.size, signal);
    }
    let location = first;
    let digestRetried = false;
    for (let attempt = 0;; attempt++) {
      try {
        result.transferred += data.byteLength;
        await target.finish(location, b.digest, data, signal);
        return;
      } catch (err) {
        progress(b, 0);
        if (isDigestInvalid(unwrapCause(err))) {
          // The bytes in hand are what was sent: if they hash right, they changed on the way.
          const got = sha256Digest(data);
          if (got !== b.digest) throw corruptSource(b, options.srcDir, got);
          if (digestRetried) throw garbledInTransit(b);
          digestRetried = true;
          location = (await newSession(b)).location;
          continue;
        }
        if (!(err instanceof UploadStepError) || !err.retryable || attempt >= policy.maxRetries) {
          throw unwrap(err);
        }
        await pause(b, attempt, err);
        if (await target.exists(b.digest, signal)) return;
        const s = await withRetries(() => target.start(signal), policy, signal, b, emit);
        if (s.mounted) return;
        location = s.location;
      }
    }
  };

  /** A large blob: PATCH chunks, saving the session after each, then PUT ?digest=. */
  const sendChunked = async (
    b: Blob,
    first: string,
    startAt: number,
    reader: BlobReader,
    statePath: string | undefined,
    dest: string,
    resumedSession: boolean,
  ) => {
    let location = first;
    let offset = startAt;
    let fromEarlier = resumedSession || startAt > 0;
    let restarted = false;
    let buffered = false;
    let digestRetried = false;
    let sourceRetried = false;
    // PATCHes the registry acknowledged short, since the upload last got further.
    let shortAcks = 0;
    // Failures are counted until the upload gets further than it ever was, so a
    // registry that loses the session every time cannot loop forever.
    let furthest = startAt;
    const save = () =>
      statePath
        ? saveState(statePath, {
          version: 1,
          digest: b.digest,
          size: b.size,
          dest,
          location,
          offset,
        })
        : Promise.resolve();
    /** Drops the session and starts a new one from byte 0. */
    const restart = async () => {
      await target.cancel(location);
      location = (await newSession(b)).location;
      offset = 0;
      fromEarlier = false;
      progress(b, 0);
      await save();
    };
    await save();
    for (let attempt = 0;;) {
      try {
        while (offset < b.size) {
          // Streamed from the file when the reader can; from memory once a streamed
          // chunk had to be sent again (a redirect or a token refresh on a PATCH).
          const stream = !buffered && reader.stream;
          const length = Math.min(
            stream ? tuning.streamChunkSize : tuning.chunkSize,
            b.size - offset,
          );
          const at = offset;
          const data = stream
            ? { stream: reader.stream!(offset, length, (n) => progress(b, at + n)), length }
            : await reader.read(offset, length, signal);
          result.transferred += length;
          const next = await target.patch(location, offset, data, signal);
          location = next.location;
          const expected = offset + length;
          if (next.offset < expected) {
            // Acknowledged short. distribution appends whatever comes next and ignores
            // Content-Range, so re-sending the "missing" bytes could duplicate them: go on
            // from where the session says it stands only when that agrees, else start over.
            if (++shortAcks > policy.maxRetries) {
              throw new IntegrityError(
                `The registry acknowledged only ${next.offset} of ${expected} bytes of ${b.digest} ` +
                  `(Range: ${next.range}) ${shortAcks} times; giving up`,
              );
            }
            emit({
              type: "retry",
              digest: b.digest,
              attempt: shortAcks,
              reason: `short acknowledgement (Range: ${next.range}, expected 0-${expected - 1})`,
              delayMs: 0,
            });
            const at = await target.status(location, next.offset, signal).catch((e) => {
              if (e instanceof UploadStepError && e.retryable) return undefined;
              throw unwrap(e);
            });
            if (at && at.offset === next.offset) {
              location = at.location;
              offset = at.offset;
              progress(b, offset);
              await save();
            } else {
              await restart();
            }
            continue;
          }
          offset = expected;
          if (offset > furthest) {
            furthest = offset;
            attempt = 0;
            shortAcks = 0;
          }
          progress(b, offset);
          await save();
        }
        try {
          await target.finish(location, b.digest, undefined, signal);
        } catch (err) {
          // The PUT may have landed with its answer lost: the blob is then there.
          if (err instanceof UploadStepError && await target.exists(b.digest, signal)) break;
          throw err;
        }
        break;
      } catch (err) {
        const cause = unwrapCause(err);
        if (cause instanceof ReplayNeeded && !buffered) {
          // Redirected or challenged before the registry took any of it: the same
          // chunk again, from memory, which the transport can replay.
          buffered = true;
          progress(b, offset);
          continue;
        }
        if (err instanceof SourceDigestError && !sourceRetried) {
          // The source sent other bytes once (copy): send the blob again from the start.
          sourceRetried = true;
          await restart();
          continue;
        }
        if (isDigestInvalid(cause) && fromEarlier && !restarted) {
          // A resumed session held other bytes than ours: start over once.
          restarted = true;
          await restart();
          continue;
        }
        if (isDigestInvalid(cause)) {
          // Ours or the way's? Hash the source again: a blob that verifies goes up once more.
          const bad = await checkSource(b);
          if (bad) throw bad;
          if (digestRetried) throw garbledInTransit(b);
          digestRetried = true;
          await restart();
          continue;
        }
        if (!(err instanceof UploadStepError) || !err.retryable || attempt >= policy.maxRetries) {
          throw unwrap(err);
        }
        await pause(b, attempt++, err);
        const at = err.sessionGone ? undefined : await target.status(location, offset, signal)
          .catch((e) => {
            if (e instanceof UploadStepError && e.retryable) return undefined;
            throw unwrap(e);
          });
        if (at && at.offset <= b.size) {
          location = at.location;
          fromEarlier = fromEarlier || at.offset > 0;
          offset = at.offset;
        } else {
          location = (await newSession(b)).location;
          offset = 0;
          fromEarlier = false;
        }
        progress(b, offset);
        await save();
      }
    }
    if (statePath) await rm(statePath, { force: true }).catch(() => {});
  };

  /**
   * Re-hashes a store blob after the registry refused its bytes: an IntegrityError when
   * the file does not hash to its name, undefined when it does (or the source is not a
   * store file: copy's reader checks the digest as it streams).
   */
  const checkSource = async (b: Blob): Promise<HaulError | undefined> => {
    if (options.open || srcDir === undefined) return undefined;
    let r: BlobReader;
    try {
      r = await openStoreBlob(srcDir, b);
    } catch (e) {
      if (e instanceof IntegrityError || e instanceof NotFoundError) return e;
      throw e;
    }
    const h = createHash("sha256");
    try {
      for (let at = 0; at < b.size;) {
        const n = Math.min(8 << 20, b.size - at);
        h.update(await r.read(at, n, signal));
        at += n;
      }
    } finally {
      await r.close();
    }
    const got = `sha256:${h.digest("hex")}`;
    return got === b.digest ? undefined : corruptSource(b, srcDir, got);
  };

  const newSession = async (b: Blob) => {
    const s = await withRetries(() => target.start(signal), policy, signal, b, emit);
    if (s.mounted) throw new TypeError("unreachable: a plain POST mounted a blob");
    return s;
  };

  const pause = async (b: Blob, attempt: number, err: Error) => {
    const delayMs = backoffDelay(attempt + 1, policy);
    emit({ type: "retry", digest: b.digest, attempt: attempt + 1, reason: err.message, delayMs });
    await sleep(delayMs, signal);
  };

  let firstError: unknown;
  try {
    await Promise.all(blobs.map((b) =>
      one(b).catch((err) => {
        if (firstError === undefined) {
          firstError = err;
          abort.abort(err);
        }
      })
    ));
    if (firstError === undefined && options.manifest) {
      emit({ type: "manifest-write", op: "push" });
      result.manifestDigest = await putManifest(
        session,
        options.repository,
        options.manifestRef ?? sha256Digest(options.manifest),
        options.manifest,
        { mediaType: options.manifestMediaType, signal },
      );
    }
  } catch (err) {
    firstError ??= err;
  } finally {
    options.signal?.removeEventListener("abort", onOuter);
  }
  if (firstError !== undefined) {
    if (options.signal?.aborted && !(firstError instanceof HaulError)) throw new InterruptedError();
    throw unwrap(firstError);
  }
  return result;
}

/** Runs a bodiless step, retrying the failures worth retrying. */
async function withRetries<T>(
  step: () => Promise<T>,
  policy: RetryPolicy,
  signal: AbortSignal,
  b: Blob,
  emit: OnProgress,
): Promise<T> {
  for (let attempt = 0;; attempt++) {
    try {
      return await step();
    } catch (err) {
      if (!(err instanceof UploadStepError) || !err.retryable || attempt >= policy.maxRetries) {
        throw unwrap(err);
      }
      const delayMs = backoffDelay(attempt + 1, policy);
      emit({ type: "retry", digest: b.digest, attempt: attempt + 1, reason: err.message, delayMs });
      await sleep(delayMs, signal);
    }
  }
}

function unwrapCause(err: unknown): unknown {
  return err instanceof UploadStepError ? err.cause : err;
}

/** The error a caller sees: the RegistryError inside, or a NetworkError for a connection failure. */
function unwrap(err: unknown): unknown {
  if (!(err instanceof UploadStepError)) return err;
  const cause = err.cause;
  if (cause instanceof HaulError) return withShortUrls(cause);
  return new NetworkError(`Upload failed: ${describe(cause)}`, { cause });
}

/** An error's message with its cause's (or code) when that says more: "fetch failed (ECONNRESET: …)". */
export function describe(err: unknown): string {
  const msg = (err as Error)?.message ?? String(err);
  const inner = (err as { cause?: unknown })?.cause;
  const code = (err as { code?: unknown })?.code ?? (inner as { code?: unknown })?.code;
  const why = [
    typeof code === "string" ? code : "",
    inner instanceof Error ? inner.message : typeof inner === "string" ? inner : "",
  ].filter((x) => x && !msg.includes(x));
  return shortenUploadUrls(why.length ? `${msg} (${why.join(": ")})` : msg);
}

/** Bytes per second a request body is assumed to go out at, at worst (upload deadline). */
const MIN_SEND_RATE = 1 << 20;

const UPLOAD_URL = /(https?:\/\/[^\s"']*?\/blobs\/uploads\/)([^/?#\s"']{1,8})[^\s"']*/g;

/** `…/blobs/uploads/<uuid>?_state=…` as `…/blobs/uploads/<first 8 of uuid>…` in a message. */
export function shortenUploadUrls(text: string): string {
  return text.replace(UPLOAD_URL, (_m, head: string, id: string) => `${head}${id}…`);
}

/** An upload session URL, redacted and shortened for a message. */
function shortUploadUrl(url: string): string {
  return shortenUploadUrls(redactUrl(url));
}

/** The same error with upload session URLs in its message shortened. */
function withShortUrls<E extends HaulError>(err: E): E {
  const short = shortenUploadUrls(err.message);
  if (short === err.message) return err;
  if (err instanceof RegistryError) {
    return new RegistryError({
      status: err.status,
      method: err.method,
      url: err.url,
      codes: err.codes,
      message: short,
    }, { cause: err.cause }) as unknown as E;
  }
  if (err instanceof NetworkError) {
    return new NetworkError(short, { cause: err.cause }) as unknown as E;
  }
  return err;
}

/**
 * What a reader throws when the source's bytes do not hash to the digest (copy): the
 * upload reads the blob once more from the start before it gives up.
 */
export class SourceDigestError extends IntegrityError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SourceDigestError";
  }
}

function corruptSource(b: Blob, srcDir: string | undefined, got: string): IntegrityError {
  const where = srcDir ? ` (${join(srcDir, digestToFileName(b.digest))})` : "";
  return new IntegrityError(
    `The registry refused ${b.digest}: the local blob is corrupt${where}: it hashes to ${got}`,
  );
}

function garbledInTransit(b: Blob): IntegrityError {
  return new IntegrityError(
    `The registry refused ${b.digest} twice (DIGEST_INVALID): the registry received different ` +
      `bytes than sent; the source verifies, so something between haul and the registry changes them`,
  );
}
