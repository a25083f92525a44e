/**
 * A real registry as a child process on loopback: Debian's docker-registry (distribution 2.8,
 * the default) or distribution 3's `registry` (the pinned build of scripts/go_peers.sh).
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import * as https from "node:https";
import * as path from "node:path";
import { makeCert, makeTlsCert } from "./certs.ts";
import { startTokenServer, type TokenServer } from "./token_server.ts";
import process from "node:process";
import { freePort, REPO_ROOT, run, sleep, tail, terminate, tmpDir } from "./util.ts";

/** Which registry: Debian's docker-registry 2.8 or distribution v3 (go_peers.sh's registry3). */
export type RegistryImpl = "distribution2" | "distribution3";

/** The implementations, with the name tests print. */
export const REGISTRY_IMPLS: readonly { impl: RegistryImpl; name: string }[] = [
  { impl: "distribution2", name: "distribution 2.8 (Debian)" },
  { impl: "distribution3", name: "distribution 3" },
];

let peersBin: Promise<string> | undefined;

/**
 * Path of a pinned Go peer built by scripts/go_peers.sh (`registry3`, `crane`, `oras`, ...):
 * `$envVar` when set (scripts/test.sh sets HAUL_REGISTRY3, HAUL_CRANE, HAUL_ORAS), else
 * go_peers.sh is run (it builds what is missing, once). Rejects when the peer cannot be had:
 * a test that needs it fails, it never skips.
 */
export function goPeer(name: string, envVar: string): Promise<string> {
  const given = process.env[envVar];
  const file = given ? Promise.resolve(given) : (peersBin ??= new Promise<string>(
    (resolve, reject) => {
      execFile(
        "bash",
        [path.join(REPO_ROOT, "scripts/go_peers.sh")],
        { maxBuffer: 1 << 20 },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`go_peers.sh failed: ${stderr || err.message}`));
          else resolve(stdout.trim().split("\n").pop()!);
        },
      );
    },
  )).then((bin) => path.join(bin, name));
  return file.then((f) => {
    if (!fs.existsSync(f)) throw new Error(`${name} is not available: no ${f} (${envVar})`);
    return f;
  }, (e) => {
    throw new Error(`${name} is not available: ${(e as Error).message}`);
  });
}

/** The command that serves a config file, for `impl`. */
async function registryCommand(impl: RegistryImpl): Promise<string> {
  return impl === "distribution3" ? await goPeer("registry3", "HAUL_REGISTRY3") : "docker-registry";
}

export interface Registry {
  /** http://127.0.0.1:PORT (https:// with tls). */
  url: string;
  /** 127.0.0.1:PORT */
  host: string;
  port: number;
  /** Which implementation this is. */
  impl: RegistryImpl;
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
  /** Default "distribution2" (Debian's docker-registry 2.8). */
  impl?: RegistryImpl;
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
  /**
   * With auth "token": the host the realm names instead of 127.0.0.1, e.g. "localhost" (crane
   * refuses a realm on a private IP literal other than the registry's own host:port).
   */
  realmHost?: string;
  /** Keep the temp dir after stop() (for post-mortems). */
  keepDir?: boolean;
}

export const TOKEN_SERVICE = "haul-test-registry";
export const TOKEN_ISSUER = "haul-test-issuer";

const q = (s: string) => JSON.stringify(s); // a JSON string is a valid YAML double-quoted scalar

function realmUrl(url: string, host?: string): string {
  if (!host) return url;
  const u = new URL(url);
  u.hostname = host;
  return u.href;
}

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
 * Starts `docker-registry serve` (or distribution 3's `registry serve`, with `impl`) on a free
 * loopback port with its own config (Debian's default one is broken) and waits for /v2/ to
 * answer 200 or 401. Both read the same config: distribution 3 kept 2.8's format for every key
 * written here (configuration/configuration.go), and its token auth still verifies an x5c
 * chain against rootcertbundle.
 */
export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const impl = opts.impl ?? "distribution2";
  const command = await registryCommand(impl);
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
        `    realm: ${q(realmUrl(token.url, opts.realmHost))}`,
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
        'exec "$0" serve "$1" >>"$2" 2>&1',
        command,
        configFile,
        logFile,
      ], {
        stdio: "ignore",
        // distribution 3 exports traces to localhost:4318 unless told not to.
        env: impl === "distribution3"
          ? { ...process.env, OTEL_TRACES_EXPORTER: "none" }
          : undefined,
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
          impl,
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
      throw new Error(`${command} did not answer on ${url} within 15 s; log tail:\n${log}`);
    }
  } catch (e) {
    await cleanup();
    throw e;
  }
}
