/**
 * The one place that starts an HTTP server. Handlers are plain
 * `(Request) => Promise<Response>` (testable without a socket); this module puts one on a
 * socket with `node:http` (or `node:https`), which Deno and Bun both provide, because their own
 * servers (`Deno.serve`, `Bun.serve`) expose neither a header timeout nor the open connections,
 * and Bun.serve's TLS certificate cannot be replaced while it listens. The limits on the
 * connections live in `connections.ts`, the Request/Response adapter in `node_respond.ts`.
 */
import * as http from "node:http";
import * as https from "node:https";
import * as net from "node:net";
import * as tls from "node:tls";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { NetworkError } from "../errors.ts";
import { checkLimit, type ConnectionLimits, ConnectionTable } from "./connections.ts";
import { type Handler, respond, type ResponseEntry } from "./node_respond.ts";

export type { Handler, ResponseEntry } from "./node_respond.ts";
export type { ConnectionLimitEvent, ConnectionLimits } from "./connections.ts";
export { CONNECTION_DEFAULTS } from "./connections.ts";

/** A certificate chain and its private key, PEM. */
export interface TlsPem {
  /** The server's certificate first, then any intermediates. */
  cert: string;
  key: string;
}

/** Options for {@link serve}; the connection limits are {@link ConnectionLimits}'. */
export interface ServeOptions extends ConnectionLimits {
  /** Address to bind. @default "127.0.0.1" */
  hostname?: string;
  /** Port to bind; 0 picks a free one (see {@link HttpServer.port}). @default 11435 */
  port?: number;
  /** Aborting shuts the server down (as {@link HttpServer.shutdown}). */
  signal?: AbortSignal;
  /** Serve HTTPS with this certificate (replace it later with {@link HttpServer.setTls}). */
  tls?: TlsPem;
  /**
   * Once shutdown begins, responses in flight get this long to finish; then their connections
   * are closed. @default 10_000
   */
  shutdownTimeoutMs?: number;
  /** Told about errors the handler threw; the client got a 500. */
  onError?: (err: unknown) => void;
  /** Told about every response once its last byte is sent or it is cut short. */
  onResponse?: (entry: ResponseEntry) => void;
}

/** A listening server. */
export interface HttpServer {
  /** The bound port (the real one when 0 was asked). */
  readonly port: number;
  /** The bound address. */
  readonly hostname: string;
  readonly protocol: "http" | "https";
  /** Connections open now. */
  readonly connections: number;
  /** Resolves once the server has stopped and every connection is closed. */
  readonly finished: Promise<void>;
  /**
   * Stops accepting, closes idle connections, lets responses in flight finish until
   * `shutdownTimeoutMs`, then closes the rest; resolves when all are closed.
   */
  shutdown(): Promise<void>;
  /**
   * Serves new connections with another certificate (those open keep theirs).
   * @throws {RangeError} when the server is plain HTTP or the PEM is not a matching pair.
   */
  setTls(pem: TlsPem): void;
}

/** haul serve's port: Ollama's 11434 plus one (see cli/serve.ts). */
export const DEFAULT_PORT = 11435;

/** How long responses in flight get once shutdown begins. */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 10_000;

/**
 * Checks that `pem` holds a certificate and the private key that belongs to it; returns the
 * certificate's subject and expiry for logs.
 * @throws {RangeError} naming what is wrong.
 */
export function checkTlsPem(pem: TlsPem): { subject: string; validTo: Date } {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem.cert);
  } catch (err) {
    throw new RangeError(`Not a PEM certificate: ${(err as Error).message}`);
  }
  let key;
  try {
    key = createPrivateKey(pem.key);
  } catch (err) {
    throw new RangeError(`Not a PEM private key: ${(err as Error).message}`);
  }
  if (!cert.checkPrivateKey(key)) {
    throw new RangeError(`The private key does not belong to the certificate (${cert.subject})`);
  }
  return { subject: cert.subject.replace(/\n/g, ", "), validTo: new Date(cert.validTo) };
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
  const shutdownMs = checkLimit(
    "shutdownTimeoutMs",
    options.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS,
  );
  if (options.tls) checkTlsPem(options.tls);
  const table = new ConnectionTable(options);
  const { listener, setTls } = createListener(
    table,
    options.tls,
    (req, res) =>
      void respond(handler, req, res, {
        table,
        hostname,
        protocol: options.tls ? "https" : "http",
        onError: options.onError,
        onResponse: options.onResponse,
      }),
  );
  try {
    await new Promise<void>((resolve, reject) => {
      listener.once("error", reject);
      listener.listen(port, hostname, () => {
        listener.off("error", reject);
        resolve();
      });
    });
  } catch (err) {
    table.stop();
    throw new NetworkError(
      `Cannot listen on ${hostname}:${port}: ${(err as Error)?.message ?? String(err)}`,
      { cause: err },
    );
  }
  // Accepting can fail later (e.g. out of file descriptors): told, not thrown.
  listener.on("error", (err) => options.onError?.(err));
  const closed = new Promise<void>((resolve) => listener.once("close", () => resolve()));
  const finished = closed.then(() => table.empty()).then(() => table.stop());
  let stopping: Promise<void> | undefined;
  const server: HttpServer = {
    port: (listener.address() as net.AddressInfo).port,
    hostname,
    protocol: options.tls ? "https" : "http",
    get connections() {
      return table.size;
    },
    finished,
    shutdown() {
      if (!stopping) {
        listener.close();
        table.drain();
        const cut = setTimeout(() => table.closeAll(), shutdownMs);
        stopping = finished.then(() => clearTimeout(cut));
      }
      return stopping;
    },
    setTls(pem) {
      if (!setTls) throw new RangeError("This server is plain HTTP: it has no certificate");
      checkTlsPem(pem);
      setTls(pem);
    },
  };
  options.signal?.addEventListener("abort", () => void server.shutdown(), { once: true });
  return server;
}

const IN_BUN = "Bun" in globalThis;

type OnRequest = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/**
 * The listening socket: `node:http`, or for TLS `node:https` where it can replace its
 * certificate (Deno), else a `tls.Server` handing its sockets to an `http.Server` (Bun's
 * `https.Server` has no `setSecureContext`). Every accepted TCP connection goes through the
 * table first.
 */
function createListener(
  table: ConnectionTable,
  pem: TlsPem | undefined,
  onRequest: OnRequest,
): { listener: net.Server; setTls?: (pem: TlsPem) => void } {
  const httpOptions: http.ServerOptions = {
    maxHeaderSize: 16 * 1024,
    // The table keeps these limits; the runtime's own are off so that only one applies.
    requestTimeout: 0,
    headersTimeout: 0,
    // Advertised in `Keep-Alive: timeout=`, so clients stop reusing a connection before then.
    keepAliveTimeout: table.keepAliveMs,
  };
  let listener: net.Server;
  let setTls: ((pem: TlsPem) => void) | undefined;
  if (!pem && !IN_BUN) {
    listener = http.createServer(httpOptions, onRequest);
  } else if (!pem) {
    // Bun's http.Server tells of a connection only once it has sent bytes, and keeps one that
    // sends nothing open past close(): its sockets come from a net.Server, as TLS ones do.
    const inner = http.createServer(httpOptions, onRequest);
    listener = net.createServer((s) => void inner.emit("connection", s));
  } else {
    const tlsOptions = { cert: pem.cert, key: pem.key, handshakeTimeout: table.headerTimeoutMs };
    const direct = https.createServer({ ...httpOptions, ...tlsOptions }, onRequest) as
      & https.Server
      & { setSecureContext?: (o: tls.SecureContextOptions) => void };
    if (typeof direct.setSecureContext === "function") {
      listener = direct;
      setTls = (p) => direct.setSecureContext!({ cert: p.cert, key: p.key });
    } else {
      const inner = http.createServer(httpOptions, onRequest);
      const outer = tls.createServer(tlsOptions, (s) => void inner.emit("connection", s));
      listener = outer;
      setTls = (p) => outer.setSecureContext({ cert: p.cert, key: p.key });
    }
  }
  listener.on("connection", (socket: net.Socket) => {
    socket.on("error", () => {}); // a reset client is not the server's error
    const conn = table.admit(socket);
    if (conn) socket.once("close", () => table.remove(conn));
  });
  return { listener, setTls };
}
