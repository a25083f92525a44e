/**
 * nginx in front of a registry, capping each connection's speed: a stand-in for a
 * CDN that limits every connection (the case parallel Range parts are for).
 * Buffering stays on (limit_rate needs it) but never spills to temp files, and
 * nginx keeps its upstream connections alive.
 */
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import * as net from "node:net";

const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx"].find((p) => fs.existsSync(p)) ?? "nginx";

export interface Nginx {
  url: string;
  host: string;
  dir: string;
  accessLog: string;
  /** Master and worker pids (for CPU accounting). */
  pids(): number[];
  /** Body bytes sent to clients by requests logged since `mark` (a byte offset in the log). */
  bytesSince(mark: number): Promise<number>;
  /** Current size of the access log, for {@link Nginx.bytesSince}. */
  mark(): number;
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** The pids whose parent is `pid` (from /proc). */
export function children(pid: number): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const s = fs.readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(s.slice(s.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(name));
    } catch { /* gone */ }
  }
  return out;
}

/** Starts nginx proxying to `upstream` (host:port) with `limit_rate` bytes/s per request. */
export async function startNginx(
  dir: string,
  upstream: string,
  rateBytesPerSec: number,
): Promise<Nginx> {
  await fsp.mkdir(path.join(dir, "logs"), { recursive: true });
  for (let attempt = 1;; attempt++) {
    const port = await freePort();
    const accessLog = path.join(dir, "access.log");
    const conf = `
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  log_format bench '$request_method $status $body_bytes_sent $request_length $request_time "$request_uri"';
  access_log ${accessLog} bench;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy_temp;
  fastcgi_temp_path ${dir}/fastcgi_temp;
  uwsgi_temp_path ${dir}/uwsgi_temp;
  scgi_temp_path ${dir}/scgi_temp;
  sendfile on;
  tcp_nodelay on;
  keepalive_requests 100000;
  upstream registry {
    server ${upstream};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    client_max_body_size 0;
    location / {
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # The registry builds Location URLs from Host: keep clients on nginx.
      proxy_set_header Host $http_host;
      proxy_buffering on;
      proxy_buffer_size 64k;
      proxy_buffers 8 256k;
      proxy_busy_buffers_size 512k;
      proxy_max_temp_file_size 0;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
      limit_rate ${Math.round(rateBytesPerSec)};
    }
  }
}
`;
    const confFile = path.join(dir, "nginx.conf");
    await fsp.writeFile(confFile, conf);
    await fsp.writeFile(accessLog, "");
    const child: ChildProcess = spawn(
      NGINX,
      ["-p", dir, "-e", path.join(dir, "error.log"), "-c", confFile, "-g", "daemon off;"],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr!.on("data", (c: Uint8Array) => (stderr += new TextDecoder().decode(c)));
    const deadline = Date.now() + 10_000;
    let up = false;
    while (Date.now() < deadline && child.exitCode === null) {
      up = await new Promise<boolean>((resolve) => {
        const s = net.connect(port, "127.0.0.1", () => {
          s.destroy();
          resolve(true);
        });
        s.on("error", () => resolve(false));
      });
      if (up) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    if (!up) {
      child.kill("SIGKILL");
      const log = await fsp.readFile(path.join(dir, "error.log"), "utf8").catch(() => "");
      if (attempt < 3 && /in use/.test(log + stderr)) continue;
      throw new Error(`nginx did not start on port ${port}: ${stderr}\n${log.slice(-2000)}`);
    }
    const master = child.pid!;
    return {
      url: `http://127.0.0.1:${port}`,
      host: `127.0.0.1:${port}`,
      dir,
      accessLog,
      pids: () => [master, ...children(master)],
      mark: () => fs.statSync(accessLog).size,
      async bytesSince(mark) {
        const fh = await fsp.open(accessLog, "r");
        try {
          const size = (await fh.stat()).size;
          const buf = new Uint8Array(Math.max(0, size - mark));
          await fh.read(buf, 0, buf.byteLength, mark);
          let total = 0;
          for (const line of new TextDecoder().decode(buf).split("\n")) {
            const f = line.split(" ");
            if (f.length > 3) total += Number(f[2]) || 0;
          }
          return total;
        } finally {
          await fh.close();
        }
      },
      stop: () =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null) return resolve();
          child.once("exit", () => resolve());
          child.kill("SIGTERM"); // fast shutdown: the master stops its workers
          setTimeout(() => child.kill("SIGKILL"), 5000);
        }),
    };
  }
}
