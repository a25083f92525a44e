/**
 * End-to-end test harness for haul: real registries (Debian's `docker-registry`,
 * distribution 2.8.2) on loopback, a Docker token server, fixture builders, an
 * independent pusher, and helpers to run the CLI.
 *
 * Nothing here imports lib/: the fixtures and the pusher are the oracle the CLI
 * is checked against, so they must not share its bugs. Only Web APIs and `node:`
 * built-ins are used so the harness runs under Deno and Bun.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import * as https from "node:https";
import * as net from "node:net";
import { Buffer } from "node:buffer";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

/** The repository root (the folder holding main.ts), derived from this file's location. */
export const REPO_ROOT: string = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

const MiB = 1024 * 1024;
/** Blobs at least this large live in temp files instead of memory. */
export const FILE_BACKED_THRESHOLD = 64 * MiB;
const PIECE = 8 * MiB;

export const MEDIA = {
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ollama: (kind: string): string => `application/vnd.ollama.image.${kind}`,
} as const;

// ---------------------------------------------------------------------------
// Small utilities

/** An unused loopback TCP port. There is a race until the caller binds it; startRegistry retries. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export function tmpDir(prefix: string): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), prefix.endsWith("-") ? prefix : `${prefix}-`));
}

export function sha256hex(data: Uint8Array): string {
  return crypto.createHash("sha256").update(data).digest("hex");
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolve(String(stdout));
    });
  });
}

async function tail(file: string, bytes = 4000): Promise<string> {
  try {
    const text = await fsp.readFile(file, "utf8");
    return text.slice(-bytes);
  } catch {
    return "(no log)";
  }
}

function b64url(data: Uint8Array | string): string {
  const buf = typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data);
  return buf.toString("base64").replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Waits for a child to exit; resolves at once if it already has. */
function waitExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

/** SIGTERM, then SIGKILL if the child has not exited after `graceMs`. */
async function terminate(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = waitExit(child);
  child.kill("SIGTERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs)));
  const late = await Promise.race([exited.then(() => false), timedOut]);
  clearTimeout(timer);
  if (late) {
    child.kill("SIGKILL");
    await exited;
  }
  // Deno may report a signalled child as exited before it is: make sure it is gone.
  try {
    if (child.pid) process.kill(child.pid, "SIGKILL");
  } catch {
    // already gone
  }
}

// ---------------------------------------------------------------------------
// Deterministic data

/**
 * Fills `words` with xorshift32 output starting from `state`; returns the next state,
 * so a stream of pieces continues the same sequence as one big buffer.
 */
function fillXorshift(words: Uint32Array, state: number): number {
  let x = state >>> 0;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  return x >>> 0;
}

function seedState(seed: number): number {
  // Mix the seed so that nearby seeds diverge at once; never zero (xorshift's fixed point).
  let h = (Math.imul((seed | 0) ^ 0x9e3779b9, 0x85ebca6b) ^ 0xc2b2ae35) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x27d4eb2d) >>> 0;
  return h === 0 ? 0x6d2b79f5 : h;
}

/** Pseudo-random bytes, identical for the same (size, seed); ~1 GB/s. */
export function deterministicBytes(size: number, seed: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(size / 4));
  fillXorshift(words, seedState(seed));
  return new Uint8Array(words.buffer, 0, size);
}

/**
 * Writes `deterministicBytes(size, seed)` to `file` in 8 MiB pieces (never holding it all),
 * hashing on the way.
 */
export async function writeDeterministicFile(
  file: string,
  size: number,
  seed: number,
): Promise<{ digest: string; size: number }> {
  const fh = await fsp.open(file, "w");
  try {
    const hash = crypto.createHash("sha256");
    const words = new Uint32Array(PIECE / 4);
    let state = seedState(seed);
    for (let off = 0; off < size; off += PIECE) {
      state = fillXorshift(words, state);
      const piece = new Uint8Array(words.buffer, 0, Math.min(PIECE, size - off));
      hash.update(piece);
      let done = 0;
      while (done < piece.length) {
        const { bytesWritten } = await fh.write(piece, done, piece.length - done);
        done += bytesWritten;
      }
    }
    return { digest: `sha256:${hash.digest("hex")}`, size };
  } finally {
    await fh.close();
  }
}

/** Synchronous twin of writeDeterministicFile, for the synchronous fixture builders. */
function writeDeterministicFileSync(file: string, size: number, seed: number): string {
  const fd = fs.openSync(file, "w");
  try {
    const hash = crypto.createHash("sha256");
    const words = new Uint32Array(PIECE / 4);
    let state = seedState(seed);
    for (let off = 0; off < size; off += PIECE) {
      state = fillXorshift(words, state);
      const piece = new Uint8Array(words.buffer, 0, Math.min(PIECE, size - off));
      hash.update(piece);
      let done = 0;
      while (done < piece.length) done += fs.writeSync(fd, piece, done, piece.length - done);
    }
    return `sha256:${hash.digest("hex")}`;
  } finally {
    fs.closeSync(fd);
  }
}

/** SHA-256 of a file, streamed. */
export async function sha256File(file: string): Promise<string> {
  const fh = await fsp.open(file, "r");
  try {
    const hash = crypto.createHash("sha256");
    const buf = new Uint8Array(PIECE);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
    }
    return hash.digest("hex");
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------
// Fixtures

export interface FixtureBlob {
  digest: string;
  size: number;
  mediaType: string;
  /** In-memory content (blobs under 64 MiB). */
  data?: Uint8Array;
  /** Temp file holding the content (blobs of 64 MiB and more). */
  path?: string;
}

export interface Fixture {
  manifest: Uint8Array;
  manifestDigest: string;
  mediaType: string;
  /** Config first, then layers in manifest order. */
  blobs: FixtureBlob[];
  /** Removes temp files of file-backed blobs (present only when there are some). */
  cleanup?: () => Promise<void>;
}

export interface FixtureOptions {
  layerSizes: number[];
  seed?: number;
  /** Where file-backed blobs go; default a fresh temp dir (removed by `cleanup`). */
  dir?: string;
}

const OLLAMA_KINDS = ["model", "template", "license", "params", "system", "messages", "adapter"];

/** Builds layer blobs: small ones in memory, large ones in files. */
function buildLayers(opts: FixtureOptions, mediaTypeOf: (i: number) => string) {
  const seed = opts.seed ?? 1;
  let dir: string | undefined;
  let ownDir = false;
  const layers: FixtureBlob[] = opts.layerSizes.map((size, i) => {
    const layerSeed = seed * 1009 + i + 1;
    const mediaType = mediaTypeOf(i);
    if (size >= FILE_BACKED_THRESHOLD) {
      if (!dir) {
        dir = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "haul-fixture-"));
        ownDir = !opts.dir;
      }
      const file = path.join(dir, `layer-${seed}-${i}-${size}.bin`);
      return {
        digest: writeDeterministicFileSync(file, size, layerSeed),
        size,
        mediaType,
        path: file,
      };
    }
    const data = deterministicBytes(size, layerSeed);
    return { digest: `sha256:${sha256hex(data)}`, size, mediaType, data };
  });
  const cleanup = dir === undefined ? undefined : async () => {
    for (const l of layers) if (l.path) await fsp.rm(l.path, { force: true });
    if (ownDir && dir) await fsp.rm(dir, { recursive: true, force: true });
  };
  return { layers, cleanup };
}

function jsonBlob(value: unknown, mediaType: string): FixtureBlob {
  const data = new TextEncoder().encode(JSON.stringify(value));
  return { digest: `sha256:${sha256hex(data)}`, size: data.length, mediaType, data };
}

function finish(
  mediaType: string,
  config: FixtureBlob,
  layers: FixtureBlob[],
  cleanup: (() => Promise<void>) | undefined,
  extra: Record<string, unknown> = {},
): Fixture {
  const desc = (b: FixtureBlob) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
  const manifest = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType,
    config: desc(config),
    layers: layers.map(desc),
    ...extra,
  }));
  const fx: Fixture = {
    manifest,
    manifestDigest: `sha256:${sha256hex(manifest)}`,
    mediaType,
    blobs: [config, ...layers],
  };
  if (cleanup) fx.cleanup = cleanup;
  return fx;
}

/**
 * An Ollama-style model: Docker schema2 manifest, a small Ollama-like config, the first layer
 * `application/vnd.ollama.image.model`, then template/license/params/… layers.
 */
export function makeOllamaModel(opts: FixtureOptions): Fixture {
  const { layers, cleanup } = buildLayers(
    opts,
    (i) => MEDIA.ollama(OLLAMA_KINDS[i % OLLAMA_KINDS.length]),
  );
  const config = jsonBlob({
    model_format: "gguf",
    model_family: "llama",
    model_families: ["llama"],
    model_type: "1B",
    file_type: "Q4_K_M",
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
  }, MEDIA.dockerConfig);
  return finish(MEDIA.dockerManifest, config, layers, cleanup);
}

/** An OCI image: OCI manifest and config, tar+gzip layers (arbitrary bytes). */
export function makeOciImage(
  opts: FixtureOptions & { annotations?: Record<string, string> },
): Fixture {
  const { layers, cleanup } = buildLayers(opts, () => MEDIA.ociLayerGzip);
  const config = jsonBlob({
    architecture: "amd64",
    os: "linux",
    config: { Cmd: ["/bin/sh"] },
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
  }, MEDIA.ociConfig);
  const extra = opts.annotations ? { annotations: opts.annotations } : {};
  return finish(MEDIA.ociManifest, config, layers, cleanup, extra);
}

// ---------------------------------------------------------------------------
// Keys and certificates

export interface KeyPair {
  keyFile: string;
  certFile: string;
}

const ecKey = (file: string) =>
  run("openssl", [
    "genpkey",
    "-algorithm",
    "EC",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-out",
    file,
  ]);

/**
 * A self-signed EC P-256 certificate and its key, for signing tokens: the registry's
 * rootcertbundle holds the certificate itself.
 */
export async function makeCert(dir: string, name = "cert"): Promise<KeyPair> {
  const keyFile = path.join(dir, `${name}.key`);
  const certFile = path.join(dir, `${name}.crt`);
  await ecKey(keyFile);
  await run("openssl", [
    "req",
    "-new",
    "-x509",
    "-key",
    keyFile,
    "-out",
    certFile,
    "-days",
    "3650",
    "-subj",
    `/CN=haul-test-${name}`,
  ]);
  return { keyFile, certFile };
}

/**
 * A server certificate (SAN 127.0.0.1, ::1, localhost) signed by a fresh CA, for `tls`.
 * Clients trust `caFile`; rustls (Deno's fetch) refuses a CA certificate used as the server's own.
 */
export async function makeTlsCert(
  dir: string,
  name = "tls",
): Promise<KeyPair & { caFile: string }> {
  const caKey = path.join(dir, `${name}-ca.key`);
  const caFile = path.join(dir, `${name}-ca.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const certFile = path.join(dir, `${name}.crt`);
  const ext = path.join(dir, `${name}.ext`);
  await ecKey(caKey);
  await run("openssl", [
    "req",
    "-new",
    "-x509",
    "-key",
    caKey,
    "-out",
    caFile,
    "-days",
    "3650",
    "-subj",
    `/CN=haul-test-${name}-ca`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  await ecKey(keyFile);
  await run("openssl", ["req", "-new", "-key", keyFile, "-out", csr, "-subj", "/CN=127.0.0.1"]);
  await fsp.writeFile(
    ext,
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth",
      "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
    ].join("\n") + "\n",
  );
  await run("openssl", [
    "x509",
    "-req",
    "-in",
    csr,
    "-CA",
    caFile,
    "-CAkey",
    caKey,
    "-CAcreateserial",
    "-out",
    certFile,
    "-days",
    "3650",
    "-extfile",
    ext,
  ]);
  return { keyFile, certFile, caFile };
}

// ---------------------------------------------------------------------------
// Token server

export interface TokenRequest {
  scope: string[];
  user?: string;
  method: string;
  /** What the issued token grants, "type:name:actions" (absent when the request failed). */
  granted?: string[];
  status: number;
}

export interface TokenServer {
  url: string;
  requests: TokenRequest[];
  failNext(n: number, status?: number): void;
  stop(): Promise<void>;
}

export interface TokenServerOptions {
  service: string;
  issuer: string;
  keyFile: string;
  certFile: string;
  users: Record<string, string>;
  /** Anonymous clients get `pull` (default true). */
  anonymousPull?: boolean;
  /** Token lifetime in seconds (default 300). */
  expiresIn?: number;
}

interface Access {
  type: string;
  name: string;
  actions: string[];
}

/** "repository:ns/name:pull,push" → Access; the name is what lies between first and last colon. */
function parseScope(scope: string): Access | undefined {
  const first = scope.indexOf(":");
  const last = scope.lastIndexOf(":");
  if (first < 0 || last <= first) return undefined;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope.slice(last + 1).split(",").filter((a) => a !== ""),
  };
}

/**
 * A Docker token server (the `auth.token` realm), signing ES256 JWTs with the key whose
 * certificate the registry trusts. The x5c header carries that certificate: distribution 2.8
 * verifies the chain in x5c against its rootcertbundle and then the signature with the leaf key.
 */
export async function startTokenServer(opts: TokenServerOptions): Promise<TokenServer> {
  const key = crypto.createPrivateKey(await fsp.readFile(opts.keyFile));
  const certPem = await fsp.readFile(opts.certFile, "utf8");
  const certDer = certPem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, "");
  const isEc = key.asymmetricKeyType === "ec";
  const header = b64url(
    JSON.stringify({ typ: "JWT", alg: isEc ? "ES256" : "RS256", x5c: [certDer] }),
  );
  const anonymousPull = opts.anonymousPull ?? true;
  const expiresIn = opts.expiresIn ?? 300;
  const requests: TokenRequest[] = [];
  const refreshTokens = new Map<string, string>();
  let failures = 0;
  let failStatus = 500;

  const sign = (sub: string, access: Access[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: opts.issuer,
      sub,
      aud: opts.service,
      exp: now + expiresIn,
      nbf: now - 5,
      iat: now,
      jti: crypto.randomUUID(),
      access,
    };
    const input = `${header}.${b64url(JSON.stringify(claims))}`;
    const sig = crypto.sign(
      "sha256",
      Buffer.from(input),
      isEc ? { key, dsaEncoding: "ieee-p1363" } : key,
    );
    return `${input}.${b64url(sig)}`;
  };

  const grant = (user: string | undefined, scopes: string[]): Access[] => {
    const out: Access[] = [];
    for (const s of scopes) {
      const a = parseScope(s);
      if (!a) continue;
      const actions = user !== undefined
        ? a.actions
        : anonymousPull && a.type === "repository"
        ? a.actions.filter((x) => x === "pull")
        : [];
      out.push({ ...a, actions });
    }
    return out;
  };

  const send = (
    res: http.ServerResponse,
    status: number,
    body: unknown,
    extra: Record<string, string> = {},
  ) => {
    const text = JSON.stringify(body);
    // Connection: close so stop() never waits on an idle keep-alive connection.
    res.writeHead(status, {
      "content-type": "application/json",
      "content-length": String(Buffer.byteLength(text)),
      connection: "close",
      ...extra,
    });
    res.end(text);
  };

  const handle = (req: http.IncomingMessage, res: http.ServerResponse, body: string) => {
    const url = new URL(req.url ?? "/", "http://token.invalid");
    const method = req.method ?? "GET";
    let scopes = url.searchParams.getAll("scope").flatMap((s) => s.split(" ")).filter(Boolean);
    const record: TokenRequest = { scope: scopes, method, status: 0 };
    requests.push(record);
    if (failures > 0) {
      failures--;
      record.status = failStatus;
      return send(res, failStatus, {
        errors: [{ code: "UNAVAILABLE", message: "injected failure" }],
      });
    }

    let user: string | undefined;
    let password: string | undefined;
    let refreshUser: string | undefined;
    let isPost = false;
    if (method === "POST") {
      // OAuth2 variant: form body, scopes space-separated.
      isPost = true;
      const form = new URLSearchParams(body);
      scopes = (form.get("scope") ?? "").split(" ").filter(Boolean);
      record.scope = scopes;
      const grantType = form.get("grant_type");
      if (grantType === "password") {
        user = form.get("username") ?? "";
        password = form.get("password") ?? "";
      } else if (grantType === "refresh_token") {
        refreshUser = refreshTokens.get(form.get("refresh_token") ?? "");
        if (refreshUser === undefined) {
          record.status = 401;
          return send(res, 401, { error: "invalid_grant" });
        }
      } else {
        record.status = 400;
        return send(res, 400, { error: "unsupported_grant_type" });
      }
    } else if (method === "GET") {
      const auth = req.headers.authorization ?? "";
      const m = /^Basic\s+(\S+)$/i.exec(auth);
      if (m) {
        const decoded = Buffer.from(m[1], "base64").toString("utf8");
        const colon = decoded.indexOf(":");
        user = colon < 0 ? decoded : decoded.slice(0, colon);
        password = colon < 0 ? "" : decoded.slice(colon + 1);
      }
    } else {
      record.status = 405;
      return send(res, 405, { error: "method not allowed" });
    }

    if (user !== undefined) {
      record.user = user;
      if (!Object.hasOwn(opts.users, user) || opts.users[user] !== password) {
        record.status = 401;
        return send(res, 401, { errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] }, {
          "www-authenticate": 'Basic realm="haul-test-token"',
        });
      }
    }
    const subject = user ?? refreshUser;
    if (refreshUser !== undefined) record.user = refreshUser;
    const access = grant(subject, scopes);
    record.granted = access.map((a) => `${a.type}:${a.name}:${a.actions.join(",")}`);
    record.status = 200;
    const token = sign(subject ?? "", access);
    const out: Record<string, unknown> = {
      token,
      access_token: token,
      expires_in: expiresIn,
      issued_at: new Date().toISOString(),
    };
    if (isPost && subject !== undefined) {
      const refresh = crypto.randomUUID();
      refreshTokens.set(refresh, subject);
      out.refresh_token = refresh;
    }
    send(res, 200, out);
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => handle(req, res, Buffer.concat(chunks).toString("utf8")));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  let stopped = false;
  return {
    url: `http://127.0.0.1:${port}/token`,
    requests,
    failNext(n: number, status = 500) {
      failures = n;
      failStatus = status;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      });
    },
  };
}

// ---------------------------------------------------------------------------
// Registry

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

// ---------------------------------------------------------------------------
// Independent pusher

export interface PushOptions {
  /** Inject a fetch (e.g. one trusting a test CA for TLS registries). */
  fetch?: typeof fetch;
}

type BodyFactory = () => BodyInit | null;

// Our buffers never sit on a SharedArrayBuffer, which is all the DOM typing guards against.
const asBody = (u: Uint8Array): BodyInit => u as Uint8Array<ArrayBuffer>;

/** `key="value"` pairs of a WWW-Authenticate challenge, with its scheme. */
export function parseChallenge(header: string): { scheme: string; params: Record<string, string> } {
  const m = /^\s*(\S+)\s*(.*)$/.exec(header);
  const params: Record<string, string> = {};
  if (!m) return { scheme: "", params };
  for (const p of m[2].matchAll(/([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g)) {
    params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, "$1") : p[3];
  }
  return { scheme: m[1].toLowerCase(), params };
}

/** A file streamed in 8 MiB pieces, so multi-GiB blobs never sit in memory. */
function fileStream(file: string): ReadableStream<Uint8Array> {
  let fh: fsp.FileHandle | undefined;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      fh ??= await fsp.open(file, "r");
      const buf = new Uint8Array(PIECE);
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) {
        await fh.close();
        fh = undefined;
        controller.close();
      } else {
        controller.enqueue(buf.subarray(0, bytesRead));
      }
    },
    async cancel() {
      await fh?.close();
      fh = undefined;
    },
  });
}

/** One registry conversation with its own credentials and current Authorization header. */
class Pusher {
  private authorization: string | undefined;
  constructor(
    private readonly base: string,
    private readonly creds: { user: string; pass: string } | undefined,
    private readonly doFetch: typeof fetch,
  ) {}

  private basic(): string | undefined {
    if (!this.creds) return undefined;
    return `Basic ${Buffer.from(`${this.creds.user}:${this.creds.pass}`).toString("base64")}`;
  }

  private async authenticate(challenge: string): Promise<void> {
    const { scheme, params } = parseChallenge(challenge);
    if (scheme === "basic") {
      const basic = this.basic();
      if (!basic) throw new Error("registry wants Basic auth and no credentials were given");
      this.authorization = basic;
      return;
    }
    if (scheme !== "bearer" || !params.realm) {
      throw new Error(`unsupported challenge: ${challenge}`);
    }
    const u = new URL(params.realm);
    if (params.service) u.searchParams.set("service", params.service);
    for (const s of (params.scope ?? "").split(" ").filter(Boolean)) {
      u.searchParams.append("scope", s);
    }
    const headers: Record<string, string> = {};
    const basic = this.basic();
    if (basic) headers.authorization = basic;
    const res = await this.doFetch(u, { headers });
    const text = await res.text();
    if (!res.ok) throw new Error(`token request ${u} → ${res.status}: ${text}`);
    const body = JSON.parse(text) as { token?: string; access_token?: string };
    const tok = body.token ?? body.access_token;
    if (!tok) throw new Error(`token response without a token: ${text}`);
    this.authorization = `Bearer ${tok}`;
  }

  /** Sends once; on 401 authenticates from the challenge and sends again with a fresh body. */
  async send(
    method: string,
    url: string | URL,
    headers: Record<string, string>,
    body?: BodyFactory,
  ) {
    for (let attempt = 0;; attempt++) {
      const h: Record<string, string> = { ...headers };
      if (this.authorization) h.authorization = this.authorization;
      const b = body ? body() : null;
      const init: RequestInit & { duplex?: "half" } = { method, headers: h, body: b };
      if (b instanceof ReadableStream) init.duplex = "half";
      const res = await this.doFetch(new URL(url, this.base), init);
      if (res.status === 401 && attempt === 0) {
        const challenge = res.headers.get("www-authenticate") ?? "";
        await res.body?.cancel();
        await this.authenticate(challenge);
        continue;
      }
      return res;
    }
  }
}

async function expectStatus(res: Response, ok: number[], what: string): Promise<void> {
  if (ok.includes(res.status)) {
    await res.body?.cancel();
    return;
  }
  throw new Error(`${what} → ${res.status}: ${await res.text()}`);
}

/**
 * Pushes a fixture without lib/: HEAD each blob, monolithic upload (POST then PUT ?digest=) of
 * the missing ones, then PUT the manifest with its media type. Handles Basic and token auth.
 */
export async function pushFixture(
  registry: { url: string },
  repo: string,
  tag: string,
  fx: Fixture,
  auth?: { user: string; pass: string },
  opts: PushOptions = {},
): Promise<void> {
  const p = new Pusher(registry.url, auth, opts.fetch ?? fetch);
  for (const blob of fx.blobs) {
    const head = await p.send("HEAD", `/v2/${repo}/blobs/${blob.digest}`, {});
    await head.body?.cancel();
    if (head.status === 200) continue;
    const post = await p.send("POST", `/v2/${repo}/blobs/uploads/`, { "content-length": "0" });
    const location = post.headers.get("location");
    await expectStatus(post, [202], `POST upload for ${blob.digest}`);
    if (!location) throw new Error("upload POST without Location");
    const put = new URL(location, registry.url);
    put.searchParams.set("digest", blob.digest);
    const data = blob.data;
    const file = blob.path;
    const headers: Record<string, string> = { "content-type": "application/octet-stream" };
    let body: BodyFactory;
    if (data) {
      headers["content-length"] = String(data.length);
      body = () => asBody(data);
    } else if (file) {
      body = () => fileStream(file);
    } else {
      throw new Error(`blob ${blob.digest} has neither data nor path`);
    }
    await expectStatus(await p.send("PUT", put, headers, body), [201], `PUT blob ${blob.digest}`);
  }
  const manifest = fx.manifest;
  const res = await p.send("PUT", `/v2/${repo}/manifests/${tag}`, {
    "content-type": fx.mediaType,
  }, () => asBody(manifest));
  await expectStatus(res, [201], `PUT manifest ${repo}:${tag}`);
}

// ---------------------------------------------------------------------------
// Running the CLI

export interface CliOptions {
  runtime?: "deno" | "bun";
  /** Run this executable (e.g. a compiled binary) instead of main.ts under a runtime. */
  bin?: string;
  /** Added to the inherited environment. */
  env?: Record<string, string>;
  cwd?: string;
  /** Default 120000; the child is killed with SIGKILL when it expires. */
  timeoutMs?: number;
  stdin?: string;
}

export interface CliResult {
  /** Exit code; 128+signal number when killed by a signal. */
  code: number;
  signal: string | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** A running CLI: a ChildProcess whose output is being collected. */
export type CliChild = ChildProcess & {
  /** Resolves when the process exits and its output streams have closed. */
  result: Promise<CliResult>;
  /** Output so far. */
  output(): { stdout: string; stderr: string };
};

const inDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
const inBun = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";

function cliCommand(args: string[], opts: CliOptions): [string, string[]] {
  if (opts.bin) return [opts.bin, args];
  const main = path.join(REPO_ROOT, "main.ts");
  if ((opts.runtime ?? "deno") === "bun") {
    return [inBun ? process.execPath : "bun", [main, ...args]];
  }
  // Under Deno use our own binary: the npm `deno` shim adds a Node start per run.
  return [inDeno ? process.execPath : "deno", ["run", "-A", main, ...args]];
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** Spawns the CLI and collects its output; kill it yourself (e.g. SIGKILL) and await `result`. */
export function spawnCli(args: string[], opts: CliOptions = {}): CliChild {
  const [cmd, argv] = cliCommand(args, opts);
  const child = spawn(cmd, argv, {
    cwd: opts.cwd,
    env: { ...process.env, NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...opts.env },
    stdio: [opts.stdin !== undefined ? "pipe" : "ignore", "pipe", "pipe"],
    // Own process group, so a timeout also kills whatever the CLI started.
    detached: true,
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on("data", (c: Buffer) => out.push(c));
  child.stderr?.on("data", (c: Buffer) => err.push(c));
  if (opts.stdin !== undefined && child.stdin) {
    child.stdin.on("error", () => {}); // the CLI may exit without reading stdin
    child.stdin.end(opts.stdin);
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      if (child.pid) process.kill(-child.pid, "SIGKILL");
    } catch {
      child.kill("SIGKILL");
    }
  }, opts.timeoutMs ?? 120_000);
  const text = () => ({
    stdout: Buffer.concat(out).toString("utf8"),
    stderr: Buffer.concat(err).toString("utf8"),
  });
  const result = new Promise<CliResult>((resolve, reject) => {
    let exit: { code: number | null; signal: string | null } | undefined;
    let done = false;
    let grace: ReturnType<typeof setTimeout> | undefined;
    const finish = () => {
      if (done || !exit) return;
      done = true;
      clearTimeout(timer);
      clearTimeout(grace);
      const { code, signal } = exit;
      resolve({
        code: code ?? 128 + (signal ? SIGNALS[signal] ?? 0 : 0),
        signal,
        timedOut,
        ...text(),
      });
    };
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once("exit", (code: number | null, signal: string | null) => {
      exit = { code, signal };
      // Output may still be in the pipes: wait for "close", but not forever, since a
      // grandchild that survived a kill can hold the pipes open.
      grace = setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
        finish();
      }, 1000);
    });
    child.once("close", () => finish());
  });
  return Object.assign(child, { result, output: text });
}

/** Runs the CLI to completion (`deno run -A main.ts …`, `bun main.ts …`, or `opts.bin …`). */
export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  return spawnCli(args, opts).result;
}

// ---------------------------------------------------------------------------
// Comparing stores

/** Files at most this large are returned whole by readTree; larger ones as size + hash. */
export const READ_TREE_INLINE_MAX = MiB;

/**
 * Every regular file under `dir`, keyed by its relative POSIX path: small files as bytes, large
 * ones as `{ size, sha256 }`, so two stores compare with assert.deepEqual.
 */
export async function readTree(
  dir: string,
): Promise<Map<string, Uint8Array | { size: number; sha256: string }>> {
  const out = new Map<string, Uint8Array | { size: number; sha256: string }>();
  const walk = async (rel: string) => {
    const entries = await fsp.readdir(path.join(dir, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const full = path.join(dir, r);
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) {
        const st = await fsp.stat(full);
        if (st.size <= READ_TREE_INLINE_MAX) out.set(r, new Uint8Array(await fsp.readFile(full)));
        else out.set(r, { size: st.size, sha256: await sha256File(full) });
      }
    }
  };
  await walk("");
  return out;
}
