/** lib/download/plan_parts.ts: parts and the written-without-a-gap watermark. */
import assert from "node:assert/strict";
import { type Part, planParts, watermark } from "../../lib/download/plan_parts.ts";

Deno.test("planParts() covers the blob with parts of the part size, the last one shorter", () => {
  assert.deepEqual(planParts(10, 4).map((p) => [p.offset, p.size]), [[0, 4], [4, 4], [8, 2]]);
});

Deno.test("watermark() stops at the first gap, inside the part being written", () => {
  const parts = planParts(12, 4);
  parts[0].done = 4;
  parts[1].done = 3;
  parts[2].done = 4;
  assert.equal(watermark(parts), 7);
});

Deno.test("watermark() counts a chunk being written, and a complete chunk only once checked", () => {
  const chunk = (offset: number, done: number, verified?: boolean): Part => ({
    offset,
    size: 4,
    done,
    digest: `sha256:${String(offset).padStart(64, "0")}`,
    ...(verified === undefined ? {} : { verified }),
  });
  // The first chunk taken, the second being written: the hash may read what is written.
  assert.equal(watermark([chunk(0, 4, true), chunk(4, 3), chunk(8, 4, true)]), 7);
  // A complete chunk not yet checked (a resume, a whole-digest mismatch) holds the hash back.
  assert.equal(watermark([chunk(0, 4, true), chunk(4, 4, false), chunk(8, 4, true)]), 4);
  assert.equal(watermark([chunk(0, 4, true), chunk(4, 4, true), chunk(8, 4, true)]), 12);
});
