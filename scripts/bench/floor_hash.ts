/**
 * Floor probe: SHA-256 of a file read from the page cache with node:crypto, in
 * 8 MiB reads. Usage: floor_hash.ts FILE
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";

const file = Deno.args[0];
if (!file) {
  console.error("usage: floor_hash.ts FILE");
  Deno.exit(2);
}
const fd = fs.openSync(file, "r");
const buf = new Uint8Array(8 << 20);
const hash = createHash("sha256");
for (;;) {
  const n = fs.readSync(fd, buf, 0, buf.byteLength, null);
  if (n <= 0) break;
  hash.update(n === buf.byteLength ? buf : buf.subarray(0, n));
}
fs.closeSync(fd);
console.log("sha256:" + hash.digest("hex"));
