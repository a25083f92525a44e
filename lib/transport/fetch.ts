/**
 * The HTTP path: `Fetch = (req) => Promise<Response>` and small wrappers, each
 * one concern, composed once in {@link createTransport}:
 *
 *   userAgent → redirects → auth → retry → runtime fetch
 *
 * Redirects are followed here (never by the runtime), so that the auth layer sees
 * every hop and attaches credentials only to the host they were issued for.
 */
import { NetworkError, redactUrl } from "../errors.ts";
import {
  backoffDelay,
  DEFAULT_RETRY,
  isRetryableStatus,
  isTransientError,
  parseRateLimit,
  parseRetryAfter,
  type RetryPolicy,
  sleep,
} from "./retry.ts";

export type Fetch = (req: Request) => Promise<Response>;

/** Options for the runtime's fetch. */
export interface BaseFetchOptions {
  /** Extra CA certificates (PEM) to trust. */
  caCerts?: string[];
  /**
   * Skip certificate verification (`--insecure` with an https registry). Bun only:
   * Deno's fetch cannot skip it per client, so there it stays on. @default false
   */
  insecureTls?: boolean;
}

/** The runtime's fetch, never following redirects itself. */
export function baseFetch(options: BaseFetchOptions = {}): Fetch {
  // deno-lint-ignore no-explicit-any
  const g = globalThis as any;
  // deno-lint-ignore no-explicit-any
  let extra: Record<string, any> = {};
  if (options.caCerts?.length) {
    if (g.Deno?.createHttpClient) {
      extra = { client: g.Deno.createHttpClient({ caCerts: options.caCerts }) };
    } else if (g.Bun) extra = { tls: { ca: options.caCerts } };
  }
  if (options.insecureTls && g.Bun) extra = { tls: { ...extra.tls, rejectUnauthorized: false } };
  return (req) => {
    if (req.headers.has(SEND_ONCE)) {
      const headers = new Headers(req.headers);
      headers.delete(SEND_ONCE);
      // deno-lint-ignore no-explicit-any
      req = new Request(req, { headers, duplex: "half" } as any);
    }
    return fetch(req, { redirect: "manual", ...extra });
  };
}

/**
 * Request header (stripped before sending) marking a streamed body that must
 * not be buffered for a replay: the redirect and auth layers then keep no copy
 * and, where they would have to send the body again (a redirect that keeps the
 * method, a 401 challenge), throw {@link ReplayNeeded} instead. Uploads stream
 * large chunks from disk this way and resend such a chunk from a buffer.
 */
export const SEND_ONCE = "x-haul-send-once";

/** A request marked {@link SEND_ONCE} needed its body sent again. */
export class ReplayNeeded extends Error {
  readonly status: number;
  constructor(status: number, url: string) {
    super(`HTTP ${status} for a streamed upload to ${redactUrl(url)}; it has to be sent again`);
    this.name = "ReplayNeeded";
    this.status = status;
  }
}

/**
 * Fails a bodiless request whose response headers do not arrive within `ms`
 * (a stalled server must not hang haul). Each retry gets a fresh timer because
 * this layer sits below {@link withRetry}. Streaming bodies have their own stall
 * guards (range downloads, {@link readBody}).
 */
export function withHeaderTimeout(next: Fetch, ms: number): Fetch {
  return async (req) => {
    if (req.body !== null || !(ms > 0)) return next(req);
    const ac = new AbortController();
    // Made only when it fires: an error's stack and the URL parse cost more per request
    // than the rest of this layer (many small blobs are one request each).
    let timedOut: TypeError | undefined;
    const timer = setTimeout(() => {
      timedOut = new TypeError(`no response from ${new URL(req.url).host} within ${ms / 1000} s`);
      ac.abort(timedOut);
    }, ms);
    // Kept for the body's lifetime: an abort of the caller still reaches the body.
    req.signal.addEventListener("abort", () => ac.abort(req.signal.reason), { once: true });
    if (req.signal.aborted) ac.abort(req.signal.reason);
    try {
      return await next(new Request(req, { signal: ac.signal }));
    } catch (err) {
      if (timedOut && ac.signal.reason === timedOut) throw timedOut;
      throw err;
    } finally {
      clearTimeout(timer);
    }
  };
}

/**
 * Sets `User-Agent` when the request has none: on the request's own headers where they
 * can be changed (a Request made with `new Request`), else on a copy. Each copy costs a
 * Request and an abort signal following the caller's, per request.
 */
export function withUserAgent(next: Fetch, userAgent: string): Fetch {
  return (req) => {
    if (req.headers.has("user-agent")) return next(req);
    try {
      req.headers.set("user-agent", userAgent);
      return next(req);
    } catch {
      // Immutable headers (a Request some runtimes hand out): copy.
    }
    const headers = new Headers(req.headers);
    headers.set("user-agent", userAgent);
    return next(new Request(req, { headers }));
  };
}

export interface RetryOptions extends Partial<RetryPolicy> {
  onRetry?: (info: { attempt: number; reason: string; delayMs: number; url: string }) => void;
}

/**
 * Retries bodiless requests on connection errors and retryable statuses
 * (honouring `Retry-After`). Requests with a body are sent once: a stream cannot
 * be rewound, so their callers own the retry.
 */
export function withRetry(next: Fetch, options: RetryOptions = {}): Fetch {
  const policy: RetryPolicy = { ...DEFAULT_RETRY, ...stripUndefined(options) };
  return async (req) => {
    if (req.body !== null) return next(req);
    for (let attempt = 0;; attempt++) {
      let res: Response | undefined;
      let reason: string;
      let retryAfter: number | undefined;
      try {
        res = await next(req);
        if (!isRetryableStatus(res.status) || attempt >= policy.maxRetries) return res;
        // A used-up rate limit whose window outlasts any wait worth making: stop now.
        const rl = res.status === 429 ? parseRateLimit(res.headers) : undefined;
        if (rl?.waitMs !== undefined && rl.waitMs > policy.maxDelayMs) return res;
        reason = `HTTP ${res.status}`;
        retryAfter = parseRetryAfter(res.headers.get("retry-after"));
        await res.body?.cancel().catch(() => {});
      } catch (err) {
        if (req.signal.aborted) throw err;
        if (!isTransientError(err)) {
          // fetch's own failures (TLS, DNS, a refused protocol) are TypeErrors: make
          // them a network error with the reason, not an internal error.
          if (!(err instanceof TypeError)) throw err;
          const why = describeError(err);
          const tls = /certificate|UnknownIssuer|self.signed|CERT_|x509/i.test(
            `${why} ${String((err as { cause?: unknown }).cause ?? "")}`,
          );
          throw new NetworkError(
            `${req.method} ${redactUrl(req.url)} failed: ${why}` +
              (tls ? " (the server's TLS certificate is not trusted: see --ca-file)" : ""),
            { cause: err },
          );
        }
        if (attempt >= policy.maxRetries) {
          throw new NetworkError(
            `${req.method} ${redactUrl(req.url)} failed after ${attempt + 1} attempts: ${
              describeError(err)
            }`,
            { cause: err },
          );
        }
        reason = (err as Error).message;
      }
      const delayMs = backoffDelay(attempt + 1, policy, retryAfter);
      options.onRetry?.({ attempt: attempt + 1, reason, delayMs, url: redactUrl(req.url) });
      await sleep(delayMs, req.signal);
    }
  };
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * Follows up to `max` redirects. Authorization set by a caller is dropped when
 * the origin changes; the auth layer below decides per hop what to attach.
 * The final URL is exposed as `response.url` is not settable, so the layer
 * records it in the `x-haul-final-url` header of the returned response.
 */
export function withRedirects(next: Fetch, max = 10): Fetch {
  return async (req) => {
    // The caller reads the redirect itself (Ollama's redirected upload parts).
    if (req.redirect === "manual") return await next(req);
    let current = req;
    let first: string | undefined; // the origin, parsed once there is a redirect
    for (let hop = 0;; hop++) {
      const once = current.headers.has(SEND_ONCE);
      const replay = current.body !== null && !once ? current.clone() : undefined;
      const res = await next(current);
      if (!REDIRECTS.has(res.status) || !res.headers.has("location")) {
        await replay?.body?.cancel().catch(() => {});
        return hop === 0 ? res : withFinalUrl(res, current.url);
      }
      await res.body?.cancel().catch(() => {});
      if (hop >= max) {
        await replay?.body?.cancel().catch(() => {});
        throw new NetworkError(`Too many redirects (over ${max}) from ${redactUrl(req.url)}`);
      }
      const to = new URL(res.headers.get("location")!, current.url);
      if (to.protocol !== "https:" && to.protocol !== "http:") {
        throw new NetworkError(
          `Refusing redirect to ${to.protocol} URL from ${redactUrl(current.url)}`,
        );
      }
      if (
        new URL(current.url).protocol === "https:" && to.protocol === "http:" && !isLoopback(to)
      ) {
        throw new NetworkError(`Refusing redirect from https to plain http (${redactUrl(to)})`);
      }
      const headers = new Headers(current.headers);
      first ??= new URL(req.url).origin;
      if (to.origin !== first) headers.delete("authorization");
      const method = res.status === 303 || ((res.status === 301 || res.status === 302) &&
          current.method === "POST")
        ? "GET"
        : current.method;
      if (once && current.body !== null && method === current.method) {
        throw new ReplayNeeded(res.status, current.url);
      }
      const body = method === current.method ? replay?.body ?? null : null;
      if (method !== current.method) await replay?.body?.cancel().catch(() => {});
      current = new Request(to, {
        method,
        headers,
        body,
        signal: current.signal,
        // deno-lint-ignore no-explicit-any
        ...(body ? { duplex: "half" } as any : {}),
      });
    }
  };
}

function withFinalUrl(res: Response, url: string): Response {
  const headers = new Headers(res.headers);
  headers.set("x-haul-final-url", url);
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
}

/** The URL a response finally came from (after {@link withRedirects}). */
export function finalUrl(res: Response, requested: string): string {
  return res.headers.get("x-haul-final-url") ?? requested;
}

export function isLoopback(u: URL): boolean {
  const h = u.hostname;
  return h === "localhost" || h.startsWith("127.") || h === "[::1]" || h === "::1";
}

/** An error's message with its cause's, which is where fetch puts the reason. */
export function describeError(err: unknown): string {
  const msg = (err as Error)?.message ?? String(err);
  const cause = (err as { cause?: { message?: string; code?: string } })?.cause;
  const why = cause?.message ?? cause?.code;
  return why && !msg.includes(why) ? `${msg} (${why})` : msg;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Reports what registries say beside the answer: distribution-spec 1.1 `Warning: 299 - "…"`
 * headers (each at most 4096 bytes), and Docker Hub's pulls left when under a tenth of its
 * limit (`ratelimit-remaining`). `onWarning` dedupes nothing; callers show each text once.
 */
export function withWarnings(next: Fetch, onWarning: (message: string) => void): Fetch {
  return async (req) => {
    const res = await next(req);
    const warning = res.headers.get("warning");
    if (warning) {
      for (const m of warning.matchAll(/299\s+\S+\s+"((?:[^"\\]|\\.){1,4096})"/g)) {
        onWarning(`${new URL(req.url).host}: ${m[1].replace(/\\(.)/g, "$1")}`);
      }
    }
    const rl = res.status < 400 ? parseRateLimit(res.headers) : undefined;
    if (rl?.limit && rl.remaining !== undefined && rl.remaining < rl.limit / 10) {
      const per = rl.windowSec ? ` per ${Math.round(rl.windowSec / 3600)} h` : "";
      onWarning(`${new URL(req.url).host}: ${rl.remaining} of ${rl.limit} pulls${per} left`);
    }
    return res;
  };
}
