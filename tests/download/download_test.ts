/** The library API under the CLI, against the real registry. */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import { download, IntegrityError, InterruptedError, pull } from "../../lib/mod.ts";
import {
  makeOllamaModel,
  pushFixture,
  sha256File,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";

const MiB = 1024 * 1024;

Deno.test("download() fetches blobs in parallel with inline and worker hashing, reporting progress to the total", async () => {
  const fx = makeOllamaModel({ layerSizes: [10, 64 * 1024, 5 * MiB, 70 * MiB + 9], seed: 21 });
  const reg = await startRegistry();
  const dirs = [await tmpDir("haul-dl"), await tmpDir("haul-dl")];
  try {
    await pushFixture(reg, "lib/api", "v1", fx);
    for (const [i, hashWorker] of [true, false].entries()) {
      const seen: [number, number][] = [];
      const res = await download({
        blobs: fx.blobs.map(({ digest, size }) => ({ digest, size })),
        baseUrl: reg.url,
        repository: "lib/api",
        destDir: dirs[i],
        partSize: 8 * MiB,
        hashWorker,
        onProgress: (c, t) => seen.push([c, t]),
      });
      assert.equal(res.fetched, fx.blobs.length);
      const total = fx.blobs.reduce((a, b) => a + b.size, 0);
      assert.equal(res.transferred, total);
      assert.deepEqual(seen.at(-1), [total, total]);
      for (const b of fx.blobs) {
        assert.equal(
          `sha256:${await sha256File(path.join(dirs[i], b.digest.replace(":", "-")))}`,
          b.digest,
        );
      }
    }
    // Everything present: nothing moves.
    const again = await download({
      blobs: fx.blobs,
      baseUrl: reg.url,
      repository: "lib/api",
      destDir: dirs[0],
    });
    assert.deepEqual(again, { transferred: 0, skipped: fx.blobs.length, fetched: 0 });
  } finally {
    await reg.stop();
    await fx.cleanup?.();
    for (const d of dirs) await fsp.rm(d, { recursive: true, force: true });
  }
});

Deno.test("download() from bodies without BYOB (as Bun's fetch): chunks handed to the writer as they are, blobs verified", async () => {
  const fx = makeOllamaModel({ layerSizes: [64 * 1024 + 3, 40 * MiB + 11], seed: 23 });
  const reg = await startRegistry();
  const dir = await tmpDir("haul-dl");
  let chunks = 0;
  // Re-wraps each body as a plain (not byte) stream, so getReader({ mode: "byob" }) throws;
  // every chunk in a fresh buffer of its own, as Bun hands them out, some in views of one.
  const plain = async (req: Request) => {
    const res = await fetch(req);
    if (!res.body) return res;
    const r = res.body.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        const x = await r.read();
        if (x.done) return c.close();
        chunks++;
        if (chunks % 3) return c.enqueue(x.value.slice());
        const half = x.value.byteLength >> 1;
        const both = x.value.slice();
        c.enqueue(both.subarray(0, half));
        c.enqueue(both.subarray(half));
      },
      cancel: (reason) => r.cancel(reason),
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  try {
    await pushFixture(reg, "lib/plain", "v1", fx);
    assert.throws(() => new ReadableStream().getReader({ mode: "byob" }));
    const res = await download({
      blobs: fx.blobs.map(({ digest, size }) => ({ digest, size })),
      baseUrl: reg.url,
      repository: "lib/plain",
      destDir: dir,
      partSize: 8 * MiB,
      fetch: plain,
    });
    assert.equal(res.fetched, fx.blobs.length);
    assert.ok(chunks > 100, `only ${chunks} chunks`);
    for (const b of fx.blobs) {
      const file = path.join(dir, b.digest.replace(":", "-"));
      assert.equal(`sha256:${await sha256File(file)}`, b.digest);
    }
  } finally {
    await reg.stop();
    await fx.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("download() refuses a blob whose bytes do not match its digest and never names it", async () => {
  const fx = makeOllamaModel({ layerSizes: [1000, 20 * MiB], seed: 22 });
  const reg = await startRegistry();
  const dir = await tmpDir("haul-dl");
  // Every blob response has one byte flipped, on every attempt.
  const proxy = await startFaultProxy(reg.url, {
    rule: (r) => r.url.includes("/blobs/") && r.method === "GET" ? { flipByteAt: 5 } : undefined,
  });
  try {
    await pushFixture(reg, "lib/bad", "v1", fx);
    for (const b of fx.blobs.slice(1)) {
      await assert.rejects(
        download({
          blobs: [b],
          baseUrl: proxy.url,
          repository: "lib/bad",
          destDir: dir,
          partSize: 4 * MiB,
          retry: { baseDelayMs: 1 },
        }),
        IntegrityError,
      );
      const names = await fsp.readdir(dir);
      assert.ok(!names.includes(b.digest.replace(":", "-")), "never under the final name");
      assert.ok(!names.some((n) => n.endsWith(".json")), "no resume state a later run would trust");
    }
  } finally {
    await proxy.stop();
    await reg.stop();
    await fx.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("pull() stops promptly on abort with InterruptedError, keeping resumable state", async () => {
  const fx = makeOllamaModel({ layerSizes: [100, 100 * MiB], seed: 23 });
  const reg = await startRegistry();
  const models = await tmpDir("haul-models");
  const proxy = await startFaultProxy(reg.url, {
    rule: (r) => r.url.includes("/blobs/") ? { rateBytesPerSec: 2e6 } : undefined,
  });
  try {
    await pushFixture(reg, "library/abort", "latest", fx);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 2500);
    const t0 = Date.now();
    await assert.rejects(
      pull(`${proxy.host}/library/abort`, {
        insecure: true,
        modelsDir: models,
        signal: ac.signal,
        partSize: 8 * MiB,
      }),
      InterruptedError,
    );
    assert.ok(Date.now() - t0 < 5000, "prompt");
    // Out of reach of Ollama's startup prune, which clears blobs/ of all but sha256-<hex>.
    const names = await fsp.readdir(path.join(models, ".haul", "partial"));
    assert.ok(names.some((n) => n.endsWith("-partial.json")), "state kept for resume");
    const inBlobs = await fsp.readdir(path.join(models, "blobs"));
    assert.deepEqual(inBlobs.filter((n) => n.includes("partial")), [], "nothing partial in blobs/");
    await assert.rejects(
      fsp.stat(path.join(models, "manifests", proxy.host, "library", "abort", "latest")),
    );
    const [res] = await pull(`${reg.host}/library/abort`, { insecure: true, modelsDir: models });
    assert.equal(res.manifestDigest, fx.manifestDigest);
    assert.ok(res.transferred < 100 * MiB, `resumed (${res.transferred} bytes)`);
  } finally {
    await proxy.stop();
    await reg.stop();
    await fx.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("download() re-hashes small present blobs and replaces a damaged one", async () => {
  const fx = makeOllamaModel({ layerSizes: [4096], seed: 24 });
  const reg = await startRegistry();
  const dir = await tmpDir("haul-dl");
  try {
    await pushFixture(reg, "lib/small", "v1", fx);
    const blob = fx.blobs[1];
    const file = path.join(dir, blob.digest.replace(":", "-"));
    await fsp.writeFile(file, new Uint8Array(blob.size)); // right size, wrong bytes
    const res = await download({
      blobs: [blob],
      baseUrl: reg.url,
      repository: "lib/small",
      destDir: dir,
    });
    assert.equal(res.fetched, 1);
    assert.deepEqual(new Uint8Array(await fsp.readFile(file)), blob.data);
  } finally {
    await reg.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("download() removes small-blob temp files left by a killed process", async () => {
  const fx = makeOllamaModel({ layerSizes: [100], seed: 25 });
  const reg = await startRegistry();
  const dir = await tmpDir("haul-dl");
  try {
    await pushFixture(reg, "lib/tmp", "v1", fx);
    const dead = path.join(dir, `${fx.blobs[1].digest.replace(":", "-")}-partial-999999-abcdef01`);
    const alive = path.join(
      dir,
      `${fx.blobs[1].digest.replace(":", "-")}-partial-${process.pid}-abcdef01`,
    );
    const deadState = path.join(
      dir,
      `${fx.blobs[1].digest.replace(":", "-")}-partial.json.999999.tmp`,
    );
    await fsp.writeFile(dead, "x");
    await fsp.writeFile(deadState, "{");
    await fsp.writeFile(alive, "x");
    await download({ blobs: fx.blobs, baseUrl: reg.url, repository: "lib/tmp", destDir: dir });
    await assert.rejects(fsp.stat(dead), "a dead process's temp file is gone");
    await assert.rejects(fsp.stat(deadState), "and its resume-state temp file");
    await fsp.stat(alive); // a live process's temp file stays
  } finally {
    await reg.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
