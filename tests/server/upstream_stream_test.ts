/**
 * `haul serve --upstream` serves a model while it lands: the `haul serve` process in front of
 * the real registry, behind a fault proxy that slows (and counts, and corrupts) what the
 * upstream sends; clients are fetch() and `haul pull`.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  makeOllamaModel,
  pushFixture,
  runCli,
  sha256File,
  sleep,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { always, anyRule, startFaultProxy } from "../support/fault_proxy.ts";
import { startServe } from "./serve_fixtures.ts";

const MiB = 1 << 20;
const sha = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const blobGet = (r: { method: string; url: string }) =>
  r.method === "GET" && r.url.includes("/blobs/");

for (const runtime of ["deno", "bun"] as const) {
  Deno.test(`upstream streaming (${runtime}): the manifest and a blob's first bytes are served while it lands, then haul pull verifies`, async () => {
    const dir = await tmpDir("haul-upstream-stream");
    const reg = await startRegistry();
    // 4 MiB/s per request: the 48 MiB layer takes a few seconds to land in 16 MiB parts.
    const proxy = await startFaultProxy(reg.url, {
      rule: always(blobGet, { rateBytesPerSec: 4 * MiB }),
    });
    const store = join(dir, "cache");
    await mkdir(store);
    const server = await startServe(store, { extra: ["--upstream", proxy.url], runtime });
    const fx = makeOllamaModel({ layerSizes: [48 * MiB + 1, 300, 100], seed: 211 });
    const big = fx.blobs[1];
    const cached = join(store, "blobs", big.digest.replace(":", "-"));
    const inCache = () =>
      readdir(join(store, "blobs")).then((n) => n.includes(cached.split("/").at(-1)!), () => false);
    try {
      await pushFixture(reg, "library/stream", "latest", fx);
      const t0 = performance.now();
      const m = await fetch(`${server.url}/v2/library/stream/manifests/latest`, {
        headers: { accept: fx.mediaType },
      });
      assert.equal(m.status, 200);
      assert.deepEqual(new Uint8Array(await m.arrayBuffer()), fx.manifest);
      assert.equal(await inCache(), false, "the manifest came before its large blob was in");
      const head = await fetch(`${server.url}/v2/library/stream/blobs/${big.digest}`, {
        method: "HEAD",
      });
      assert.equal(head.status, 200);
      assert.equal(head.headers.get("content-length"), String(big.size));
      const first = await fetch(`${server.url}/v2/library/stream/blobs/${big.digest}`, {
        headers: { range: "bytes=0-1048575" },
      });
      assert.equal(first.status, 206);
      assert.equal(sha(new Uint8Array(await first.arrayBuffer())), sha(big.data!.subarray(0, MiB)));
      assert.equal(await inCache(), false, "the first MiB came while the blob still landed");
      const firstMs = performance.now() - t0;

      const dest = join(dir, "client");
      const r = await runCli([
        "pull",
        "--insecure",
        "--quiet",
        "--models",
        dest,
        `${server.host}/library/stream:latest`,
      ], { timeoutMs: 120_000 });
      assert.equal(r.code, 0, r.stderr + server.child.output().stderr);
      for (const b of fx.blobs) {
        assert.equal(
          `sha256:${await sha256File(join(dest, "blobs", b.digest.replace(":", "-")))}`,
          b.digest,
        );
      }
      const sent = proxy.bytesOut(/\/blobs\//);
      const model = fx.blobs.reduce((a, b) => a + b.size, 0);
      console.log(
        `streamed (${runtime}): manifest + HEAD + first MiB in ${firstMs.toFixed(0)} ms, ` +
          `haul pull done at ${(performance.now() - t0).toFixed(0)} ms; upstream sent ${sent} ` +
          `blob bytes for a ${model}-byte model`,
      );
      assert.equal(sent, model, "the upstream sent each blob once");
    } finally {
      await server.stop();
      await proxy.stop();
      await reg.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
}

Deno.test("upstream streaming: a large blob corrupt upstream: clients get an error or a cut body, no blob file", async () => {
  const dir = await tmpDir("haul-upstream-stream");
  const reg = await startRegistry();
  const proxy = await startFaultProxy(reg.url, {
    rule: always(blobGet, { rateBytesPerSec: 8 * MiB, flipByteAt: 5000 }),
  });
  const store = join(dir, "cache");
  await mkdir(store);
  const server = await startServe(store, { extra: ["--upstream", proxy.url] });
  const fx = makeOllamaModel({ layerSizes: [32 * MiB, 300], seed: 212 });
  const big = fx.blobs[1];
  try {
    await pushFixture(reg, "library/flip", "latest", fx);
    const m = await fetch(`${server.url}/v2/library/flip/manifests/latest`);
    assert.equal(m.status, 200);
    await m.body?.cancel();
    const url = `${server.url}/v2/library/flip/blobs/${big.digest}`;
    const results = await Promise.all(Array.from({ length: 4 }, async () => {
      const res = await fetch(url);
      const hash = createHash("sha256");
      let bytes = 0;
      try {
        for await (const c of res.body!) {
          hash.update(c);
          bytes += c.byteLength;
        }
      } catch {
        return { status: res.status, complete: false, ok: false };
      }
      const complete = bytes === Number(res.headers.get("content-length"));
      return { status: res.status, complete, ok: `sha256:${hash.digest("hex")}` === big.digest };
    }));
    for (const r of results) {
      assert.ok(r.status >= 400 || !r.complete, `an error or a cut body: ${JSON.stringify(r)}`);
      assert.ok(!(r.status === 200 && r.complete && !r.ok), "never a whole blob with bad bytes");
    }
    const names = await readdir(join(store, "blobs")).catch(() => [] as string[]);
    assert.ok(!names.includes(big.digest.replace(":", "-")), names.join(" "));
    assert.match(server.child.output().stderr, /upstream/);
  } finally {
    await server.stop();
    await proxy.stop();
    await reg.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

Deno.test("upstream streaming: a blob asked for on its own lands once for 4 clients, its first MiB served while it lands", async () => {
  const dir = await tmpDir("haul-upstream-stream");
  const reg = await startRegistry();
  const proxy = await startFaultProxy(reg.url, {
    rule: always(blobGet, { rateBytesPerSec: 4 * MiB }),
  });
  const store = join(dir, "cache");
  await mkdir(store);
  const server = await startServe(store, { extra: ["--upstream", proxy.url] });
  const fx = makeOllamaModel({ layerSizes: [40 * MiB + 7], seed: 213 });
  const big = fx.blobs[1];
  const url = `${server.url}/v2/library/lone/blobs/${big.digest}`;
  try {
    await pushFixture(reg, "library/lone", "latest", fx);
    const first = await fetch(url, { headers: { range: "bytes=0-1048575" } });
    assert.equal(first.status, 206);
    assert.equal(sha(new Uint8Array(await first.arrayBuffer())), sha(big.data!.subarray(0, MiB)));
    const names = await readdir(join(store, "blobs")).catch(() => [] as string[]);
    assert.ok(!names.includes(big.digest.replace(":", "-")), "answered while it landed");
    const wholes = await Promise.all(Array.from({ length: 4 }, async () => {
      const res = await fetch(url);
      return [res.status, sha(new Uint8Array(await res.arrayBuffer()))];
    }));
    assert.deepEqual(wholes, Array.from({ length: 4 }, () => [200, big.digest]));
    assert.equal(proxy.bytesOut(/\/blobs\//), big.size, "the upstream sent the blob once");
    const missing = await fetch(`${server.url}/v2/library/lone/blobs/sha256:${"0".repeat(64)}`);
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).errors[0].code, "BLOB_UNKNOWN");
  } finally {
    await server.stop();
    await proxy.stop();
    await reg.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

Deno.test("upstream: a failed blob fetch (5xx, digest mismatch) is held 10 s: clients get the error at once, then a new fetch is tried", async () => {
  const dir = await tmpDir("haul-upstream-stream");
  const reg = await startRegistry();
  const fx = makeOllamaModel({ layerSizes: [2 * MiB + 3, 3 * MiB + 5], seed: 214 });
  const [, down, bad] = fx.blobs;
  const getOf = (digest: string) => (r: { method: string; url: string }) =>
    r.method === "GET" && r.url.endsWith(`/blobs/${digest}`);
  // `down` answers 503 (Retry-After: 0, so the engine's retries take no time), `bad` is corrupt.
  const proxy = await startFaultProxy(reg.url, {
    rule: anyRule(
      always(getOf(down.digest), { status: 503, retryAfter: "0" }),
      always(getOf(bad.digest), { flipByteAt: 1000 }),
    ),
  });
  const store = join(dir, "cache");
  await mkdir(store);
  const server = await startServe(store, { extra: ["--upstream", proxy.url] });
  const upstreamAsked = (digest: string) =>
    proxy.requests.filter((r) => r.url.endsWith(`/blobs/${digest}`)).length;
  const url = (digest: string) => `${server.url}/v2/library/held/blobs/${digest}`;
  try {
    await pushFixture(reg, "library/held", "latest", fx);
    const asked: number[] = [];
    let failedAt = 0;
    for (const b of [down, bad]) {
      const first = await fetch(url(b.digest));
      assert.equal(first.status, 502, `${b.digest}: the failed fetch is a registry error`);
      assert.equal((await first.json()).errors[0].code, "UNKNOWN");
      failedAt = Date.now();
      const n = upstreamAsked(b.digest);
      assert.ok(n > 1, `the engine fetched and retried: ${n}`);
      // Within the hold: 6 clients (4 GET, 2 HEAD) all get the error, none reaches upstream.
      const again = await Promise.all(
        ["GET", "GET", "GET", "GET", "HEAD", "HEAD"].map(async (method) => {
          const res = await fetch(url(b.digest), { method });
          const body = method === "GET" ? (await res.json()).errors[0].code : await res.text();
          return `${method} ${res.status} ${body}`;
        }),
      );
      assert.deepEqual(again, [
        ...Array(4).fill("GET 502 UNKNOWN"),
        ...Array(2).fill("HEAD 502 "),
      ]);
      assert.equal(upstreamAsked(b.digest), n, "no new upstream request within the hold");
      assert.ok(Date.now() - failedAt < 10_000, "these ran within the hold");
      asked.push(n);
    }

    // After the hold, with the upstream fixed: a new fetch, verified.
    proxy.setRule(undefined);
    await sleep(Math.max(0, 10_000 - (Date.now() - failedAt)) + 500);
    for (const b of [down, bad]) {
      const res = await fetch(url(b.digest));
      assert.equal(res.status, 200);
      assert.equal(sha(new Uint8Array(await res.arrayBuffer())), b.digest);
    }
    assert.ok(upstreamAsked(down.digest) > asked[0] && upstreamAsked(bad.digest) > asked[1]);
    console.log(
      `held: upstream requests for each failed blob (HEADs + the engine GETs): ${
        asked.join(", ")
      }; 6 requests each within the hold added none`,
    );
  } finally {
    await server.stop();
    await proxy.stop();
    await reg.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

Deno.test("upstream: a blob that fails the pull of its model is held 10 s too: clients get the error at once", async () => {
  const dir = await tmpDir("haul-upstream-stream");
  const reg = await startRegistry();
  const fx = makeOllamaModel({ layerSizes: [2 * MiB + 9, 200], seed: 216 });
  const down = fx.blobs[1];
  const proxy = await startFaultProxy(reg.url, {
    rule: always(
      (r) => r.method === "GET" && r.url.endsWith(`/blobs/${down.digest}`),
      { status: 503, retryAfter: "0" },
    ),
  });
  const store = join(dir, "cache");
  await mkdir(store);
  const server = await startServe(store, { extra: ["--upstream", proxy.url] });
  const upstreamAsked = () =>
    proxy.requests.filter((r) => r.url.endsWith(`/blobs/${down.digest}`)).length;
  const url = `${server.url}/v2/library/pulled/blobs/${down.digest}`;
  try {
    await pushFixture(reg, "library/pulled", "latest", fx);
    const m = await fetch(`${server.url}/v2/library/pulled/manifests/latest`);
    assert.equal(m.status, 200, "the manifest is answered before its blobs are in");
    await m.body?.cancel();
    const first = await fetch(url);
    assert.equal(first.status, 502);
    await first.body?.cancel();
    const failedAt = Date.now();
    const n = upstreamAsked();
    assert.ok(n > 1, `the pull fetched and retried the blob: ${n}`);
    const again = await Promise.all(["GET", "GET", "GET", "GET", "HEAD", "HEAD"].map(
      async (method) => {
        const res = await fetch(url, { method });
        await res.body?.cancel();
        return `${method} ${res.status}`;
      },
    ));
    assert.deepEqual(again, [...Array(4).fill("GET 502"), ...Array(2).fill("HEAD 502")]);
    assert.equal(upstreamAsked(), n, "no new upstream request within the hold");
    assert.ok(Date.now() - failedAt < 10_000, "these ran within the hold");
  } finally {
    await server.stop();
    await proxy.stop();
    await reg.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
