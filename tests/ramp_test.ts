import assert from "node:assert/strict";
import { Semaphore } from "../lib/pool.ts";
import { PartRamp, rampStart } from "../lib/ramp.ts";

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
 * Keeps every permit of the ramp's gate taken with a queue waiting, and reports
 * `bytes(permits)` received every 5 ms for `ms`.
 */
async function run(ramp: PartRamp, bytes: (permits: number) => number, ms: number) {
  const held: (() => void)[] = [];
  const stop = new AbortController();
  const takers = Array.from({ length: 30 }, async () => {
    while (!stop.signal.aborted) {
      const r = await ramp.gate.acquire(stop.signal).catch(() => undefined);
      if (!r) return;
      held.push(r);
    }
  });
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    ramp.count(bytes(ramp.gate.size));
    await sleep(5);
  }
  stop.abort();
  await Promise.all(takers);
  ramp.stop();
}

Deno.test("PartRamp opens every part when more connections bring more bytes (a per-connection cap)", async () => {
  const ramp = new PartRamp(new Semaphore(12), 12, 24, { intervalMs: 40 });
  await run(ramp, (permits) => permits * 125, 400);
  assert.equal(ramp.gate.size, 24);
});

Deno.test("PartRamp goes back to the start when more connections bring nothing (a shared bottleneck)", async () => {
  const ramp = new PartRamp(new Semaphore(12), 12, 24, { intervalMs: 40 });
  await run(ramp, () => 12 * 125, 400);
  assert.equal(ramp.gate.size, 12);
});

Deno.test("rampStart() is half the limit, at least 4, never above it", () => {
  assert.equal(rampStart(24), 12);
  assert.equal(rampStart(5), 4);
  assert.equal(rampStart(2), 2);
});
