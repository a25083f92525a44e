/**
 * A round trip in front of a registry on loopback, for the P8 bench scenario: every new
 * client connection waits `connectMs` before its first byte is read (a TCP + TLS handshake
 * to a remote registry), and every request waits `requestMs` before it is forwarded (its
 * round trip). The registry behind is reached over kept-alive connections, so the added time
 * is the only cost of distance. node:http, so it runs in the bench process under Deno.
 */
import * as http from "node:http";
import type * as net from "node:net";

export interface LatencyProxy {
  url: string;
  host: string;
  /** Response body bytes sent to clients so far. */
  bytesOut(): number;
  /** Client connections accepted so far. */
  connections(): number;
  /** Requests so far: method, path, and ms since the proxy started when each arrived. */
  log: { method: string; url: string; at: number }[];
  stop(): Promise<void>;
}

export async function startLatencyProxy(
  upstream: string,
  opts: { connectMs: number; requestMs: number },
): Promise<LatencyProxy> {
  const target = new URL(upstream);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 512 });
  let bytes = 0;
  let conns = 0;
  const log: LatencyProxy["log"] = [];
  const t0 = performance.now();
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    log.push({ method: req.method ?? "GET", url: req.url ?? "/", at: performance.now() - t0 });
    setTimeout(() => {
      const up = http.request({
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: target.host },
        agent,
      }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.on("data", (c: Uint8Array) => bytes += c.length);
        r.pipe(res);
      });
      up.on("error", () => res.destroy());
      req.pipe(up);
    }, opts.requestMs);
  });
  server.on("connection", (s) => {
    conns++;
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    // The handshake: nothing is read from a new connection for connectMs.
    s.pause();
    setTimeout(() => s.resume(), opts.connectMs);
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    bytesOut: () => bytes,
    connections: () => conns,
    log,
    async stop() {
      for (const s of sockets) s.destroy();
      agent.destroy();
      await new Promise((ok) => server.close(ok));
    },
  };
}
