/**
 * download()'s `onWritten` / `onDiscarded` (what `haul serve --upstream` follows to serve a blob
 * while it lands), against the real registry: every reported range is on disk at that moment
 * with the blob's own bytes, the ranges cover the blob, and a digest mismatch is reported
 * before the bytes are fetched again.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { Buffer } from "node:buffer";
import { download, type WrittenRange } from "../../lib/download/download.ts";
import { makeOllamaModel, pushFixture, startRegistry, tmpDir } from "../support/harness.ts";
import { failTimes, startFaultProxy } from "../support/fault_proxy.ts";

const MiB = 1024 * 1024;

/** Total bytes covered by `ranges` (overlaps counted once) and whether they span [0, size). */
function coverage(ranges: WrittenRange[], size: number): { covered: number; gaps: boolean } {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  let end = 0;
  let covered = 0;
  let gaps = false;
  for (const r of sorted) {
    if (r.offset > end) gaps = true;
    const e = r.offset + r.length;
    if (e > end) {
      covered += e - Math.max(end, r.offset);
      end = e;
    }
  }
  return { covered, gaps: gaps || end !== size };
}

/** Reads `r` from its partial file now (the callback is synchronous: nothing moves meanwhile). */
function readNow(r: WrittenRange): Uint8Array {
  const buf = new Uint8Array(r.length);
  const fd = fs.openSync(r.path, "r");
  try {
    fs.readSync(fd, buf, 0, r.length, r.offset);
  } finally {
    fs.closeSync(fd);
  }
  return buf;
}

Deno.test("download() reports each large blob's bytes as they land in the partial file, and only those", async () => {
  const fx = makeOllamaModel({ layerSizes: [40 * MiB + 5, 2000], seed: 191 });
  const reg = await startRegistry();
  const dir = await tmpDir("haul-written");
  try {
    await pushFixture(reg, "lib/written", "v1", fx);
    const big = fx.blobs[1];
    const ranges: WrittenRange[] = [];
    let mismatches = 0;
    await download({
      blobs: fx.blobs.map(({ digest, size }) => ({ digest, size })),
      baseUrl: reg.url,
      repository: "lib/written",
      destDir: path.join(dir, "blobs"),
      partialDir: path.join(dir, "partial"),
      partSize: 4 * MiB,
      onWritten: (r) => {
        ranges.push(r);
        const want = big.data!.subarray(r.offset, r.offset + r.length);
        if (Buffer.compare(readNow(r), want) !== 0) mismatches++;
      },
      onDiscarded: () => assert.fail("nothing is discarded in a clean download"),
    });
    assert.ok(ranges.length > 10, `${ranges.length} ranges`);
    assert.ok(ranges.every((r) => r.digest === big.digest), "only the large blob reports");
    assert.equal(
      ranges[0].path,
      path.join(dir, "partial", `${big.digest.replace(":", "-")}-partial`),
    );
    assert.equal(mismatches, 0, "every reported range held the blob's bytes when reported");
    assert.deepEqual(coverage(ranges, big.size), { covered: big.size, gaps: false });
    assert.equal(ranges.reduce((a, r) => a + r.length, 0), big.size, "each byte reported once");
  } finally {
    await reg.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("download() reports a digest mismatch as discarded before it fetches the blob again", async () => {
  const fx = makeOllamaModel({ layerSizes: [24 * MiB], seed: 192 });
  const reg = await startRegistry();
  const dir = await tmpDir("haul-written");
  // The first ranged GET of the blob has a byte flipped: the whole digest fails once.
  const proxy = await startFaultProxy(reg.url, {
    rule: failTimes(1, (r) => r.method === "GET" && /\/blobs\//.test(r.url) && !!r.headers.range, {
      flipByteAt: 100,
    }),
  });
  try {
    await pushFixture(reg, "lib/flip", "v1", fx);
    const big = fx.blobs[1];
    const events: string[] = [];
    let after: WrittenRange[] = [];
    await download({
      blobs: [{ digest: big.digest, size: big.size }],
      baseUrl: proxy.url,
      repository: "lib/flip",
      destDir: dir,
      partSize: 4 * MiB,
      retry: { baseDelayMs: 1 },
      onWritten: (r) => {
        if (events.at(-1) !== "written") events.push("written");
        after.push(r);
      },
      onDiscarded: (digest) => {
        assert.equal(digest, big.digest);
        events.push("discarded");
        after = [];
      },
    });
    assert.deepEqual(events, ["written", "discarded", "written"]);
    assert.deepEqual(coverage(after, big.size), { covered: big.size, gaps: false });
  } finally {
    await proxy.stop();
    await reg.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
