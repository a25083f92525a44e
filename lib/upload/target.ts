/**
 * One registry repository's upload endpoints, over a session's transport: sending a
 * request with a deadline for its body, and turning what fails into an
 * {@link UploadStepError} that names the step. The steps themselves (
 * mount.ts, session.ts, send.ts, commit.ts) build the requests.
 */
import { HaulError, InterruptedError, NetworkError, redactUrl, RegistryError } from "../errors.ts";
import { errorFromResponse } from "../registry/client.ts";
import type { Session } from "../registry/session.ts";
import { finalUrl, ReplayNeeded } from "../transport/fetch.ts";
import { isRetryableStatus, isTransientError } from "../transport/retry.ts";
import { inStep, isSessionGone, shortUploadUrl, UploadStepError, withShortUrls } from "./errors.ts";

/** Content-Type of blob bytes. */
export const OCTET = "application/octet-stream";

/** Bytes per second a request body is assumed to go out at, at worst (upload deadline). */
const MIN_SEND_RATE = 1 << 20;

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

/** One registry repository's upload endpoints, over a session's transport. */
export class UploadTarget {
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

  /** `/v2/<name>/blobs/uploads/`, where sessions are opened (POST). */
  get uploadsUrl(): string {
    return `${this.base}/v2/${this.repository}/blobs/uploads/`;
  }

  /** HEAD on the blob: whether the repository has it. */
  hasBlob(digest: string, signal: AbortSignal): Promise<boolean> {
    return this.#session.client.hasBlob(this.repository, digest, signal);
  }

  /** Sends `req` as it is: no deadline, no step error (best-effort requests). */
  request(req: Request): Promise<Response> {
    return this.#session.fetch(req);
  }

  /**
   * Sends `req` for `step`. A request with a body (`bytes` > 0) gets a deadline of its own:
   * the transport's header timeout skips bodies, and a registry that reads a chunk and never
   * answers must not hang the push. The runtime does not say when a body has gone out,
   * so the deadline is the request timeout plus the body's time at {@link MIN_SEND_RATE}.
   */
  async send(req: Request, step: string, bytes = 0): Promise<Response> {
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
      if (timedOut) throw new UploadStepError(step, timedOut, true);
      // A NetworkError from the transport (too many redirects, retries spent on a bodiless
      // request) may pass on a later try, as pull retries it.
      if (err instanceof NetworkError) throw new UploadStepError(step, err, true);
      if (err instanceof ReplayNeeded) throw new UploadStepError(step, err, true);
      if (err instanceof HaulError) throw err;
      if (isTransientError(err)) throw new UploadStepError(step, err, true);
      throw err;
    } finally {
      clearTimeout(timer);
      req.signal.removeEventListener("abort", onAbort);
    }
  }

  /** Turns a failed response into a step error (RegistryError inside). */
  async fail(res: Response, method: string, url: string, step: string): Promise<never> {
    const raw = await errorFromResponse(res, method, url);
    const err = url.includes("/blobs/uploads/") ? withShortUrls(raw) : raw;
    throw new UploadStepError(
      step,
      err,
      isRetryableStatus(err.status) || isSessionGone(err),
      isSessionGone(err),
    );
  }

  /** The session URL a response names in `Location` (absolute, http or https). */
  location(res: Response, requested: string, method: string, step: string): string {
    const loc = res.headers.get("location");
    const said = (what: string) =>
      inStep(
        new RegistryError({
          status: res.status,
          method,
          url: requested,
          message: `${method} ${redactUrl(requested)} ${what}`,
        }),
        step,
      );
    if (!loc) throw said(`answered ${res.status} without a Location`);
    const u = new URL(loc, finalUrl(res, requested));
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw said(`gave a ${u.protocol} upload URL`);
    }
    return u.href;
  }
}
