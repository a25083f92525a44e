/**
 * The `node:http` adapter: IncomingMessage → Request, Response → ServerResponse with
 * backpressure, and what each response did (bytes, time, outcome) for the access log. Each
 * step tells the connection table where the connection is: answering, waiting for the client
 * to read, done.
 */
import type * as http from "node:http";
import { Readable } from "node:stream";
import type { Connection, ConnectionTable } from "./connections.ts";
import { bodyReader } from "./body_reader.ts";

/** A request handler: no socket, no runtime API. */
export type Handler = (req: Request) => Promise<Response>;

/** One response, as {@link RespondContext.onResponse} is told about it. */
export interface ResponseEntry {
  method: string;
  /** Path and query as requested (at most 300 characters). */
  path: string;
  status: number;
  /** Response headers (e.g. `docker-content-digest`). */
  headers: Headers;
  /** Body bytes handed to the socket. */
  bytes: number;
  /** From the request head to the last byte sent (or to the cut). */
  durationMs: number;
  /** The client's IP address (an IPv4-mapped IPv6 address as plain IPv4). */
  client: string;
  /** False when the connection closed before the whole body was sent. */
  complete: boolean;
  /** The user the request authenticated as (`--htpasswd`), if any. */
  user?: string;
}

const USERS = new WeakMap<Request, string>();

/** Records who `req` authenticated as, for its access-log entry (an auth wrapper calls it). */
export function setRequestUser(req: Request, user: string): void {
  USERS.set(req, user);
}

/** What {@link respond} needs beside the request. */
export interface RespondContext {
  table: ConnectionTable;
  hostname: string;
  protocol: "http" | "https";
  onError?: (err: unknown) => void;
  onResponse?: (entry: ResponseEntry) => void;
}

function internalError(): Response {
  return new Response(
    JSON.stringify({ errors: [{ code: "UNKNOWN", message: "internal server error" }] }),
    { status: 500, headers: { "content-type": "application/json" } },
  );
}

/** Answers one request; never throws. */
export async function respond(
  handler: Handler,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  ctx: RespondContext,
): Promise<void> {
  const t0 = performance.now();
  const conn = ctx.table.lookup(req.socket);
  if (!conn) {
    // The table closed or refused this connection already.
    req.socket.destroy();
    return;
  }
  ctx.table.busy(conn);
  const ac = new AbortController();
  res.once("close", () => {
    if (!res.writableFinished) ac.abort(new Error("client closed the connection"));
  });
  const request = toRequest(req, ctx, ac.signal);
  let response: Response;
  if (!request) {
    response = new Response("bad request\n", { status: 400 });
  } else {
    try {
      response = await handler(request);
    } catch (err) {
      ctx.onError?.(err);
      response = internalError();
    }
  }
  const sent = await send(response, req, res, conn, ctx.table);
  ctx.onResponse?.({
    method: req.method ?? "GET",
    path: (req.url ?? "/").slice(0, 300),
    status: response.status,
    headers: response.headers,
    bytes: sent.bytes,
    durationMs: performance.now() - t0,
    client: clientAddress(req.socket.remoteAddress),
    complete: sent.complete,
    ...(request && USERS.has(request) ? { user: USERS.get(request) } : {}),
  });
  // A request body nobody read (the store is read-only) is not drained: the connection ends.
  if (!req.complete) req.socket.destroy();
  ctx.table.idle(conn);
}

function clientAddress(a: string | undefined): string {
  if (!a) return "";
  return a.startsWith("::ffff:") && a.includes(".") ? a.slice(7) : a;
}

function toRequest(
  req: http.IncomingMessage,
  ctx: RespondContext,
  signal: AbortSignal,
): Request | undefined {
  try {
    const target = req.url ?? "/";
    if (!target.startsWith("/")) return undefined; // not an origin-form request target
    const headers = new Headers();
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
      try {
        headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
      } catch {
        // A header the Fetch API refuses is dropped, as Deno and Bun do.
      }
    }
    const host = req.headers.host ?? ctx.hostname;
    const method = req.method ?? "GET";
    const init: RequestInit & { duplex?: "half" } = { method, headers, signal };
    if (method !== "GET" && method !== "HEAD") {
      init.body = Readable.toWeb(req) as ReadableStream<Uint8Array>;
      init.duplex = "half";
    }
    return new Request(new URL(target, `${ctx.protocol}://${host}`), init);
  } catch {
    return undefined;
  }
}

/** Writes `response` to `res`, waiting for the client where it is slow; counts the body bytes. */
async function send(
  response: Response,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  conn: Connection,
  table: ConnectionTable,
): Promise<{ bytes: number; complete: boolean }> {
  const headers: Record<string, string> = {};
  response.headers.forEach((v, k) => (headers[k] = v));
  if (table.draining) headers["connection"] = "close";
  if (res.destroyed) {
    await response.body?.cancel().catch(() => {});
    return { bytes: 0, complete: false };
  }
  res.writeHead(response.status, headers);
  if (!response.body || req.method === "HEAD") {
    await response.body?.cancel().catch(() => {});
    res.end();
    await ended(res);
    return { bytes: 0, complete: res.writableFinished };
  }
  const reader = bodyReader(response.body);
  let bytes = 0;
  try {
    let first: ReturnType<typeof reader.read> | undefined = reader.read();
    await flushHeadUnlessReady(first, res);
    for (;;) {
      const { done, value } = await (first ?? reader.read());
      first = undefined;
      if (done) break;
      if (res.destroyed) throw new Error("client closed the connection");
      bytes += value.byteLength;
      // node:http is done with `value` when it calls back: its buffer may be read into again.
      if (!res.write(value, (err) => err ? undefined : reader.release(value))) {
        await drained(res, conn, table);
      }
    }
    res.end();
    await ended(res);
    return { bytes, complete: res.writableFinished };
  } catch {
    await reader.cancel().catch(() => {});
    res.destroy();
    return { bytes, complete: false };
  }
}

/** How long a body's first chunk may take before the head is sent on its own. */
const HEAD_FLUSH_MS = 20;

/**
 * node:http (Node, and Deno and Bun, which follow it) sends the status line and headers with
 * the first body write: a body still coming (a blob landing from an upstream, fill_response.ts)
 * would hold them back until its first byte. Sends the head at once unless the first chunk is
 * ready within {@link HEAD_FLUSH_MS} (a blob on disk: then head and bytes go out together).
 * (`res.headersSent` is already true after `writeHead`, sent or not, so it is not asked.)
 */
async function flushHeadUnlessReady(
  first: Promise<unknown>,
  res: http.ServerResponse,
): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<boolean>((r) => (timer = setTimeout(() => r(true), HEAD_FLUSH_MS)));
  const isLate = await Promise.race([first.then(() => false, () => false), late]);
  clearTimeout(timer);
  if (isLate && !res.destroyed) res.flushHeaders();
}

/** Resolves when `res` has sent everything, or is closed. */
function ended(res: http.ServerResponse): Promise<void> {
  if (res.writableFinished || res.destroyed) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const go = () => {
      res.off("finish", go);
      res.off("close", go);
      resolve();
    };
    res.once("finish", go);
    res.once("close", go);
  });
}

/** Resolves when `res` can take more, or is closed; meanwhile the table sees the wait. */
function drained(res: http.ServerResponse, conn: Connection, table: ConnectionTable) {
  table.blocked(conn, true);
  return new Promise<void>((resolve) => {
    const go = () => {
      res.off("drain", go);
      res.off("close", go);
      table.blocked(conn, false);
      resolve();
    };
    res.once("drain", go);
    res.once("close", go);
  });
}
