/**
 * Serving a blob while it lands (lib/server/blob_fill.ts, fill_response.ts): the real download
 * engine fetches from the real registry through a fault proxy (slowed, counted, corrupting on
 * demand) into a store, and clients GET the blob from a real `serve()` meanwhile.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { download } from "../../lib/download/download.ts";
import { pull } from "../../lib/ops/pull.ts";
import { BlobFills } from "../../lib/server/blob_fill.ts";
import { fillResponse } from "../../lib/server/fill_response.ts";
import { type HttpServer, serve } from "../../lib/server/http_server.ts";
import {
  type FixtureBlob,
  makeOllamaModel,
  pushFixture,
  type Registry,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { always, failTimes, type FaultRule, startFaultProxy } from "../support/fault_proxy.ts";

const MiB = 1 << 20;
const isBlobGet = (r: { method: string; url: string }) =>
  r.method === "GET" && r.url.includes("/blobs/");

interface Rig {
  dir: string;
  fills: BlobFills;
  server: HttpServer;
  url: string;
  /** Starts (or joins) the fill; resolves with the engine's outcome. */
  start(): Promise<unknown>;
  proxyUrl: string;
  upstreamBytes(): number;
  stop(): Promise<void>;
}

/** A store, the engine behind `rule`, and a server answering GET /blob from the fill. */
async function rig(reg: Registry, blob: FixtureBlob, rule: FaultRule): Promise<Rig> {
  const dir = await tmpDir("haul-fill");
  const proxy = await startFaultProxy(reg.url, { rule });
  const blobPath = (d: string) => path.join(dir, "blobs", d.replace(":", "-"));
  const fills = new BlobFills({ blobPath });
  let outcome: Promise<unknown> = Promise.resolve();
  const start = () => {
    let settle!: (v: unknown) => void;
    const p = new Promise((r) => (settle = r));
    fills.run(blob.digest, blob.size, async () => {
      try {
        await download({
          blobs: [{ digest: blob.digest, size: blob.size }],
          baseUrl: proxy.url,
          repository: "lib/fill",
          destDir: path.join(dir, "blobs"),
          partialDir: path.join(dir, "partial"),
          partSize: 4 * MiB,
          retry: { maxRetries: 1, baseDelayMs: 1 },
          ...fills.hooks,
        });
        settle("ok");
      } catch (err) {
        settle(err);
        throw err;
      }
    });
    outcome = p;
    return p;
  };
  const server = await serve(async (req) => {
    // GET /blob (the rig's blob) or /blobs/<digest> (any blob of the store).
    const m = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(new URL(req.url).pathname);
    const digest = m ? m[1] : blob.digest;
    const fill = fills.get(digest);
    const size = fill?.size ?? (await fsp.stat(blobPath(digest)).catch(() => undefined))?.size;
    if (size === undefined) return new Response("{}", { status: 404 });
    const range = parseRange(req.headers.get("range"), size);
    const res = fill ? await fillResponse(req, fill, range, { headerWaitMs: 3000 }) : undefined;
    if (res) return res;
    const bytes = await fsp.readFile(blobPath(digest)).catch(() => undefined);
    if (!bytes) return new Response("{}", { status: 404 });
    const [s, e] = range ? [range.start, range.end] : [0, size];
    return new Response(new Uint8Array(bytes.subarray(s, e)), { status: range ? 206 : 200 });
  }, { port: 0 });
  return {
    dir,
    fills,
    server,
    url: `http://127.0.0.1:${server.port}/blob`,
    start,
    proxyUrl: proxy.url,
    upstreamBytes: () => proxy.bytesOut(/\/blobs\//),
    stop: async () => {
      await outcome;
      await server.shutdown();
      await proxy.stop();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}

/** GETs `url` (with `range`), hashing the body; a cut body is `cut: true`. */
async function get(url: string, range?: string) {
  const res = await fetch(url, { headers: range ? { range } : {} });
  const hash = createHash("sha256");
  let bytes = 0;
  let cut = false;
  try {
    for await (const chunk of res.body!) {
      hash.update(chunk);
      bytes += chunk.byteLength;
    }
  } catch {
    cut = true;
  }
  const length = res.headers.get("content-length");
  return {
    status: res.status,
    bytes,
    cut: cut || (length !== null && bytes !== Number(length)),
    digest: `sha256:${hash.digest("hex")}`,
    location: res.headers.get("location"),
  };
}

/** `bytes=A-B` / `bytes=A-` as [start, end) (the forms these tests send). */
function parseRange(h: string | null, size: number): { start: number; end: number } | undefined {
  const m = h === null ? null : /^bytes=(\d+)-(\d*)$/.exec(h);
  return m ? { start: Number(m[1]), end: m[2] ? Number(m[2]) + 1 : size } : undefined;
}

const sha = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

Deno.test("a blob still landing: 8 whole GETs and Range GETs get the right bytes, fetched upstream once", async () => {
  const fx = makeOllamaModel({ layerSizes: [40 * MiB + 3], seed: 201 });
  const blob = fx.blobs[1];
  const reg = await startRegistry();
  await pushFixture(reg, "lib/fill", "v1", fx);
  // 4 MiB parts at 4 MiB/s each: the blob takes about a second to land.
  const r = await rig(reg, blob, always(isBlobGet, { rateBytesPerSec: 4 * MiB }));
  try {
    const done = r.start();
    const fill = r.fills.get(blob.digest)!;
    // The first MiB is on disk long before the blob is: its Range GET ends while it fills.
    const first = await get(r.url, "bytes=0-1048575");
    assert.equal(first.status, 206);
    assert.equal(first.digest, sha(blob.data!.subarray(0, MiB)));
    assert.equal(fill.state, "filling", "the range was answered while the blob still landed");
    const wholes = Array.from({ length: 8 }, () => get(r.url));
    const last = get(r.url, `bytes=${blob.size - 5 * MiB}-`);
    const results = await Promise.all([...wholes, last]);
    assert.equal(await done, "ok");
    for (const w of results.slice(0, 8)) {
      assert.deepEqual({ status: w.status, cut: w.cut, digest: w.digest }, {
        status: 200,
        cut: false,
        digest: blob.digest,
      });
      assert.equal(w.location, r.url, "a 200 names itself in Location (stock Ollama needs it)");
    }
    assert.equal(results[8].status, 206);
    assert.equal(results[8].digest, sha(blob.data!.subarray(blob.size - 5 * MiB)));
    assert.equal(r.upstreamBytes(), blob.size, "the upstream sent the blob's bytes once");
    const stored = await fsp.readFile(path.join(r.dir, "blobs", blob.digest.replace(":", "-")));
    assert.equal(sha(stored), blob.digest);
  } finally {
    await r.stop();
    await reg.stop();
  }
});

Deno.test("a blob whose upstream bytes are corrupt: clients get an error or a cut body, never the whole bad blob", async () => {
  const fx = makeOllamaModel({ layerSizes: [24 * MiB], seed: 202 });
  const blob = fx.blobs[1];
  const reg = await startRegistry();
  await pushFixture(reg, "lib/fill", "v1", fx);
  // Every blob response has a byte flipped: the digest fails, the start over fails too.
  const r = await rig(reg, blob, always(isBlobGet, { flipByteAt: 1000, rateBytesPerSec: 8 * MiB }));
  try {
    const done = r.start();
    const results = await Promise.all([
      ...Array.from({ length: 4 }, () => get(r.url)),
      get(r.url, "bytes=0-1023"),
      get(r.url, `bytes=${blob.size - 100}-`),
    ]);
    assert.ok(await done instanceof Error, "the fill fails");
    for (const res of results.slice(0, 4)) {
      assert.ok(res.status >= 400 || res.cut, `whole GET: ${JSON.stringify(res)}`);
    }
    // The tail range holds the blob's last byte: it can never complete.
    assert.ok(results[5].status >= 400 || results[5].cut, JSON.stringify(results[5]));
    // Arrived after the failure: a registry error at once.
    const late = await fetch(r.url);
    assert.equal(late.status, 404, "no fill, no blob: the store does not have it");
    await late.body?.cancel();
    const names = await fsp.readdir(path.join(r.dir, "blobs")).catch(() => []);
    assert.deepEqual(names.filter((n) => n.startsWith("sha256-") && !n.includes("partial")), []);
  } finally {
    await r.stop();
    await reg.stop();
  }
});

Deno.test("a fill that discards its bytes once: responses that had sent some are cut, the rest verified", async () => {
  const fx = makeOllamaModel({ layerSizes: [24 * MiB], seed: 203 });
  const blob = fx.blobs[1];
  const reg = await startRegistry();
  await pushFixture(reg, "lib/fill", "v1", fx);
  // The first ranged GET is corrupt: the whole digest fails once and the blob starts over.
  const once = failTimes(1, (q) => isBlobGet(q) && !!q.headers.range, {
    flipByteAt: 10,
    rateBytesPerSec: 8 * MiB,
  });
  const r = await rig(
    reg,
    blob,
    (req, i) => once(req, i) ?? (isBlobGet(req) ? { rateBytesPerSec: 8 * MiB } : undefined),
  );
  try {
    const done = r.start();
    const early = get(r.url); // streams the first round's bytes
    assert.equal(await done, "ok");
    const after = await get(r.url);
    const e = await early;
    assert.ok(e.cut || e.digest === blob.digest, `never a whole wrong blob: ${JSON.stringify(e)}`);
    assert.equal(e.status, 200);
    assert.ok(e.cut, "the response that streamed the discarded bytes was cut");
    assert.deepEqual({ status: after.status, digest: after.digest }, {
      status: 200,
      digest: blob.digest,
    });
  } finally {
    await r.stop();
    await reg.stop();
  }
});

Deno.test("a pull()'s blobs are fills from expect() on: clients stream them while it runs, upstream sends them once", async () => {
  const fx = makeOllamaModel({ layerSizes: [32 * MiB + 11, 300, 2000], seed: 204 });
  const reg = await startRegistry();
  await pushFixture(reg, "lib/fill", "v1", fx);
  const r = await rig(reg, fx.blobs[1], always(isBlobGet, { rateBytesPerSec: 4 * MiB }));
  try {
    const watch = r.fills.pullWatch();
    watch.expect(fx.blobs.map(({ digest, size }) => ({ digest, size })));
    const pulled = pull(`${r.proxyUrl.replace("http://", "")}/lib/fill:v1`, {
      insecure: true,
      modelsDir: r.dir,
      partSize: 4 * MiB,
      ...watch,
    }).then(() => watch.settle(), (err) => watch.settle(err));
    const base = `http://127.0.0.1:${r.server.port}/blobs/`;
    const results = await Promise.all(
      fx.blobs.flatMap((b) => [get(base + b.digest), get(base + b.digest)]),
    );
    await pulled;
    assert.deepEqual(
      results.map((x) => [x.status, x.cut, x.digest]),
      fx.blobs.flatMap((b) => [[200, false, b.digest], [200, false, b.digest]]),
    );
    assert.equal(r.upstreamBytes(), fx.blobs.reduce((a, b) => a + b.size, 0), "once each");
    assert.equal(r.fills.get(fx.blobs[1].digest), undefined, "the fill ended with the pull");
  } finally {
    await r.stop();
    await reg.stop();
  }
});
