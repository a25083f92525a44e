/** haul serve */
import { stat } from "node:fs/promises";
import process from "node:process";
import { parseArgs } from "node:util";
import { NotFoundError, UsageError } from "../lib/errors.ts";
import { createRegistryHandler, DEFAULT_PORT, defaultModelsDir, serve } from "../lib/mod.ts";
import { type Command, parseSize } from "./common.ts";

export const SERVE_HELP = `Usage: haul serve [options]

Shares a model store over HTTP as a read-only OCI registry, so that "haul pull",
skopeo and other registry clients can pull its models. Blobs stream from disk
(Range, ETag / If-None-Match); Ollama's chunksums endpoint is answered for every
blob and cached in DIR/.haul/chunksums. Anything that would write gets 405.

Options:
  --addr HOST:PORT    listen address (default 127.0.0.1:${DEFAULT_PORT}); ":PORT" keeps
                      the default host, port 0 picks a free one, IPv6 as [::1]:PORT.
                      A non-loopback address makes every model in the store
                      readable by anyone who can reach it (no auth, no TLS):
                      haul says so when it starts.
  --models DIR        store root (default $OLLAMA_MODELS or ~/.ollama/models)
  --chunk-size SIZE   chunksums chunk size, e.g. 64M (default 64M)
  --verbose, -v       log every request to stderr
  -h, --help          this help

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
): string | undefined {
  if (isLoopbackHost(hostname)) return undefined;
  const shown = hostname.includes(":") ? `[${hostname}]` : hostname;
  return `listening on ${shown}:${port}, not loopback: every model in ${modelsDir} is now ` +
    `readable from the network, without authentication or TLS`;
}

export const serveCommand: Command = async (args, signal) => {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      addr: { type: "string" },
      models: { type: "string" },
      "chunk-size": { type: "string" },
      verbose: { type: "boolean", short: "v" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(SERVE_HELP);
    return;
  }
  if (positionals.length) {
    throw new UsageError(`serve: unexpected argument ${JSON.stringify(positionals[0])}`);
  }
  const { hostname, port } = parseAddr(values.addr ?? `127.0.0.1:${DEFAULT_PORT}`);
  const chunkSize = values["chunk-size"] === undefined
    ? undefined
    : parseSize(values["chunk-size"], "--chunk-size");
  if (chunkSize !== undefined && chunkSize < 1 << 16) {
    throw new UsageError("--chunk-size: must be at least 64K");
  }
  const modelsDir = values.models ?? defaultModelsDir();
  const isDir = await stat(modelsDir).then((s) => s.isDirectory(), () => false);
  if (!isDir) {
    throw new NotFoundError(
      `Model store ${modelsDir} does not exist; pass --models DIR or set OLLAMA_MODELS`,
    );
  }
  const say = (line: string) => process.stderr.write(`haul serve: ${line}\n`);
  const handler = createRegistryHandler({
    modelsDir,
    chunkSize,
    signal,
    logger: {
      warn: (m) => say(`warning: ${m}`),
      request: values.verbose
        ? (e) => say(`${e.method} ${e.path} ${e.status}${e.bytes ? ` ${e.bytes} bytes` : ""}`)
        : undefined,
    },
  });
  const server = await serve(handler, {
    hostname,
    port,
    signal,
    // Responses cut short by shutdown are expected, not worth a warning.
    onError: (err) => {
      if (!signal.aborted) say(`warning: request failed: ${(err as Error)?.message ?? err}`);
    },
  });
  const shown = hostname.includes(":") ? `[${hostname}]` : hostname;
  const exposed = exposureWarning(hostname, server.port, modelsDir);
  if (exposed) say(`warning: ${exposed}`);
  say(`serving ${modelsDir} read-only on http://${shown}:${server.port}/v2/ (Ctrl-C to stop)`);
  // Shutdown waits for the responses in flight; one to a client that stopped reading may not
  // end (Deno's server keeps it while the socket's buffers are full), so after a grace period
  // the command returns and the process exits with whatever is still open.
  await Promise.race([server.finished, graceAfter(signal, SHUTDOWN_GRACE_MS)]);
};

/** How long in-flight responses get after SIGTERM/SIGINT before the server is left. */
const SHUTDOWN_GRACE_MS = 2000;

function graceAfter(signal: AbortSignal, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const start = () => setTimeout(resolve, ms);
    if (signal.aborted) start();
    else signal.addEventListener("abort", start, { once: true });
  });
}
