import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import { makeOllamaModel, pushFixture, runCli, startRegistry, tmpDir } from "../support/harness.ts";
import { RateLimiter } from "../../lib/transport/rate_limit.ts";

const MiB = 1024 * 1024;

Deno.test("RateLimiter.take() spaces bytes at the rate after the burst", async () => {
  const l = new RateLimiter(1_000_000, 0);
  const t0 = Date.now();
  for (let i = 0; i < 5; i++) await l.take(50_000);
  const ms = Date.now() - t0;
  // Never faster than the rate (the upper bound only guards against a hang).
  assert.ok(ms >= 195 && ms < 5000, `${ms} ms for 250 kB at 1 MB/s`);
});

Deno.test("haul pull --limit-rate caps the whole transfer across parallel parts within 10% over 30 s", async () => {
  const rate = 3 * MiB;
  const model = makeOllamaModel({ layerSizes: [1000, 90 * MiB], seed: 31 });
  const reg = await startRegistry();
  const models = await tmpDir("haul-models");
  try {
    await pushFixture(reg, "library/slow", "latest", model);
    const t0 = Date.now();
    const r = await runCli(
      [
        "pull",
        "--insecure",
        "--limit-rate",
        "3M",
        "--part-size",
        "8M",
        "--models",
        models,
        `${reg.host}/library/slow`,
      ],
      { timeoutMs: 90_000 },
    );
    const seconds = (Date.now() - t0) / 1000;
    assert.equal(r.code, 0, r.stderr);
    const total = model.blobs.reduce((a, b) => a + b.size, 0);
    const expected = total / rate; // ≈ 30 s
    const measured = total / seconds;
    assert.ok(
      Math.abs(measured - rate) / rate <= 0.1,
      `${(measured / MiB).toFixed(2)} MiB/s over ${seconds.toFixed(1)} s; cap 3 MiB/s (expected ${
        expected.toFixed(1)
      } s)`,
    );
  } finally {
    await reg.stop();
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});
