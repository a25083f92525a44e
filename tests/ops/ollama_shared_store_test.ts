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
import { makeOllamaModel, sha256File, sleep, spawnCli, tmpDir } from "../support/harness.ts";
import { runOllama, startOllama } from "../support/ollama.ts";
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
