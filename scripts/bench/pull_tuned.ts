/**
 * Pulls REF with library tuning given as JSON (for RSS/speed experiments):
 * pull_tuned.ts DIR REF '{"bufferSize":262144,"concurrency":8}'
 * Prints wall ms and peak RSS (VmHWM) of this process to stderr.
 */
import { pull } from "../../lib/mod.ts";
import * as fs from "node:fs";

const [dir, ref, json] = process.argv.slice(2);
const t0 = performance.now();
await pull(ref, { modelsDir: dir, insecure: true, ...(json ? JSON.parse(json) : {}) });
const hwm = /VmHWM:\s+(\d+)/.exec(fs.readFileSync("/proc/self/status", "utf8"))?.[1];
console.error(
  `wall ${Math.round(performance.now() - t0)} ms, peak RSS ${Math.round(Number(hwm) / 1024)} MB`,
);
