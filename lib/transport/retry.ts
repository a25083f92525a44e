/**
 * Retry policy as data: which failures are worth another try and how long to
 * wait. Exponential backoff with jitter; `Retry-After` honoured (capped).
 */
import { InterruptedError } from "../errors.ts";

export interface RetryPolicy {
  /** Attempts after the first. @default 6 (Ollama's maxRetries) */
  maxRetries: number;
  /** First backoff delay in ms; doubles each attempt. @default 250 */
  baseDelayMs: number;
  /** Cap on one delay in ms, `Retry-After` included. @default 30000 */
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxRetries: 6, baseDelayMs: 250, maxDelayMs: 30_000 };

/** Statuses that may succeed on a later try (RFC 9110 §15.5.9, §15.6; RFC 6585 §4). */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status === 500 || status === 502 ||
    status === 503 || status === 504;
}

/** A rate limit the registry says is used up: how long until it resets, and its terms. */
export interface RateLimit {
  /** Requests allowed per window (`ratelimit-limit: 100;w=21600`). */
  limit?: number;
  /** Requests left (`ratelimit-remaining`). */
  remaining?: number;
  /** The window in seconds (`w=`). */
  windowSec?: number;
  /** Until it resets, in ms: Retry-After when given, else the window. */
  waitMs?: number;
}

/**
 * Docker Hub's `ratelimit-limit` / `ratelimit-remaining` headers (`100;w=21600`, docker/docs
 * usage/pulls.md) with Retry-After; undefined when there are none.
 */
export function parseRateLimit(headers: Headers): RateLimit | undefined {
  const limit = headers.get("ratelimit-limit");
  const remaining = headers.get("ratelimit-remaining");
  if (limit === null && remaining === null) return undefined;
  const num = (v: string | null) => {
    const n = v === null ? NaN : Number(v.split(";")[0].trim());
    return Number.isFinite(n) ? n : undefined;
  };
  const w = /;\s*w=(\d+)/.exec(limit ?? remaining ?? "");
  const windowSec = w ? Number(w[1]) : undefined;
  const retryAfter = parseRetryAfter(headers.get("retry-after"));
  return {
    limit: num(limit),
    remaining: num(remaining),
    windowSec,
    waitMs: retryAfter ?? (windowSec === undefined ? undefined : windowSec * 1000),
  };
}

/** `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), in ms. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

/** Delay before retry number `attempt` (1-based), full jitter in [0.5, 1.5). */
export function backoffDelay(
  attempt: number,
  policy: RetryPolicy = DEFAULT_RETRY,
  retryAfterMs?: number,
  random: () => number = Math.random,
): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, policy.maxDelayMs);
  const d = Math.min(policy.baseDelayMs * 2 ** (attempt - 1), policy.maxDelayMs);
  return Math.round(d * (0.5 + random()));
}

/** Resolves after `ms`, or rejects with InterruptedError when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new InterruptedError());
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new InterruptedError());
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** True for errors from `fetch` or a body read that a new connection may cure. */
export function isTransientError(err: unknown): boolean {
  if (err instanceof DOMException && err.name === "AbortError") return false;
  if ((err as { name?: string })?.name === "AbortError") return false;
  if ((err as { name?: string })?.name === "InterruptedError") return false;
  // A certificate problem will not go away by asking again.
  const text = `${(err as Error)?.message ?? ""} ${
    String((err as { cause?: unknown })?.cause ?? "")
  }`;
  if (
    /certificate|UnknownIssuer|self.signed|CERT_|x509|tls handshake|InvalidCertificate/i.test(text)
  ) {
    return false;
  }
  // fetch rejects with TypeError on network failure in every runtime; body reads
  // fail with TypeError / Error carrying a connection code.
  if (err instanceof TypeError) return true;
  const code = (err as { code?: string })?.code ?? "";
  if (/^(ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT|ECONNABORTED|EAI_AGAIN|UND_ERR)/.test(code)) {
    return true;
  }
  const msg = String((err as Error)?.message ?? "");
  return /connection|reset|closed|EOF|socket|network|timed out|incomplete|premature/i.test(msg);
}
