/**
 * Stock Ollama as a test peer: `ollama serve` per test with its own HOME, OLLAMA_MODELS and
 * OLLAMA_HOST on a free loopback port, and the `ollama` client pointed at it, driven as users
 * drive it. The binary is the pinned build of scripts/go_peers.sh (github.com/ollama/ollama
 * v0.32.15); a test that needs it fails when it cannot be had, it never skips.
 */
import { execFile, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import { freePort, REPO_ROOT, sleep, tail, terminate, tmpDir } from "./util.ts";

let binary: Promise<string> | undefined;

/** Path of the stock `ollama` binary: $HAUL_OLLAMA, else built (once, cached) by go_peers.sh. */
export function ollamaBinary(): Promise<string> {
  binary ??= (async () => {
    const given = process.env.HAUL_OLLAMA;
    if (given) return given;
    const bin = await new Promise<string>((resolve, reject) => {
      execFile(
        "bash",
        [path.join(REPO_ROOT, "scripts/go_peers.sh")],
        { maxBuffer: 1 << 20 },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`stock ollama is not available: ${stderr || err.message}`));
          else resolve(stdout.trim().split("\n").pop()!);
        },
      );
    });
    const file = path.join(bin, "ollama");
    if (!fs.existsSync(file)) throw new Error(`stock ollama is not available: no ${file}`);
    return file;
  })();
  return binary;
}

export interface OllamaServer {
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** `127.0.0.1:<port>` (what OLLAMA_HOST holds) */
  host: string;
  /** OLLAMA_MODELS */
  models: string;
  /** HOME (holds .ollama/id_ed25519, made by ollama serve at first start) */
  home: string;
  /** The environment the daemon runs with; the client gets the same. */
  env: Record<string, string>;
  /** The daemon's process id (the bench counts its CPU). */
  pid: number | undefined;
  /** The daemon's log so far. */
  log(): Promise<string>;
  /** SIGTERM, then SIGKILL after 5 s; removes HOME (and the store when it made it). */
  stop(): Promise<void>;
}

export interface StartOllamaOptions {
  /** OLLAMA_MODELS; default a fresh temp dir (removed by stop). */
  models?: string;
  /** Extra environment (e.g. OLLAMA_NOPRUNE). */
  env?: Record<string, string>;
}

/** Starts `ollama serve` and waits until it answers `GET /api/version`. */
export async function startOllama(options: StartOllamaOptions = {}): Promise<OllamaServer> {
  const bin = await ollamaBinary();
  const home = await tmpDir("haul-ollama-home");
  const ownModels = !options.models;
  const models = options.models ?? await tmpDir("haul-ollama-models");
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: home,
    OLLAMA_MODELS: models,
    OLLAMA_HOST: host,
    ...options.env,
  };
  const logFile = path.join(home, "serve.log");
  const out = fs.openSync(logFile, "a");
  const child = spawn(bin, ["serve"], { env, stdio: ["ignore", out, out] });
  fs.closeSync(out);
  const url = `http://${host}`;
  const stop = async () => {
    await terminate(child);
    await fsp.rm(home, { recursive: true, force: true });
    if (ownModels) await fsp.rm(models, { recursive: true, force: true });
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) {
      const log = await tail(logFile);
      await stop();
      throw new Error(`ollama serve exited with ${child.exitCode}:\n${log}`);
    }
    const up = await fetch(`${url}/api/version`).then((r) => r.ok, () => false);
    if (up) break;
    if (Date.now() > deadline) {
      const log = await tail(logFile);
      await stop();
      throw new Error(`ollama serve did not answer on ${host} within 30 s:\n${log}`);
    }
    await sleep(100);
  }
  return {
    url,
    host,
    models,
    home,
    env,
    pid: child.pid,
    log: () => fsp.readFile(logFile, "utf8"),
    stop,
  };
}

export interface OllamaRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the `ollama` client against `server` (`pull --insecure HOST/ns/model`, `list`, `show`,
 * `rm`, `push`), with a time bound; `interruptAfterMs` sends SIGINT then, as a Ctrl-C does.
 */
export async function runOllama(
  server: OllamaServer,
  args: string[],
  options: { timeoutMs?: number; interruptAfterMs?: number } = {},
): Promise<OllamaRun> {
  const bin = await ollamaBinary();
  const child = spawn(bin, args, { env: server.env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const kill = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 300_000);
  const interrupt = options.interruptAfterMs === undefined
    ? undefined
    : setTimeout(() => child.kill("SIGINT"), options.interruptAfterMs);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.once("close", (c, s) => resolve([c, s]))
  );
  clearTimeout(kill);
  if (interrupt) clearTimeout(interrupt);
  return { code, signal, stdout, stderr };
}

/** `GET /api/tags`: the models the daemon lists (as `ollama list` does). */
export async function ollamaTags(
  server: OllamaServer,
): Promise<{ name: string; digest: string; size: number }[]> {
  const res = await fetch(`${server.url}/api/tags`);
  if (!res.ok) throw new Error(`GET /api/tags: HTTP ${res.status}`);
  return ((await res.json()) as { models: { name: string; digest: string; size: number }[] })
    .models;
}
