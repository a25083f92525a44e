/**
 * nginx serving a directory as static files (sendfile, Range, keep-alive): the reference
 * for a plain file server in scripts/serve_load.ts.
 */
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import * as net from "node:net";
import process from "node:process";
import { children, freePort } from "./nginx.ts";

const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx"].find((p) => fs.existsSync(p));

export interface StaticNginx {
  url: string;
  host: string;
  port: number;
  /** Master and worker pids (for CPU accounting). */
  pids(): number[];
  stop(): Promise<void>;
}

/** True when an nginx binary is installed. */
export function haveNginx(): boolean {
  return NGINX !== undefined;
}

/** Starts nginx (`workers` worker processes, default 1) serving `root` on a free port. */
export async function startStaticNginx(
  dir: string,
  root: string,
  workers = 1,
): Promise<StaticNginx> {
  if (!NGINX) throw new Error("nginx is not installed");
  await fsp.mkdir(path.join(dir, "logs"), { recursive: true });
  const port = await freePort();
  // As root, nginx's workers run as nobody, who cannot read a private temp dir.
  const user = process.getuid?.() === 0 ? "user root;\n" : "";
  const conf = `
${user}worker_processes ${workers};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy_temp;
  fastcgi_temp_path ${dir}/fastcgi_temp;
  uwsgi_temp_path ${dir}/uwsgi_temp;
  scgi_temp_path ${dir}/scgi_temp;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 100000;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${port};
    root ${root};
  }
}
`;
  const confFile = path.join(dir, "nginx.conf");
  await fsp.writeFile(confFile, conf);
  const child: ChildProcess = spawn(
    NGINX,
    ["-p", dir, "-e", path.join(dir, "error.log"), "-c", confFile, "-g", "daemon off;"],
    { stdio: "ignore" },
  );
  const deadline = Date.now() + 10_000;
  let up = false;
  while (!up && Date.now() < deadline && child.exitCode === null) {
    up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (!up) await new Promise((r) => setTimeout(r, 50));
  }
  if (!up) {
    child.kill("SIGKILL");
    const log = await fsp.readFile(path.join(dir, "error.log"), "utf8").catch(() => "");
    throw new Error(`nginx did not start on port ${port}: ${log.slice(-2000)}`);
  }
  const master = child.pid!;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    port,
    pids: () => [master, ...children(master)],
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
        setTimeout(() => child.kill("SIGKILL"), 5000);
      }),
  };
}
