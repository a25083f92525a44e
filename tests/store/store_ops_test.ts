/**
 * Library tests for lib/store/ops.ts (list, rm, prune, verify) on stores written directly,
 * and for lib/ops/login.ts (config.json and credential helpers) with an injected fetch.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import { AuthError, InterruptedError, NotFoundError, UsageError } from "../../lib/errors.ts";
import {
  formatAge,
  hashFile,
  listModels,
  prune,
  removeModels,
  verify,
  type VerifyProgress,
} from "../../lib/store/ops.ts";
import { login, logout, parseRegistry } from "../../lib/ops/login.ts";
import { loadCredential } from "../../lib/auth/credentials.ts";
import { OllamaStore } from "../../lib/store/ollama.ts";
import { parseReference } from "../../lib/registry/reference.ts";
import {
  type Fixture,
  type FixtureBlob,
  makeOllamaModel,
  MEDIA,
  tmpDir,
} from "../support/harness.ts";

const MiB = 1024 * 1024;
const HOUR = 3600_000;

function sha(data: Uint8Array | string): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

function blobName(digest: string): string {
  return digest.replace(":", "-");
}

/** A fixture made of given blobs (so two models can share one). */
function compose(config: FixtureBlob, layers: FixtureBlob[]): Fixture {
  const desc = (b: FixtureBlob) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
  const manifest = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA.dockerManifest,
    config: desc(config),
    layers: layers.map(desc),
  }));
  return {
    manifest,
    manifestDigest: sha(manifest),
    mediaType: MEDIA.dockerManifest,
    blobs: [config, ...layers],
  };
}

/** A temp store; `add` writes a fixture's blobs and manifest as a pull would. */
async function makeStore() {
  const root = await tmpDir("haul-store");
  await fsp.mkdir(path.join(root, "blobs"), { recursive: true });
  const blobPath = (digest: string) => path.join(root, "blobs", blobName(digest));
  const manifestPath = (name: string) => path.join(root, "manifests", ...name.split("/"));
  return {
    root,
    blobPath,
    manifestPath,
    /** `name` is `host/repo…/tag`. */
    async add(name: string, fx: Fixture, ageMs = 2 * HOUR) {
      const when = new Date(Date.now() - ageMs);
      for (const b of fx.blobs) {
        await fsp.writeFile(blobPath(b.digest), b.data!);
        await fsp.utimes(blobPath(b.digest), when, when);
      }
      const mp = manifestPath(name);
      await fsp.mkdir(path.dirname(mp), { recursive: true });
      await fsp.writeFile(mp, fx.manifest);
      await fsp.utimes(mp, when, when);
      return mp;
    },
    /** Writes a file under blobs/ with the given age. */
    async file(name: string, data: Uint8Array | string, ageMs: number) {
      const p = path.join(root, "blobs", name);
      await fsp.writeFile(p, data);
      const when = new Date(Date.now() - ageMs);
      await fsp.utimes(p, when, when);
      return p;
    },
    async blobs(): Promise<string[]> {
      return (await fsp.readdir(path.join(root, "blobs"))).sort();
    },
    [Symbol.asyncDispose]: () => fsp.rm(root, { recursive: true, force: true }),
  };
}

const exists = (p: string) => fsp.stat(p).then(() => true, () => false);

/** Two models sharing their first layer: alpha = [cfgA, shared, onlyA], beta = [cfgB, shared, onlyB]. */
function twoModels() {
  const a = makeOllamaModel({ layerSizes: [3000, 500], seed: 11 });
  const b = makeOllamaModel({ layerSizes: [700], seed: 12 });
  const shared = a.blobs[1];
  const alpha = compose(a.blobs[0], [shared, a.blobs[2]]);
  const beta = compose(b.blobs[0], [shared, b.blobs[1]]);
  return { alpha, beta, shared, onlyA: a.blobs[2], onlyB: b.blobs[1] };
}

// ------------------------------------------------------------------------------------ list

Deno.test("listModels() names models as Ollama shows them, newest first, deep repos included", async () => {
  await using store = await makeStore();
  const { alpha, beta } = twoModels();
  await store.add("registry.ollama.ai/library/llama3.2/latest", alpha, 3 * HOUR);
  await store.add("127.0.0.1:5000/library/tiny/q4", beta, 1 * HOUR);
  await store.add("ghcr.io/org/team/img/v1", beta, 2 * HOUR);
  await store.add("registry.ollama.ai/user/model/7b", alpha, 4 * HOUR);
  // A manifest being written and a stray file are not models.
  await fsp.writeFile(
    store.manifestPath("registry.ollama.ai/library/llama3.2/latest.123.tmp"),
    "{",
  );
  await fsp.writeFile(path.join(store.root, "manifests", "README"), "not a model");

  const models = await listModels({ modelsDir: store.root });
  assert.deepEqual(models.map((m) => m.name), [
    "127.0.0.1:5000/library/tiny:q4",
    "ghcr.io/org/team/img:v1",
    "llama3.2:latest",
    "user/model:7b",
  ]);
  const llama = models[2];
  assert.equal(llama.reference, "registry.ollama.ai/library/llama3.2:latest");
  assert.equal(llama.digest, alpha.manifestDigest);
  assert.equal(llama.size, alpha.blobs.reduce((a, b) => a + b.size, 0));
  assert.deepEqual(llama.blobs.map((b) => b.digest), alpha.blobs.map((b) => b.digest));
  assert.equal(llama.tag, "latest");
  assert.equal(models[1].repository, "org/team/img");
  assert.ok(Math.abs(Date.now() - 3 * HOUR - llama.modified.getTime()) < 5000);
});

Deno.test("listModels() flags invalid manifests and names digest-pinned pulls by digest", async () => {
  await using store = await makeStore();
  const { alpha } = twoModels();
  const pinned = `registry.ollama.ai/library/tiny/${blobName(alpha.manifestDigest)}`;
  await store.add(pinned, alpha);
  const broken = store.manifestPath("registry.ollama.ai/library/broken/latest");
  await fsp.mkdir(path.dirname(broken), { recursive: true });
  await fsp.writeFile(broken, "{not json");

  const models = await listModels({ modelsDir: store.root });
  const tiny = models.find((m) => m.repository === "library/tiny")!;
  assert.equal(tiny.name, `tiny@${alpha.manifestDigest}`);
  assert.equal(tiny.pinned, alpha.manifestDigest);
  assert.equal(tiny.tag, undefined);
  const bad = models.find((m) => m.repository === "library/broken")!;
  assert.match(bad.invalid ?? "", /not valid JSON/);
  assert.deepEqual(bad.blobs, []);
});

Deno.test("listModels() of a store that does not exist is empty", async () => {
  assert.deepEqual(await listModels({ modelsDir: "/nonexistent/haul-store" }), []);
});

Deno.test("formatAge() matches Ollama's wording", () => {
  const now = Date.parse("2026-01-01T00:00:00Z");
  const ago = (ms: number) => formatAge(now - ms, now);
  assert.equal(ago(300), "Less than a second ago");
  assert.equal(ago(1000), "1 second ago");
  assert.equal(ago(45_000), "45 seconds ago");
  assert.equal(ago(90_000), "About a minute ago");
  assert.equal(ago(3 * 60_000), "3 minutes ago");
  assert.equal(ago(HOUR), "About an hour ago");
  assert.equal(ago(5 * HOUR), "5 hours ago");
  assert.equal(ago(3 * 24 * HOUR), "3 days ago");
  assert.equal(ago(20 * 24 * HOUR), "2 weeks ago");
  assert.equal(ago(100 * 24 * HOUR), "3 months ago");
  assert.equal(ago(800 * 24 * HOUR), "2 years ago");
  assert.equal(formatAge(now + 5 * HOUR, now), "5 hours from now");
});

// ------------------------------------------------------------------------------------ rm

Deno.test("removeModels() removes the manifest and unshared blobs, keeps the shared one", async () => {
  await using store = await makeStore();
  const { alpha, beta, shared, onlyA, onlyB } = twoModels();
  const a = await store.add("registry.ollama.ai/library/alpha/latest", alpha);
  await store.add("registry.ollama.ai/library/beta/latest", beta);

  const r = await removeModels(["alpha"], { modelsDir: store.root });
  assert.deepEqual(r.models.map((m) => m.name), ["alpha:latest"]);
  assert.deepEqual(
    r.blobsRemoved.map((b) => b.digest).sort(),
    [alpha.blobs[0].digest, onlyA.digest].sort(),
  );
  assert.equal(r.bytesFreed, alpha.blobs[0].size + onlyA.size);
  assert.deepEqual(r.blobsKept, []);
  assert.equal(await exists(a), false);
  assert.equal(await exists(path.dirname(a)), false, "empty model directory removed");
  assert.equal(await exists(path.join(store.root, "manifests", "registry.ollama.ai")), true);
  assert.equal(await exists(store.blobPath(shared.digest)), true);
  assert.equal(await exists(store.blobPath(onlyB.digest)), true);
  assert.deepEqual((await listModels({ modelsDir: store.root })).map((m) => m.name), [
    "beta:latest",
  ]);
});

Deno.test("removeModels() removes nothing when one reference is not in the store", async () => {
  await using store = await makeStore();
  const { alpha } = twoModels();
  const a = await store.add("registry.ollama.ai/library/alpha/latest", alpha);
  await assert.rejects(
    removeModels(["alpha", "nope:1"], { modelsDir: store.root }),
    (e: unknown) => e instanceof NotFoundError && e.exitCode === 6 && /nope:1/.test(e.message),
  );
  assert.equal(await exists(a), true);
  await assert.rejects(removeModels(["Bad Ref"], { modelsDir: store.root }), UsageError);
});

Deno.test("removeModels() keeps unused blobs while a pull looks active, unless forced", async () => {
  await using store = await makeStore();
  const { alpha, beta, onlyA } = twoModels();
  await store.add("registry.ollama.ai/library/alpha/latest", alpha);
  await store.add("registry.ollama.ai/library/beta/latest", beta);
  await store.file(`${blobName(sha("x"))}-partial`, "xx", 1000);

  const r = await removeModels(["alpha"], { modelsDir: store.root });
  assert.deepEqual(r.blobsRemoved, []);
  assert.equal(r.blobsKept.length, 2);
  assert.equal(await exists(store.blobPath(onlyA.digest)), true);
  // The manifest is gone; a later prune (or --force) frees the blobs.
  const p = await prune({ modelsDir: store.root, force: true });
  assert.ok(p.removed.some((f) => f.digest === onlyA.digest));
});

// ------------------------------------------------------------------------------------ prune

Deno.test("prune() removes unused blobs and stale partials, keeps what a pull may be using", async () => {
  await using store = await makeStore();
  const { alpha } = twoModels();
  await store.add("registry.ollama.ai/library/alpha/latest", alpha);
  const orphanOld = sha("orphan-old");
  const orphanNew = sha("orphan-new");
  const stale = sha("stale");
  await store.file(blobName(orphanOld), "orphan-old", 2 * HOUR);
  await store.file(blobName(orphanNew), "orphan-new", 60_000);
  await store.file(`${blobName(stale)}-partial`, "0123456789", 2 * HOUR);
  await store.file(`${blobName(stale)}-partial.json`, "{}", 2 * HOUR);
  await store.file(`${blobName(stale)}-partial-0`, "{}", 2 * HOUR); // Ollama's part state
  await store.file(`${blobName(stale)}-partial-999999999-abcd1234`, "t", 2 * HOUR);
  await store.file("something.tmp", "t", 2 * HOUR);
  await store.file("notes.txt", "not ours", 2 * HOUR);

  const dry = await prune({ modelsDir: store.root, dryRun: true });
  assert.equal(dry.dryRun, true);
  const before = await store.blobs();
  assert.deepEqual(
    dry.removed.map((f) => path.basename(f.path)).sort(),
    [
      blobName(orphanOld),
      `${blobName(stale)}-partial`,
      `${blobName(stale)}-partial-0`,
      `${blobName(stale)}-partial-999999999-abcd1234`,
      `${blobName(stale)}-partial.json`,
      "something.tmp",
    ],
  );
  assert.equal(dry.bytesFreed, 10 + 10 + 2 + 2 + 1 + 1);
  assert.deepEqual(dry.kept.map((f) => f.digest), [orphanNew]);
  assert.equal(dry.transferActive, false);
  assert.deepEqual(await store.blobs(), before, "a dry run removes nothing");

  const real = await prune({ modelsDir: store.root });
  assert.deepEqual(real.removed, dry.removed);
  assert.equal(real.bytesFreed, dry.bytesFreed);
  const left = await store.blobs();
  for (const b of alpha.blobs) assert.ok(left.includes(blobName(b.digest)));
  assert.ok(left.includes(blobName(orphanNew)));
  assert.ok(left.includes("notes.txt"), "unknown files stay");
  assert.equal(left.length, alpha.blobs.length + 2);

  const forced = await prune({ modelsDir: store.root, force: true });
  assert.deepEqual(forced.removed.map((f) => f.digest), [orphanNew]);
});

Deno.test("prune() keeps every unused blob while a partial download is fresh", async () => {
  await using store = await makeStore();
  const orphan = sha("orphan");
  const busy = sha("busy");
  await store.file(blobName(orphan), "orphan", 2 * HOUR);
  await store.file(`${blobName(busy)}-partial`, "....", 5_000);
  await store.file(`${blobName(busy)}-partial.json`, "{}", 2 * HOUR);

  const r = await prune({ modelsDir: store.root });
  assert.equal(r.transferActive, true);
  assert.deepEqual(r.removed, []);
  assert.deepEqual(r.kept.map((f) => path.basename(f.path)).sort(), [
    blobName(orphan),
    `${blobName(busy)}-partial`,
    `${blobName(busy)}-partial.json`,
  ]);
  assert.match(r.kept.find((f) => f.kind === "blob")!.reason!, /transfer is in progress/);
});

Deno.test("prune() never removes a download whose lock or temp file names a live process", async () => {
  await using store = await makeStore();
  const locked = sha("locked");
  const dead = sha("dead");
  await store.file(`${blobName(locked)}-partial`, "....", 2 * HOUR);
  await store.file(
    `${blobName(locked)}-partial.lock`,
    JSON.stringify({ pid: process.pid, host: (await import("node:os")).hostname() }),
    2 * HOUR,
  );
  await store.file(`${blobName(dead)}-partial-${process.pid}-0badf00d`, "t", 2 * HOUR);
  const r = await prune({ modelsDir: store.root, force: true });
  assert.deepEqual(r.removed, []);
  assert.equal(r.kept.length, 3);
  for (const k of r.kept) assert.match(k.reason!, new RegExp(`running process ${process.pid}`));
});

Deno.test("prune() counts digests in manifest temp files as used and removes stale empty dirs", async () => {
  await using store = await makeStore();
  const { alpha } = twoModels();
  for (const b of alpha.blobs) await store.file(blobName(b.digest), b.data!, 2 * HOUR);
  // A manifest about to be renamed into place by a running pull (a live pid: ours).
  const tmp = store.manifestPath(`127.0.0.1:5000/library/alpha/latest.${process.pid}.tmp`);
  await fsp.mkdir(path.dirname(tmp), { recursive: true });
  await fsp.writeFile(tmp, alpha.manifest);
  const gone = store.manifestPath("registry.ollama.ai/library/gone");
  await fsp.mkdir(gone, { recursive: true });
  await prune({ modelsDir: store.root });
  assert.equal(await exists(gone), true, "a fresh empty directory may be a pull's: kept");

  const r = await prune({ modelsDir: store.root, force: true });
  assert.deepEqual(r.removed, []);
  assert.equal(await exists(tmp), true);
  assert.equal(await exists(store.manifestPath("registry.ollama.ai")), false);
  for (const b of alpha.blobs) assert.equal(await exists(store.blobPath(b.digest)), true);
});

// ------------------------------------------------------------------------------------ verify

Deno.test("verify() reports missing, truncated and corrupt blobs once each, and --fix removes damage", async () => {
  await using store = await makeStore();
  const { alpha, beta, shared, onlyA, onlyB } = twoModels();
  await store.add("registry.ollama.ai/library/alpha/latest", alpha);
  await store.add("registry.ollama.ai/library/beta/latest", beta);

  const clean = await verify([], { modelsDir: store.root });
  assert.equal(clean.ok, true);
  assert.equal(clean.blobs, 5);
  assert.equal(clean.bytes, [...alpha.blobs, beta.blobs[0], onlyB].reduce((a, b) => a + b.size, 0));

  // Same size, one byte changed; one byte short; gone.
  const corrupt = new Uint8Array(shared.data!);
  corrupt[100] ^= 0xff;
  await fsp.writeFile(store.blobPath(shared.digest), corrupt);
  await fsp.truncate(store.blobPath(onlyA.digest), onlyA.size - 1);
  await fsp.rm(store.blobPath(onlyB.digest));

  const r = await verify([], { modelsDir: store.root });
  assert.equal(r.ok, false);
  const by = new Map(r.problems.map((p) => [p.digest, p]));
  assert.equal(r.problems.length, 3);
  assert.equal(by.get(shared.digest)!.problem, "digest");
  assert.equal(by.get(shared.digest)!.actualDigest, sha(corrupt));
  assert.match(by.get(shared.digest)!.detail, /content hash differs/);
  assert.deepEqual(by.get(shared.digest)!.models.sort(), ["alpha:latest", "beta:latest"]);
  assert.equal(by.get(shared.digest)!.path, store.blobPath(shared.digest));
  assert.equal(by.get(onlyA.digest)!.problem, "size");
  assert.match(by.get(onlyA.digest)!.detail, /size differs/);
  assert.equal(by.get(onlyB.digest)!.problem, "missing");
  assert.ok(r.problems.every((p) => !p.removed));
  assert.equal(await exists(store.blobPath(shared.digest)), true, "no --fix: nothing removed");

  const only = await verify(["beta"], { modelsDir: store.root });
  assert.deepEqual(only.problems.map((p) => p.digest).sort(), [shared.digest, onlyB.digest].sort());

  const fixed = await verify([], { modelsDir: store.root, fix: true });
  assert.deepEqual(
    fixed.problems.filter((p) => p.removed).map((p) => p.digest).sort(),
    [shared.digest, onlyA.digest].sort(),
  );
  assert.equal(await exists(store.blobPath(shared.digest)), false);
  assert.equal(await exists(store.blobPath(onlyA.digest)), false);
  assert.equal(await exists(store.blobPath(alpha.blobs[0].digest)), true, "good blobs stay");
});

Deno.test("verify() checks a digest-pinned manifest and rejects unknown references", async () => {
  await using store = await makeStore();
  const { alpha, beta } = twoModels();
  // Stored under alpha's digest, holding beta's bytes.
  await store.add(`registry.ollama.ai/library/tiny/${blobName(alpha.manifestDigest)}`, beta);
  const r = await verify([], { modelsDir: store.root });
  assert.equal(r.ok, false);
  assert.match(r.manifestProblems[0].detail, /not the pinned/);
  await assert.rejects(verify(["nope"], { modelsDir: store.root }), NotFoundError);
});

Deno.test("verify() reports progress over large blobs and stops on abort", async () => {
  await using store = await makeStore();
  const big = makeOllamaModel({ layerSizes: [20 * MiB + 3], seed: 13 });
  await store.add("registry.ollama.ai/library/big/latest", big);
  const seen: VerifyProgress[] = [];
  const r = await verify([], { modelsDir: store.root, onProgress: (p) => seen.push(p) });
  assert.equal(r.ok, true);
  assert.equal(seen.at(-1)!.bytesDone, seen.at(-1)!.bytesTotal);
  assert.equal(seen.at(-1)!.blobsDone, 2);
  assert.ok(seen.length >= 4, "progress per 8 MiB read");

  const ac = new AbortController();
  await assert.rejects(
    verify([], {
      modelsDir: store.root,
      signal: ac.signal,
      onProgress: (p) => p.bytesDone > 0 && ac.abort(),
    }),
    InterruptedError,
  );
});

Deno.test("hashFile() hashes across read boundaries", async () => {
  await using store = await makeStore();
  const data = new Uint8Array(17 * MiB + 5).map((_, i) => i * 7);
  const p = await store.file("x.bin", data, 0);
  let counted = 0;
  const r = await hashFile(p, { onBytes: (n) => counted += n });
  assert.deepEqual(r, { digest: sha(data), size: data.length });
  assert.equal(counted, data.length);
});

// ------------------------------------------------------------------------------------ login

const SECRET = "wonder-S3cret:with:colons";

/** A registry stand-in for the injected fetch: Basic auth, one user. */
function basicRegistry(user: string, pass: string) {
  const seen: string[] = [];
  const fetch = (req: Request): Promise<Response> => {
    seen.push(`${req.method} ${new URL(req.url).pathname}`);
    const ok = req.headers.get("authorization") === `Basic ${b64(`${user}:${pass}`)}`;
    return Promise.resolve(
      ok
        ? new Response("{}", { status: 200 })
        : new Response('{"errors":[{"code":"UNAUTHORIZED"}]}', {
          status: 401,
          headers: { "www-authenticate": 'Basic realm="test"' },
        }),
    );
  };
  return { fetch, seen };
}

function b64(s: string): string {
  return btoa(String.fromCharCode(...new TextEncoder().encode(s)));
}

async function configDir() {
  const root = await tmpDir("haul-docker");
  const dir = path.join(root, "nested", ".docker");
  const bin = path.join(root, "bin");
  await fsp.mkdir(bin);
  return {
    root,
    dir,
    bin,
    env: { PATH: `${bin}:/usr/bin:/bin`, HOME: root },
    read: async () => JSON.parse(await fsp.readFile(path.join(dir, "config.json"), "utf8")),
    [Symbol.asyncDispose]: () => fsp.rm(root, { recursive: true, force: true }),
  };
}

Deno.test("parseRegistry() normalises hosts, URLs and Docker Hub", () => {
  assert.deepEqual(parseRegistry("Registry.Example.com:5000"), {
    host: "registry.example.com:5000",
    serverAddress: "registry.example.com:5000",
    baseUrl: "https://registry.example.com:5000",
  });
  assert.equal(parseRegistry("https://ghcr.io/v2/").host, "ghcr.io");
  assert.equal(parseRegistry("127.0.0.1:5000", true).baseUrl, "http://127.0.0.1:5000");
  assert.equal(parseRegistry("https://127.0.0.1:5000", true).baseUrl, "https://127.0.0.1:5000");
  assert.equal(parseRegistry("docker.io").serverAddress, "https://index.docker.io/v1/");
  assert.throws(() => parseRegistry("http://127.0.0.1:5000"), UsageError);
  assert.throws(() => parseRegistry("user@host"), UsageError);
  assert.throws(() => parseRegistry("ftp://x.io"), UsageError);
});

Deno.test("login() checks, then writes auths.<host>.auth keeping every other key; logout() removes it", async () => {
  await using d = await configDir();
  await fsp.mkdir(d.dir, { recursive: true });
  const original = {
    auths: { "other.io": { auth: b64("bob:pw") } },
    credHelpers: { "far.io": "nothing" },
    proxies: { default: { httpProxy: "http://127.0.0.1:3128" } },
    psFormat: "table {{.ID}}",
  };
  await fsp.writeFile(path.join(d.dir, "config.json"), JSON.stringify(original));
  const reg = basicRegistry("alice", SECRET);
  const r = await login("reg.test:5000", { username: "alice", password: SECRET }, {
    configDir: d.dir,
    env: d.env,
    fetch: reg.fetch,
  });
  assert.deepEqual(r.storedIn, { kind: "config", path: path.join(d.dir, "config.json") });
  assert.ok(!JSON.stringify(r).includes(SECRET));
  assert.deepEqual(reg.seen, ["GET /v2/", "GET /v2/"], "challenge, then Basic");
  const saved = await d.read();
  assert.deepEqual(saved, {
    ...original,
    auths: { ...original.auths, "reg.test:5000": { auth: b64(`alice:${SECRET}`) } },
  });
  assert.equal((await fsp.stat(path.join(d.dir, "config.json"))).mode & 0o777, 0o600);
  assert.deepEqual(await loadCredential("reg.test:5000", { configDir: d.dir, env: d.env }), {
    username: "alice",
    password: SECRET,
  });

  const out = await logout("reg.test:5000", { configDir: d.dir, env: d.env });
  assert.equal(out.loggedOut, true);
  assert.deepEqual(out.removedKeys, ["reg.test:5000"]);
  assert.deepEqual(await d.read(), original);
  assert.equal((await logout("reg.test:5000", { configDir: d.dir, env: d.env })).loggedOut, false);
});

Deno.test("login() creates the config dir 0700 and refuses a wrong password without saving", async () => {
  await using d = await configDir();
  const reg = basicRegistry("alice", SECRET);
  let caught: unknown;
  try {
    await login("reg.test", { username: "alice", password: `${SECRET}x` }, {
      configDir: d.dir,
      env: d.env,
      fetch: reg.fetch,
    });
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof AuthError, String(caught));
  assert.match(caught.message, /Login to reg\.test failed/);
  assert.ok(!caught.message.includes(SECRET));
  assert.equal(await exists(d.dir), false, "nothing written");

  await login("reg.test", { username: "alice", password: SECRET }, {
    configDir: d.dir,
    env: d.env,
    fetch: reg.fetch,
  });
  assert.equal((await fsp.stat(d.dir)).mode & 0o777, 0o700);
  await assert.rejects(
    login("reg.test", { username: "al:ice", password: "x" }, { configDir: d.dir, check: false }),
    UsageError,
  );
});

Deno.test("login() and logout() go through credsStore and credHelpers helpers", async () => {
  await using d = await configDir();
  await fsp.mkdir(d.dir, { recursive: true });
  await fsp.writeFile(
    path.join(d.dir, "config.json"),
    JSON.stringify({ credsStore: "fake", credHelpers: { "special.io": "other" } }),
  );
  // Records the action and stdin of each run into <bin>/../<name>-<action>.
  for (const name of ["fake", "other"]) {
    const script = path.join(d.bin, `docker-credential-${name}`);
    await fsp.writeFile(
      script,
      `#!/bin/sh\ncat > "$(dirname "$0")/../${name}-$1"\n` +
        `[ "$1" = erase ] && [ -f "$(dirname "$0")/../${name}-gone" ] && ` +
        `{ echo "credentials not found in native keychain"; exit 1; }\nexit 0\n`,
    );
    await fsp.chmod(script, 0o755);
  }
  const opts = { configDir: d.dir, env: d.env, check: false };
  const r = await login("reg.test", { username: "alice", password: SECRET }, opts);
  assert.deepEqual(r.storedIn, {
    kind: "helper",
    helper: "docker-credential-fake",
    path: path.join(d.dir, "config.json"),
  });
  assert.deepEqual(JSON.parse(await fsp.readFile(path.join(d.root, "fake-store"), "utf8")), {
    ServerURL: "reg.test",
    Username: "alice",
    Secret: SECRET,
  });
  const saved = await d.read();
  assert.deepEqual(saved.auths, { "reg.test": {} }, "docker's empty marker, no secret");
  assert.ok(!JSON.stringify(saved).includes(b64(`alice:${SECRET}`)));

  await login("special.io", { username: "u", password: SECRET }, opts);
  assert.match(await fsp.readFile(path.join(d.root, "other-store"), "utf8"), /special\.io/);

  const out = await logout("reg.test", opts);
  assert.equal(out.erasedFrom, "docker-credential-fake");
  assert.equal(await fsp.readFile(path.join(d.root, "fake-erase"), "utf8"), "reg.test");
  assert.deepEqual((await d.read()).auths, { "special.io": {} });
  await fsp.writeFile(path.join(d.root, "fake-gone"), "");
  assert.equal((await logout("reg.test", opts)).loggedOut, false);

  await fsp.rm(path.join(d.bin, "docker-credential-fake"));
  await assert.rejects(
    login("reg.test", { username: "alice", password: SECRET }, opts),
    (e: unknown) => e instanceof AuthError && /not on PATH/.test(e.message),
  );
});

Deno.test("login() leaves an invalid config.json alone", async () => {
  await using d = await configDir();
  await fsp.mkdir(d.dir, { recursive: true });
  await fsp.writeFile(path.join(d.dir, "config.json"), `{"auths": {"x": "${SECRET}"`);
  let caught: unknown;
  try {
    await login("reg.test", { username: "a", password: "b" }, { configDir: d.dir, check: false });
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof AuthError);
  assert.ok(!caught.message.includes(SECRET));
  assert.equal(
    await fsp.readFile(path.join(d.dir, "config.json"), "utf8"),
    `{"auths": {"x": "${SECRET}"`,
  );
});

Deno.test("writeManifest() leaves only manifests under manifests/; prune() counts its temps in .haul/tmp as used", async () => {
  await using store = await makeStore();
  const { alpha } = twoModels();
  for (const b of alpha.blobs) await store.file(blobName(b.digest), b.data!, 2 * HOUR);
  const ollama = new OllamaStore(store.root);
  // Stock Ollama reads every file at manifests/*/*/*/* as a manifest (server/images.go).
  assert.ok(!ollama.manifestTempPath().startsWith(ollama.manifestsDir + path.sep));
  const ref = parseReference("127.0.0.1:5000/library/alpha:latest");
  const written = await ollama.writeManifest(ref, alpha.manifest);
  const under = (await fsp.readdir(ollama.manifestsDir, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
  assert.deepEqual(under, [written]);
  await fsp.rm(written);

  // A manifest about to be renamed into place by a running pull (a live pid: ours).
  const tmp = path.join(ollama.tmpDir, `manifest.${process.pid}-0badf00d.tmp`);
  await fsp.writeFile(tmp, alpha.manifest);
  const r = await prune({ modelsDir: store.root, force: true });
  assert.deepEqual(r.removed, []);
  for (const b of alpha.blobs) assert.equal(await exists(store.blobPath(b.digest)), true);
  await fsp.rm(tmp);
  const after = await prune({ modelsDir: store.root, force: true });
  assert.equal(after.removed.length, alpha.blobs.length, "unreferenced once the temp is gone");
});
