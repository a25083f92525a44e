/**
 * Probe: the CPU that hand-offs of 1 MiB blocks to a writer cost, per GiB written into
 * the page cache (a 256 MiB file overwritten, so no new pages): through lib/disk's
 * write Worker (a postMessage round trip per block) against async writes on the
 * runtime's I/O threads (Deno.FsFile, node:fs `write`) and a plain writeSync. Prints
 * process user/sys CPU and the calling thread's own (from /proc/thread-self/stat).
 * Usage: deno run -A scripts/bench/write_probe.ts MODE [FILE]   (or: bun …)
 *   MODE: worker | fsasync | denofile | sync
 */
import * as fs from "node:fs";
import process from "node:process";
import { acquireBlockWriter } from "../../lib/disk/block_writer.ts";

const mode = process.argv[2];
const file = process.argv[3] ?? "/tmp/haul-write-probe.bin";
const N = 1024;
const SZ = 1 << 20;
const PIECE = 256 << 10;
fs.writeFileSync(file, new Uint8Array(0));
fs.truncateSync(file, 256 * SZ);
{
  const fd = fs.openSync(file, "r+");
  for (let i = 0; i < 256; i++) fs.writeSync(fd, new Uint8Array(SZ), 0, SZ, i * SZ);
  fs.closeSync(fd);
}
const thread = () => {
  const st = fs.readFileSync("/proc/thread-self/stat", "utf8");
  const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
  return [Number(f[11]) * 10, Number(f[12]) * 10];
};
const pwrite = (fd: number, b: Uint8Array, off: number, len: number, pos: number) =>
  new Promise((resolve, reject) =>
    fs.write(fd, b, off, len, pos, (e, n) => e ? reject(e) : resolve(n))
  );
let buf = new Uint8Array(SZ);
// asyncIo false: the Worker even under Deno.
const w = acquireBlockWriter({ asyncIo: false });
if (mode === "worker") buf = await w.write(file, 0, buf, SZ); // the Worker is up
const m0 = thread();
const c0 = process.cpuUsage();
const t0 = performance.now();
if (mode === "worker") {
  for (let i = 0; i < N; i++) buf = await w.write(file, (i % 256) * SZ, buf, SZ);
} else if (mode === "fsasync") {
  const fd = fs.openSync(file, "r+");
  for (let i = 0; i < N; i++) {
    for (let o = 0; o < SZ; o += PIECE) await pwrite(fd, buf, o, PIECE, (i % 256) * SZ + o);
  }
  fs.closeSync(fd);
} else if (mode === "denofile") {
  const f = await Deno.open(file, { write: true });
  for (let i = 0; i < N; i++) {
    await f.seek((i % 256) * SZ, Deno.SeekMode.Start);
    for (let o = 0; o < SZ; o += PIECE) await f.write(buf.subarray(o, o + PIECE));
  }
  f.close();
} else if (mode === "sync") {
  const fd = fs.openSync(file, "r+");
  for (let i = 0; i < N; i++) fs.writeSync(fd, buf, 0, SZ, (i % 256) * SZ);
  fs.closeSync(fd);
} else {
  console.error("MODE: worker | fsasync | denofile | sync");
  process.exit(2);
}
const c = process.cpuUsage(c0);
const m1 = thread();
console.log(
  `${"Bun" in globalThis ? "bun" : "deno"} ${mode}: 1 GiB in 1 MiB blocks, wall ${
    (performance.now() - t0).toFixed(0)
  } ms, user ${(c.user / 1e3).toFixed(0)} ms, sys ${(c.system / 1e3).toFixed(0)} ms; ` +
    `calling thread user ${m1[0] - m0[0]} ms, sys ${m1[1] - m0[1]} ms`,
);
w.close(file);
w.release();
fs.rmSync(file, { force: true });
