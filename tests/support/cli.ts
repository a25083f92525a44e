/** Running the haul CLI (deno run, bun or the compiled binary) as a child process. */
import { type ChildProcess, spawn } from "node:child_process";
import { Buffer } from "node:buffer";
import * as path from "node:path";
import process from "node:process";
import { REPO_ROOT } from "./util.ts";

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

/**
 * The port `haul serve --addr 127.0.0.1:0` says it listens on (its stderr line `… on
 * http://127.0.0.1:PORT/v2/`), polled every 25 ms for up to `timeoutMs`; 0 if it exited first.
 */
export async function servePort(child: CliChild, timeoutMs = 20_000): Promise<number> {
  for (let waited = 0; waited < timeoutMs && child.exitCode === null; waited += 25) {
    const m = /on http:\/\/127\.0\.0\.1:(\d+)\/v2\//.exec(child.output().stderr);
    if (m) return Number(m[1]);
    await new Promise((r) => setTimeout(r, 25));
  }
  return 0;
}

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
