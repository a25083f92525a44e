/**
 * A forwarding HTTP proxy for tests, placed in front of the real registry, for
 * what a real registry cannot do on demand: go slow, count bytes, and (per
 * request, chosen by a rule) misbehave. Uses node:http so it runs in Deno and Bun.
 */
import * as http from "node:http";
import { Buffer } from "node:buffer";
import type { AddressInfo } from "node:net";

export interface ProxiedRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  /** Body bytes sent to the client. */
  bytesOut: number;
  status?: number;
  /** When the request arrived (ms since the epoch). */
  at: number;
}

/** A response the proxy sends instead of forwarding. */
export interface CannedResponse {
  /** @default 200 */
  status?: number;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  /** Send without Content-Length (chunked), so a client cannot refuse it from the header. */
  chunked?: boolean;
}

/** What to do to one request. Fields combine. */
export interface Fault {
  /** Throttle the response body to this many bytes per second. */
  rateBytesPerSec?: number;
  /** Destroy the connection after this many body bytes. */
  resetAfter?: number;
  /** Send headers, then this many body bytes, then nothing ever again. */
  stallAfter?: number;
  /** Answer with this status and a JSON error body instead of forwarding. */
  status?: number;
  /** With `status` 429/503: the Retry-After value. */
  retryAfter?: string;
  /** Flip one byte at this body offset. */
  flipByteAt?: number;
  /** Send fewer body bytes than Content-Length (this many), then close. */
  truncateAt?: number;
  /** Forward without the Range header (so the origin answers 200 with the whole body). */
  ignoreRange?: boolean;
  /** Replace Content-Range with this value. */
  contentRange?: string;
  /** Redirect to this URL (absolute) with 307 instead of forwarding. */
  redirectTo?: string;
  /** With `status`: extra response headers (e.g. a WWW-Authenticate challenge with 401). */
  headers?: Record<string, string>;
  /** Answer with this response instead of forwarding. */
  respond?: CannedResponse;
  /** Read this many request-body bytes (an upload), then reset the connection; nothing is forwarded. */
  resetRequestAfter?: number;
  /** Read this many request-body bytes, then close the connection; nothing is forwarded. */
  truncateRequestAt?: number;
  /** Forward the request with the request-body byte at this offset flipped. */
  flipRequestByteAt?: number;
  /** Read the whole request, then never answer (the connection stays open). */
  noResponse?: boolean;
  /** Override headers of the origin's response (`null` removes one), e.g. an upload's `Range`. */
  responseHeaders?: Record<string, string | null>;
  /**
   * Forward, then send this body instead of the origin's (status and headers from the origin,
   * Content-Length recomputed; `headers` override them, `null` removes one).
   */
  replaceBody?: {
    body: Uint8Array | string;
    headers?: Record<string, string | null>;
    chunked?: boolean;
  };
}

export type FaultRule = (req: ProxiedRequest, index: number) => Fault | undefined;

/** A fault, or a function building it from the request it applies to. */
export type FaultFor = Fault | ((req: ProxiedRequest) => Fault | undefined);

const faultFor = (f: FaultFor, req: ProxiedRequest) => typeof f === "function" ? f(req) : f;

/** Applies `fault` to the first `n` requests that `match`, then lets every request pass. */
export function failTimes(
  n: number,
  match: (req: ProxiedRequest) => boolean,
  fault: FaultFor,
): FaultRule {
  let left = n;
  return (req) => {
    if (left <= 0 || !match(req)) return undefined;
    left--;
    return faultFor(fault, req);
  };
}

/** Applies `fault` only to the `n`th (1-based) request that matches. */
export function nthMatch(
  n: number,
  match: (req: ProxiedRequest) => boolean,
  fault: FaultFor,
): FaultRule {
  let seen = 0;
  return (req) => (match(req) && ++seen === n ? faultFor(fault, req) : undefined);
}

/** Applies `fault` to every request that matches. */
export function always(match: (req: ProxiedRequest) => boolean, fault: FaultFor): FaultRule {
  return (req) => (match(req) ? faultFor(fault, req) : undefined);
}

/** The first rule that returns a fault wins. */
export function anyRule(...rules: FaultRule[]): FaultRule {
  return (req, i) => {
    for (const r of rules) {
      const f = r(req, i);
      if (f) return f;
    }
    return undefined;
  };
}

const toBuffer = (b: Uint8Array | string | undefined) =>
  b === undefined
    ? Buffer.alloc(0)
    : typeof b === "string"
    ? Buffer.from(b, "utf8")
    : Buffer.from(b);

export interface FaultProxy {
  url: string;
  host: string;
  requests: ProxiedRequest[];
  /** Sum of body bytes sent for requests whose URL matches. */
  bytesOut(match?: RegExp): number;
  setRule(rule: FaultRule | undefined): void;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startFaultProxy(
  upstream: string,
  options: { rule?: FaultRule; port?: number } = {},
): Promise<FaultProxy> {
  const up = new URL(upstream);
  let rule = options.rule;
  const requests: ProxiedRequest[] = [];
  const sockets = new Set<import("node:net").Socket>();
  const server = http.createServer((req, res) => {
    const rec: ProxiedRequest = {
      method: req.method ?? "GET",
      url: req.url ?? "/",
      headers: req.headers,
      bytesOut: 0,
      at: Date.now(),
    };
    const index = requests.push(rec) - 1;
    const fault = rule?.(rec, index) ?? {};
    if (fault.redirectTo) {
      req.resume();
      rec.status = 307;
      res.writeHead(307, { location: fault.redirectTo, "content-length": "0" });
      res.end();
      return;
    }
    if (fault.respond) {
      req.resume();
      const c = fault.respond;
      const body = toBuffer(c.body);
      rec.status = c.status ?? 200;
      const headers: http.OutgoingHttpHeaders = { ...c.headers };
      if (!c.chunked) headers["content-length"] = body.length;
      res.writeHead(rec.status, headers);
      rec.bytesOut += req.method === "HEAD" ? 0 : body.length;
      res.end(req.method === "HEAD" ? undefined : body);
      return;
    }
    if (fault.status) {
      req.resume();
      rec.status = fault.status;
      const body = JSON.stringify({ errors: [{ code: "INJECTED", message: "fault proxy" }] });
      const headers: http.OutgoingHttpHeaders = {
        "content-type": "application/json",
        "content-length": body.length,
        ...fault.headers,
      };
      if (fault.retryAfter) headers["retry-after"] = fault.retryAfter;
      res.writeHead(fault.status, headers);
      res.end(body);
      return;
    }
    if (fault.noResponse) {
      req.resume();
      rec.status = 0;
      return;
    }
    const cutAt = fault.resetRequestAfter ?? fault.truncateRequestAt;
    if (cutAt !== undefined) {
      // Like a request-buffering proxy in front of the registry: the cut body never reaches it.
      let got = 0;
      let done = false;
      const cut = () => {
        if (done) return;
        done = true;
        rec.status = 0;
        req.pause();
        if (fault.resetRequestAfter !== undefined) {
          req.socket.resetAndDestroy?.() ?? req.socket.destroy();
        } else req.socket.destroy();
      };
      if (cutAt <= 0) cut();
      req.on("data", (c: Buffer) => {
        got += c.length;
        if (got >= cutAt) cut();
      });
      req.on("end", cut);
      return;
    }
    // Keep Host: the registry builds Location URLs from it, so clients stay on the proxy.
    const headers = { ...req.headers };
    if (fault.ignoreRange) delete headers.range;
    const preq = http.request(
      { host: up.hostname, port: up.port, method: req.method, path: req.url, headers },
      async (pres) => {
        rec.status = pres.statusCode;
        const outHeaders = { ...pres.headers };
        if (fault.contentRange && outHeaders["content-range"]) {
          outHeaders["content-range"] = fault.contentRange;
        }
        for (const [k, v] of Object.entries(fault.responseHeaders ?? {})) {
          if (v === null) delete outHeaders[k.toLowerCase()];
          else outHeaders[k.toLowerCase()] = v;
        }
        if (fault.replaceBody) {
          pres.resume();
          const rb = fault.replaceBody;
          const body = toBuffer(rb.body);
          delete outHeaders["content-length"];
          delete outHeaders["transfer-encoding"];
          if (!rb.chunked) outHeaders["content-length"] = String(body.length);
          for (const [k, v] of Object.entries(rb.headers ?? {})) {
            if (v === null) delete outHeaders[k.toLowerCase()];
            else outHeaders[k.toLowerCase()] = v;
          }
          res.writeHead(pres.statusCode ?? 502, outHeaders);
          rec.bytesOut += req.method === "HEAD" ? 0 : body.length;
          res.end(req.method === "HEAD" ? undefined : body);
          return;
        }
        res.writeHead(pres.statusCode ?? 502, outHeaders);
        let sent = 0;
        const started = Date.now();
        try {
          for await (const chunk of pres) {
            let buf = chunk as Buffer;
            if (
              fault.flipByteAt !== undefined && fault.flipByteAt >= sent &&
              fault.flipByteAt < sent + buf.length
            ) {
              buf = Buffer.from(buf);
              buf[fault.flipByteAt - sent] ^= 0xff;
            }
            for (
              const [limit, kind] of [[fault.resetAfter, "reset"], [fault.stallAfter, "stall"], [
                fault.truncateAt,
                "truncate",
              ]] as const
            ) {
              if (limit !== undefined && sent + buf.length >= limit) {
                const head = buf.subarray(0, Math.max(0, limit - sent));
                if (head.length) res.write(head);
                rec.bytesOut += head.length;
                pres.destroy();
                if (kind === "stall") return; // keep the socket open, send nothing more
                if (kind === "reset") res.socket?.resetAndDestroy?.() ?? res.socket?.destroy();
                else res.socket?.destroy();
                return;
              }
            }
            // Throttle in slices so the rate holds within a chunk.
            const slices = fault.rateBytesPerSec ? Math.ceil(buf.length / 16384) : 1;
            for (let i = 0; i < slices; i++) {
              const part = slices === 1 ? buf : buf.subarray(i * 16384, (i + 1) * 16384);
              if (!res.write(part)) await new Promise((r) => res.once("drain", r));
              sent += part.length;
              rec.bytesOut += part.length;
              if (fault.rateBytesPerSec) {
                const due = started + (sent / fault.rateBytesPerSec) * 1000;
                const wait = due - Date.now();
                if (wait > 0) await sleep(wait);
              }
              if (res.destroyed) {
                pres.destroy();
                return;
              }
            }
          }
          res.end();
        } catch {
          res.destroy();
        }
      },
    );
    preq.on("error", () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    if (fault.flipRequestByteAt === undefined) {
      req.pipe(preq);
      return;
    }
    const flipAt = fault.flipRequestByteAt;
    let seen = 0;
    req.on("data", (c: Buffer) => {
      let buf = c;
      if (flipAt >= seen && flipAt < seen + c.length) {
        buf = Buffer.from(c);
        buf[flipAt - seen] ^= 0xff;
      }
      seen += c.length;
      if (!preq.write(buf)) {
        req.pause();
        preq.once("drain", () => req.resume());
      }
    });
    req.on("end", () => preq.end());
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    requests,
    bytesOut: (match) =>
      requests.filter((r) => !match || match.test(r.url)).reduce((a, r) => a + r.bytesOut, 0),
    setRule: (r) => {
      rule = r;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
