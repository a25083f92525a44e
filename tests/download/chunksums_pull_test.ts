/** haul pull against `haul serve`: chunksums let a digest mismatch be repaired chunk by chunk. */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import {
  makeOllamaModel,
  pushFixture,
  runCli,
  sha256File,
  spawnCli,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";

const MiB = 1024 * 1024;

Deno.test("haul pull from haul serve re-fetches only the chunk a byte was flipped in", async () => {
  const size = 150 * MiB + 3; // three 64 MiB chunks
  const model = makeOllamaModel({ layerSizes: [700, size], seed: 51 });
  const big = model.blobs[2];
  const dir = await tmpDir("haul-chunks");
  const reg = await startRegistry();
  let serve: ReturnType<typeof spawnCli> | undefined;
  try {
    // Fill a store from a real registry, then serve it.
    await pushFixture(reg, "library/chunky", "latest", model);
    const src = path.join(dir, "src");
    const fill = await runCli([
      "pull",
      "--insecure",
      "--quiet",
      "--models",
      src,
      `${reg.host}/library/chunky`,
    ]);
    assert.equal(fill.code, 0, fill.stderr);
    serve = spawnCli(["serve", "--addr", "127.0.0.1:0", "--models", src, "--verbose"], {
      timeoutMs: 120_000,
    });
    let addr = "";
    for (let i = 0; i < 100 && !addr; i++) {
      await new Promise((r) => setTimeout(r, 100));
      addr = /(127\.0\.0\.1:\d+)/.exec(serve.output().stderr + serve.output().stdout)?.[1] ?? "";
    }
    assert.ok(addr, "serve printed its address");
    // One Range request, the one for the middle chunk, gets a byte flipped, once.
    let flipped = 0;
    const proxy = await startFaultProxy(`http://${addr}`, {
      rule: (req) =>
        req.method === "GET" && req.url.includes(`/blobs/${big.digest}`) &&
          req.headers.range?.startsWith(`bytes=${64 * MiB}-`) && flipped++ === 0
          ? { flipByteAt: 1234 }
          : undefined,
    });
    try {
      const dest = path.join(dir, "dest");
      const name = `${reg.host.replace(":", "_")}/library/chunky`; // how serve names other registries
      const r = await runCli(["pull", "--insecure", "--models", dest, `${proxy.host}/${name}`]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(flipped >= 1, true, "the fault fired");
      assert.ok(
        proxy.requests.some((q) => q.url.includes(`/chunksums/${big.digest}`)),
        "chunksums asked for",
      );
      const file = path.join(dest, "blobs", big.digest.replace(":", "-"));
      assert.equal(`sha256:${await sha256File(file)}`, big.digest);
      const fetched = proxy.bytesOut(new RegExp(`/blobs/${big.digest}`));
      assert.ok(
        fetched <= size + 64 * MiB,
        `only the bad chunk again: ${fetched} bytes for ${size}`,
      );
    } finally {
      await proxy.stop();
    }
  } finally {
    serve?.kill("SIGTERM");
    await serve?.result;
    await reg.stop();
    await model.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
