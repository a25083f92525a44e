/** lib/server/body_reader.ts: a response body read for the socket into reused buffers. */
import assert from "node:assert/strict";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { openFile } from "../../lib/disk/file_stream.ts";
import { bodyReader } from "../../lib/server/body_reader.ts";
import { deterministicBytes, tmpDir } from "../support/harness.ts";

Deno.test("bodyReader() reads a file stream into released buffers, never into held ones", async () => {
  const dir = await tmpDir("haul-body-reader");
  try {
    const size = (3 << 20) + 12345;
    const data = deterministicBytes(size, 7);
    await writeFile(join(dir, "blob"), data);
    const file = (await openFile(join(dir, "blob")))!;
    const reader = bodyReader(file.stream(0, size));
    const got = new Uint8Array(size);
    let pos = 0;
    let held: { chunk: Uint8Array; copy: Uint8Array } | undefined;
    const released: Uint8Array[] = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      got.set(value, pos);
      pos += value.byteLength;
      // The second chunk is kept to the end; every other one is given back.
      if (!held && pos > value.byteLength) held = { chunk: value, copy: value.slice() };
      else {
        reader.release(value);
        released.push(value);
      }
    }
    assert.equal(pos, size);
    assert.deepEqual(got, data);
    assert.ok(held, "more than one chunk");
    assert.deepEqual(held.chunk, held.copy, "a held chunk is not read into");
    // A released buffer read into again was handed on (transferred): its old view is detached.
    assert.ok(released.some((c) => c.buffer.byteLength === 0), "released buffers are reused");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

Deno.test("bodyReader() reads any other body as it comes", async () => {
  const reader = bodyReader(new Response("hello, world").body!);
  const parts: string[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(new TextDecoder().decode(value));
    reader.release(value);
  }
  assert.equal(parts.join(""), "hello, world");
});
