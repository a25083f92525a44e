/** lib/disk/file_stream.ts: byte ranges of a file as a byte stream. */
import assert from "node:assert/strict";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { openFile } from "../../lib/disk/file_stream.ts";
import { deterministicBytes, tmpDir } from "../support/harness.ts";

async function withFile(data: Uint8Array, fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await tmpDir("haul-file-stream");
  try {
    const path = join(dir, "blob");
    await writeFile(path, data);
    await fn(path);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

Deno.test("openFile() stream reads a range into a BYOB reader's own buffer", async () => {
  const data = deterministicBytes(5000, 3);
  await withFile(data, async (path) => {
    const file = (await openFile(path))!;
    const reader = file.stream(100, 4900, { readSize: 1024 }).getReader({ mode: "byob" });
    let buf = new ArrayBuffer(4096);
    const got: number[] = [];
    for (;;) {
      const r = await reader.read(new Uint8Array(buf));
      if (r.done) break;
      assert.ok(r.value.byteLength <= 1024, `read of ${r.value.byteLength} bytes`);
      assert.equal(r.value.buffer.byteLength, 4096, "the bytes land in the buffer lent");
      got.push(...r.value);
      buf = r.value.buffer as ArrayBuffer;
    }
    assert.deepEqual(new Uint8Array(got), data.subarray(100, 4900));
  });
});

Deno.test("openFile() stream gives a default reader fresh buffers of the read size", async () => {
  const data = deterministicBytes(3000, 4);
  await withFile(data, async (path) => {
    const file = (await openFile(path))!;
    const chunks: Uint8Array[] = [];
    for await (const c of file.stream(0, 3000, { readSize: 1024 })) chunks.push(c);
    assert.deepEqual(chunks.map((c) => c.byteLength), [1024, 1024, 952]);
    assert.deepEqual(new Uint8Array(chunks.flatMap((c) => [...c])), data);
  });
});
