/**
 * `haul serve --upstream`: a pull-through cache in front of the real registry (Debian's
 * docker-registry), behind a fault proxy that counts the bytes the upstream sends and can
 * corrupt them; clients are `haul pull` processes.
 */
import assert from "node:assert/strict";
import { mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import {
  type Fixture,
  makeOllamaModel,
  pushFixture,
  type Registry,
  runCli,
  sha256File,
  sleep,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { always, type FaultProxy, startFaultProxy } from "../support/fault_proxy.ts";
import { type OllamaServer, runOllama, startOllama } from "../support/ollama.ts";
import { type ServeProcess, startServe } from "./serve_fixtures.ts";
import { parseRepositoryName } from "../../lib/store/catalog.ts";
import { locateUpstream } from "../../lib/server/upstream.ts";

const MiB = 1 << 20;

interface World {
  dir: string;
  registry: Registry;
  /** In front of the registry: what serve's upstream sends is counted here. */
  proxy: FaultProxy;
  /** Serve's store, empty at the start. */
  store: string;
  server: ServeProcess;
  tiny: Fixture;
}

async function startCache(dir: string, upstream: string, extra: string[] = []) {
  const store = join(dir, `store-${Math.random().toString(36).slice(2, 8)}`);
  await mkdir(store, { recursive: true });
  const server = await startServe(store, { extra: ["--upstream", upstream, ...extra] });
  return { store, server };
}

async function makeWorld(): Promise<World> {
  const dir = await tmpDir("haul-upstream");
  const registry = await startRegistry();
  const proxy = await startFaultProxy(registry.url);
  const tiny = makeOllamaModel({ layerSizes: [20 * MiB, 300, 100], seed: 181 });
  await pushFixture(registry, "library/tiny", "latest", tiny);
  const { store, server } = await startCache(dir, proxy.url);
  return { dir, registry, proxy, store, server, tiny };
}

let shared: Promise<World> | undefined;
const getWorld = () => (shared ??= makeWorld());

const modelBytes = (fx: Fixture) => fx.blobs.reduce((a, b) => a + b.size, 0);

/** `haul pull --insecure` of `name` from the cache into a fresh store; the store's path. */
async function pullThrough(w: World, server: ServeProcess, name: string, retries = "2") {
  const dest = join(w.dir, `client-${Math.random().toString(36).slice(2, 8)}`);
  const r = await runCli([
    "pull",
    "--insecure",
    "--quiet",
    "--retries",
    retries,
    "--models",
    dest,
    `${server.host}/${name}`,
  ], { timeoutMs: 120_000 });
  return { ...r, dest };
}

async function assertHolds(root: string, fx: Fixture, manifestAt: string) {
  const tree = await readdir(join(root, "blobs"));
  for (const b of fx.blobs) {
    const name = b.digest.replace(":", "-");
    assert.ok(tree.includes(name), `${root} lacks ${b.digest}`);
    assert.equal(`sha256:${await sha256File(join(root, "blobs", name))}`, b.digest);
  }
  const manifest = await Deno.readFile(join(root, "manifests", manifestAt));
  assert.deepEqual(manifest, fx.manifest);
}

/** Retries `check` until it passes (at most 30 s), for what lands in the background. */
async function eventually(check: () => Promise<void>): Promise<void> {
  for (let i = 0;; i++) {
    try {
      return await check();
    } catch (err) {
      if (i >= 300) throw err;
      await sleep(100);
    }
  }
}

Deno.test("upstream: haul pull through an empty cache is verified and fills the cache", async () => {
  const w = await getWorld();
  const r = await pullThrough(w, w.server, "library/tiny:latest");
  assert.equal(r.code, 0, r.stderr + w.server.child.output().stderr);
  await assertHolds(r.dest, w.tiny, `${w.server.host}/library/tiny/latest`);
  await eventually(() => assertHolds(w.store, w.tiny, `${w.proxy.host}/library/tiny/latest`));
});

Deno.test("upstream: 4 concurrent pulls of a model the cache lacks fetch it upstream once", async () => {
  const w = await getWorld();
  const fx = makeOllamaModel({ layerSizes: [48 * MiB, 4 * MiB, 300], seed: 182 });
  await pushFixture(w.registry, "library/four", "latest", fx);
  const before = w.proxy.bytesOut(/\/blobs\//);
  const results = await Promise.all(
    Array.from({ length: 4 }, () => pullThrough(w, w.server, "library/four:latest")),
  );
  for (const r of results) {
    assert.equal(r.code, 0, r.stderr);
    await assertHolds(r.dest, fx, `${w.server.host}/library/four/latest`);
  }
  const sent = w.proxy.bytesOut(/\/blobs\//) - before;
  console.log(`4 clients: upstream sent ${sent} blob bytes for a ${modelBytes(fx)}-byte model`);
  assert.ok(sent >= modelBytes(fx), `upstream sent ${sent}`);
  assert.ok(sent <= 1.2 * modelBytes(fx), `upstream sent ${sent}, model ${modelBytes(fx)}`);
  await eventually(() => assertHolds(w.store, fx, `${w.proxy.host}/library/four/latest`));
});

Deno.test("upstream: a corrupted blob fails the client and leaves nothing under its name", async () => {
  const w = await getWorld();
  const fx = makeOllamaModel({ layerSizes: [2 * MiB, 200], seed: 183 });
  await pushFixture(w.registry, "library/bad", "latest", fx);
  const bad = fx.blobs[1].digest;
  w.proxy.setRule(always((req) => req.url.includes(`/blobs/${bad}`), { flipByteAt: 1000 }));
  try {
    const r = await pullThrough(w, w.server, "library/bad:latest", "1");
    assert.notEqual(r.code, 0, "the pull must fail");
    assert.match(r.stderr, /upstream|502|digest|integrity/i);
  } finally {
    w.proxy.setRule(undefined);
  }
  const blobs = await readdir(join(w.store, "blobs"));
  assert.ok(!blobs.some((f) => f.startsWith(bad.replace(":", "-"))), blobs.join(" "));
  assert.match(w.server.child.output().stderr, /upstream/);
});

Deno.test("upstream: a tag is re-resolved after --tag-ttl; upstream down, the store serves", async () => {
  const w = await getWorld();
  const proxy = await startFaultProxy(w.registry.url);
  const { store, server } = await startCache(w.dir, proxy.url, ["--tag-ttl", "1s"]);
  try {
    const v1 = makeOllamaModel({ layerSizes: [1 * MiB, 100], seed: 184 });
    const v2 = makeOllamaModel({ layerSizes: [1 * MiB, 100], seed: 185 });
    await pushFixture(w.registry, "library/ttl", "latest", v1);
    const digestOf = async () => {
      const res = await fetch(`${server.url}/v2/library/ttl/manifests/latest`, {
        method: "HEAD",
        headers: { accept: v1.mediaType },
      });
      await res.body?.cancel();
      assert.equal(res.status, 200);
      return res.headers.get("docker-content-digest");
    };
    assert.equal(await digestOf(), v1.manifestDigest);
    await pushFixture(w.registry, "library/ttl", "latest", v2);
    assert.equal(await digestOf(), v1.manifestDigest, "within the TTL: the stored tag");
    await sleep(1500);
    assert.equal(await digestOf(), v2.manifestDigest, "past the TTL: re-resolved");
    // The manifest is answered as soon as it is resolved; the model lands in the store after.
    await eventually(() => assertHolds(store, v2, `${proxy.host}/library/ttl/latest`));

    // The upstream goes away: past the TTL, a pull is served from the store, with a warning.
    await proxy.stop();
    await sleep(1200);
    const r = await pullThrough(w, server, "library/ttl:latest");
    assert.equal(r.code, 0, r.stderr + server.child.output().stderr);
    await assertHolds(r.dest, v2, `${server.host}/library/ttl/latest`);
    assert.match(server.child.output().stderr, /warning: upstream/);
  } finally {
    await server.stop();
    await proxy.stop().catch(() => {});
  }
});

Deno.test("upstream: 8 stock ollama daemons pull a model the cache lacks at once, upstream once", async () => {
  const w = await getWorld();
  const proxy = await startFaultProxy(w.registry.url);
  const { store, server } = await startCache(w.dir, proxy.url);
  // 150 MB: Ollama splits it into 100 MB Range parts (minDownloadPartSize).
  const fx = makeOllamaModel({ layerSizes: [150 * 1_000_000 + 7, 300, 1200], seed: 186 });
  await pushFixture(w.registry, "library/fleet", "latest", fx);
  const daemons: OllamaServer[] = [];
  try {
    for (let i = 0; i < 8; i++) daemons.push(await startOllama());
    const name = `${server.host}/library/fleet:latest`;
    const runs = await Promise.all(daemons.map((d) => runOllama(d, ["pull", "--insecure", name])));
    for (const [i, r] of runs.entries()) {
      assert.equal(r.code, 0, `daemon ${i}: ${r.stderr}\n${server.child.output().stderr}`);
    }
    for (const d of daemons) await assertHolds(d.models, fx, `${server.host}/library/fleet/latest`);
    const sent = proxy.bytesOut(/\/blobs\//);
    console.log(`8 ollama daemons: upstream sent ${sent} blob bytes, model ${modelBytes(fx)}`);
    assert.ok(sent <= 1.2 * modelBytes(fx), `upstream sent ${sent}, model ${modelBytes(fx)}`);
    await assertHolds(store, fx, `${proxy.host}/library/fleet/latest`);
  } finally {
    await Promise.all(daemons.map((d) => d.stop()));
    await server.stop();
    await proxy.stop();
    await fx.cleanup?.();
  }
});

Deno.test("upstream: stopped after a pull, the cache still serves what it fetched", async () => {
  const w = await getWorld();
  await w.proxy.stop();
  const r = await pullThrough(w, w.server, "library/tiny:latest");
  assert.equal(r.code, 0, r.stderr);
  await assertHolds(r.dest, w.tiny, `${w.server.host}/library/tiny/latest`);
  const other = await pullThrough(w, w.server, "library/never:latest", "0");
  assert.notEqual(other.code, 0);
  assert.match(other.stderr, /502|upstream/i);
});

Deno.test("upstream: teardown", async () => {
  const w = await getWorld();
  await w.server.stop();
  await w.registry.stop();
  await w.tiny.cleanup?.();
});

Deno.test("upstream: a name goes to the upstream of its host, of ?ns=, else the first", () => {
  const hosts = ["127.0.0.1:5000", "docker.io"];
  const at = (name: string, ns: string | null = null) => {
    const parsed = parseRepositoryName(name);
    assert.ok(parsed.ok);
    return locateUpstream(parsed.candidates, ns, hosts);
  };
  assert.deepEqual(at("library/tiny"), { host: "127.0.0.1:5000", repository: "library/tiny" });
  assert.deepEqual(at("127.0.0.1_5000/ns/m"), { host: "127.0.0.1:5000", repository: "ns/m" });
  assert.deepEqual(at("library/alpine", "docker.io"), {
    host: "docker.io",
    repository: "library/alpine",
  });
  assert.deepEqual(at("library/alpine", "ghcr.io"), {
    host: "127.0.0.1:5000",
    repository: "library/alpine",
  });
  assert.deepEqual(at("ghcr.io/org/m"), { host: "127.0.0.1:5000", repository: "ghcr.io/org/m" });
  // containerd names Docker Hub docker.io; its registry API is registry-1.docker.io.
  const hub = ["127.0.0.1:5000", "registry-1.docker.io"];
  const parsed = parseRepositoryName("library/alpine");
  assert.ok(parsed.ok);
  for (const ns of ["docker.io", "registry-1.docker.io", "index.docker.io", "Docker.IO"]) {
    assert.deepEqual(locateUpstream(parsed.candidates, ns, hub), {
      host: "registry-1.docker.io",
      repository: "library/alpine",
    }, ns);
  }
  assert.equal(locateUpstream(parsed.candidates, "quay.io", hub).host, "127.0.0.1:5000");
});
