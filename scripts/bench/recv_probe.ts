/**
 * Probe: what receiving a blob costs the runtime's fetch alone, the way the range
 * downloader reads it: 16 MiB Range parts, 12 in flight, each body read into a 1 MiB
 * buffer (BYOB where the runtime has it, else the default reader's chunks copied in),
 * optionally written where they go (W=file: Deno.FsFile seek + 256 KiB writes per
 * full buffer). Prints reads, their mean size, wall, process and main-thread CPU.
 * Usage: deno run -A scripts/bench/recv_probe.ts URL SIZE [byob|default]   (or: bun …)
 *   env W=file (Deno) to write each full buffer to /tmp/haul-recv-probe.bin
 */
import * as fs from "node:fs";
import process from "node:process";

const [url, sizeArg, mode = "byob"] = process.argv.slice(2);
const size = Number(sizeArg);
if (!url || !Number.isSafeInteger(size)) {
  console.error("usage: recv_probe.ts URL SIZE [byob|default]");
  process.exit(2);
}
const PART = 16 << 20;
const INFLIGHT = 12;
const BUF = 1 << 20;
const PIECE = 256 << 10;
const OUT = "/tmp/haul-recv-probe.bin";
const write = process.env.W === "file";
if (write) {
  fs.writeFileSync(OUT, "");
  fs.truncateSync(OUT, size);
}
// deno-lint-ignore no-explicit-any
const D = (globalThis as any).Deno;

/** [user, sys] ms of the calling thread. */
function thread(): [number, number] {
  const st = fs.readFileSync("/proc/thread-self/stat", "utf8");
  const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
  return [Number(f[11]) * 10, Number(f[12]) * 10];
}

let next = 0;
let reads = 0;
let got = 0;

async function stream(): Promise<void> {
  let buf = new Uint8Array(BUF);
  const f = write ? await D.open(OUT, { write: true }) : undefined;
  try {
    for (;;) {
      const start = next;
      if (start >= size) return;
      next += PART;
      const end = Math.min(size, start + PART) - 1;
      const res = await fetch(url, { headers: { range: `bytes=${start}-${end}` } });
      let filled = 0;
      let at = start;
      const full = async () => {
        if (f) {
          await f.seek(at, 0);
          for (let n = 0; n < filled; n += PIECE) {
            await f.write(buf.subarray(n, Math.min(filled, n + PIECE)));
          }
        }
        at += filled;
        filled = 0;
      };
      if (mode === "byob") {
        const r = res.body!.getReader({ mode: "byob" });
        for (;;) {
          const x = await r.read(new Uint8Array(buf.buffer, filled, BUF - filled));
          if (x.value) buf = new Uint8Array(x.value.buffer, 0, BUF);
          if (x.done) break;
          reads++;
          got += x.value.byteLength;
          filled += x.value.byteLength;
          if (filled === BUF) await full();
        }
      } else {
        const r = res.body!.getReader();
        for (;;) {
          const x = await r.read();
          if (x.done) break;
          reads++;
          got += x.value.byteLength;
          let c = x.value;
          while (c.byteLength) {
            const n = Math.min(c.byteLength, BUF - filled);
            buf.set(c.subarray(0, n), filled);
            filled += n;
            c = c.subarray(n);
            if (filled === BUF) await full();
          }
        }
      }
      if (filled) await full();
    }
  } finally {
    f?.close();
  }
}

const t0 = performance.now();
const c0 = process.cpuUsage();
const th0 = thread();
await Promise.all(Array.from({ length: INFLIGHT }, stream));
const c = process.cpuUsage(c0);
const th = thread();
if (got !== size) {
  console.error(`received ${got} bytes, expected ${size}`);
  process.exit(1);
}
console.log(
  `${mode}${write ? " + FsFile writes" : ""}: ${reads} reads of ${
    (got / reads / 1024).toFixed(1)
  } KiB; wall ${((performance.now() - t0) / 1000).toFixed(2)} s; process user ${
    (c.user / 1e6).toFixed(2)
  } sys ${(c.system / 1e6).toFixed(2)}; main thread user ${(th[0] - th0[0]) / 1000} sys ${
    (th[1] - th0[1]) / 1000
  }`,
);
if (write) fs.rmSync(OUT, { force: true });
