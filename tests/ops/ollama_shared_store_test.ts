/**
 * haul and stock Ollama sharing one OLLAMA_MODELS. Stock Ollama resumes a blob by globbing
 * `blobs/<blob>-partial-*` and JSON-decoding every match as its own part state
 * (server/download.go, blobDownload.Prepare), so a haul file of that shape left by a killed
 * pull would break the next `ollama pull` with "invalid character … looking for beginning of
 * value". The source is `haul serve` (stock Ollama cannot pull from docker-registry itself:
 * it wants a redirect or a `Location`), and the client is the pinned stock Ollama.
 */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import {
  makeOllamaModel,
  runCli,
  sha256File,
  sleep,
  spawnCli,
  tmpDir,
} from "../support/harness.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";
import { ollamaTags, runOllama, startOllama } from "../support/ollama.ts";
import { startServe, storeFixture } from "../server/serve_fixtures.ts";

/** Files that Ollama's `<blob>-partial-*` glob would pick up for any blob. */
async function ollamaGlobMatches(models: string): Promise<string[]> {
  const names = await fsp.readdir(path.join(models, "blobs")).catch(() => [] as string[]);
  return names.filter((n) => /^sha256-[0-9a-f]{64}-partial-/.test(n));
}

Deno.test("kill -9 of haul pull with many small blobs in flight, then stock ollama pull of the same model succeeds", async () => {
  const source = await tmpDir("haul-shared-src");
  const models = await tmpDir("haul-shared-models");
  // 120 small layers and one of 8 MB: many small-blob downloads at once.
  const sizes = [8_000_003, ...Array.from({ length: 120 }, (_, i) => 40_000 + i)];
  const fx = makeOllamaModel({ layerSizes: sizes, seed: 161 });
  await storeFixture(source, { repository: "library/many" }, fx);
  const serve = await startServe(source);
  try {
    const name = `${serve.host}/library/many:latest`;
    // Slow enough that it is killed with small blobs half-written.
    const child = spawnCli(
      ["pull", "--insecure", "--quiet", "--limit-rate", "1M", "--models", models, name],
      { timeoutMs: 120_000 },
    );
    const blobs = path.join(models, "blobs");
    for (let i = 0; i < 200; i++) {
      const n = (await fsp.readdir(blobs).catch(() => [])).length;
      if (n >= 20) break;
      await sleep(50);
    }
    child.kill("SIGKILL");
    assert.equal((await child.result).signal, "SIGKILL");
    assert.deepEqual(await ollamaGlobMatches(models), [], "haul left files Ollama would decode");

    const ollama = await startOllama({ models });
    try {
      const r = await runOllama(ollama, ["pull", "--insecure", name]);
      assert.equal(r.code, 0, `ollama pull after a killed haul pull: ${r.stderr}`);
      for (const b of fx.blobs) {
        const file = path.join(blobs, b.digest.replace(":", "-"));
        assert.equal(`sha256:${await sha256File(file)}`, b.digest, `${b.digest} content`);
      }
      const manifest = path.join(models, "manifests", serve.host, "library/many/latest");
      assert.deepEqual(new Uint8Array(await fsp.readFile(manifest)), fx.manifest);
    } finally {
      await ollama.stop();
    }
  } finally {
    await serve.stop();
    await fx.cleanup?.();
    await fsp.rm(source, { recursive: true, force: true });
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("kill -9 of haul pull mid a large blob, then stock ollama pull of the same model succeeds and ollama show loads it", async () => {
  const source = await tmpDir("haul-kill-large-src");
  const models = await tmpDir("haul-kill-large-models");
  const fx = makeOllamaModel({
    layerSizes: [40_000_009, 400, 900, 200],
    seed: 164,
    loadable: true,
  });
  await storeFixture(source, { repository: "library/large" }, fx);
  const serve = await startServe(source);
  try {
    const name = `${serve.host}/library/large:latest`;
    const child = spawnCli(
      ["pull", "--insecure", "--quiet", "--limit-rate", "8M", "--models", models, name],
      { timeoutMs: 120_000 },
    );
    // Killed about 1.5 s (some 12 MB at 8 MB/s) after the large blob's partial file appears
    // in .haul/partial/.
    const partial = path.join(models, ".haul", "partial");
    const hasPartial = async () =>
      (await fsp.readdir(partial).catch(() => [] as string[])).some((n) => n.endsWith("-partial"));
    for (let i = 0; i < 400 && !(await hasPartial()); i++) await sleep(25);
    assert.ok(await hasPartial(), "haul pull started the large blob");
    await sleep(1500);
    child.kill("SIGKILL");
    assert.equal((await child.result).signal, "SIGKILL");
    assert.deepEqual(await ollamaGlobMatches(models), [], "haul left files Ollama would decode");

    const ollama = await startOllama({ models });
    try {
      const r = await runOllama(ollama, ["pull", "--insecure", name]);
      assert.equal(r.code, 0, `ollama pull after a killed haul pull: ${r.stderr}`);
      for (const b of fx.blobs) {
        const file = path.join(models, "blobs", b.digest.replace(":", "-"));
        assert.equal(`sha256:${await sha256File(file)}`, b.digest, `${b.digest} content`);
      }
      const show = await runOllama(ollama, ["show", name]);
      assert.equal(show.code, 0, show.stderr);
      assert.match(show.stdout, /architecture\s+llama/, show.stdout);
    } finally {
      await ollama.stop();
    }
  } finally {
    await serve.stop();
    await fx.cleanup?.();
    await fsp.rm(source, { recursive: true, force: true });
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("ollama serve's startup prune over a killed haul pull leaves its resume state: the two pulls fetch <= 1.25x the model", async () => {
  const source = await tmpDir("haul-prune-src");
  const models = await tmpDir("haul-prune-models");
  const fx = makeOllamaModel({ layerSizes: [60_000_011, 300], seed: 162 });
  const size = fx.blobs.reduce((n, b) => n + b.size, 0);
  await storeFixture(source, { repository: "library/pruned" }, fx);
  const serve = await startServe(source);
  const proxy = await startFaultProxy(serve.url, {
    rule: (req) => req.url.includes("/blobs/") ? { rateBytesPerSec: 20e6 } : undefined,
  });
  try {
    const name = `${proxy.host}/library/pruned:latest`;
    const args = ["pull", "--insecure", "--quiet", "--models", models, name];
    const child = spawnCli(args, { timeoutMs: 120_000 });
    // Kill once about half of the big blob has gone through.
    for (let i = 0; i < 400 && proxy.bytesOut(/\/blobs\//) < size / 2; i++) await sleep(25);
    child.kill("SIGKILL");
    assert.equal((await child.result).signal, "SIGKILL");
    // Ollama prunes only files older than an hour (layerPruneGracePeriod): age everything.
    const old = new Date(Date.now() - 2 * 3600_000);
    for (const f of await fsp.readdir(models, { recursive: true })) {
      await fsp.utimes(path.join(models, f), old, old).catch(() => {});
    }
    const ollama = await startOllama({ models });
    try {
      // PruneLayers runs in the background at startup (server/routes.go Serve).
      for (let i = 0; i < 200 && !/total unused blobs removed/.test(await ollama.log()); i++) {
        await sleep(50);
      }
      assert.match(await ollama.log(), /total unused blobs removed/, "Ollama's prune ran");
    } finally {
      await ollama.stop();
    }
    const r = await runCli(args, { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    for (const b of fx.blobs) {
      const file = path.join(models, "blobs", b.digest.replace(":", "-"));
      assert.equal(`sha256:${await sha256File(file)}`, b.digest, `${b.digest} content`);
    }
    const fetched = proxy.bytesOut(/\/blobs\//);
    console.log(`killed pull + resumed pull fetched ${(fetched / size).toFixed(3)}x the model`);
    assert.ok(fetched <= 1.25 * size, `fetched ${fetched} bytes for a ${size}-byte model`);
  } finally {
    await proxy.stop();
    await serve.stop();
    await fx.cleanup?.();
    await fsp.rm(source, { recursive: true, force: true });
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("a Ctrl-C'd stock ollama pull mid large blob, then haul pull: <= 1.25x the model fetched, no partial files left, ollama list and ollama show accept it", async () => {
  const source = await tmpDir("haul-adopt-src");
  const models = await tmpDir("haul-adopt-models");
  // One GGUF blob of ~210 MB (Ollama cuts it into 100 MB parts), a template, a license and
  // params, all as `ollama show` reads them.
  const fx = makeOllamaModel({
    layerSizes: [210_000_017, 500, 7000, 300],
    seed: 163,
    loadable: true,
  });
  const size = fx.blobs.reduce((n, b) => n + b.size, 0);
  await storeFixture(source, { repository: "library/adopt" }, fx);
  const serve = await startServe(source);
  const proxy = await startFaultProxy(serve.url, {
    rule: (req) => req.url.includes("/blobs/") ? { rateBytesPerSec: 40e6 } : undefined,
  });
  const ollama = await startOllama({ models });
  try {
    const name = `${proxy.host}/library/adopt:latest`;
    const r1 = await runOllama(ollama, ["pull", "--insecure", name], { interruptAfterMs: 2500 });
    assert.notEqual(r1.code, 0, "the ollama pull was interrupted");
    const blobs = path.join(models, "blobs");
    // Ollama's server stops the download when its last client goes and records its parts.
    for (let i = 0; i < 100 && !(await ollamaGlobMatches(models)).length; i++) await sleep(50);
    assert.ok((await ollamaGlobMatches(models)).length > 0, "Ollama left its part files");
    await sleep(3500); // haul leaves alone a partial file written within the last 3 s
    const r = await runCli(["pull", "--insecure", "--quiet", "--models", models, name], {
      timeoutMs: 120_000,
    });
    assert.equal(r.code, 0, r.stderr);
    for (const b of fx.blobs) {
      const file = path.join(blobs, b.digest.replace(":", "-"));
      assert.equal(`sha256:${await sha256File(file)}`, b.digest, `${b.digest} content`);
    }
    const fetched = proxy.bytesOut(/\/blobs\//);
    console.log(`killed pull + resumed pull fetched ${(fetched / size).toFixed(3)}x the model`);
    assert.ok(fetched <= 1.25 * size, `fetched ${fetched} bytes for a ${size}-byte model`);
    const left = (await fsp.readdir(blobs)).filter((n) => n.includes("partial"));
    assert.deepEqual(left, [], "no partial files left in blobs/");
    const list = await runOllama(ollama, ["list"]);
    assert.match(list.stdout, /library\/adopt:latest/, list.stdout + list.stderr);
    // `ollama show` loads the manifest, the GGUF header of the model layer and the params.
    const show = await runOllama(ollama, ["show", name]);
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /architecture\s+llama/, show.stdout);
    assert.match(show.stdout, /context length\s+4096/, show.stdout);
    assert.match(show.stdout, /temperature\s+0\.7/, show.stdout);
    const tags = await ollamaTags(ollama);
    const tag = tags.find((t) => t.name.endsWith("library/adopt:latest"));
    assert.ok(tag, JSON.stringify(tags));
    assert.equal(`sha256:${tag.digest}`, fx.manifestDigest);
  } finally {
    await ollama.stop();
    await proxy.stop();
    await serve.stop();
    await fx.cleanup?.();
    await fsp.rm(source, { recursive: true, force: true });
    await fsp.rm(models, { recursive: true, force: true });
  }
});
