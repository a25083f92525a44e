/**
 * Registry mirrors: configuration (lib/registry/mirror_config.ts), and end to end with Debian's
 * docker-registry in proxy (pull-through cache) mode in front of another docker-registry:
 *
 *   haul ──▶ front (fault proxy) ──▶ mirror (docker-registry, proxy mode) ──▶ upstream (fault proxy) ──▶ origin
 *   haul ──▶ direct (fault proxy) ─────────────────────────────────────────────────────────────────────▶ origin
 *
 * `direct` is the registry haul is asked for (REF's host): it must only see the tag being
 * resolved while the mirror works; `upstream` counts what the cache fetches from the origin.
 */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import * as path from "node:path";
import {
  checkMirrorUrl,
  defaultConfigPath,
  loadMirrors,
  mirrorsFor,
  parseMirrorConfig,
  parseMirrorList,
} from "../../lib/registry/mirror_config.ts";
import { UsageError } from "../../lib/errors.ts";
import { pull } from "../../lib/ops/pull.ts";
import {
  type Fixture,
  makeOllamaModel,
  pushFixture,
  type Registry,
  runCli,
  sleep,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { type FaultProxy, startFaultProxy } from "../support/fault_proxy.ts";

const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------- configuration

Deno.test("parseMirrorList() reads HAUL_MIRRORS: hosts, '*', bare lists, whitespace", () => {
  assert.deepEqual(
    parseMirrorList(" registry.ollama.ai = http://a:5000 , https://b ; *=http://c:5001/ "),
    {
      "registry.ollama.ai": ["http://a:5000", "https://b"],
      "*": ["http://c:5001"],
    },
  );
  assert.deepEqual(parseMirrorList("http://a:5000,http://b:5000"), {
    "*": ["http://a:5000", "http://b:5000"],
  });
  assert.deepEqual(parseMirrorList(""), {});
  assert.deepEqual(parseMirrorList("Localhost:5000=http://m"), { "localhost:5000": ["http://m"] });
  assert.throws(() => parseMirrorList("host="), UsageError);
  assert.throws(() => parseMirrorList("a b=http://m"), /not a registry host/);
});

Deno.test("checkMirrorUrl() accepts scheme://host[:port] only", () => {
  assert.equal(checkMirrorUrl("http://127.0.0.1:5001"), "http://127.0.0.1:5001");
  assert.equal(checkMirrorUrl("HTTPS://Cache.LAN/"), "https://cache.lan");
  assert.throws(() => checkMirrorUrl("ftp://x"), /http:\/\/ or https:\/\//);
  assert.throws(() => checkMirrorUrl("http://x/v2/prefix"), /path or query/);
  assert.throws(() => checkMirrorUrl("http://u:p@x"), /credentials/);
  assert.throws(() => checkMirrorUrl("cache:5000"), UsageError);
});

Deno.test("parseMirrorConfig() reads the mirrors object and ignores other keys", () => {
  assert.deepEqual(
    parseMirrorConfig(
      '{"other": 1, "mirrors": {"registry.ollama.ai": ["http://a:1"], "*": "http://b:2"}}',
    ),
    { "registry.ollama.ai": ["http://a:1"], "*": ["http://b:2"] },
  );
  assert.deepEqual(parseMirrorConfig("{}"), {});
  assert.throws(() => parseMirrorConfig("{"), /not valid JSON/);
  assert.throws(() => parseMirrorConfig('{"mirrors": []}'), /must be an object/);
  assert.throws(() => parseMirrorConfig('{"mirrors": {"h": [1]}}'), /list of URLs/);
});

Deno.test("loadMirrors() precedence: --mirror, then HAUL_MIRRORS, then the config file", async () => {
  const dir = await tmpDir("haul-mirror-cfg");
  try {
    const file = path.join(dir, "config.json");
    await fsp.writeFile(file, JSON.stringify({ mirrors: { "r.example": ["http://file:1"] } }));
    const env = { HAUL_CONFIG: file, HOME: dir };
    assert.deepEqual(await loadMirrors({ env }), {
      mirrors: { "r.example": ["http://file:1"] },
      source: "file",
      path: file,
    });
    assert.deepEqual(
      (await loadMirrors({ env: { ...env, HAUL_MIRRORS: "http://env:2" } })).mirrors,
      { "*": ["http://env:2"] },
    );
    assert.deepEqual(
      (await loadMirrors({ env: { ...env, HAUL_MIRRORS: "" } })).mirrors,
      {},
      "an empty HAUL_MIRRORS turns the file's mirrors off",
    );
    assert.deepEqual(
      (await loadMirrors({ flags: ["http://flag:3"], env: { ...env, HAUL_MIRRORS: "x=http://e" } }))
        .mirrors,
      { "*": ["http://flag:3"] },
    );
    // The default file is optional; a named one is not.
    assert.deepEqual(await loadMirrors({ env: { HOME: dir } }), { mirrors: {}, source: "none" });
    await assert.rejects(
      loadMirrors({ env: { HAUL_CONFIG: path.join(dir, "missing.json") } }),
      /does not exist/,
    );
    assert.equal(
      defaultConfigPath({ HOME: "/home/u" }),
      path.join("/home/u", ".config", "haul", "config.json"),
    );
    assert.equal(
      defaultConfigPath({ HOME: "/home/u", XDG_CONFIG_HOME: "/x" }),
      "/x/haul/config.json",
    );
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("mirrorsFor() prefers the host's own entry over '*' and never lists the origin", () => {
  const map = { "a:5000": ["http://m1", "http://m1", "http://a:5000"], "*": ["http://any"] };
  assert.deepEqual(mirrorsFor(map, "A:5000", "http://a:5000"), ["http://m1"]);
  assert.deepEqual(mirrorsFor(map, "b"), ["http://any"]);
  assert.deepEqual(mirrorsFor(undefined, "b"), []);
});

// ---------------------------------------------------------------------------- end to end

interface Topology {
  origin: Registry;
  direct: FaultProxy;
  upstream: FaultProxy;
  mirror: Registry;
  front: FaultProxy;
}

async function stopAll(t: Partial<Topology>): Promise<void> {
  await t.front?.stop();
  await t.mirror?.stop();
  await t.upstream?.stop();
  await t.direct?.stop();
  await t.origin?.stop();
}

async function assertStored(models: string, host: string, repo: string, fx: Fixture) {
  const manifest = await fsp.readFile(
    path.join(models, "manifests", host, ...repo.split("/"), "latest"),
  );
  assert.deepEqual(
    new Uint8Array(manifest),
    fx.manifest,
    "manifest stored under the origin's name",
  );
  for (const b of fx.blobs) {
    const st = await fsp.stat(path.join(models, "blobs", b.digest.replace(":", "-")));
    assert.equal(st.size, b.size);
  }
}

/** Blob bytes a proxy passed on in successful responses (error bodies left out). */
const blobBytes = (p: FaultProxy) =>
  p.requests.filter((q) => /\/blobs\//.test(q.url) && (q.status === 200 || q.status === 206))
    .reduce((a, q) => a + q.bytesOut, 0);

/** Until a Range GET through the mirror is answered 206 (served from its cache), up to 20 s. */
async function waitCached(front: FaultProxy, repo: string, digest: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const res = await fetch(`${front.url}/v2/${repo}/blobs/${digest}`, {
      headers: { range: "bytes=0-0" },
    });
    await res.body?.cancel();
    if (res.status === 206) return;
    await sleep(100);
  }
  throw new Error(`the mirror never cached ${digest}`);
}

Deno.test({
  name:
    "haul pull --mirror through docker-registry's pull-through cache: by digest, cached once, falls back both ways",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const t: Partial<Topology> = {};
    const model = makeOllamaModel({ layerSizes: [600, 40 * MiB + 7], seed: 71 });
    const probe = makeOllamaModel({ layerSizes: [5 * MiB + 3], seed: 72 });
    const total = model.blobs.reduce((a, b) => a + b.size, 0);
    const big = model.blobs[2];
    const dir = await tmpDir("haul-mirror");
    const pull = (models: string, mirror: string, host: string, env: Record<string, string> = {}) =>
      runCli([
        "pull",
        "--insecure",
        "--part-size",
        "4M",
        "--models",
        path.join(dir, models),
        "--mirror",
        mirror,
        `${host}/library/fleet`,
      ], { env: { HAUL_CONFIG: path.join(dir, "none.json"), ...env }, timeoutMs: 60_000 });
    try {
      t.origin = await startRegistry();
      await pushFixture(t.origin, "library/fleet", "latest", model);
      await pushFixture(t.origin, "library/probe", "latest", probe);
      t.direct = await startFaultProxy(t.origin.url);
      // The origin's link: 100 MB/s a request (a loopback origin would let each early probe
      // of the cache pull tens of MB before the cache notices haul hung up).
      t.upstream = await startFaultProxy(t.origin.url, {
        rule: (q) =>
          q.method === "GET" && q.url.includes("/blobs/")
            ? { rateBytesPerSec: 100 * MiB }
            : undefined,
      });
      t.mirror = await startRegistry({ proxyRemote: t.upstream.url });
      t.front = await startFaultProxy(t.mirror.url);
      const { direct, upstream, front } = t;

      // The cache answers a Range request for a blob it does not hold with 200 and the
      // whole body; once cached, with 206.
      const pb = probe.blobs[1];
      const cold = await fetch(`${front.url}/v2/library/probe/blobs/${pb.digest}`, {
        headers: { range: "bytes=0-9" },
      });
      const coldBody = new Uint8Array(await cold.arrayBuffer());
      assert.equal(cold.status, 200);
      assert.equal(Number(cold.headers.get("content-length")), pb.size);
      assert.equal(coldBody.byteLength, pb.size);
      await waitCached(front, "library/probe", pb.digest);

      // 1. Cold cache: everything through the mirror; the origin named by REF only resolves
      //    the tag (HEAD), and the cache fetches each blob from the origin.
      const baseline = blobBytes(upstream);
      let r = await pull("m1", front.url, direct.host);
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /warning/);
      await assertStored(path.join(dir, "m1"), direct.host, "library/fleet", model);
      assert.equal(blobBytes(direct), 0, "no blob byte from the origin directly");
      assert.deepEqual(
        [...new Set(direct.requests.filter((q) => q.url !== "/v2/").map((q) => q.method))],
        ["HEAD"],
        "the origin sees the tag resolved by HEAD, nothing else",
      );
      // haul waited for the cache to fetch the big layer (each early probe costs a few MB,
      // more on a busy machine): under the 2 copies that racing the cache costs at least
      // (2 to 7 measured). The next test bounds it closer on a slower link.
      const firstPass = blobBytes(upstream) - baseline;
      assert.ok(firstPass >= total, `cache fetched ${firstPass} < ${total}`);
      // What the fill wait prevents is racing the cache: several complete copies of the
      // big layer from the origin. Exactly one complete copy; the early probes are cut
      // short (how short depends on the machine's load, so their bytes get a loose cap).
      const fullCopies = upstream.requests.filter((q) =>
        q.url.includes(`/blobs/${big.digest}`) && q.bytesOut >= big.size
      ).length;
      assert.equal(fullCopies, 1, "the cache fetched the big layer from the origin once");
      assert.ok(firstPass < 3 * total, `cache fetched ${firstPass} for ${total}`);

      // 2. Warm cache: a second client costs the origin nothing; Range parts get 206.
      await waitCached(front, "library/fleet", big.digest);
      const before = front.requests.length;
      r = await pull("m2", front.url, direct.host);
      assert.equal(r.code, 0, r.stderr);
      await assertStored(path.join(dir, "m2"), direct.host, "library/fleet", model);
      assert.equal(
        blobBytes(upstream) - baseline,
        firstPass,
        "warm cache: no blob byte from the origin",
      );
      assert.equal(blobBytes(direct), 0);
      const warm = front.requests.slice(before).filter((q) =>
        q.method === "GET" && q.url.endsWith(`/blobs/${big.digest}`)
      );
      assert.ok(
        warm.length > 1 && warm.every((q) =>
          q.status === 206
        ),
        "warm: parts get 206",
      );

      // 3. The origin is unreachable: the mirror resolves the tag, and haul says so; the
      //    store still uses the origin's name.
      const gone = direct.host;
      await direct.stop();
      r = await pull("m3", front.url, gone);
      assert.equal(r.code, 0, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(`warning: the origin http://${gone} is unreachable .*resolved by the mirror`),
      );
      await assertStored(path.join(dir, "m3"), gone, "library/fleet", model);

      // 4. The mirror is down (connection refused): everything from the origin, one warning.
      const direct2 = await startFaultProxy(t.origin.url);
      try {
        await t.front.stop();
        await t.mirror.stop();
        const t0 = Date.now();
        r = await pull("m4", front.url, direct2.host);
        assert.equal(r.code, 0, r.stderr);
        assert.ok(
          Date.now() - t0 < 30_000,
          "a dead mirror costs seconds, not the full retry budget",
        );
        const warnings = r.stderr.split("\n").filter((l) => l.includes("warning:"));
        assert.equal(warnings.length, 1, r.stderr);
        assert.match(
          warnings[0],
          new RegExp(`mirror ${front.url} is unavailable .* using the origin`),
        );
        await assertStored(path.join(dir, "m4"), direct2.host, "library/fleet", model);
        assert.equal(blobBytes(direct2), total, "every blob byte from the origin, once");
      } finally {
        await direct2.stop();
      }
    } finally {
      await stopAll(t);
      await model.cleanup?.();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  },
});

Deno.test({
  name:
    "haul pull with a mirror from HAUL_CONFIG that lacks a blob or corrupts one: those come from the origin",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const model = makeOllamaModel({ layerSizes: [500, 3000, 20 * MiB + 1], seed: 73 });
    const [, small, , big] = model.blobs;
    const dir = await tmpDir("haul-mirror-static");
    const origin = await startRegistry();
    const direct = await startFaultProxy(origin.url);
    const copy = await startRegistry(); // a plain registry holding a copy: a static mirror
    const mirror = await startFaultProxy(copy.url);
    try {
      await pushFixture(origin, "library/m", "latest", model);
      await pushFixture(copy, "library/m", "latest", model);
      const del = await fetch(`${copy.url}/v2/library/m/blobs/${big.digest}`, { method: "DELETE" });
      assert.equal(del.status, 202, "the mirror loses the big layer");
      await del.body?.cancel();
      const config = path.join(dir, "config.json");
      await fsp.writeFile(config, JSON.stringify({ mirrors: { [direct.host]: [mirror.url] } }));
      const pull = (models: string, env: Record<string, string> = {}) =>
        runCli([
          "pull",
          "--insecure",
          "--models",
          path.join(dir, models),
          `${direct.host}/library/m`,
        ], {
          env: { HAUL_CONFIG: config, ...env },
          timeoutMs: 60_000,
        });

      let r = await pull("a");
      assert.equal(r.code, 0, r.stderr);
      await assertStored(path.join(dir, "a"), direct.host, "library/m", model);
      assert.match(
        r.stderr,
        new RegExp(`mirror ${mirror.url} could not serve blob ${big.digest} \\(not found\\)`),
      );
      assert.equal(blobBytes(direct), big.size, "only the missing blob from the origin");
      assert.equal(blobBytes(mirror), model.blobs.reduce((a, b) => a + b.size, 0) - big.size);

      // A mirror sending other bytes than the digest names: that blob comes from the origin.
      mirror.setRule((q) =>
        q.method === "GET" && q.url.endsWith(small.digest) ? { flipByteAt: 7 } : undefined
      );
      const before = blobBytes(direct);
      r = await pull("b");
      assert.equal(r.code, 0, r.stderr);
      await assertStored(path.join(dir, "b"), direct.host, "library/m", model);
      assert.match(
        r.stderr,
        new RegExp(`could not serve blob ${small.digest} \\(.*(?:[Dd]igest|hashes)`),
      );
      assert.equal(blobBytes(direct) - before, small.size + big.size);

      // HAUL_MIRRORS="" overrides the file: the mirror is not asked at all.
      const asked = mirror.requests.length;
      r = await pull("c", { HAUL_MIRRORS: "" });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(mirror.requests.length, asked);
    } finally {
      await mirror.stop();
      await copy.stop();
      await direct.stop();
      await origin.stop();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  },
});

/**
 * A front for the cache that answers HEAD from the origin (which has every blob) and sends
 * everything else to the cache, so haul's Range parts are the cache's first requests for a
 * blob. Records each request's status.
 */
async function splitFront(cache: string, origin: string) {
  const log: { method: string; url: string; range?: string; status?: number }[] = [];
  const server = http.createServer((req, res) => {
    const rec: (typeof log)[number] = { method: req.method ?? "GET", url: req.url ?? "/" };
    if (req.headers.range) rec.range = req.headers.range;
    log.push(rec);
    const up = new URL(req.method === "HEAD" ? origin : cache);
    const preq = http.request(
      { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
      (pres) => {
        rec.status = pres.statusCode;
        res.writeHead(pres.statusCode ?? 502, pres.headers);
        pres.pipe(res);
        res.on("close", () => pres.destroy());
      },
    );
    preq.on("error", () => res.destroy());
    req.pipe(preq);
  });
  const sockets = new Set<import("node:net").Socket>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as import("node:net").AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    log,
    stop: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

Deno.test({
  name:
    "haul waits for a cold cache to fetch a large blob (the origin serves it once); without waiting one stream takes over the cache's 200",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const model = makeOllamaModel({ layerSizes: [300, 30 * MiB + 9], seed: 74 });
    const big = model.blobs[2];
    const dir = await tmpDir("haul-mirror-cold");
    const origin = await startRegistry();
    // The origin's link is slow (40 MB/s a request) so the cache is still fetching when
    // haul's requests arrive.
    const upstream = await startFaultProxy(origin.url, {
      rule: (q) =>
        q.method === "GET" && q.url.includes("/blobs/") ? { rateBytesPerSec: 40 * MiB } : undefined,
    });
    const bigBytes = () => upstream.bytesOut(new RegExp(`/blobs/${big.digest}$`));
    const caches: Registry[] = [];
    const fronts: Awaited<ReturnType<typeof splitFront>>[] = [];
    try {
      await pushFixture(origin, "library/cold", "latest", model);

      // Waiting (the default): a probe answered 200, then 206 once cached; the big layer
      // crosses the origin's link once (plus what sockets held when haul hung up early).
      caches.push(await startRegistry({ proxyRemote: upstream.url }));
      fronts.push(await splitFront(caches[0].url, origin.url));
      const r = await runCli([
        "pull",
        "--insecure",
        "--part-size",
        "4M",
        "--models",
        path.join(dir, "a"),
        "--mirror",
        fronts[0].url,
        `${origin.host}/library/cold`,
      ], { env: { HAUL_CONFIG: path.join(dir, "none.json") }, timeoutMs: 60_000 });
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stderr, /warning/);
      await assertStored(path.join(dir, "a"), origin.host, "library/cold", model);
      const probes = fronts[0].log.filter((q) =>
        q.method === "GET" && q.url.endsWith(`/blobs/${big.digest}`) && q.range === "bytes=0-0"
      );
      assert.equal(probes[0]?.status, 200, "the cold cache answers the probe with 200");
      assert.equal(probes.at(-1)?.status, 206, "haul waited until the cache had the blob");
      assert.ok(bigBytes() >= big.size, `origin sent ${bigBytes()}`);
      assert.ok(bigBytes() < 1.5 * big.size, `origin sent ${bigBytes()} for ${big.size}`);

      // Not waiting (mirrorFillWait: 0, through the library): haul's Range parts are the
      // cache's first requests and get 200 with the whole body; one stream takes over.
      caches.push(await startRegistry({ proxyRemote: upstream.url }));
      fronts.push(await splitFront(caches[1].url, origin.url));
      const warnings: string[] = [];
      const [res] = await pull(`${origin.host}/library/cold`, {
        insecure: true,
        modelsDir: path.join(dir, "b"),
        mirrors: { "*": [fronts[1].url] },
        mirrorFillWait: 0,
        partSize: 4 * MiB,
        onEvent: (e) => {
          if (e.type === "warning") warnings.push(e.message);
        },
      });
      assert.equal(res.manifestDigest, model.manifestDigest);
      assert.deepEqual(warnings, []);
      await assertStored(path.join(dir, "b"), origin.host, "library/cold", model);
      const parts = fronts[1].log.filter((q) =>
        q.method === "GET" && q.url.endsWith(`/blobs/${big.digest}`) && q.range
      );
      assert.ok(
        parts.some((q) => q.status === 200),
        `the cold cache answered a Range part with 200: ${parts.map((q) => q.status)}`,
      );
    } finally {
      for (const f of fronts) await f.stop();
      for (const c of caches) await c.stop();
      await upstream.stop();
      await origin.stop();
      await model.cleanup?.();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  },
});
