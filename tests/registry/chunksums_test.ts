import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  type Chunksum,
  computeChunksums,
  fetchChunksums,
  formatChunksums,
  MAX_CHUNKSUMS_BYTES,
} from "../../lib/registry/chunksums.ts";
import { parseChunksums } from "../../lib/registry/chunksums.ts";
import { IntegrityError, RegistryError } from "../../lib/errors.ts";
import { tmpDir } from "../support/harness.ts";

const sha = (b: Uint8Array | string) => "sha256:" + createHash("sha256").update(b).digest("hex");
const D1 = sha("one");
const D2 = sha("two");
const BLOB = sha("blob");

function rejects(text: string, size: number, pattern: RegExp) {
  assert.throws(() => parseChunksums(text, size), (err: unknown) => {
    assert.ok(err instanceof IntegrityError, `IntegrityError for ${JSON.stringify(text)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("parseChunksums() reads Ollama's lines", () => {
  assert.deepEqual(parseChunksums(`${D1} 0-9\n${D2} 10-14\n`, 15), [
    { digest: D1, start: 0, end: 9 },
    { digest: D2, start: 10, end: 14 },
  ]);
});

Deno.test("parseChunksums() accepts any whitespace between words, like Go's ScanWords", () => {
  assert.deepEqual(parseChunksums(`  ${D1}\t0-9 \r\n\n${D2}   10-14`, 15).length, 2);
});

Deno.test("parseChunksums() gives an empty blob no chunks", () => {
  assert.deepEqual(parseChunksums("", 0), []);
  assert.deepEqual(parseChunksums("\n", 0), []);
});

Deno.test("parseChunksums() refuses gaps, overlaps and short or long coverage", () => {
  rejects(`${D1} 0-9\n${D2} 11-14\n`, 15, /starts at 11, expected 10/);
  rejects(`${D1} 0-9\n${D2} 9-14\n`, 15, /starts at 9, expected 10/);
  rejects(`${D1} 1-14\n`, 15, /starts at 1, expected 0/);
  rejects(`${D1} 0-9\n`, 15, /cover 10 of the blob's 15 bytes/);
  rejects(`${D1} 0-15\n`, 15, /ends past the blob's last byte 14/);
  rejects("", 1, /cover 0 of the blob's 1 bytes/);
});

Deno.test("parseChunksums() refuses malformed words", () => {
  rejects(`${D1}`, 1, /without a range/);
  rejects(`sha256:ABC 0-0`, 1, /invalid digest/);
  rejects(`${D1.toUpperCase()} 0-0`, 1, /invalid digest/);
  rejects(`md5:abc 0-0`, 1, /invalid digest/);
  rejects(`${D1} 0_0`, 1, /invalid range/);
  rejects(`${D1} -1-0`, 1, /invalid range/);
  rejects(`${D1} 00-0`, 1, /invalid range/);
  rejects(`${D1} 0-+1`, 2, /invalid range/);
  rejects(`${D1} 5-4`, 10, /ends before it starts/);
  rejects(`${D1} 0-99999999999999999`, 10, /invalid range/);
});

Deno.test("parseChunksums() caps the body size", () => {
  rejects(" ".repeat(MAX_CHUNKSUMS_BYTES + 1), 0, /over the .*-byte limit/);
});

Deno.test("parseChunksums() rejects a bad size with RangeError", () => {
  assert.throws(() => parseChunksums("", -1), RangeError);
  assert.throws(() => parseChunksums("", 1.5), RangeError);
});

Deno.test("formatChunksums() round-trips through parseChunksums()", () => {
  const chunks: Chunksum[] = [{ digest: D1, start: 0, end: 4 }, { digest: D2, start: 5, end: 5 }];
  const text = formatChunksums(chunks);
  assert.equal(text, `${D1} 0-4\n${D2} 5-5\n`);
  assert.deepEqual(parseChunksums(text, 6), chunks);
});

Deno.test("computeChunksums() hashes each chunk of a file with a small buffer", async () => {
  const dir = await tmpDir("haul-chunksums");
  try {
    const data = new Uint8Array(300_000).map((_, i) => (i * 7) & 0xff);
    const file = join(dir, "blob");
    await writeFile(file, data);
    const { size, chunks } = await computeChunksums(file, { chunkSize: 100_000, readSize: 4096 });
    assert.equal(size, data.length);
    assert.deepEqual(chunks, [
      { digest: sha(data.subarray(0, 100_000)), start: 0, end: 99_999 },
      { digest: sha(data.subarray(100_000, 200_000)), start: 100_000, end: 199_999 },
      { digest: sha(data.subarray(200_000)), start: 200_000, end: 299_999 },
    ]);
    const odd = await computeChunksums(file, { chunkSize: 299_999 });
    assert.deepEqual(odd.chunks.map((c) => [c.start, c.end]), [[0, 299_998], [299_999, 299_999]]);
    await writeFile(file, new Uint8Array());
    assert.deepEqual((await computeChunksums(file)).chunks, []);
    await assert.rejects(computeChunksums(file, { chunkSize: 0 }), RangeError);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** A fetch answering every request with `respond`, recording URLs. */
function fakeFetch(respond: (req: Request) => Response) {
  const urls: string[] = [];
  return {
    urls,
    fetch: (req: Request) => {
      urls.push(req.url);
      return Promise.resolve(respond(req));
    },
  };
}

const blob = { repository: "library/tiny", digest: BLOB, size: 15 };
const body = `${D1} 0-9\n${D2} 10-14\n`;

Deno.test("fetchChunksums() GETs the endpoint and resolves Content-Location", async () => {
  const f = fakeFetch(() =>
    new Response(body, { headers: { "content-location": "/v2/library/tiny/blobs/" + BLOB } })
  );
  const got = await fetchChunksums({ baseUrl: "http://reg:5000/", fetch: f.fetch }, blob);
  assert.deepEqual(f.urls, [`http://reg:5000/v2/library/tiny/chunksums/${BLOB}`]);
  assert.equal(got?.url, `http://reg:5000/v2/library/tiny/blobs/${BLOB}`);
  assert.equal(got?.chunks.length, 2);
});

Deno.test("fetchChunksums() defaults the URL to the registry's blob URL", async () => {
  const f = fakeFetch(() => new Response(body));
  const got = await fetchChunksums({ baseUrl: "https://reg", fetch: f.fetch }, blob);
  assert.equal(got?.url, `https://reg/v2/library/tiny/blobs/${BLOB}`);
});

Deno.test("fetchChunksums() keeps an absolute CDN Content-Location", async () => {
  const cdn = "https://cdn.example/b/xyz?sig=1";
  const f = fakeFetch(() => new Response(body, { headers: { "content-location": cdn } }));
  const got = await fetchChunksums({ baseUrl: "https://reg", fetch: f.fetch }, blob);
  assert.equal(got?.url, cdn);
});

Deno.test("fetchChunksums() returns undefined when the registry has no chunksums", async () => {
  for (const status of [404, 405, 501]) {
    const f = fakeFetch(() => new Response('{"errors":[]}', { status }));
    assert.equal(await fetchChunksums({ baseUrl: "http://r", fetch: f.fetch }, blob), undefined);
  }
});

Deno.test("fetchChunksums() raises RegistryError on other HTTP errors", async () => {
  const f = fakeFetch(() =>
    new Response('{"errors":[{"code":"DENIED","message":"no"}]}', { status: 403 })
  );
  await assert.rejects(
    fetchChunksums({ baseUrl: "http://r", fetch: f.fetch }, blob),
    (e: unknown) => e instanceof RegistryError && e.status === 403 && /DENIED/.test(e.message),
  );
});

Deno.test("fetchChunksums() refuses unsafe Content-Locations", async () => {
  for (const loc of ["file:///etc/passwd", "http://evil.example/x", "ftp://x/y"]) {
    const f = fakeFetch(() => new Response(body, { headers: { "content-location": loc } }));
    await assert.rejects(
      fetchChunksums({ baseUrl: "https://reg", fetch: f.fetch }, blob),
      (e: unknown) => e instanceof IntegrityError && /unsafe Content-Location/.test(e.message),
      loc,
    );
  }
});

Deno.test("fetchChunksums() caps the response by Content-Length and by bytes read", async () => {
  const big = fakeFetch(() => new Response("x", { headers: { "content-length": "999999999" } }));
  await assert.rejects(
    fetchChunksums({ baseUrl: "http://r", fetch: big.fetch }, blob),
    /over the 8388608-byte limit/,
  );
  const stream = fakeFetch(() => new Response(new TextEncoder().encode(body + " ".repeat(100))));
  await assert.rejects(
    fetchChunksums({ baseUrl: "http://r", fetch: stream.fetch }, blob, { maxBytes: 64 }),
    (e: unknown) => e instanceof IntegrityError && /over the 64-byte limit/.test(e.message),
  );
});

Deno.test("fetchChunksums() validates the chunks against the blob size", async () => {
  const f = fakeFetch(() => new Response(body));
  await assert.rejects(
    fetchChunksums({ baseUrl: "http://r", fetch: f.fetch }, { ...blob, size: 16 }),
    (e: unknown) =>
      e instanceof IntegrityError && /cover 15 of the blob's 16 bytes/.test(e.message),
  );
});
