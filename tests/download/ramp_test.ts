import assert from "node:assert/strict";
import { Semaphore } from "../../lib/transport/pool.ts";
import { nextLevel, PartRamp, rampStart } from "../../lib/download/ramp.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("Semaphore.resize() wakes waiters when growing and takes permits back as holders release", async () => {
  const s = new Semaphore(1);
  const first = await s.acquire();
  let got = 0;
  const waiting = [s.acquire().then((r) => (got++, r)), s.acquire().then((r) => (got++, r))];
  await sleep(0);
  assert.equal(got, 0);
  assert.equal(s.saturated, true);
  s.resize(3);
  const [a, b] = await Promise.all(waiting);
  assert.equal(got, 2);
  assert.equal(s.size, 3);
  s.resize(1); // three held, one allowed: the next two releases are swallowed
  a();
  b();
  let third = false;
  const next = s.acquire().then((r) => (third = true, r));
  await sleep(0);
  assert.equal(third, false, "still at the limit: one permit held");
  first();
  (await next)();
  assert.equal(third, true);
});

/**
 * Keeps every permit of the ramp's gate taken with a queue waiting, and feeds it
 * `bytes(permits)` per 100 ms interval of a synthetic clock, for 14 intervals.
 */
async function run(ramp: PartRamp, bytes: (permits: number) => number) {
  const stop = new AbortController();
  const takers = Array.from({ length: 30 }, async () => {
    while (!stop.signal.aborted) {
      if (!await ramp.gate.acquire(stop.signal).catch(() => undefined)) return;
    }
  });
  await sleep(0);
  assert.equal(ramp.gate.saturated, true);
  ramp.count(1); // the first byte starts the clock
  let now = performance.now();
  for (let i = 0; i < 14; i++) {
    ramp.count(bytes(ramp.gate.size));
    ramp.tick(now += 100);
    await sleep(0);
  }
  stop.abort();
  await Promise.all(takers);
  ramp.stop();
}

Deno.test("PartRamp opens every part when more connections bring more bytes (a per-connection cap)", async () => {
  const ramp = new PartRamp(new Semaphore(12), 12, 24, { manual: true });
  await run(ramp, (permits) => permits * 25e5);
  assert.equal(ramp.gate.size, 24);
  assert.deepEqual(ramp.steps, [12, 24]);
});

Deno.test("PartRamp climbs step by step and keeps the last step that helped (a per-connection cap under a link limit)", async () => {
  // 2.5 MB per interval per connection up to 32 MB: 6 → 12 helps (+100%), 12 → 24 does not (+7%).
  const ramp = new PartRamp(new Semaphore(6), 6, 24, { manual: true });
  await run(ramp, (permits) => Math.min(permits * 25e5, 32e6));
  assert.deepEqual(ramp.steps, [6, 12, 24, 12]);
  assert.equal(ramp.gate.size, 12);
  // Once the first step helped, a later one is kept for +10% or more (P2's 16 → 24 gave +19%).
  const p2 = new PartRamp(new Semaphore(6), 6, 24, { manual: true });
  await run(
    p2,
    (permits) => ({ 6: 15e6, 12: 30e6, 24: 35.7e6 } as Record<number, number>)[permits],
  );
  assert.deepEqual(p2.steps, [6, 12, 24]);
  assert.equal(p2.gate.size, 24);
  // Under the cap alone Bun's start (a quarter of 24) doubles to the limit.
  const bun = new PartRamp(new Semaphore(6), 6, 24, { manual: true });
  await run(bun, (permits) => permits * 25e5);
  assert.deepEqual(bun.steps, [6, 12, 24]);
  // Doubling, at least 2 more, never past the limit.
  assert.deepEqual([1, 6, 12, 16].map((n) => nextLevel(n, 24)), [3, 12, 24, 24]);
});

Deno.test("PartRamp goes back to the start when more connections bring nothing (a shared bottleneck)", async () => {
  const ramp = new PartRamp(new Semaphore(12), 12, 24, { manual: true });
  // Within the noise a CPU-bound pull shows: +20% with twice the parts.
  await run(ramp, (permits) => (permits > 12 ? 1.2 : 1) * 30e6);
  assert.equal(ramp.gate.size, 12);
  assert.deepEqual(ramp.steps, [12, 24, 12]);
});

Deno.test("rampStart() is half the limit, at least 4, never above it", () => {
  assert.equal(rampStart(24), 12);
  assert.equal(rampStart(5), 4);
  assert.equal(rampStart(2), 2);
});
