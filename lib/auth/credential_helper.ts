/**
 * Docker credential helpers (`docker-credential-<name> get|store|erase`): finding
 * one on PATH and running it with bounded time and output. The protocol's JSON
 * is read by credentials.ts (get) and login.ts (store, erase).
 */
import { spawn } from "node:child_process";
import { constants as fsConstants } from "node:fs";
import { access } from "node:fs/promises";
import { delimiter, join } from "node:path";
import process from "node:process";
import { AuthError } from "../errors.ts";

const HELPER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const MAX_HELPER_OUTPUT = 1 << 20;

export interface HelperRun {
  program: string;
  /** False when the helper is not on PATH. */
  found: boolean;
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface HelperRunOptions {
  env: Record<string, string | undefined>;
  /** Milliseconds before the helper is killed. */
  timeout: number;
  signal?: AbortSignal;
}

/** Runs `docker-credential-<name> <action>` with `input` on stdin. */
export async function runCredentialHelper(
  name: string,
  action: "get" | "store" | "erase",
  input: string,
  options: HelperRunOptions,
): Promise<HelperRun> {
  const program = `docker-credential-${name}`;
  if (!HELPER_NAME_RE.test(name)) {
    throw new AuthError(`Invalid credential helper name ${JSON.stringify(name)} in Docker config`);
  }
  const { env, timeout, signal } = options;
  const path = await findExecutable(program, env);
  const missing = { program, found: false, code: null, stdout: "", stderr: "" };
  if (path === undefined) return missing;
  const childEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) childEnv[k] = v;

  const result = await new Promise<HelperRun & { error?: unknown }>((resolve, reject) => {
    const child = spawn(path, [action], { env: childEnv, stdio: ["pipe", "pipe", "pipe"] });
    const stdout: Uint8Array[] = [];
    const stderr: Uint8Array[] = [];
    let size = 0;
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      fn();
    };
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      finish(() =>
        reject(new AuthError(`Credential helper ${program} timed out after ${timeout} ms`))
      );
    }, timeout);
    const onAbort = () => {
      child.kill("SIGKILL");
      finish(() => reject(signal?.reason));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    const collect = (into: Uint8Array[]) => (b: Uint8Array) => {
      size += b.length;
      if (size > MAX_HELPER_OUTPUT) {
        child.kill("SIGKILL");
        finish(() => reject(new AuthError(`Credential helper ${program} wrote too much output`)));
        return;
      }
      into.push(b);
    };
    child.stdout.on("data", collect(stdout));
    child.stderr.on("data", collect(stderr));
    child.stdin.on("error", () => {}); // the helper may exit before reading stdin
    child.stdin.end(input);
    child.on("error", (error) => finish(() => resolve({ ...missing, found: true, error })));
    child.on("close", (code) => {
      const decode = (c: Uint8Array[]) => new TextDecoder().decode(concat(c));
      finish(() =>
        resolve({ program, found: true, code, stdout: decode(stdout), stderr: decode(stderr) })
      );
    });
  });
  if (result.error !== undefined) {
    const code = (result.error as { code?: string }).code;
    if (code === "ENOENT") return missing; // removed between lookup and spawn
    throw new AuthError(`Cannot run credential helper ${program}: ${code ?? "spawn failed"}`, {
      cause: result.error,
    });
  }
  return result;
}

/** First line of a failed helper's output, unless it could carry a credential. */
export function helperDetail(output: string, secret?: string): string {
  const line = output.trim().split("\n")[0]?.trim() ?? "";
  if (line === "" || /[{}]|secret|password|token/i.test(line)) return "";
  if (secret && line.includes(secret)) return "";
  return `: ${line.length > 200 ? `${line.slice(0, 200)}…` : line}`;
}

/** The program's path on `env.PATH`, searched here so every runtime agrees. */
export async function findExecutable(
  program: string,
  env: Record<string, string | undefined>,
): Promise<string | undefined> {
  const windows = process.platform === "win32";
  const exts = windows ? [".exe"] : [""];
  for (const dir of (env.PATH ?? env.Path ?? "").split(delimiter)) {
    if (dir === "") continue;
    for (const ext of exts) {
      const candidate = join(dir, program + ext);
      try {
        await access(candidate, windows ? fsConstants.F_OK : fsConstants.X_OK);
        return candidate;
      } catch {
        // Not here; keep looking.
      }
    }
  }
  return undefined;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.length;
  }
  return all;
}
