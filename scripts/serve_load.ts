#!/usr/bin/env -S deno run -A
/**
 * Load test for `haul serve`: one server process, a model with one large layer,
 * then 1 client and N concurrent clients GETting the layer with streaming SHA-256,
 * while the server's VmRSS is sampled. Everything stays on 127.0.0.1 and the run is
 * bounded (each phase is aborted after --timeout seconds).
 *
 *   deno run -A scripts/serve_load.ts [--clients 50] [--size 500M] [--timeout 600]
 *
 * Exits 1 when a digest is wrong or the server's peak RSS is over --max-rss.
 */
import { execFile } from "node:child_process";
import { rm } from "node:fs/promises";
import process from "node:process";
import { parseArgs } from "node:util";
import { makeOllamaModel, tmpDir } from "../tests/support/harness.ts";
import {
  loadBlob,
  type LoadResult,
  startServe,
  storeFixture,
} from "../tests/server/serve_fixtures.ts";

/** curl's download speed in MB/s (the server's rate without a hashing client), if curl is here. */
function curlSpeed(url: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    execFile(
      "curl",
      ["-s", "-o", "/dev/null", "-w", "%{speed_download}", "--max-time", "120", url],
      (err, stdout) => resolve(err ? undefined : Number(stdout) / 1e6),
    );
  });
}

function size(s: string): number {
  const m = /^(\d+)([KMG]?)$/i.exec(s);
  if (!m) throw new RangeError(`Invalid size ${s} (e.g. 500M)`);
  return Number(m[1]) * ({ "": 1, K: 1 << 10, M: 1 << 20, G: 1 << 30 } as Record<string, number>)[
    m[2].toUpperCase()
  ];
}

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    clients: { type: "string", default: "50" },
    size: { type: "string", default: "500M" },
    timeout: { type: "string", default: "600" },
    "max-rss": { type: "string", default: "300M" },
  },
});
const clients = Number(values.clients);
const layerSize = size(values.size);
const maxRss = size(values["max-rss"]);
const timeoutMs = Number(values.timeout) * 1000;

const dir = await tmpDir("haul-serve-load");
let server: Awaited<ReturnType<typeof startServe>> | undefined;
let failed = false;
try {
  process.stderr.write(`generating a ${(layerSize / 1e6).toFixed(0)} MB layer in ${dir}…\n`);
  const fx = makeOllamaModel({ layerSizes: [layerSize, 2000], seed: 50, dir });
  await storeFixture(`${dir}/store`, { repository: "library/load" }, fx, { move: true });
  const layer = fx.blobs[1];
  server = await startServe(`${dir}/store`);
  const url = `${server.url}/v2/library/load/blobs/${layer.digest}`;
  const pid = server.child.pid!;
  const show = (r: LoadResult) =>
    `${r.clients} client(s): ${r.ok}/${r.clients} digests right, ${r.seconds.toFixed(2)} s, ` +
    `${r.mbPerSec.toFixed(0)} MB/s aggregate, server peak RSS ${
      (r.peakRss / 2 ** 20).toFixed(0)
    } MiB`;
  const phase = (n: number) =>
    loadBlob(url, layer, { clients: n, serverPid: pid, signal: AbortSignal.timeout(timeoutMs) });

  await phase(1); // warm-up: page cache, JIT
  const one = await phase(1);
  console.log(show(one));
  const curl = await curlSpeed(url);
  if (curl) console.log(`1 client (curl to /dev/null, no hashing): ${curl.toFixed(0)} MB/s`);
  const many = await phase(clients);
  console.log(show(many));
  for (const r of [one, many]) {
    if (r.ok !== r.clients) failed = true;
    if (r.peakRss > maxRss) failed = true;
  }
  if (failed) console.log(`FAILED: wrong digests, or peak RSS over ${values["max-rss"]}`);
} finally {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
