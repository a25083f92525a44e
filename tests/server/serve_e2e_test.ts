/**
 * `haul serve` as a process: pulled from by haul's CLI and by skopeo, probed with
 * raw request targets, loaded with concurrent clients, and stopped with SIGTERM.
 * The server runs with Deno permissions narrowed to the store, so a read outside
 * it would fail loudly (a 500 and a warning) instead of passing unnoticed.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import * as net from "node:net";
import { join } from "node:path";
import process from "node:process";
import { exposureWarning, isLoopbackHost, parseAddr } from "../../cli/serve.ts";
import { serve } from "../../lib/server/http_server.ts";
import { createRegistryHandler } from "../../lib/server/registry_server.ts";
import {
  type Fixture,
  makeOciImage,
  makeOllamaModel,
  readTree,
  runCli,
  sha256File,
  tmpDir,
} from "../support/harness.ts";
import {
  fetchAndHash,
  loadBlob,
  type ServeProcess,
  startServe,
  storeFixture,
} from "./serve_fixtures.ts";

const MiB = 1 << 20;

interface World {
  dir: string;
  store: string;
  tiny: Fixture;
  other: Fixture;
  img: Fixture;
  big: Fixture;
  server: ServeProcess;
}

async function makeWorld(): Promise<World> {
  const dir = await tmpDir("haul-serve-e2e");
  const store = join(dir, "store");
  const tiny = makeOllamaModel({ layerSizes: [40 * MiB, 300, 100], seed: 31 });
  const other = makeOllamaModel({ layerSizes: [2000, 10], seed: 32 });
  const img = makeOciImage({ layerSizes: [3 * MiB, 1000], seed: 33 });
  const big = makeOllamaModel({ layerSizes: [64 * MiB], seed: 34, dir });
  await storeFixture(store, { repository: "library/tiny" }, tiny);
  await storeFixture(
    store,
    { host: "127.0.0.1:5000", repository: "library/other", tag: "v1" },
    other,
  );
  await storeFixture(store, { repository: "library/img", tag: "v2" }, img);
  await storeFixture(store, { repository: "library/big" }, big, { move: true });
  const server = await startServe(store, {
    extra: ["--verbose", "--chunk-size", "8M"],
    denoFlags: [
      `--allow-read=${store}`,
      `--allow-write=${store}`,
      "--allow-net=127.0.0.1",
      "--allow-env",
    ],
  });
  return { dir, store, tiny, other, img, big, server };
}

let shared: Promise<World> | undefined;
const getWorld = () => (shared ??= makeWorld());

/** Fails the test if the server logged a warning (e.g. a read it was not allowed to make). */
function assertNoWarnings(w: World) {
  const { stderr } = w.server.child.output();
  assert.ok(!/warning|failed|denied/i.test(stderr), stderr);
  assert.equal(w.server.child.exitCode, null, "server still running");
}

function exec(
  cmd: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 60_000, maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const hasSkopeo = (await exec("skopeo", ["--version"])).code === 0;
const hasBun = (await exec("bun", ["--version"])).code === 0;

Deno.test("haul pull fetches models from haul serve, byte for byte", async () => {
  const w = await getWorld();
  const dest = join(w.dir, "pulled");
  const r = await runCli([
    "pull",
    "--insecure",
    "--quiet",
    "--part-size",
    "8M",
    "--models",
    dest,
    `${w.server.host}/library/tiny:latest`,
    `${w.server.host}/127.0.0.1_5000/library/other:v1`,
  ], { timeoutMs: 60_000 });
  assert.equal(r.code, 0, r.stderr);
  const tree = await readTree(dest);
  const manifest = (path: string) => tree.get(path) as Uint8Array;
  assert.deepEqual(manifest(`manifests/${w.server.host}/library/tiny/latest`), w.tiny.manifest);
  assert.deepEqual(
    manifest(`manifests/${w.server.host}/127.0.0.1_5000/library/other/v1`),
    w.other.manifest,
  );
  for (const b of [...w.tiny.blobs, ...w.other.blobs]) {
    const file = join(dest, "blobs", b.digest.replace(":", "-"));
    assert.equal(`sha256:${await sha256File(file)}`, b.digest);
  }
  // haul's downloader asks for chunksums and fetches the big layer in 8 MiB parts.
  const log = w.server.child.output().stderr;
  assert.match(log, new RegExp(`GET /v2/library/tiny/chunksums/${w.tiny.blobs[1].digest} 200`));
  assert.ok((log.match(/ 206 8388608 bytes/g) ?? []).length >= 5, log.slice(-2000));
  const blobs = [...tree.keys()].filter((k) => k.startsWith("blobs/"));
  assert.equal(
    blobs.length,
    new Set([...w.tiny.blobs, ...w.other.blobs].map((b) => b.digest)).size,
  );
  assertNoWarnings(w);
});

Deno.test({
  name: "skopeo copies an image from haul serve into an OCI layout",
  ignore: !hasSkopeo,
  fn: async () => {
    const w = await getWorld();
    const layout = join(w.dir, "oci");
    const r = await exec("skopeo", [
      "copy",
      "--preserve-digests",
      "--src-tls-verify=false",
      `docker://${w.server.host}/library/img:v2`,
      `oci:${layout}:v2`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const index = JSON.parse(await readFile(join(layout, "index.json"), "utf8"));
    assert.equal(index.manifests[0].digest, w.img.manifestDigest);
    for (const d of [w.img.manifestDigest, ...w.img.blobs.map((b) => b.digest)]) {
      const file = join(layout, "blobs", "sha256", d.slice(7));
      assert.equal(`sha256:${await sha256File(file)}`, d);
    }
    // skopeo 1.9 will not copy Ollama's layer media types, but reads their manifest and tags.
    const raw = await exec("skopeo", [
      "inspect",
      "--raw",
      "--tls-verify=false",
      `docker://${w.server.host}/library/tiny:latest`,
    ]);
    assert.equal(raw.code, 0, raw.stderr);
    assert.equal(raw.stdout, new TextDecoder().decode(w.tiny.manifest));
    const tags = await exec("skopeo", [
      "list-tags",
      "--tls-verify=false",
      `docker://${w.server.host}/127.0.0.1_5000/library/other`,
    ]);
    assert.equal(tags.code, 0, tags.stderr);
    assert.deepEqual(JSON.parse(tags.stdout).Tags, ["v1"]);
    assertNoWarnings(w);
  },
});

Deno.test("haul serve answers HEAD, Range, 416 and 304 over a socket", async () => {
  const w = await getWorld();
  const layer = w.tiny.blobs[1];
  const url = `${w.server.url}/v2/library/tiny/blobs/${layer.digest}`;
  const head = await fetch(url, { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get("content-length"), String(layer.size));
  assert.equal(head.headers.get("accept-ranges"), "bytes");
  const part = await fetch(url, { headers: { range: "bytes=1000-1999" } });
  assert.equal(part.status, 206);
  assert.equal(part.headers.get("content-range"), `bytes 1000-1999/${layer.size}`);
  assert.deepEqual(new Uint8Array(await part.arrayBuffer()), layer.data!.subarray(1000, 2000));
  const bad = await fetch(url, { headers: { range: `bytes=${layer.size}-` } });
  assert.equal(bad.status, 416);
  assert.equal((await bad.json()).errors[0].code, "RANGE_INVALID");
  const cached = await fetch(url, { headers: { "if-none-match": `"${layer.digest}"` } });
  assert.equal(cached.status, 304);
  await cached.body?.cancel();
  const manifest = await fetch(`${w.server.url}/v2/library/tiny/manifests/latest`, {
    method: "HEAD",
  });
  assert.equal(manifest.headers.get("content-length"), String(w.tiny.manifest.length));
  assert.equal(manifest.headers.get("docker-content-digest"), w.tiny.manifestDigest);
  const put = await fetch(`${w.server.url}/v2/library/tiny/manifests/latest`, {
    method: "PUT",
    body: "{}",
  });
  assert.equal(put.status, 405);
  assert.equal((await put.json()).errors[0].code, "UNSUPPORTED");
  assertNoWarnings(w);
});

/** Sends a request target exactly as written (no URL normalisation) and returns the status. */
function rawGet(port: number, target: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, "127.0.0.1");
    const chunks: Uint8Array[] = [];
    const timer = setTimeout(() => sock.destroy(new Error(`timeout for ${target}`)), 10_000);
    sock.on("connect", () => {
      sock.write(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
    });
    sock.on("data", (c: Uint8Array) => chunks.push(c));
    sock.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on("close", () => {
      clearTimeout(timer);
      const text = new TextDecoder().decode(
        chunks.reduce((a, c) => {
          const out = new Uint8Array(a.length + c.length);
          out.set(a);
          out.set(c, a.length);
          return out;
        }, new Uint8Array()),
      );
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), text });
    });
  });
}

Deno.test("haul serve refuses raw request targets that try to leave the store", async () => {
  const w = await getWorld();
  const d = w.tiny.blobs[1].digest;
  const targets = [
    "/v2/../../etc/passwd/manifests/x",
    "/v2/%2e%2e/%2e%2e/etc/passwd/manifests/x",
    "/v2/%2E%2E/%2E%2E/%2E%2E/etc/manifests/passwd",
    "/v2/library/tiny/manifests/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/v2/library/tiny/blobs/sha256:../../../../etc/passwd",
    "/v2/library/tiny/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd",
    `/v2/library/tiny/blobs/${d}/../../../../../etc/passwd`,
    "/v2/library%5c..%5c..%5c..%5cetc/manifests/passwd",
    "/v2/library/tiny/chunksums/sha256:..%2f..%2fetc%2fpasswd",
    "/v2/..%2f..%2f..%2f..%2fetc/tags/list",
    "/v2//etc/passwd/manifests/x",
    "/v2/127.0.0.1:5000/../../../etc/manifests/passwd",
  ];
  for (const t of targets) {
    const r = await rawGet(w.server.port, t);
    assert.ok(r.status >= 400 && r.status < 500, `${t} → ${r.status}\n${r.text.slice(0, 300)}`);
    assert.ok(!r.text.includes("root:"), t);
  }
  // Backslashes: refused by the HTTP parser or turned into '/' by the URL parser; never a read.
  const bs = await rawGet(w.server.port, "/v2/library\\..\\..\\..\\etc/manifests/passwd");
  assert.ok(bs.status >= 400 && bs.status < 500, `${bs.status}`);
  assertNoWarnings(w);
});

Deno.test("haul serve serves concurrent clients with bounded memory", async () => {
  const w = await getWorld();
  const layer = w.big.blobs[1];
  const url = `${w.server.url}/v2/library/big/blobs/${layer.digest}`;
  await fetchAndHash(url, AbortSignal.timeout(30_000)); // warm the page cache
  const clients = 12;
  const r = await loadBlob(url, layer, {
    clients,
    serverPid: w.server.child.pid,
    signal: AbortSignal.timeout(50_000),
  });
  assert.equal(r.ok, clients);
  assert.ok(r.peakRss > 0, "RSS was sampled");
  assert.ok(r.peakRss < 300 * MiB, `server peak RSS ${(r.peakRss / MiB).toFixed(0)} MiB`);
  assertNoWarnings(w);
});

Deno.test("haul serve stops at --shutdown-timeout on SIGTERM while a client stalls", async () => {
  const w = await getWorld();
  const server = await startServe(w.store, { extra: ["--shutdown-timeout", "1"] });
  try {
    const res = await fetch(`${server.url}/v2/library/big/blobs/${w.big.blobs[1].digest}`, {
      signal: AbortSignal.timeout(30_000),
    });
    const reader = res.body!.getReader();
    await reader.read(); // a stalled client: reads once, then waits
    const t0 = Date.now();
    process.kill(server.child.pid!, "SIGTERM"); // see startServe: not child.kill under Deno
    const result = await server.child.result;
    const took = Date.now() - t0;
    assert.equal(result.code, 0, result.stderr);
    assert.ok(took >= 900 && took < 3000, `exit took ${took} ms`);
    assert.match(result.stderr, /stopping: 1 connection\(s\) open, responses in flight get 1 s/);
    await reader.cancel().catch(() => {});
  } finally {
    await server.stop();
  }
});

Deno.test({
  name: "haul serve runs under Bun too",
  ignore: !hasBun,
  fn: async () => {
    const w = await getWorld();
    const server = await startServe(w.store, { runtime: "bun" });
    try {
      const dest = join(w.dir, "pulled-bun");
      const r = await runCli(
        ["pull", "--insecure", "--quiet", "--models", dest, `${server.host}/library/tiny:latest`],
        { timeoutMs: 60_000 },
      );
      assert.equal(r.code, 0, r.stderr);
      for (const b of w.tiny.blobs) {
        const file = join(dest, "blobs", b.digest.replace(":", "-"));
        assert.equal(`sha256:${await sha256File(file)}`, b.digest);
      }
      const head = await fetch(`${server.url}/v2/library/tiny/blobs/${w.tiny.blobs[1].digest}`, {
        method: "HEAD",
      });
      assert.equal(head.headers.get("content-length"), String(w.tiny.blobs[1].size));
    } finally {
      await server.stop();
    }
  },
});

Deno.test("serve() serves ranges, HEAD and survives aborted clients", async () => {
  const w = await getWorld();
  const ac = new AbortController();
  const handler = createRegistryHandler({ modelsDir: w.store, signal: ac.signal });
  const server = await serve(handler, { port: 0, signal: ac.signal });
  try {
    assert.equal(server.protocol, "http");
    const base = `http://127.0.0.1:${server.port}`;
    const layer = w.tiny.blobs[1];
    const url = `${base}/v2/library/tiny/blobs/${layer.digest}`;
    const head = await fetch(url, { method: "HEAD" });
    assert.equal(head.headers.get("content-length"), String(layer.size));
    await head.body?.cancel();
    const part = await fetch(url, { headers: { range: "bytes=5-9" } });
    assert.equal(part.status, 206);
    assert.deepEqual(new Uint8Array(await part.arrayBuffer()), layer.data!.subarray(5, 10));
    // Clients that go away mid-body must not wedge the server.
    for (let i = 0; i < 5; i++) {
      const abort = new AbortController();
      const res = await fetch(url, { signal: abort.signal });
      await res.body!.getReader().read();
      abort.abort();
    }
    const whole = await fetchAndHash(url);
    assert.equal(whole.digest, layer.digest);
    const raw = await rawGet(server.port, "/v2/%2e%2e/%2e%2e/etc/passwd/manifests/x");
    assert.ok(raw.status >= 400 && raw.status < 500);
  } finally {
    ac.abort();
    await server.finished;
  }
});

Deno.test("haul serve reports a port in use and bad flags with their exit codes", async () => {
  const w = await getWorld();
  const busy = await runCli(["serve", "--addr", w.server.host, "--models", w.store], {
    timeoutMs: 20_000,
  });
  assert.equal(busy.code, 7, busy.stderr);
  assert.match(busy.stderr, /Cannot listen on 127\.0\.0\.1:\d+/);
  const bad = await runCli(["serve", "--addr", "127.0.0.1:99999"], { timeoutMs: 20_000 });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /--addr "127\.0\.0\.1:99999": port must be 0-65535/);
  const missing = await runCli(["serve", "--models", join(w.dir, "nope")], { timeoutMs: 20_000 });
  assert.equal(missing.code, 6, missing.stderr);
  assert.match(missing.stderr, /does not exist/);
  const help = await runCli(["serve", "--help"], { timeoutMs: 20_000 });
  assert.equal(help.code, 0);
  assert.match(help.stdout, /127\.0\.0\.1_5000\/library\/tiny/);
  assert.match(help.stdout, /11435/);
});

Deno.test("parseAddr() and the exposure warning", () => {
  assert.deepEqual(parseAddr("127.0.0.1:8080"), { hostname: "127.0.0.1", port: 8080 });
  assert.deepEqual(parseAddr(":0"), { hostname: "127.0.0.1", port: 0 });
  assert.deepEqual(parseAddr("localhost"), { hostname: "localhost", port: 11435 });
  assert.deepEqual(parseAddr("[::1]:9"), { hostname: "::1", port: 9 });
  assert.deepEqual(parseAddr("::"), { hostname: "::", port: 11435 });
  assert.throws(() => parseAddr("a:b"), /port must be 0-65535/);
  assert.throws(() => parseAddr("[::1"), /unclosed/);
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1"]) assert.ok(isLoopbackHost(h), h);
  for (const h of ["0.0.0.0", "::", "192.168.1.10", "example.com"]) {
    assert.ok(!isLoopbackHost(h), h);
  }
  assert.equal(exposureWarning("127.0.0.1", 11435, "/m"), undefined);
  assert.match(
    exposureWarning("0.0.0.0", 11435, "/m") ?? "",
    /0\.0\.0\.0:11435.*every model in \/m is now readable from the network/,
  );
});

Deno.test({
  name: "haul serve e2e cleanup",
  fn: async () => {
    if (!shared) return;
    const w = await shared;
    await w.server.stop();
    await rm(w.dir, { recursive: true, force: true });
  },
});
