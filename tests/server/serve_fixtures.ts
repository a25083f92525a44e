/**
 * Fixtures for `haul serve` tests, the demo and the load script: put a harness
 * fixture into an Ollama store layout, start `haul serve` as a subprocess and
 * read its port, and sample a process's resident memory. Like the harness, this
 * does not import lib/.
 */
import { createHash } from "node:crypto";
import { copyFile, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import * as path from "node:path";
import type { Fixture } from "../support/harness.ts";
import process from "node:process";
import { type CliChild, type CliOptions, REPO_ROOT, spawnCli } from "../support/harness.ts";

/** Where a model lives in the store. */
export interface StoreName {
  /** @default "registry.ollama.ai" */
  host?: string;
  /** e.g. `library/tiny` */
  repository: string;
  /** @default "latest" */
  tag?: string;
}

/**
 * Writes `fx` into `root` as Ollama does: `blobs/sha256-<hex>` and the manifest at
 * `manifests/<host>/<repository>/<tag>`. File-backed blobs are moved (`move: true`)
 * or copied. Returns the manifest's path.
 */
export async function storeFixture(
  root: string,
  name: StoreName,
  fx: Fixture,
  options: { move?: boolean } = {},
): Promise<string> {
  const blobs = path.join(root, "blobs");
  await mkdir(blobs, { recursive: true });
  for (const b of fx.blobs) {
    const dest = path.join(blobs, b.digest.replace(":", "-"));
    if (b.data) await writeFile(dest, b.data);
    else if (b.path && options.move) await rename(b.path, dest);
    else if (b.path) await copyFile(b.path, dest);
  }
  const manifest = path.join(
    root,
    "manifests",
    name.host ?? "registry.ollama.ai",
    ...name.repository.split("/"),
    name.tag ?? "latest",
  );
  await mkdir(path.dirname(manifest), { recursive: true });
  await writeFile(manifest, fx.manifest);
  return manifest;
}

/** A running `haul serve`. */
export interface ServeProcess {
  child: CliChild;
  port: number;
  /** `127.0.0.1:<port>` */
  host: string;
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** SIGTERM, wait; SIGKILL after 5 s. */
  stop(): Promise<void>;
}

/**
 * Starts `haul serve --addr 127.0.0.1:0 --models <root> [...extra]` and waits for the
 * line that names its port. `denoFlags` replaces `-A` (to run with narrower permissions).
 */
export async function startServe(
  root: string,
  options: CliOptions & { extra?: string[]; denoFlags?: string[] } = {},
): Promise<ServeProcess> {
  const args = ["serve", "--addr", "127.0.0.1:0", "--models", root, ...(options.extra ?? [])];
  const child = options.denoFlags
    ? spawnCli(["run", ...options.denoFlags, path.join(REPO_ROOT, "main.ts"), ...args], {
      timeoutMs: 600_000,
      ...options,
      bin: "deno" in globalThis ? process.execPath : "deno",
    })
    : spawnCli(args, { timeoutMs: 600_000, ...options });
  const deadline = Date.now() + 20_000;
  let port = 0;
  while (Date.now() < deadline) {
    const m = /on https?:\/\/127\.0\.0\.1:(\d+)\/v2\//.exec(child.output().stderr);
    if (m) {
      port = Number(m[1]);
      break;
    }
    if (child.exitCode !== null || child.signalCode !== null) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      // process.kill, not child.kill: Deno's ChildProcess.kill reports the exit at once.
      try {
        process.kill(child.pid, "SIGTERM");
      } catch {
        // already gone
      }
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await child.result.catch(() => {});
      clearTimeout(t);
    } else {
      await child.result.catch(() => {});
    }
  };
  if (!port) {
    await stop();
    throw new Error(`haul serve did not start:\n${child.output().stderr}`);
  }
  return { child, port, host: `127.0.0.1:${port}`, url: `http://127.0.0.1:${port}`, stop };
}

/** Resident set size of a process in bytes (Linux /proc), or undefined. */
export async function rssBytes(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Samples a process's RSS every `everyMs` until stopped; `max()` is the peak. */
export function sampleRss(pid: number, everyMs = 100): { max(): number; stop(): void } {
  let peak = 0;
  const timer = setInterval(async () => {
    const rss = await rssBytes(pid);
    if (rss !== undefined && rss > peak) peak = rss;
  }, everyMs);
  return { max: () => peak, stop: () => clearInterval(timer) };
}

/** GETs `url` and hashes the body as it streams; returns digest, bytes and seconds. */
export async function fetchAndHash(
  url: string,
  signal?: AbortSignal,
): Promise<{ digest: string; bytes: number; seconds: number; status: number }> {
  const t0 = performance.now();
  const res = await fetch(url, { signal });
  const hash = createHash("sha256");
  let bytes = 0;
  if (res.body) {
    for await (const chunk of res.body) {
      hash.update(chunk);
      bytes += chunk.byteLength;
    }
  }
  return {
    digest: `sha256:${hash.digest("hex")}`,
    bytes,
    seconds: (performance.now() - t0) / 1000,
    status: res.status,
  };
}

/** Result of {@link loadBlob}. */
export interface LoadResult {
  clients: number;
  seconds: number;
  /** Aggregate MB/s (10^6 bytes). */
  mbPerSec: number;
  /** Clients whose body hashed to the expected digest with status 200. */
  ok: number;
  /** Peak VmRSS of `serverPid` while the clients ran, in bytes (0 when unknown). */
  peakRss: number;
}

/** `clients` concurrent GETs of one blob, each hashed; samples the server's RSS meanwhile. */
export async function loadBlob(
  url: string,
  expect: { digest: string; size: number },
  options: { clients: number; serverPid?: number; signal?: AbortSignal },
): Promise<LoadResult> {
  const rss = options.serverPid ? sampleRss(options.serverPid, 50) : undefined;
  const t0 = performance.now();
  try {
    const results = await Promise.all(
      Array.from({ length: options.clients }, () => fetchAndHash(url, options.signal)),
    );
    const seconds = (performance.now() - t0) / 1000;
    const ok = results.filter((r) =>
      r.status === 200 && r.bytes === expect.size && r.digest === expect.digest
    ).length;
    return {
      clients: options.clients,
      seconds,
      mbPerSec: (expect.size * options.clients) / seconds / 1e6,
      ok,
      peakRss: rss?.max() ?? 0,
    };
  } finally {
    rss?.stop();
  }
}
