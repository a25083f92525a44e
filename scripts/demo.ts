#!/usr/bin/env -S deno run -A
/**
 * `deno task demo`: haul end to end on one machine, nothing from the internet.
 *
 *  1. builds a model in a temporary Ollama store: a config, small template /
 *     license / params layers and a ~300 MB model layer of deterministic bytes;
 *  2. shares that store with `haul serve` (a subprocess, loopback only);
 *  3. pulls the model with `haul pull --insecure` into a second temporary store,
 *     showing haul's own progress output;
 *  4. verifies the copy: re-hashes every blob, compares the manifests byte for byte;
 *  5. prints a summary and removes everything it made.
 *
 * Runs under Deno or Bun; the subprocesses use the same runtime. Exit 0 when verified.
 */
import { Buffer } from "node:buffer";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { open, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { makeOllamaModel, REPO_ROOT, tmpDir } from "../tests/support/harness.ts";
import { type ServeProcess, startServe, storeFixture } from "../tests/server/serve_fixtures.ts";

const MODEL_BYTES = 300_000_000;
const inBun = "Bun" in globalThis;

/** Runs `haul ARGS` with this runtime, output shown as is; resolves with the exit code. */
function haul(args: string[]): Promise<number> {
  const main = join(REPO_ROOT, "main.ts");
  const argv = inBun ? [main, ...args] : ["run", "-A", main, ...args];
  const child = spawn(process.execPath, argv, { stdio: "inherit" });
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

async function sha256File(path: string): Promise<string> {
  const fh = await open(path, "r");
  try {
    const hash = createHash("sha256");
    const buf = new Uint8Array(8 << 20);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (!bytesRead) break;
      hash.update(buf.subarray(0, bytesRead));
    }
    return `sha256:${hash.digest("hex")}`;
  } finally {
    await fh.close();
  }
}

const mb = (n: number) => n < 1e5 ? `${n} B` : `${(n / 1e6).toFixed(1)} MB`;
const step = (s: string) => process.stderr.write(`\n==> ${s}\n`);

const dir = await tmpDir("haul-demo");
let server: ServeProcess | undefined;
let ok = false;
try {
  const src = join(dir, "source-models");
  const dest = join(dir, "pulled-models");

  step(`Building a model (config + 3 small layers + a ${mb(MODEL_BYTES)} layer) in ${src}`);
  let t = performance.now();
  const fx = makeOllamaModel({ layerSizes: [MODEL_BYTES, 160, 1100, 90], seed: 2026, dir });
  await storeFixture(src, { repository: "library/demo", tag: "latest" }, fx, { move: true });
  const total = fx.blobs.reduce((a, b) => a + b.size, 0);
  process.stderr.write(
    `    ${fx.blobs.length} blobs, ${mb(total)}, ${
      ((performance.now() - t) / 1000).toFixed(1)
    } s\n`,
  );

  step(`haul serve --addr 127.0.0.1:0 --models ${src}`);
  server = await startServe(src, inBun ? { runtime: "bun" } : {});
  process.stderr.write(`    serving on ${server.url}/v2/ (catalog: ${server.url}/v2/_catalog)\n`);

  const ref = `${server.host}/library/demo:latest`;
  step(`haul pull --insecure --models ${dest} ${ref}`);
  t = performance.now();
  const code = await haul(["pull", "--insecure", "--models", dest, ref]);
  const pullSeconds = (performance.now() - t) / 1000;
  if (code !== 0) throw new Error(`haul pull exited with ${code}`);

  step("Verifying the copy: re-hashing every blob, comparing manifests");
  const manifestPath = join(dest, "manifests", server.host, "library", "demo", "latest");
  const pulled = new Uint8Array(await readFile(manifestPath));
  const sameManifest = Buffer.from(pulled).equals(Buffer.from(fx.manifest));
  const doc = JSON.parse(new TextDecoder().decode(pulled)) as {
    config: { digest: string; size: number };
    layers: { digest: string; size: number; mediaType: string }[];
  };
  let bad = 0;
  for (const d of [doc.config, ...doc.layers]) {
    const file = join(dest, "blobs", d.digest.replace(":", "-"));
    const size = (await stat(file)).size;
    const digest = await sha256File(file);
    const good = size === d.size && digest === d.digest;
    if (!good) bad++;
    process.stderr.write(
      `    ${good ? "ok " : "BAD"} ${d.digest.slice(7, 19)} ${mb(size).padStart(9)}\n`,
    );
  }
  ok = sameManifest && bad === 0 && doc.layers.length + 1 === fx.blobs.length;

  step("Summary");
  console.log(
    [
      `model      ${ref} (${fx.blobs.length} blobs, ${mb(total)})`,
      `pull       ${pullSeconds.toFixed(2)} s, ${
        (total / pullSeconds / 1e6).toFixed(0)
      } MB/s over loopback`,
      `manifest   ${sameManifest ? "identical" : "DIFFERENT"} (${fx.manifestDigest})`,
      `blobs      ${bad === 0 ? "all re-hashed and matching" : `${bad} damaged`}`,
      `result     ${ok ? "verified" : "FAILED"}`,
    ].join("\n"),
  );
} catch (err) {
  process.stderr.write(`demo failed: ${(err as Error).message ?? err}\n`);
} finally {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
}
process.exit(ok ? 0 : 1);
