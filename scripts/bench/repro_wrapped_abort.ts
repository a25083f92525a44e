/**
 * Reproduces a Deno behaviour found by the P6 benchmark (a stalled part that
 * never recovers): when a fetch Response is re-wrapped with
 * `new Response(res.body, …)` (as lib/transport/fetch.ts's withFinalUrl does),
 * aborting the fetch's signal sometimes leaves a pending `reader.read()` on the
 * wrapped body unsettled forever. Cancelling the reader itself always settles it.
 *
 * Usage: deno run -A scripts/bench/repro_wrapped_abort.ts [TRIES]
 * Prints, per variant, how many of TRIES reads were still pending 3 s after abort.
 */
import * as http from "node:http";

const tries = Number(Deno.args[0] ?? 20);
const srv = http.createServer((_req, res) => {
  res.writeHead(200, { "content-length": String(16 << 20) });
  let sent = 0; // 1 MiB in 16 KiB writes, then nothing: a stalled server
  const tick = () => {
    if (sent >= 1 << 20) return;
    res.write(new Uint8Array(16384));
    sent += 16384;
    setImmediate(tick);
  };
  tick();
});
await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
const port = (srv.address() as { port: number }).port;

type Variant = { wrap: boolean; byob: boolean; cancelReader: boolean };
async function once(v: Variant): Promise<boolean> {
  const ac = new AbortController();
  let res = await fetch(`http://127.0.0.1:${port}/`, { signal: ac.signal });
  if (v.wrap) res = new Response(res.body, { status: res.status, headers: res.headers });
  const reader = v.byob ? res.body!.getReader({ mode: "byob" }) : res.body!.getReader();
  let lastByte = Date.now();
  const timer = setInterval(() => {
    if (Date.now() - lastByte < 300) return;
    const why = new Error("stall");
    ac.abort(why);
    if (v.cancelReader) reader.cancel(why).catch(() => {});
  }, 100);
  const read = (async () => {
    try {
      let buf = new Uint8Array(1 << 20);
      for (;;) {
        if (v.byob) {
          const r = await (reader as ReadableStreamBYOBReader).read(new Uint8Array(buf.buffer));
          if (r.done) return;
          buf = new Uint8Array(r.value.buffer);
        } else {
          const r = await (reader as ReadableStreamDefaultReader<Uint8Array>).read();
          if (r.done) return;
        }
        lastByte = Date.now();
      }
    } catch { /* settled: good */ }
  })();
  const hung = await Promise.race([
    read.then(() => false),
    new Promise<boolean>((r) => setTimeout(() => r(true), 3000)),
  ]);
  clearInterval(timer);
  return hung;
}

for (const wrap of [false, true]) {
  for (const byob of [false, true]) {
    for (const cancelReader of [false, true]) {
      let hung = 0;
      for (let i = 0; i < tries; i++) if (await once({ wrap, byob, cancelReader })) hung++;
      console.log(
        `${wrap ? "new Response(res.body)" : "fetch Response      "} ${
          byob ? "BYOB   " : "default"
        } reader, on stall: abort${
          cancelReader ? " + reader.cancel()" : "            "
        }: ${hung}/${tries} reads hung`,
      );
    }
  }
}
srv.closeAllConnections();
srv.close();
Deno.exit(0);
