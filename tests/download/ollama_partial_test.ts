/** Taking over an interrupted stock `ollama pull` (its `-partial` file and `-partial-<N>` parts). */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { download } from "../../lib/mod.ts";
import {
  makeOllamaModel,
  pushFixture,
  sha256File,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";

const MiB = 1024 * 1024;

Deno.test("download() adopts what an interrupted ollama pull wrote and fetches only the rest, leaving no -partial files", async () => {
  const fx = makeOllamaModel({ layerSizes: [40 * MiB], seed: 77 });
  const reg = await startRegistry();
  const full = await tmpDir("haul-adopt");
  const store = await tmpDir("haul-adopt");
  try {
    await pushFixture(reg, "lib/adopt", "v1", fx);
    const big = fx.blobs.find((b) => b.size === 40 * MiB)!;
    const opts = { baseUrl: reg.url, repository: "lib/adopt", partSize: 8 * MiB };
    await download({ ...opts, blobs: [big], destDir: full });
    const name = big.digest.replace(":", "-");
    const bytes = await fsp.readFile(path.join(full, name));
    // Ollama's layout: a full-size partial file; part 0 has 10 MiB of 20, part 1 is complete.
    const blobs = path.join(store, "blobs");
    await fsp.mkdir(blobs, { recursive: true });
    const partial = path.join(blobs, `${name}-partial`);
    const sparse = new Uint8Array(40 * MiB);
    sparse.set(bytes.subarray(0, 10 * MiB), 0);
    sparse.set(bytes.subarray(20 * MiB), 20 * MiB);
    await fsp.writeFile(partial, sparse);
    const parts = [
      { N: 0, Offset: 0, Size: 20 * MiB, Completed: 10 * MiB },
      { N: 1, Offset: 20 * MiB, Size: 20 * MiB, Completed: 20 * MiB },
    ];
    for (const p of parts) {
      await fsp.writeFile(`${partial}-${p.N}`, JSON.stringify(p));
    }
    const old = new Date(Date.now() - 60_000);
    await fsp.utimes(partial, old, old);
    const res = await download({
      ...opts,
      blobs: [big],
      destDir: blobs,
      partialDir: path.join(store, ".haul", "partial"),
    });
    assert.ok(res.transferred < 20 * MiB, `fetched ${res.transferred} bytes of 40 MiB`);
    assert.equal(`sha256:${await sha256File(path.join(blobs, name))}`, big.digest);
    assert.deepEqual((await fsp.readdir(blobs)).filter((n) => n.includes("partial")), []);
  } finally {
    await reg.stop();
    await fx.cleanup?.();
    for (const d of [full, store]) await fsp.rm(d, { recursive: true, force: true });
  }
});
