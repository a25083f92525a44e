/** Debian's docker-registry (distribution 2.8) as a child process on loopback. */
import { type ChildProcess, spawn } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import * as https from "node:https";
import * as path from "node:path";
import { makeCert, makeTlsCert } from "./certs.ts";
import { startTokenServer, type TokenServer } from "./token_server.ts";
import { freePort, run, sleep, tail, terminate, tmpDir } from "./util.ts";

export interface Registry {
  /** http://127.0.0.1:PORT (https:// with tls). */
  url: string;
  /** 127.0.0.1:PORT */
  host: string;
  port: number;
  /** Temp dir holding storage, config, keys and the log. */
  dir: string;
  /** The registry's storage root (filesystem driver). */
  storage: string;
  configFile: string;
  logFile: string;
  /** The token server, with auth "token". */
  token?: TokenServer;
  /** Users known to basic/token auth. */
  users: Record<string, string>;
  /** The certificate clients must trust, with tls. */
  caFile?: string;
  stop(): Promise<void>;
}

export interface RegistryOptions {
  auth?: "none" | "basic" | "token";
  /** Default `{ alice: "wonderland" }`. */
  users?: Record<string, string>;
  /** Pull-through cache of this remote registry URL. */
  proxyRemote?: string;
  /** Credentials the proxy uses towards its remote. */
  proxyAuth?: { user: string; pass: string };
  /** Serve https; `caFile` (see makeTlsCert) is what clients must trust, default certFile. */
  /** `true` makes a CA and server certificate in the registry's dir. */
  tls?: true | { certFile: string; keyFile: string; caFile?: string };
  /** With auth "token": anonymous pulls allowed (default true). */
  anonymousPull?: boolean;
  /** Keep the temp dir after stop() (for post-mortems). */
  keepDir?: boolean;
}

export const TOKEN_SERVICE = "haul-test-registry";
export const TOKEN_ISSUER = "haul-test-issuer";

const q = (s: string) => JSON.stringify(s); // a JSON string is a valid YAML double-quoted scalar

/** GET /v2/ once; resolves the status, or 0 when nothing answers yet. */
function probe(url: string, caFile?: string): Promise<number> {
  return new Promise((resolve) => {
    const u = new URL("/v2/", url);
    const onRes = (res: http.IncomingMessage) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
      res.on("error", () => resolve(0));
    };
    const req = u.protocol === "https:"
      ? https.get(u, { agent: false, ca: caFile ? fs.readFileSync(caFile) : undefined }, onRes)
      : http.get(u, { agent: false }, onRes);
    req.on("error", () => resolve(0));
    req.setTimeout(2000, () => req.destroy());
  });
}

/**
 * Starts `docker-registry serve` on a free loopback port with its own config (Debian's default
 * one is broken) and waits for /v2/ to answer 200 or 401.
 */
export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const auth = opts.auth ?? "none";
  const users = opts.users ?? { alice: "wonderland" };
  const dir = await tmpDir("haul-registry");
  const storage = path.join(dir, "storage");
  const configFile = path.join(dir, "config.yml");
  const logFile = path.join(dir, "registry.log");
  await fsp.mkdir(storage, { recursive: true });
  let token: TokenServer | undefined;
  let child: ChildProcess | undefined;
  let tls: { certFile: string; keyFile: string; caFile?: string } | undefined;
  const cleanup = async () => {
    if (child) await terminate(child);
    if (token) await token.stop();
    if (!opts.keepDir) await fsp.rm(dir, { recursive: true, force: true });
  };

  try {
    tls = opts.tls === true ? await makeTlsCert(dir) : opts.tls;
    const authLines: string[] = [];
    if (auth === "basic") {
      const lines: string[] = [];
      for (const [u, p] of Object.entries(users)) {
        lines.push((await run("htpasswd", ["-Bbn", u, p])).trim());
      }
      const htpasswd = path.join(dir, "htpasswd");
      await fsp.writeFile(htpasswd, lines.join("\n") + "\n");
      authLines.push(
        "auth:",
        "  htpasswd:",
        `    realm: ${q("haul-test")}`,
        `    path: ${q(htpasswd)}`,
      );
    } else if (auth === "token") {
      const keys = await makeCert(dir, "token");
      token = await startTokenServer({
        service: TOKEN_SERVICE,
        issuer: TOKEN_ISSUER,
        keyFile: keys.keyFile,
        certFile: keys.certFile,
        users,
        anonymousPull: opts.anonymousPull,
      });
      authLines.push(
        "auth:",
        "  token:",
        `    realm: ${q(token.url)}`,
        `    service: ${q(TOKEN_SERVICE)}`,
        `    issuer: ${q(TOKEN_ISSUER)}`,
        `    rootcertbundle: ${q(keys.certFile)}`,
      );
    }

    // The port may be taken between freePort() and the bind: retry a few times.
    for (let attempt = 1;; attempt++) {
      const port = await freePort();
      const config = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "storage:",
        "  filesystem:",
        `    rootdirectory: ${q(storage)}`,
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        `  addr: ${q(`127.0.0.1:${port}`)}`,
        `  secret: ${q(crypto.randomBytes(16).toString("hex"))}`,
        ...(tls
          ? [
            "  tls:",
            `    certificate: ${q(tls.certFile)}`,
            `    key: ${q(tls.keyFile)}`,
          ]
          : []),
        "health:",
        "  storagedriver:",
        "    enabled: false",
        ...authLines,
        ...(opts.proxyRemote
          ? [
            "proxy:",
            `  remoteurl: ${q(opts.proxyRemote)}`,
            ...(opts.proxyAuth
              ? [`  username: ${q(opts.proxyAuth.user)}`, `  password: ${q(opts.proxyAuth.pass)}`]
              : []),
          ]
          : []),
      ].join("\n") + "\n";
      await fsp.writeFile(configFile, config);
      await fsp.writeFile(logFile, "");
      // Redirection by the shell works the same under Deno and Bun; exec keeps the pid the registry's.
      child = spawn("sh", [
        "-c",
        'exec docker-registry serve "$1" >>"$2" 2>&1',
        "sh",
        configFile,
        logFile,
      ], {
        stdio: "ignore",
      });
      const scheme = tls ? "https" : "http";
      const url = `${scheme}://127.0.0.1:${port}`;
      const deadline = Date.now() + 15_000;
      let status = 0;
      while (Date.now() < deadline && child.exitCode === null && child.signalCode === null) {
        status = await probe(url, tls?.caFile ?? tls?.certFile);
        if (status === 200 || status === 401) break;
        await sleep(50);
      }
      if (status === 200 || status === 401) {
        const c = child;
        let stopped = false;
        return {
          url,
          host: `127.0.0.1:${port}`,
          port,
          dir,
          storage,
          configFile,
          logFile,
          token,
          users,
          caFile: tls ? (tls.caFile ?? tls.certFile) : undefined,
          async stop() {
            if (stopped) return;
            stopped = true;
            await terminate(c);
            await cleanup();
          },
        };
      }
      const log = await tail(logFile);
      await terminate(child);
      child = undefined;
      if (attempt < 3 && /address already in use/.test(log)) continue;
      throw new Error(`docker-registry did not answer on ${url} within 15 s; log tail:\n${log}`);
    }
  } catch (e) {
    await cleanup();
    throw e;
  }
}
