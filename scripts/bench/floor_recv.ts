/**
 * Floor probe: receive a blob over HTTP into nowhere with N parallel Range GETs
 * (default 4), using the runtime's fetch. What the network path alone costs.
 * Usage: floor_recv.ts URL SIZE [PARTS]
 */
const [url, sizeArg, partsArg] = Deno.args;
const size = Number(sizeArg);
const parts = Number(partsArg ?? 4);
if (!url || !Number.isSafeInteger(size) || !(parts >= 1)) {
  console.error("usage: floor_recv.ts URL SIZE [PARTS]");
  Deno.exit(2);
}
const step = Math.ceil(size / parts);
const got = await Promise.all(
  Array.from({ length: parts }, async (_, i) => {
    const start = i * step;
    const end = Math.min(size, start + step) - 1;
    if (start > end) return 0;
    const res = await fetch(url, { headers: { range: `bytes=${start}-${end}` } });
    if (res.status !== 206) throw new Error(`GET ${url} bytes=${start}-${end}: ${res.status}`);
    const reader = res.body!.getReader();
    let n = 0;
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      n += r.value.byteLength;
    }
    return n;
  }),
);
const total = got.reduce((a, b) => a + b, 0);
if (total !== size) {
  console.error(`received ${total} bytes, expected ${size}`);
  Deno.exit(1);
}
console.log(total);
