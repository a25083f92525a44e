/**
 * Floor probe: write SIZE bytes to a new file with Deno.FsFile (no fsync), in
 * writes of BLOCK bytes (default 8 MiB, the floor).
 * Usage: floor_write.ts FILE SIZE [BLOCK]
 */
const [file, sizeArg, blockArg] = Deno.args;
const size = Number(sizeArg);
const block = Number(blockArg ?? 8 << 20);
if (!file || !Number.isSafeInteger(size) || !Number.isSafeInteger(block) || block < 1) {
  console.error("usage: floor_write.ts FILE SIZE [BLOCK]");
  Deno.exit(2);
}
const buf = new Uint8Array(block);
// Not all zeros, so no layer can special-case it.
for (let i = 0; i < buf.length; i += 4096) buf[i] = (i >> 12) & 0xff;
const f = await Deno.open(file, { write: true, create: true, truncate: true });
let done = 0;
while (done < size) {
  const want = Math.min(buf.byteLength, size - done);
  let n = 0;
  while (n < want) n += await f.write(buf.subarray(n, want));
  done += want;
}
f.close();
console.log(done);
