/**
 * The `haul serve` handler without a socket: Requests in, Responses out, over a
 * store built in a temp dir.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rm, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseChunksums } from "../../lib/registry/chunksums.ts";
import { fetchChunksums } from "../../lib/registry/chunksums.ts";
import { createRegistryHandler, parseRange } from "../../lib/server/registry_server.ts";
import { parseRepositoryName } from "../../lib/store/catalog.ts";
import {
  deterministicBytes,
  type Fixture,
  makeOciImage,
  makeOllamaModel,
  tmpDir,
} from "../support/harness.ts";
import { storeFixture } from "./serve_fixtures.ts";

const sha = (b: Uint8Array) => "sha256:" + createHash("sha256").update(b).digest("hex");
const BASE = "http://haul.test";
const SECRET = "top-secret-canary-8f3a";

interface World {
  dir: string;
  store: string;
  tiny: Fixture;
  other: Fixture;
  oci: Fixture;
  handler: (req: Request) => Promise<Response>;
  warnings: string[];
}

/** A store with a model under the default host, one under 127.0.0.1:5000, an OCI image and 25 tags. */
async function world(): Promise<World> {
  const dir = await tmpDir("haul-serve-test");
  const store = join(dir, "store");
  const tiny = makeOllamaModel({ layerSizes: [200_000, 300, 50], seed: 11 });
  const other = makeOllamaModel({ layerSizes: [1000], seed: 12 });
  const oci = makeOciImage({ layerSizes: [4000], seed: 13 });
  await storeFixture(store, { repository: "library/tiny" }, tiny);
  await storeFixture(store, { repository: "library/tiny", tag: "v1" }, tiny);
  await storeFixture(
    store,
    { host: "127.0.0.1:5000", repository: "library/other", tag: "v1" },
    other,
  );
  await storeFixture(store, { host: "localhost:5000", repository: "team/app" }, other);
  await storeFixture(store, { host: "ghcr.io", repository: "org/img", tag: "1.0" }, oci);
  for (let i = 0; i < 25; i++) {
    await storeFixture(
      store,
      { repository: "library/many", tag: `t${String(i).padStart(2, "0")}` },
      other,
    );
  }
  // Things that must stay out of reach: a file beside the store, a partial download, a temp manifest.
  await writeFile(join(dir, "secret"), SECRET);
  await mkdir(join(dir, "manifests", "x", "y"), { recursive: true });
  await writeFile(join(dir, "manifests", "x", "y", "latest"), SECRET);
  await writeFile(
    join(store, "blobs", `${tiny.blobs[1].digest.replace(":", "-")}-partial`),
    SECRET,
  );
  await writeFile(
    join(store, "manifests", "registry.ollama.ai", "library", "tiny", "latest.1.tmp"),
    SECRET,
  );
  const warnings: string[] = [];
  const handler = createRegistryHandler({
    modelsDir: store,
    chunkSize: 1 << 16,
    logger: { warn: (m) => warnings.push(m) },
  });
  return { dir, store, tiny, other, oci, handler, warnings };
}

let shared: Promise<World> | undefined;
const getWorld = () => (shared ??= world());

async function get(path: string, init: RequestInit = {}): Promise<Response> {
  const w = await getWorld();
  return await w.handler(new Request(BASE + path, init));
}

async function bytes(res: Response): Promise<Uint8Array> {
  return new Uint8Array(await res.arrayBuffer());
}

async function errorCode(res: Response): Promise<string> {
  const body = await res.json() as { errors: { code: string; message: string }[] };
  assert.equal(body.errors.length, 1);
  assert.equal(typeof body.errors[0].message, "string");
  return body.errors[0].code;
}

Deno.test("createRegistryHandler() answers /v2/ with the API version", async () => {
  const res = await get("/v2/");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("docker-distribution-api-version"), "registry/2.0");
  assert.deepEqual(await res.json(), {});
});

Deno.test("createRegistryHandler() serves a manifest by tag with its media type and digest", async () => {
  const { tiny } = await getWorld();
  for (const method of ["GET", "HEAD"]) {
    const res = await get("/v2/library/tiny/manifests/latest", { method });
    assert.equal(res.status, 200);
    assert.equal(
      res.headers.get("content-type"),
      "application/vnd.docker.distribution.manifest.v2+json",
    );
    assert.equal(res.headers.get("docker-content-digest"), tiny.manifestDigest);
    assert.equal(res.headers.get("etag"), `"${tiny.manifestDigest}"`);
    assert.equal(res.headers.get("content-length"), String(tiny.manifest.length));
    const body = await bytes(res);
    assert.deepEqual(body, method === "GET" ? tiny.manifest : new Uint8Array());
  }
});

Deno.test("createRegistryHandler() serves a manifest by digest", async () => {
  const { tiny, oci } = await getWorld();
  const res = await get(`/v2/library/tiny/manifests/${tiny.manifestDigest}`);
  assert.equal(res.status, 200);
  assert.deepEqual(await bytes(res), tiny.manifest);
  const img = await get(`/v2/ghcr.io/org/img/manifests/${oci.manifestDigest}`);
  assert.equal(img.headers.get("content-type"), "application/vnd.oci.image.manifest.v1+json");
  assert.deepEqual(await bytes(img), oci.manifest);
  const none = await get(`/v2/library/tiny/manifests/${oci.manifestDigest}`);
  assert.equal(none.status, 404);
  assert.equal(await errorCode(none), "MANIFEST_UNKNOWN");
});

Deno.test("createRegistryHandler() answers If-None-Match on manifests with 304", async () => {
  const { tiny } = await getWorld();
  const res = await get("/v2/library/tiny/manifests/latest", {
    headers: { "if-none-match": `"${tiny.manifestDigest}"` },
  });
  assert.equal(res.status, 304);
  assert.equal(res.body, null);
});

Deno.test("createRegistryHandler() maps names onto the store like Ollama", async () => {
  const { tiny, other, oci } = await getWorld();
  const cases: [string, Fixture][] = [
    ["/v2/tiny/manifests/latest", tiny],
    ["/v2/registry.ollama.ai/library/tiny/manifests/latest", tiny],
    ["/v2/127.0.0.1_5000/library/other/manifests/v1", other],
    ["/v2/127.0.0.1:5000/library/other/manifests/v1", other],
    ["/v2/localhost_5000/team/app/manifests/latest", other],
    ["/v2/ghcr.io/org/img/manifests/1.0", oci],
  ];
  for (const [path, fx] of cases) {
    const res = await get(path);
    assert.equal(res.status, 200, path);
    assert.deepEqual(await bytes(res), fx.manifest, path);
  }
});

Deno.test("createRegistryHandler() says which of name or manifest is unknown", async () => {
  const cases: [string, number, string][] = [
    ["/v2/library/nope/manifests/latest", 404, "NAME_UNKNOWN"],
    ["/v2/library/tiny/manifests/nope", 404, "MANIFEST_UNKNOWN"],
    ["/v2/127.0.0.1_5001/library/other/manifests/v1", 404, "NAME_UNKNOWN"],
    ["/v2/library/tiny/manifests/latest.1.tmp", 404, "MANIFEST_UNKNOWN"],
    ["/v2/library/tiny/blobs/sha256:" + "0".repeat(64), 404, "BLOB_UNKNOWN"],
    ["/v2/library/nope/blobs/sha256:" + "0".repeat(64), 404, "NAME_UNKNOWN"],
  ];
  for (const [path, status, code] of cases) {
    const res = await get(path);
    assert.equal(res.status, status, path);
    assert.equal(await errorCode(res), code, path);
  }
});

Deno.test("createRegistryHandler() streams a blob with ETag and Accept-Ranges", async () => {
  const { tiny } = await getWorld();
  const layer = tiny.blobs[1];
  const res = await get(`/v2/library/tiny/blobs/${layer.digest}`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-length"), String(layer.size));
  assert.equal(res.headers.get("accept-ranges"), "bytes");
  assert.equal(res.headers.get("etag"), `"${layer.digest}"`);
  assert.equal(res.headers.get("docker-content-digest"), layer.digest);
  assert.equal(res.headers.get("content-type"), "application/octet-stream");
  assert.deepEqual(await bytes(res), layer.data);
  const head = await get(`/v2/library/tiny/blobs/${layer.digest}`, { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get("content-length"), String(layer.size));
  assert.equal(head.body, null);
});

Deno.test("createRegistryHandler() honours Range with 206 and Content-Range", async () => {
  const { tiny } = await getWorld();
  const layer = tiny.blobs[1];
  const data = layer.data!;
  const n = data.length;
  const cases: [string, number, number][] = [
    ["bytes=0-0", 0, 1],
    ["bytes=10-19", 10, 20],
    ["bytes=199990-", 199_990, n],
    ["bytes=-5", n - 5, n],
    ["bytes=-999999", 0, n],
    ["bytes=100-999999", 100, n],
  ];
  for (const [range, start, end] of cases) {
    const res = await get(`/v2/library/tiny/blobs/${layer.digest}`, { headers: { range } });
    assert.equal(res.status, 206, range);
    assert.equal(res.headers.get("content-range"), `bytes ${start}-${end - 1}/${n}`, range);
    assert.equal(res.headers.get("content-length"), String(end - start), range);
    assert.deepEqual(await bytes(res), data.subarray(start, end), range);
  }
});

Deno.test("createRegistryHandler() answers 416 to an unsatisfiable Range", async () => {
  const { tiny } = await getWorld();
  const layer = tiny.blobs[1];
  for (const range of [`bytes=${layer.size}-`, "bytes=999999999-999999999", "bytes=-0"]) {
    const res = await get(`/v2/library/tiny/blobs/${layer.digest}`, { headers: { range } });
    assert.equal(res.status, 416, range);
    assert.equal(res.headers.get("content-range"), `bytes */${layer.size}`);
    assert.equal(await errorCode(res), "RANGE_INVALID");
  }
});

Deno.test("createRegistryHandler() ignores Ranges it may ignore (several, malformed, stale If-Range)", async () => {
  const { tiny } = await getWorld();
  const layer = tiny.blobs[1];
  const cases: Record<string, string>[] = [
    { range: "bytes=0-1,5-6" },
    { range: "items=0-1" },
    { range: "bytes=9-3" },
    { range: "bytes=0-1", "if-range": '"sha256:other"' },
    { range: "bytes=0-1", "if-range": `W/"${layer.digest}"` },
  ];
  for (const headers of cases) {
    const res = await get(`/v2/library/tiny/blobs/${layer.digest}`, { headers });
    assert.equal(res.status, 200, JSON.stringify(headers));
    assert.equal((await bytes(res)).length, layer.size);
  }
  const ok = await get(`/v2/library/tiny/blobs/${layer.digest}`, {
    headers: { range: "bytes=0-1", "if-range": `"${layer.digest}"` },
  });
  assert.equal(ok.status, 206);
  await ok.body?.cancel();
});

Deno.test("createRegistryHandler() answers If-None-Match on blobs with 304, before Range", async () => {
  const { tiny } = await getWorld();
  const layer = tiny.blobs[1];
  for (
    const inm of [
      `"${layer.digest}"`,
      layer.digest,
      `W/"${layer.digest}"`,
      `"x", "${layer.digest}"`,
      "*",
    ]
  ) {
    const res = await get(`/v2/library/tiny/blobs/${layer.digest}`, {
      headers: { "if-none-match": inm, range: "bytes=0-1" },
    });
    assert.equal(res.status, 304, inm);
    assert.equal(res.headers.get("etag"), `"${layer.digest}"`);
    assert.equal(res.body, null);
  }
  const miss = await get(`/v2/library/tiny/blobs/${layer.digest}`, {
    headers: { "if-none-match": '"sha256:nope"' },
  });
  assert.equal(miss.status, 200);
  await miss.body?.cancel();
});

Deno.test("parseRange() follows RFC 9110", () => {
  assert.equal(parseRange(null, 10), undefined);
  assert.deepEqual(parseRange("bytes=2-4", 10), { start: 2, end: 5 });
  assert.deepEqual(parseRange("bytes=2-", 10), { start: 2, end: 10 });
  assert.deepEqual(parseRange("bytes=-3", 10), { start: 7, end: 10 });
  assert.deepEqual(parseRange("bytes=8-100", 10), { start: 8, end: 10 });
  assert.equal(parseRange("bytes=10-", 10), "unsatisfiable");
  assert.equal(parseRange("bytes=-0", 10), "unsatisfiable");
  assert.equal(parseRange("bytes=0-", 0), "unsatisfiable");
  assert.equal(parseRange("bytes=5-2", 10), undefined);
  assert.equal(parseRange("bytes=-", 10), undefined);
  assert.equal(parseRange("bytes=1-2,4-5", 10), undefined);
});

Deno.test("createRegistryHandler() serves chunksums for any blob, with Content-Location", async () => {
  const { tiny, store } = await getWorld();
  for (const b of tiny.blobs) {
    const res = await get(`/v2/library/tiny/chunksums/${b.digest}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-location"), `${BASE}/v2/library/tiny/blobs/${b.digest}`);
    const chunks = parseChunksums(await res.text(), b.size);
    assert.equal(chunks.length, Math.max(1, Math.ceil(b.size / 65536)));
    for (const c of chunks) {
      assert.equal(c.digest, sha(b.data!.subarray(c.start, c.end + 1)));
    }
  }
  const sidecars = await readdir(join(store, ".haul", "chunksums"));
  assert.ok(sidecars.includes(`${tiny.blobs[1].digest.replace(":", "-")}-65536`), sidecars.join());
  const missing = await get(`/v2/library/tiny/chunksums/sha256:${"1".repeat(64)}`);
  assert.equal(missing.status, 404);
  assert.equal(await errorCode(missing), "BLOB_UNKNOWN");
});

Deno.test("createRegistryHandler() reuses a chunksums sidecar until the blob changes", async () => {
  const { tiny, store } = await getWorld();
  const b = tiny.blobs[1];
  const url = `/v2/library/tiny/chunksums/${b.digest}`;
  const first = await (await get(url)).text();
  const sidecar = join(store, ".haul", "chunksums", `${b.digest.replace(":", "-")}-65536`);
  // Tamper with the cached body (still well-formed): a reused sidecar shows the change.
  const text = await readFile(sidecar, "utf8");
  const fake = "sha256:" + "a".repeat(64);
  await writeFile(sidecar, text.replace(/sha256:[0-9a-f]{64}/, fake));
  assert.match(await (await get(url)).text(), new RegExp(fake));
  // A new mtime invalidates it: recomputed, correct again.
  const blobPath = join(store, "blobs", b.digest.replace(":", "-"));
  await utimes(blobPath, new Date(), new Date(Date.now() + 5000));
  assert.equal(await (await get(url)).text(), first);
});

Deno.test("fetchChunksums() reads what the handler serves", async () => {
  const { tiny, handler } = await getWorld();
  const b = tiny.blobs[1];
  const got = await fetchChunksums({ baseUrl: BASE, fetch: handler }, {
    repository: "library/tiny",
    digest: b.digest,
    size: b.size,
  });
  assert.equal(got?.url, `${BASE}/v2/library/tiny/blobs/${b.digest}`);
  assert.equal(got?.chunks.length, 4);
});

/** Follows Link headers from `path`, returning every page's items. */
async function allPages(path: string, key: "tags" | "repositories"): Promise<string[][]> {
  const pages: string[][] = [];
  let next: string | undefined = path;
  while (next) {
    const res = await get(next);
    assert.equal(res.status, 200, next);
    pages.push((await res.json() as Record<string, string[]>)[key]);
    const link = res.headers.get("link");
    next = link ? /^<([^>]+)>; rel="next"$/.exec(link)![1] : undefined;
    assert.ok(pages.length < 50);
  }
  return pages;
}

Deno.test("createRegistryHandler() lists tags in lexical order with Link pagination", async () => {
  const all = Array.from({ length: 25 }, (_, i) => `t${String(i).padStart(2, "0")}`);
  const res = await get("/v2/library/many/tags/list");
  assert.deepEqual(await res.json(), { name: "library/many", tags: all });
  assert.equal(res.headers.get("link"), null);
  const first = await get("/v2/library/many/tags/list?n=10");
  assert.equal(first.headers.get("link"), '</v2/library/many/tags/list?n=10&last=t09>; rel="next"');
  await first.body?.cancel();
  const pages = await allPages("/v2/library/many/tags/list?n=10", "tags");
  assert.deepEqual(pages.map((p) => p.length), [10, 10, 5]);
  assert.deepEqual(pages.flat(), all);
  assert.deepEqual((await (await get("/v2/library/many/tags/list?last=t22")).json()).tags, [
    "t23",
    "t24",
  ]);
  assert.deepEqual((await (await get("/v2/library/many/tags/list?n=0")).json()).tags, []);
  assert.deepEqual((await (await get("/v2/library/tiny/tags/list")).json()).tags, ["latest", "v1"]);
  const bad = await get("/v2/library/many/tags/list?n=-1");
  assert.equal(bad.status, 400);
  assert.equal(await errorCode(bad), "PAGINATION_NUMBER_INVALID");
  const unknown = await get("/v2/library/nope/tags/list");
  assert.equal(unknown.status, 404);
  assert.equal(await errorCode(unknown), "NAME_UNKNOWN");
});

Deno.test("createRegistryHandler() lists the catalog with names clients can use", async () => {
  // Each model from another host is also listed by the two-component name Ollama can type.
  const all = [
    "127-0-0-1-5000_library/other",
    "127.0.0.1_5000/library/other",
    "ghcr-io_org/img",
    "ghcr.io/org/img",
    "library/many",
    "library/tiny",
    "localhost-5000_team/app",
    "localhost_5000/team/app",
  ];
  assert.deepEqual((await (await get("/v2/_catalog")).json()).repositories, all);
  const pages = await allPages("/v2/_catalog?n=3", "repositories");
  assert.deepEqual(pages, [all.slice(0, 3), all.slice(3, 6), all.slice(6)]);
  // Every listed name resolves.
  for (const name of all) {
    const res = await get(`/v2/${name}/tags/list`);
    assert.equal(res.status, 200, name);
    await res.body?.cancel();
  }
});

Deno.test("createRegistryHandler() refuses every write with 405 UNSUPPORTED", async () => {
  const { tiny } = await getWorld();
  const cases: [string, string][] = [
    ["PUT", "/v2/library/tiny/manifests/latest"],
    ["DELETE", "/v2/library/tiny/manifests/latest"],
    ["DELETE", `/v2/library/tiny/blobs/${tiny.blobs[0].digest}`],
    ["POST", "/v2/library/tiny/blobs/uploads/"],
    ["PATCH", "/v2/library/tiny/blobs/uploads/abc"],
    ["PUT", "/v2/library/tiny/blobs/uploads/abc?digest=sha256:00"],
    ["OPTIONS", "/v2/"],
  ];
  for (const [method, path] of cases) {
    const res = await get(path, {
      method,
      body: method === "GET" || method === "OPTIONS" ? undefined : "x",
    });
    assert.equal(res.status, 405, `${method} ${path}`);
    assert.equal(res.headers.get("allow"), "GET, HEAD");
    assert.equal(await errorCode(res), "UNSUPPORTED");
  }
});

Deno.test("createRegistryHandler() refuses names, tags and digests that could escape the store", async () => {
  const { tiny, warnings } = await getWorld();
  const d = tiny.blobs[1].digest;
  const paths = [
    "/v2/../../etc/passwd/manifests/x",
    "/v2/%2e%2e/%2e%2e/etc/passwd/manifests/x",
    "/v2/..%2f..%2f/manifests/latest",
    "/v2/x/%2e%2e/manifests/latest",
    "/v2/library/tiny/manifests/..%2f..%2f..%2fsecret",
    "/v2/library/tiny/manifests/%2e%2e",
    "/v2/library/tiny/manifests/.hidden",
    "/v2/library/tiny/blobs/sha256:../../x",
    "/v2/library/tiny/blobs/sha256:..%2f..%2fsecret",
    `/v2/library/tiny/blobs/${d}-partial`,
    `/v2/library/tiny/blobs/${d.toUpperCase().replace("SHA256", "sha256")}`,
    "/v2/library/tiny/blobs/sha512:" + "0".repeat(128),
    "/v2/library/tiny/chunksums/sha256:..%2f..%2fsecret",
    "/v2/library%5c..%5ctiny/manifests/latest",
    "/v2/Library/Tiny/manifests/latest",
    "/v2//library/tiny/manifests/latest",
    "/v2/library//tiny/manifests/latest",
    "/v2/x/y/manifests/latest",
    "/v2/127.0.0.1:99999/library/other/manifests/v1",
    "/v2/127.0.0.1:5000:1/library/other/manifests/v1",
    "/v2/library/tiny%00/manifests/latest",
    "/v2/.haul/chunksums/tags/list",
    "/v2/library/many/tags/list?last=../../../../etc",
    "/etc/passwd",
  ];
  for (const path of paths) {
    const res = await get(path);
    const text = await res.text();
    assert.ok(!text.includes(SECRET), path);
    if (path.includes("tags/list?last=")) {
      assert.equal(res.status, 200, path); // `last` is compared, never used as a path
      continue;
    }
    assert.ok(res.status >= 400 && res.status < 500, `${path} → ${res.status}`);
  }
  assert.deepEqual(warnings.filter((w) => !w.includes("chunksums")), []);
  // The URL parser turns `\` into `/` and resolves `..` before the handler sees the path:
  // what is left is an ordinary name inside the store.
  const normalised = await get("/v2/library\\..\\tiny/manifests/latest");
  assert.equal(
    new URL(BASE + "/v2/library\\..\\tiny/manifests/latest").pathname,
    "/v2/tiny/manifests/latest",
  );
  assert.deepEqual(await bytes(normalised), tiny.manifest);
});

Deno.test("parseRepositoryName() validates every component before any path is built", () => {
  for (
    const bad of [
      "",
      "..",
      "a/..",
      "../a",
      "a/./b",
      "%2e%2e/a",
      "a\\b",
      "a//b",
      "A-/b",
      "a/b:c",
      "host:0/a",
      "host:1:2/a",
      "[::1]:5000/a",
      "x".repeat(256),
      "a/b\0",
    ]
  ) {
    assert.equal(parseRepositoryName(bad).ok, false, JSON.stringify(bad));
  }
  assert.deepEqual(parseRepositoryName("llama3.2"), {
    ok: true,
    candidates: [{ host: "registry.ollama.ai", repository: ["library", "llama3.2"] }],
  });
  assert.deepEqual(parseRepositoryName("localhost_5000/a/b"), {
    ok: true,
    candidates: [
      { host: "localhost_5000", repository: ["a", "b"] },
      { host: "localhost:5000", repository: ["a", "b"] },
      { host: "registry.ollama.ai", repository: ["localhost_5000", "a", "b"] },
    ],
  });
});

Deno.test("createRegistryHandler() ends streams in flight when its signal aborts", async () => {
  const dir = await tmpDir("haul-serve-abort");
  try {
    const fx = makeOllamaModel({ layerSizes: [4 << 20], seed: 21 });
    await storeFixture(dir, { repository: "library/big" }, fx);
    const ac = new AbortController();
    const handler = createRegistryHandler({ modelsDir: dir, readSize: 4096, signal: ac.signal });
    const res = await handler(new Request(`${BASE}/v2/library/big/blobs/${fx.blobs[1].digest}`));
    const reader = res.body!.getReader();
    assert.equal((await reader.read()).value?.length, 4096);
    ac.abort(new Error("shutting down"));
    await assert.rejects(
      (async () => {
        for (;;) if ((await reader.read()).done) break;
      })(),
      /shutting down/,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

Deno.test("createRegistryHandler() closes the file when a client cancels", async () => {
  const { tiny } = await getWorld();
  const fds = async () => (await readdir("/proc/self/fd")).length;
  const before = await fds();
  for (let i = 0; i < 20; i++) {
    const res = await get(`/v2/library/tiny/blobs/${tiny.blobs[1].digest}`);
    const reader = res.body!.getReader();
    await reader.read();
    await reader.cancel();
  }
  // Closing is asynchronous: give it up to 3 s (a leak of 20 files never drops).
  for (let i = 0; i < 60 && (await fds()) > before + 2; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok((await fds()) <= before + 2, `fds ${before} → ${await fds()}`);
});

Deno.test("createRegistryHandler() serves a blob that is larger than the read size exactly", async () => {
  const dir = await tmpDir("haul-serve-sizes");
  try {
    const handler = createRegistryHandler({ modelsDir: dir, readSize: 1024 });
    for (const size of [0, 1, 1023, 1024, 1025, 5000]) {
      const data = deterministicBytes(size, size + 1);
      const fx = makeOllamaModel({ layerSizes: [], seed: size });
      await storeFixture(dir, { repository: "library/sizes", tag: `s${size}` }, fx);
      await writeFile(join(dir, "blobs", sha(data).replace(":", "-")), data);
      const res = await handler(new Request(`${BASE}/v2/library/sizes/blobs/${sha(data)}`));
      assert.equal(res.status, 200);
      assert.deepEqual(await bytes(res), data, `size ${size}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

Deno.test({
  name: "createRegistryHandler() test store cleanup",
  fn: async () => {
    if (shared) await rm((await shared).dir, { recursive: true, force: true });
  },
});
