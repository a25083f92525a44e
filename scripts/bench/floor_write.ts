/**
 * Floor probe: write SIZE bytes to a new file in 8 MiB writes with Deno.FsFile
 * (no fsync), the fastest file writes measured in Deno here.
 * Usage: floor_write.ts FILE SIZE
 */
const [file, sizeArg] = Deno.args;
const size = Number(sizeArg);
if (!file || !Number.isSafeInteger(size)) {
  console.error("usage: floor_write.ts FILE SIZE");
  Deno.exit(2);
}
const buf = new Uint8Array(8 << 20);
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
