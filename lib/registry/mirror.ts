/**
 * Where one repository's content comes from: its mirrors in order, then the origin
 * registry (containerd's and skopeo's mirror model). Content is always addressed by digest
 * at a mirror, so nothing a mirror sends is trusted beyond what the origin named:
 *
 * 1. a tag is resolved at the origin first (HEAD with `Accept`, reading
 *    `Docker-Content-Digest`; a GET when the origin does not say);
 * 2. the manifest and every blob are then fetched by digest from the first mirror that
 *    has them, falling back to the next mirror and finally the origin when a mirror is
 *    down (connection refused, 5xx: it is skipped for the rest of the pull), lacks the
 *    content (404), refuses access or sends bytes that do not match the digest;
 * 3. only when the origin cannot be reached is a tag resolved by a mirror, and a
 *    `warning` event says so.
 */
import { isDigest } from "../digest.ts";
import {
  HaulError,
  InterruptedError,
  NetworkError,
  NotFoundError,
  RegistryError,
  StoreError,
} from "../errors.ts";
import { MANIFEST_ACCEPT } from "./manifest.ts";
import type { OnProgress } from "../progress_events.ts";
import { errorFromResponse, type FetchedManifest } from "./client.ts";
import { isTransientError, type RetryPolicy, sleep } from "../transport/retry.ts";
import { type ConnectionOptions, createSession, type Session } from "./session.ts";

/**
 * Retries at a mirror before moving on: the next source is a better bet than waiting
 * (the origin's default is 6 retries with backoff, about 16 s for a dead host).
 */
export const MIRROR_RETRY: RetryPolicy = { maxRetries: 1, baseDelayMs: 200, maxDelayMs: 1000 };

/** {@link MIRROR_RETRY}, or fewer retries when the caller asked for fewer. */
function mirrorRetry(retry: Partial<RetryPolicy> | undefined): RetryPolicy {
  return {
    ...MIRROR_RETRY,
    maxRetries: Math.min(MIRROR_RETRY.maxRetries, retry?.maxRetries ?? Infinity),
  };
}

/** One place content can come from. */
export interface Source {
  /** `scheme://host[:port]` */
  base: string;
  mirror: boolean;
  session: Session;
}

/** Options for {@link SourceSet}. */
export interface SourceSetOptions extends ConnectionOptions {
  /** Mirror base URLs (`scheme://host[:port]`), tried in order before the origin. @default [] */
  mirrors?: string[];
  /** The origin's session, when the caller already has one. @default a new session */
  originSession?: Session;
  /**
   * Mirrors found down, shared by every SourceSet of one operation so a dead mirror is
   * tried once. @default a new map
   */
  down?: Map<string, string>;
  /** Receives `warning` events. */
  onEvent?: OnProgress;
}

/** Why a mirror's failure lets the next source try, or undefined when it must propagate. */
function fallbackReason(
  err: unknown,
  signal: AbortSignal | undefined,
): { down: boolean; reason: string } | undefined {
  if (signal?.aborted || err instanceof InterruptedError) return undefined;
  // Local trouble (disk full) and bad arguments are not the mirror's fault.
  if (err instanceof StoreError || err instanceof RangeError) return undefined;
  if (err instanceof RegistryError) {
    return { down: err.status >= 500 || err.status === 429, reason: `HTTP ${err.status}` };
  }
  if (err instanceof NotFoundError) return { down: false, reason: "not found" };
  if (err instanceof NetworkError) return { down: true, reason: oneLine(err.message) };
  if (err instanceof HaulError) return { down: false, reason: oneLine(err.message) };
  if (isTransientError(err)) return { down: true, reason: oneLine(String(err)) };
  return undefined;
}

/** True when an error means the origin could not be reached (not: it said no). */
function unreachable(err: unknown): boolean {
  if (err instanceof RegistryError) return err.status >= 500 || err.status === 429;
  return err instanceof NetworkError || (!(err instanceof HaulError) && isTransientError(err));
}

function oneLine(s: string): string {
  const line = s.replace(/\s*\n\s*/g, " ").trim();
  return line.length > 200 ? line.slice(0, 200) + "…" : line;
}

/** The mirrors and the origin of one repository. */
export class SourceSet {
  readonly repository: string;
  readonly origin: Source;
  readonly mirrors: readonly Source[];
  #options: SourceSetOptions;
  #down: Map<string, string>;
  #probe?: Session;

  constructor(originBase: string, repository: string, options: SourceSetOptions = {}) {
    this.repository = repository;
    this.#options = options;
    this.#down = options.down ?? new Map();
    const scopes = [`repository:${repository}:pull`];
    this.origin = {
      base: originBase,
      mirror: false,
      session: options.originSession ?? createSession(originBase, scopes, options),
    };
    // Credentials (and the Ollama key) given for the origin never go to a mirror: a mirror
    // gets what Docker's config.json holds for its own host.
    const mirrorOptions: ConnectionOptions = {
      ...options,
      credential: undefined,
      token: undefined,
      getToken: undefined,
      ollamaKey: undefined,
      keyFile: undefined,
      retry: mirrorRetry(options.retry),
    };
    this.mirrors = (options.mirrors ?? []).filter((m) => m !== originBase).map((base) => ({
      base,
      mirror: true,
      session: createSession(base, scopes, mirrorOptions),
    }));
  }

  /** The retry policy for transfers from `source` (a mirror gives up sooner). */
  retryFor(source: Source): Partial<RetryPolicy> | undefined {
    return source.mirror ? mirrorRetry(this.#options.retry) : this.#options.retry;
  }

  /** Mirrors not known to be down, then the origin. */
  sources(): Source[] {
    return [...this.mirrors.filter((m) => !this.#down.has(m.base)), this.origin];
  }

  /**
   * Runs `fn` against each source in turn until one succeeds. A mirror's failure moves on
   * to the next source (with a warning); the origin's failure is final.
   */
  async tryEach<T>(
    what: string,
    fn: (source: Source) => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    // Mirrors that lacked this item (but are up): skipped for this item only.
    const skipped = new Set<Source>();
    for (;;) {
      const list = this.sources().filter((s) => !skipped.has(s));
      const source = list[0]; // the origin is last and never skipped
      try {
        return await fn(source);
      } catch (err) {
        if (!source.mirror) throw err;
        const why = fallbackReason(err, signal);
        if (!why) throw err;
        const after = list[1];
        const next = after.mirror ? `the mirror ${after.base}` : `the origin ${after.base}`;
        if (!why.down) {
          skipped.add(source);
          this.#warn(
            `mirror ${source.base} could not serve ${what} (${why.reason}); using ${next}`,
          );
        } else if (!this.#down.has(source.base)) {
          // Concurrent tasks may find it down together: warn once.
          this.#down.set(source.base, why.reason);
          this.#warn(`mirror ${source.base} is unavailable (${why.reason}); using ${next} instead`);
        }
      }
    }
  }

  /**
   * Waits until a mirror holds a large blob, so a fleet of clients costs the origin one
   * fetch. A pull-through cache that lacks a blob answers a Range request with 200 and the
   * whole body while it fetches the blob for itself (distribution 2.8), and does not share
   * that fetch: every other request for the blob meanwhile, even a HEAD, is one more full
   * fetch from the origin. So: GET `bytes=0-0`; 206 means the mirror has the blob; 200 means
   * it is filling its cache: drop the response and ask again (after half the time waited,
   * 0.5 s to 5 s) until 206 or `maxWaitMs`. Each early request costs the origin what the
   * sockets buffered before the cache noticed the close (a few MB on loopback), instead of
   * the whole blob.
   *
   * @returns true when the mirror has the blob, false when it still answers 200 after
   *   `maxWaitMs` (then read it as one stream anyway: the downloader copes).
   * @throws {NotFoundError} when the mirror does not have the blob (404), and the
   *   registry's error for other statuses, so the next source is tried.
   */
  async awaitCached(
    source: Source,
    digest: string,
    maxWaitMs: number,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const url = source.session.client.blobUrl(this.repository, digest);
    const start = Date.now();
    for (;;) {
      const res = await source.session.fetch(
        new Request(url, { headers: { range: "bytes=0-0" }, signal }),
      );
      if (res.status !== 200 && res.status !== 206 && res.status !== 404) {
        throw await errorFromResponse(res, "GET", url);
      }
      await res.body?.cancel().catch(() => {});
      if (res.status === 206) return true;
      if (res.status === 404) {
        throw new NotFoundError(`Blob ${digest} not found at ${new URL(url).host}`);
      }
      // Ask again after half the time waited so far (0.5 s to 5 s): few requests for a
      // long fill, and a fill noticed at most 50% late.
      const waited = Date.now() - start;
      const delay = Math.min(5000, Math.max(500, waited / 2));
      if (waited + delay > maxWaitMs) return false;
      await sleep(delay, signal);
    }
  }

  /**
   * Fetches a manifest by tag or digest: a tag is resolved at the origin, then the
   * manifest comes by digest from the first source that has it.
   */
  async manifest(
    reference: string,
    signal?: AbortSignal,
  ): Promise<FetchedManifest & { source: string }> {
    if (reference.startsWith("sha256:")) return await this.manifestByDigest(reference, signal);
    const origin = this.origin;
    if (!this.mirrors.length) {
      const got = await origin.session.client.getManifest(this.repository, reference, { signal });
      return { ...got, source: origin.base };
    }
    let digest: string | undefined;
    try {
      digest = await this.#headManifest(reference, signal);
    } catch (err) {
      if (signal?.aborted || !unreachable(err)) throw err;
      return await this.#tagFromMirror(reference, err, signal);
    }
    if (digest === undefined) {
      // The origin did not name the digest on HEAD: its GET is the answer.
      const got = await origin.session.client.getManifest(this.repository, reference, { signal });
      return { ...got, source: origin.base };
    }
    return await this.manifestByDigest(digest, signal);
  }

  /** Fetches a manifest by digest from the first source that serves it (digest checked). */
  async manifestByDigest(
    digest: string,
    signal?: AbortSignal,
  ): Promise<FetchedManifest & { source: string }> {
    return await this.tryEach(`manifest ${digest}`, async (source) => {
      const got = await source.session.client.getManifest(this.repository, digest, { signal });
      return { ...got, source: source.base };
    }, signal);
  }

  /**
   * HEAD the tag at the origin with few retries (mirrors are waiting): the digest, or
   * undefined when the origin does not say (no HEAD, no Docker-Content-Digest).
   */
  async #headManifest(tag: string, signal?: AbortSignal): Promise<string | undefined> {
    this.#probe ??= createSession(this.origin.base, [`repository:${this.repository}:pull`], {
      ...this.#options,
      retry: { ...this.#options.retry, maxRetries: 2 },
    });
    const url = this.#probe.client.manifestUrl(this.repository, tag);
    const res = await this.#probe.fetch(
      new Request(url, { method: "HEAD", headers: { accept: MANIFEST_ACCEPT }, signal }),
    );
    await res.body?.cancel().catch(() => {});
    if (res.status === 404) {
      throw new NotFoundError(
        `Manifest ${this.repository}:${tag} not found on ${new URL(url).host}`,
      );
    }
    if (res.status === 405 || res.status === 501 || res.status === 400) return undefined;
    if (!res.ok) throw await errorFromResponse(res, "HEAD", url);
    const claimed = res.headers.get("docker-content-digest");
    return isDigest(claimed) ? claimed : undefined;
  }

  /** The origin is unreachable: take the tag from the first mirror that serves it, loudly. */
  async #tagFromMirror(
    tag: string,
    originError: unknown,
    signal?: AbortSignal,
  ): Promise<FetchedManifest & { source: string }> {
    const why = oneLine((originError as Error)?.message ?? String(originError));
    for (const m of this.mirrors) {
      if (this.#down.has(m.base)) continue;
      try {
        const got = await m.session.client.getManifest(this.repository, tag, { signal });
        this.#warn(
          `the origin ${this.origin.base} is unreachable (${why}); ${this.repository}:${tag} ` +
            `resolved by the mirror ${m.base} to ${got.digest}, not checked against the origin`,
        );
        return { ...got, source: m.base };
      } catch (err) {
        const f = fallbackReason(err, signal);
        if (!f) throw err;
        if (f.down) this.#down.set(m.base, f.reason);
      }
    }
    throw originError;
  }

  #warn(message: string): void {
    this.#options.onEvent?.({ type: "warning", message });
  }
}
