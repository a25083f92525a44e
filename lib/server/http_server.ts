/**
 * The one place that starts an HTTP server. Handlers are plain
 * `(Request) => Promise<Response>` (testable without a socket); this module puts
 * one on a socket with `Deno.serve` under Deno, `Bun.serve` under Bun, and a
 * `node:http` adapter anywhere else (or when asked, so tests cover it).
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { NetworkError } from "../errors.ts";

/** A request handler: no socket, no runtime API. */
export type Handler = (req: Request) => Promise<Response>;

/** Options for {@link serve}. */
export interface ServeOptions {
  /** Address to bind. @default "127.0.0.1" */
  hostname?: string;
  /** Port to bind; 0 picks a free one (see {@link HttpServer.port}). @default 11435 */
  port?: number;
  /** Aborting stops the server (as {@link HttpServer.shutdown}). */
  signal?: AbortSignal;
  /**
   * `"auto"`: Deno.serve or Bun.serve when present, else node:http.
   * `"node"`: always node:http.
   * @default "auto"
   */
  implementation?: "auto" | "node";
  /** Told about errors the handler threw; the client got a 500. */
  onError?: (err: unknown) => void;
}

/** A listening server. */
export interface HttpServer {
  /** The bound port (the real one when 0 was asked). */
  readonly port: number;
  /** The bound address. */
  readonly hostname: string;
  /** Which implementation serves. */
  readonly implementation: "deno" | "bun" | "node";
  /** Resolves once the server has stopped. */
  readonly finished: Promise<void>;
  /** Stops accepting connections, closes idle ones, resolves when stopped. */
  shutdown(): Promise<void>;
}

/** haul serve's port: Ollama's 11434 plus one (see cli/serve.ts). */
export const DEFAULT_PORT = 11435;

// Just what is used of the runtimes' servers, so nothing here depends on their type files.
interface DenoHttpServer {
  addr: { hostname: string; port: number };
  finished: Promise<void>;
  shutdown(): Promise<void>;
}
interface DenoServeNs {
  serve(
    options: {
      hostname: string;
      port: number;
      onListen: () => void;
      onError: (err: unknown) => Response;
    },
    handler: (req: Request) => Promise<Response>,
  ): DenoHttpServer;
}
interface BunServer {
  port: number;
  hostname: string;
  stop(closeActiveConnections?: boolean): Promise<void> | void;
}
interface BunNs {
  serve(options: {
    hostname: string;
    port: number;
    idleTimeout: number;
    fetch: (req: Request) => Promise<Response>;
    error: (err: unknown) => Response;
  }): BunServer;
}

function internalError(): Response {
  return new Response(
    JSON.stringify({ errors: [{ code: "UNKNOWN", message: "internal server error" }] }),
    { status: 500, headers: { "content-type": "application/json" } },
  );
}

/**
 * Serves `handler` until `signal` aborts or `shutdown()` is called.
 *
 * @throws {NetworkError} when the address cannot be bound (in use, not local, denied).
 * @throws {RangeError} when an option is invalid.
 */
export async function serve(handler: Handler, options: ServeOptions = {}): Promise<HttpServer> {
  const hostname = options.hostname ?? "127.0.0.1";
  const port = options.port ?? DEFAULT_PORT;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`port must be an integer in 0-65535, got ${port}`);
  }
  if (options.signal?.aborted) throw new RangeError("signal is already aborted");
  const onError = (err: unknown) => {
    options.onError?.(err);
    return internalError();
  };
  const safe: Handler = async (req) => {
    try {
      return await handler(req);
    } catch (err) {
      return onError(err);
    }
  };
  const g = globalThis as { Deno?: Partial<DenoServeNs>; Bun?: Partial<BunNs> };
  let server: HttpServer;
  const bindError = (err: unknown) =>
    new NetworkError(
      `Cannot listen on ${hostname}:${port}: ${(err as Error)?.message ?? String(err)}`,
      { cause: err },
    );
  if (options.implementation !== "node" && typeof g.Bun?.serve === "function") {
    let s: BunServer;
    try {
      // idleTimeout 0: a large blob to a slow client must not be cut after 10 s idle.
      s = g.Bun.serve({ hostname, port, idleTimeout: 0, fetch: safe, error: onError });
    } catch (err) {
      throw bindError(err);
    }
    let resolveFinished!: () => void;
    const finished = new Promise<void>((r) => (resolveFinished = r));
    let stopping: Promise<void> | undefined;
    server = {
      port: s.port,
      hostname,
      implementation: "bun",
      finished,
      shutdown() {
        stopping ??= Promise.resolve(s.stop(true)).then(resolveFinished, resolveFinished);
        return stopping;
      },
    };
  } else if (options.implementation !== "node" && typeof g.Deno?.serve === "function") {
    let s: DenoHttpServer;
    try {
      s = g.Deno.serve({ hostname, port, onListen: () => {}, onError }, safe);
    } catch (err) {
      throw bindError(err);
    }
    let stopping: Promise<void> | undefined;
    server = {
      port: s.addr.port,
      hostname,
      implementation: "deno",
      finished: s.finished,
      shutdown() {
        stopping ??= s.shutdown().then(() => s.finished);
        return stopping;
      },
    };
  } else {
    server = await nodeServe(safe, hostname, port).catch((err) => {
      throw bindError(err);
    });
  }
  options.signal?.addEventListener("abort", () => void server.shutdown(), { once: true });
  return server;
}

/** node:http adapter: IncomingMessage → Request, Response → ServerResponse with backpressure. */
async function nodeServe(handler: Handler, hostname: string, port: number): Promise<HttpServer> {
  const srv = http.createServer((req, res) => void respond(handler, req, res, hostname));
  await new Promise<void>((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(port, hostname, () => {
      srv.off("error", reject);
      resolve();
    });
  });
  const finished = new Promise<void>((resolve) => srv.once("close", () => resolve()));
  let stopping: Promise<void> | undefined;
  return {
    port: (srv.address() as AddressInfo).port,
    hostname,
    implementation: "node",
    finished,
    shutdown() {
      if (!stopping) {
        srv.close();
        srv.closeIdleConnections();
        // Responses still streaming get a grace period, then their sockets are closed.
        const t = setTimeout(() => srv.closeAllConnections(), 2000);
        stopping = finished.then(() => clearTimeout(t));
      }
      return stopping;
    },
  };
}

async function respond(
  handler: Handler,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  hostname: string,
): Promise<void> {
  const ac = new AbortController();
  res.once("close", () => {
    if (!res.writableFinished) ac.abort(new Error("client closed the connection"));
  });
  let request: Request;
  try {
    const target = req.url ?? "/";
    if (!target.startsWith("/")) throw new Error("not an origin-form request target");
    const headers = new Headers();
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
      try {
        headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
      } catch {
        // A header the Fetch API refuses is dropped, as Deno and Bun do.
      }
    }
    const host = req.headers.host ?? hostname;
    const method = req.method ?? "GET";
    const hasBody = method !== "GET" && method !== "HEAD";
    const init: RequestInit & { duplex?: "half" } = { method, headers, signal: ac.signal };
    if (hasBody) {
      init.body = Readable.toWeb(req) as ReadableStream<Uint8Array>;
      init.duplex = "half";
    }
    request = new Request(new URL(target, `http://${host}`), init);
  } catch {
    res.writeHead(400, { "content-type": "text/plain" }).end("bad request\n");
    return;
  }
  const response = await handler(request);
  const headers: Record<string, string> = {};
  response.headers.forEach((v, k) => (headers[k] = v));
  res.writeHead(response.status, headers);
  if (!response.body || request.method === "HEAD") {
    await response.body?.cancel().catch(() => {});
    res.end();
    return;
  }
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (!res.write(value)) {
        await new Promise<void>((resolve) => {
          const go = () => {
            res.off("drain", go);
            res.off("close", go);
            resolve();
          };
          res.once("drain", go);
          res.once("close", go);
        });
      }
      if (res.destroyed) throw new Error("client closed the connection");
    }
    res.end();
  } catch {
    await reader.cancel().catch(() => {});
    res.destroy();
  }
}
