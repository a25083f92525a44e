/**
 * Child of block_writer_test.ts: writes through a block writer, releases it
 * while the write is in flight, then awaits the write and returns without
 * calling exit: the process ends only if the Worker was stopped.
 */
import * as fs from "node:fs";
import { acquireBlockWriter } from "../../lib/disk/block_writer.ts";

const file = Deno.args[0];
fs.writeFileSync(file, new Uint8Array(0));
fs.truncateSync(file, 8 << 20);
const w = acquireBlockWriter();
// A first write waits for the worker to be up, so the next one goes through it.
await w.write(file, 0, new Uint8Array(4096), 4096);
const buf = new Uint8Array(8 << 20).fill(7);
const inFlight = w.write(file, 0, buf, buf.byteLength);
w.release();
const back = await inFlight;
w.close(file);
console.log(`written ${back.byteLength} via ${buf.byteLength === 0 ? "worker" : "inline"}`);
