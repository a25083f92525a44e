/** haul serve */
import process from "node:process";
import { parseArgs } from "node:util";
import { readFile, stat } from "node:fs/promises";
import { NotFoundError, UsageError } from "../lib/errors.ts";
import {
  accessLogRecord,
  BasicAuth,
  checkTlsPem,
  CONNECTION_DEFAULTS,
  type ConnectionLimitEvent,
  type ConnectionLimits,
  createRegistryHandler,
  DEFAULT_PORT,
  DEFAULT_SHUTDOWN_TIMEOUT_MS,
  DEFAULT_TAG_TTL_MS,
  defaultModelsDir,
  type HttpServer,
  parseHtpasswd,
  PullThrough,
  type ResponseEntry,
  serve,
  type TlsPem,
  withBasicAuth,
} from "../lib/mod.ts";
import { type Command, parseDuration, parseNumber, parseSize } from "./common.ts";
import { commandSpec, formatFlags, parseOptions } from "./commands.ts";

const SERVE = commandSpec("serve");

export const SERVE_HELP = `Usage: haul ${SERVE.usage}

Shares a model store over HTTP as a read-only OCI registry, so that "haul pull",
skopeo and other registry clients can pull its models. Blobs stream from disk
(Range, ETag / If-None-Match); Ollama's chunksums endpoint is answered for every
blob and cached in DIR/.haul/chunksums. Anything that would write gets 405.

Options:
${formatFlags(SERVE)}

--addr: ":PORT" keeps the default host, port 0 picks a free one, IPv6 as
[::1]:PORT. A non-loopback address makes every model in the store readable by
anyone who can reach it (no auth): haul says so when it starts.

With --tls-cert and --tls-key haul serves HTTPS; clients that trust the
certificate's issuer (haul pull --ca-file CA.pem) need no --insecure. SIGHUP
rereads both files: new connections get the new certificate, open ones keep
theirs; a pair that does not load is logged and the old one kept.

With --upstream URL (repeatable) haul serve is a pull-through cache: a manifest
or blob the store lacks is fetched from the upstream into the store (verified,
with haul pull's downloader and the credentials haul pull would use for that
host), once however many clients ask at the same time, then served from disk.
A name whose first component is an upstream's host (127.0.0.1_5000/ns/m) goes
to that upstream; containerd's mirror query ?ns=HOST picks the upstream with
that host (ns=docker.io: the one at registry-1.docker.io); any other name goes
to the first --upstream. The store keeps what it
fetched under the upstream's host (manifests/HOST/ns/m/TAG). A tag is asked
upstream again once it is older than --tag-ttl (300ms, 30s, 5m, 1h; default
5m); digests and blobs never are. Upstream unreachable: what the store holds is
served, with a warning; what it lacks gets 502 with a registry error (404 when
the upstream has no such manifest). An image manifest is answered as soon as
it is resolved upstream, and its blobs are served while they land: a Range of
bytes already on disk at once, bytes still coming as they arrive; the blob's
last byte only once the whole blob is verified, so no client completes a blob
with bad bytes (a failed fetch gets a waiting client 502/404 JSON and cuts the
responses in flight). The model is in the store (manifest written last) when
its pull ends. An index is pulled whole first; a blob asked for on its own is
fetched alone before it is served.

With --htpasswd FILE every request needs Basic auth by a user of FILE, whose
entries are bcrypt as "htpasswd -B FILE USER" writes them (other hash kinds are
refused at start). Clients without valid credentials get 401 with
WWW-Authenticate: Basic realm="haul"; haul pull, Docker, containerd and skopeo
answer it from their stored credentials (haul login HOST, config.json). Stock
Ollama clients cannot: they answer only Bearer challenges with their own key.
A verified user:password is remembered, so a client's Range requests pay one
bcrypt check; SIGHUP rereads FILE. On a non-loopback address --htpasswd needs
--tls-cert/--tls-key (passwords would cross the network in clear) unless
--allow-insecure-auth.

Limits, so that no client can hold the server: a connection must send a whole
request head within --header-timeout (TLS handshake included; on a kept-alive
connection counted from the previous response, and at most --idle-timeout);
a response whose client takes no bytes for --idle-timeout is cut; beyond
--max-connections a new connection is closed at once (clients retry; haul pull
and Ollama do), with one log line when the cap is reached and one when it
clears. Memory stays bounded: about 1 MiB per connection streaming a blob.
SIGTERM or Ctrl-C stops accepting, closes idle connections and gives responses
in flight --shutdown-timeout to finish, then closes them; a second one exits
at once.

--log-format json writes every log line to stderr as one JSON object; each
request gets one: {"time","level","msg":"request","client","method","path",
"name","tag","digest","status","bytes","durationMs","complete"} (name, tag and
digest when the path has them; bytes is the body sent, complete false when the
connection closed first).

Names (after http://HOST:PORT/v2/) and the store entries they serve:
  library/llama3.2              manifests/registry.ollama.ai/library/llama3.2/<tag>
  llama3.2                      the same (Ollama's short form)
  127.0.0.1_5000/library/tiny   manifests/127.0.0.1:5000/library/tiny/<tag>
  registry.example.com/ns/m     manifests/registry.example.com/ns/m/<tag>
A model pulled from another registry keeps that registry's host as the first
component. Write host:port as host_port: ':' is not allowed in a repository
name (skopeo and docker refuse it); haul also accepts host:port from clients
that send it. GET /v2/_catalog lists every name.

Port ${DEFAULT_PORT} is Ollama's 11434 plus one: easy to remember, free of a running
Ollama daemon (11434) and of local registries (5000).

Examples:
  haul serve
  haul serve --addr 0.0.0.0:${DEFAULT_PORT} --models /srv/models     # share on the LAN
  haul pull --insecure 192.168.1.10:${DEFAULT_PORT}/llama3.2          # on another machine
  haul serve --addr 0.0.0.0:443 --tls-cert fullchain.pem --tls-key key.pem --log-format json
  haul pull --ca-file ca.pem https://models.lan/llama3.2
  haul serve --addr 0.0.0.0:${DEFAULT_PORT} --upstream https://registry.ollama.ai   # LAN cache
  ollama pull --insecure 192.168.1.10:${DEFAULT_PORT}/library/llama3.2
  skopeo copy --src-tls-verify=false \\
    docker://127.0.0.1:${DEFAULT_PORT}/library/llama3.2:latest dir:/tmp/llama3.2`;

/** Parses `HOST:PORT`, `:PORT`, `HOST`, `[IPv6]:PORT`; the port defaults to 11435. */
export function parseAddr(s: string): { hostname: string; port: number } {
  const fail = (why: string): never => {
    throw new UsageError(`--addr ${JSON.stringify(s)}: ${why} (expected HOST:PORT)`);
  };
  let hostname: string;
  let port: string | undefined;
  if (s.startsWith("[")) {
    const close = s.indexOf("]");
    if (close < 0) fail("unclosed '['");
    hostname = s.slice(1, close);
    const after = s.slice(close + 1);
    if (after !== "") {
      if (!after.startsWith(":")) fail("junk after ']'");
      port = after.slice(1);
    }
  } else if ((s.match(/:/g) ?? []).length > 1) {
    hostname = s; // a bare IPv6 address
  } else {
    const colon = s.indexOf(":");
    hostname = colon < 0 ? s : s.slice(0, colon);
    if (colon >= 0) port = s.slice(colon + 1);
  }
  if (hostname === "") hostname = "127.0.0.1";
  if (/[\s/\\@]/.test(hostname)) fail("invalid host");
  let n = DEFAULT_PORT;
  if (port !== undefined) {
    if (!/^[0-9]{1,5}$/.test(port) || Number(port) > 65535) fail("port must be 0-65535");
    n = Number(port);
  }
  return { hostname, port: n };
}

/** True for addresses only this machine can reach. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase();
  return h === "localhost" || /^127\.\d+\.\d+\.\d+$/.test(h) || h === "::1";
}

/** The warning printed when the address is reachable from other machines, else undefined. */
export function exposureWarning(
  hostname: string,
  port: number,
  modelsDir: string,
  tls = false,
  auth = false,
): string | undefined {
  if (isLoopbackHost(hostname)) return undefined;
  const shown = hostname.includes(":") ? `[${hostname}]` : hostname;
  if (auth) {
    return tls ? undefined : `listening on ${shown}:${port}, not loopback, with --htpasswd ` +
      `but without TLS (--allow-insecure-auth): passwords and models cross the network in clear`;
  }
  return `listening on ${shown}:${port}, not loopback: every model in ${modelsDir} is now ` +
    `readable from the network, without authentication${tls ? "" : " or TLS"}`;
}

/** Reads the --htpasswd file; refuses clear-text passwords off loopback. */
async function openAuth(flags: ServeFlags): Promise<BasicAuth> {
  const file = flags.htpasswd!;
  if (!flags.tlsFiles && !isLoopbackHost(flags.hostname) && !flags.allowInsecureAuth) {
    throw new UsageError(
      `--htpasswd on ${flags.hostname}, not loopback, needs --tls-cert and --tls-key ` +
        `(Basic auth sends passwords in clear); --allow-insecure-auth to serve it anyway`,
    );
  }
  return new BasicAuth(await readUsers(file));
}

async function readUsers(file: string): Promise<Map<string, string>> {
  const text = await readFile(file, "utf8").catch((err) => {
    throw new UsageError(`--htpasswd: cannot read ${file}: ${(err as Error).message}`);
  });
  return parseHtpasswd(text, file);
}

/** SIGHUP: rereads the users; a file that does not parse leaves the old table. */
async function reloadUsers(auth: BasicAuth, file: string, log: ServeLog): Promise<void> {
  try {
    const users = await readUsers(file);
    auth.setUsers(users);
    log.info(`SIGHUP: ${users.size} user(s) from ${file}`);
  } catch (err) {
    log.warn(`SIGHUP: kept the previous users: ${(err as Error).message}`);
  }
}

/** Where haul serve's lines go: stderr, as text or one JSON object per line. */
export interface ServeLog {
  info(message: string): void;
  warn(message: string): void;
  request(entry: ResponseEntry): void;
}

/** The log for `--log-format`; `verbose` logs requests in text too. */
export function serveLog(
  format: "text" | "json",
  verbose: boolean,
  write: (line: string) => void = (l) => void process.stderr.write(l),
): ServeLog {
  if (format === "json") {
    const line = (level: string, msg: string, extra?: object) =>
      write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...extra }) + "\n");
    return {
      info: (m) => line("info", m),
      warn: (m) => line("warn", m),
      request: (e) => {
        const { time: _, ...record } = accessLogRecord(e);
        line("info", "request", record);
      },
    };
  }
  const say = (m: string) => write(`haul serve: ${m}\n`);
  return {
    info: say,
    warn: (m) => say(`warning: ${m}`),
    request: (e) => {
      if (!verbose) return;
      const r = accessLogRecord(e);
      say(
        `${r.client}${r.user === undefined ? "" : ` (${r.user})`} ${r.method} ${r.path} ` +
          `${r.status} ${r.bytes} bytes ${r.durationMs} ms` +
          (r.complete ? "" : " (cut short)"),
      );
    },
  };
}

interface ServeFlags {
  hostname: string;
  port: number;
  modelsDir: string;
  chunkSize?: number;
  tlsFiles?: { cert: string; key: string };
  /** --upstream URLs, in order; none: read-only. */
  upstreams: string[];
  tagTtlMs: number;
  /** --htpasswd FILE; --allow-insecure-auth. */
  htpasswd?: string;
  allowInsecureAuth: boolean;
  limits: ConnectionLimits & { shutdownTimeoutMs: number };
  log: ServeLog;
}

/** Seconds (fractions allowed) as milliseconds; `fallback` when the flag is absent. */
function seconds(v: string | undefined, flag: string, fallback: number): number {
  const n = parseNumber(v, flag, 0);
  return n === undefined ? fallback : Math.round(n * 1000);
}

function parseServeFlags(values: Record<string, unknown>): ServeFlags {
  const str = (name: string) =>
    typeof values[name] === "string" ? values[name] as string : undefined;
  const { hostname, port } = parseAddr(str("addr") ?? `127.0.0.1:${DEFAULT_PORT}`);
  const chunk = str("chunk-size");
  const chunkSize = chunk === undefined ? undefined : parseSize(chunk, "--chunk-size");
  if (chunkSize !== undefined && chunkSize < 1 << 16) {
    throw new UsageError("--chunk-size: must be at least 64K");
  }
  const [cert, key] = [str("tls-cert"), str("tls-key")];
  if ((cert === undefined) !== (key === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together: pass both, or neither");
  }
  const format = str("log-format") ?? "text";
  if (format !== "text" && format !== "json") {
    throw new UsageError(`--log-format: expected text or json, got ${JSON.stringify(format)}`);
  }
  const max = parseNumber(str("max-connections"), "--max-connections", 0);
  if (max !== undefined && !Number.isInteger(max)) {
    throw new UsageError(`--max-connections: expected a whole number, got ${max}`);
  }
  const d = CONNECTION_DEFAULTS;
  return {
    hostname,
    port,
    chunkSize,
    modelsDir: str("models") ?? defaultModelsDir(),
    tlsFiles: cert !== undefined && key !== undefined ? { cert, key } : undefined,
    htpasswd: str("htpasswd"),
    allowInsecureAuth: values["allow-insecure-auth"] === true,
    upstreams: (values.upstream as string[] | undefined) ?? [],
    tagTtlMs: str("tag-ttl") === undefined
      ? DEFAULT_TAG_TTL_MS
      : parseDuration(str("tag-ttl")!, "--tag-ttl"),
    limits: {
      headerTimeoutMs: seconds(str("header-timeout"), "--header-timeout", d.headerTimeoutMs),
      idleTimeoutMs: seconds(str("idle-timeout"), "--idle-timeout", d.idleTimeoutMs),
      maxConnections: max ?? d.maxConnections,
      shutdownTimeoutMs: seconds(
        str("shutdown-timeout"),
        "--shutdown-timeout",
        DEFAULT_SHUTDOWN_TIMEOUT_MS,
      ),
    },
    log: serveLog(format, values.verbose === true),
  };
}

/** Reads and checks the certificate and key; a UsageError says which file is wrong. */
async function readTls(files: { cert: string; key: string }): Promise<TlsPem & { about: string }> {
  const read = (file: string, flag: string) =>
    readFile(file, "utf8").catch((err) => {
      throw new UsageError(`${flag}: cannot read ${file}: ${(err as Error).message}`);
    });
  const pem = {
    cert: await read(files.cert, "--tls-cert"),
    key: await read(files.key, "--tls-key"),
  };
  try {
    const { subject, validTo } = checkTlsPem(pem);
    return { ...pem, about: `${subject}, valid until ${validTo.toISOString()}` };
  } catch (err) {
    throw new UsageError(
      `--tls-cert ${files.cert} / --tls-key ${files.key}: ${(err as Error).message}`,
    );
  }
}

export const serveCommand: Command = async (args, signal) => {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...parseOptions(SERVE), upstream: { type: "string", multiple: true } },
  }) as { values: Record<string, unknown>; positionals: string[] };
  if (values.help) {
    console.log(SERVE_HELP);
    return;
  }
  if (positionals.length) {
    throw new UsageError(`serve: unexpected argument ${JSON.stringify(positionals[0])}`);
  }
  const flags = parseServeFlags(values);
  const { modelsDir, log, tlsFiles } = flags;
  const isDir = await stat(modelsDir).then((s) => s.isDirectory(), () => false);
  if (!isDir) {
    throw new NotFoundError(
      `Model store ${modelsDir} does not exist; pass --models DIR or set OLLAMA_MODELS`,
    );
  }
  const tls = tlsFiles ? await readTls(tlsFiles) : undefined;
  const auth = flags.htpasswd === undefined ? undefined : await openAuth(flags);
  // Streams and chunksums in flight end when the server has stopped, not at the signal.
  const stopped = new AbortController();
  const handler = createRegistryHandler({
    modelsDir,
    chunkSize: flags.chunkSize,
    signal: stopped.signal,
    upstream: flags.upstreams.length
      ? new PullThrough({
        upstreams: flags.upstreams,
        modelsDir,
        tagTtlMs: flags.tagTtlMs,
        signal: stopped.signal,
      })
      : undefined,
    logger: { warn: (m) => log.warn(m) },
  });
  const server = await serve(auth ? withBasicAuth(handler, auth) : handler, {
    hostname: flags.hostname,
    port: flags.port,
    signal,
    tls,
    ...flags.limits,
    onLimit: (e) => log.warn(limitMessage(e)),
    onResponse: (e) => log.request(e),
    onError: (err) => log.warn(`request failed: ${(err as Error)?.message ?? err}`),
  });
  const onHup = () => {
    void reloadTls(server, tlsFiles, log);
    if (auth) void reloadUsers(auth, flags.htpasswd!, log);
  };
  process.on("SIGHUP", onHup);
  try {
    announce(flags, server, tls?.about);
    await untilStopped(server, signal, flags.limits.shutdownTimeoutMs, log);
  } finally {
    process.off("SIGHUP", onHup);
    stopped.abort();
  }
};

function announce(flags: ServeFlags, server: HttpServer, certificate?: string): void {
  const { hostname, modelsDir, log, limits } = flags;
  const shown = hostname.includes(":") ? `[${hostname}]` : hostname;
  const exposed = exposureWarning(
    hostname,
    server.port,
    modelsDir,
    server.protocol === "https",
    flags.htpasswd !== undefined,
  );
  if (exposed) log.warn(exposed);
  if (certificate) log.info(`TLS certificate ${flags.tlsFiles?.cert}: ${certificate}`);
  const s = (ms: number) => (ms ? `${ms / 1000} s` : "off");
  log.info(
    `limits: request head ${s(limits.headerTimeoutMs ?? 0)}, idle ${
      s(limits.idleTimeoutMs ?? 0)
    }, ` +
      `${limits.maxConnections || "unlimited"} connections, shutdown ${
        s(limits.shutdownTimeoutMs)
      }`,
  );
  const mode = flags.upstreams.length
    ? `as a pull-through cache of ${flags.upstreams.join(", ")} (tags re-resolved after ${
      flags.tagTtlMs / 1000
    } s)`
    : "read-only";
  log.info(
    `serving ${modelsDir} ${mode} on ${server.protocol}://${shown}:${server.port}/v2/ ` +
      `(Ctrl-C to stop)`,
  );
}

function limitMessage(e: ConnectionLimitEvent): string {
  return e.reached
    ? `${e.open} connections open, the --max-connections cap: new connections are refused ` +
      `until some close`
    : `${e.open} connections open, under the --max-connections cap (${e.max}) again; ` +
      `${e.refused} were refused meanwhile`;
}

/** SIGHUP: rereads the certificate and key; a pair that does not load leaves the old one. */
async function reloadTls(
  server: HttpServer,
  files: { cert: string; key: string } | undefined,
  log: ServeLog,
): Promise<void> {
  if (!files) {
    log.info("SIGHUP: nothing to reload (no --tls-cert)");
    return;
  }
  try {
    const pem = await readTls(files);
    server.setTls(pem);
    log.info(`SIGHUP: new connections get the certificate in ${files.cert}: ${pem.about}`);
  } catch (err) {
    log.warn(`SIGHUP: kept the previous certificate: ${(err as Error).message}`);
  }
}

/**
 * Waits for the signal, then for the server's graceful shutdown (which closes what is still
 * open at its deadline); a second after the deadline the command returns regardless.
 */
async function untilStopped(
  server: HttpServer,
  signal: AbortSignal,
  shutdownMs: number,
  log: ServeLog,
): Promise<void> {
  const deadline = new Promise<void>((resolve) => {
    const start = () => {
      const open = server.connections;
      if (open) {
        log.info(
          `stopping: ${open} connection(s) open, responses in flight get ${shutdownMs / 1000} s`,
        );
      }
      setTimeout(resolve, shutdownMs + 1000);
    };
    if (signal.aborted) start();
    else signal.addEventListener("abort", start, { once: true });
  });
  await Promise.race([server.finished, deadline]);
  log.info("stopped");
}
