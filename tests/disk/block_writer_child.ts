/**
 * Child of block_writer_test.ts: writes through a block writer, releases it
 * while the write is in flight, then awaits the write and returns without
 * calling exit: the process ends only if the Worker was stopped.
 */
import * as fs from "node:fs";
import process from "node:process";
import { acquireBlockWriter } from "../../lib/disk/block_writer.ts";

// Runs under Deno and (the --chunks modes) under Bun: process.argv, not Deno.args.
const [file, mode] = process.argv.slice(2);
fs.writeFileSync(file, new Uint8Array(0));
fs.truncateSync(file, 8 << 20);
const w = acquireBlockWriter({ asyncIo: mode === "--concurrent" || mode === "--chunks-async" });
if (mode === "--chunks" || mode === "--chunks-async") {
  // A first write waits for the worker to be up, so the batch goes through it (--chunks).
  await w.write(file, 0, new Uint8Array(4096), 4096);
  // Two batches of chunks, as a fetch body without BYOB hands them out: buffers of their
  // own, and (the second batch) views into one shared buffer and into a larger one.
  const own = [3, 200_000, 70_001].map((n, i) => new Uint8Array(n).fill(i + 1));
  const shared = new Uint8Array(300_000);
  for (let i = 0; i < 3; i++) shared.fill(4 + i, i * 100_000, (i + 1) * 100_000);
  const views = [0, 1, 2].map((i) => shared.subarray(i * 100_000, (i + 1) * 100_000));
  const big = new Uint8Array(1 << 20).fill(9);
  views.push(big.subarray(10, 500_010));
  const first = own.reduce((a, c) => a + c.byteLength, 0);
  await Promise.all([
    w.writeChunks(file, 4096, own),
    w.writeChunks(file, 4096 + first, views),
  ]);
  w.close(file);
  w.release();
  const detached = own.filter((c) => c.byteLength === 0).length;
  console.log(`chunks: ${own.length + views.length} written, ${detached} taken over`);
} else if (mode === "--concurrent") {
  // Eight 1 MiB blocks at once, in reverse order, each filled with its number.
  const bufs = Array.from({ length: 8 }, (_, i) => new Uint8Array(1 << 20).fill(i + 1));
  const back = await Promise.all(bufs.map((b, i) => w.write(file, (7 - i) << 20, b, b.byteLength)));
  w.close(file);
  w.release();
  // Lent back: each buffer is the caller's again, with what it held.
  const ok = back.every((b, i) => b.byteLength === 1 << 20 && b[0] === i + 1);
  console.log(`concurrent: ${back.length} blocks of ${ok ? 1 << 20 : 0} lent back`);
} else {
  // A first write waits for the worker to be up, so the next one goes through it.
  await w.write(file, 0, new Uint8Array(4096), 4096);
  const buf = new Uint8Array(8 << 20).fill(7);
  const inFlight = w.write(file, 0, buf, buf.byteLength);
  w.release();
  const back = await inFlight;
  w.close(file);
  console.log(`written ${back.byteLength} via ${buf.byteLength === 0 ? "worker" : "inline"}`);
}
