/**
 * Pull, push and copy through every registry profile (tests/support/registry_profiles.ts): the
 * behaviours GHCR, Docker Hub, ECR, Artifact Registry, ACR, Quay, Harbor, Artifactory and
 * Hugging Face show, played by a proxy in front of the real docker-registry.
 */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import {
  makeOllamaModel,
  pushFixture,
  runCli,
  sha256File,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import {
  dockerConfigFor,
  type ProfileProxy,
  PROFILES,
  startProfileProxy,
} from "../support/registry_profiles.ts";
import { storeFixture } from "../server/serve_fixtures.ts";
import { registriesDoc } from "../../scripts/registries_doc.ts";
import { REPO_ROOT } from "../support/util.ts";

const LAYER = 40_000_003;

/** Request body bytes the proxy took for blob uploads (PATCH, PUT and POST, not manifests). */
function uploadBytes(proxy: ProfileProxy, from = 0): number {
  return proxy.requests.slice(from).filter((r) =>
    r.host === "registry" && r.url.includes("/blobs/uploads/")
  ).reduce((n, r) => n + r.bytesIn, 0);
}

async function verifyStore(store: string, fx: ReturnType<typeof makeOllamaModel>) {
  for (const b of fx.blobs) {
    const file = path.join(store, "blobs", b.digest.replace(":", "-"));
    assert.equal(`sha256:${await sha256File(file)}`, b.digest, b.digest);
  }
}

async function upstreamDigest(registry: string, repo: string, tag: string): Promise<string> {
  const r = await fetch(`${registry}/v2/${repo}/manifests/${tag}`, {
    method: "HEAD",
    headers: { accept: "application/vnd.docker.distribution.manifest.v2+json" },
  });
  assert.equal(r.status, 200, `${repo}:${tag} at the registry`);
  return r.headers.get("docker-content-digest") ?? "";
}

PROFILES.forEach((profile, i) => {
  Deno.test(`${profile.name}: push (a 40 MB layer among small ones), pull and copy end verified`, async () => {
    const registry = await startRegistry();
    const plain = await startRegistry();
    const proxy = await startProfileProxy(registry.url, profile);
    const dir = await tmpDir(`haul-profile-${profile.id}`);
    const fx = makeOllamaModel({ layerSizes: [LAYER, 3000, 500], seed: 300 + i });
    const total = fx.blobs.reduce((n, b) => n + b.size, 0);
    try {
      await fsp.mkdir(path.join(dir, "docker"));
      await fsp.writeFile(
        path.join(dir, "docker", "config.json"),
        dockerConfigFor(profile, proxy.host),
      );
      // The realm on another host is https (as auth.docker.io is): trust the proxy's CA.
      const trust = { DENO_CERT: proxy.caFile, NODE_EXTRA_CA_CERTS: proxy.caFile };
      const env = { DOCKER_CONFIG: path.join(dir, "docker"), HOME: dir, ...trust };
      const src = path.join(dir, "src");
      await storeFixture(src, { host: "127.0.0.1:9", repository: "src/model" }, fx);

      // Push: every blob, then the manifest; the bytes on the wire stay near the blobs'.
      const push = await runCli([
        "push",
        "--insecure",
        "--models",
        src,
        ...(profile.mountMissing401 ? ["--from", "ghost/model"] : []),
        "127.0.0.1:9/src/model",
        `${proxy.host}/team/model:1`,
      ], { env });
      assert.equal(push.code, 0, push.stderr);
      assert.equal(await upstreamDigest(registry.url, "team/model", "1"), fx.manifestDigest);
      if (profile.auth.kind === "bearer" && profile.auth.ttlSec !== undefined) {
        // Tokens outlived by the upload were fetched again.
        const grants = proxy.tokens.filter((t) => t.user === profile.user && t.status === 200);
        assert(grants.length >= 2, `${grants.length} push tokens`);
      }
      const sent = uploadBytes(proxy);
      assert(sent >= total && sent <= 1.1 * total, `push sent ${sent} bytes for ${total}`);

      // Pull back (anonymously where the registry allows it), verified byte for byte.
      const anonymous = profile.auth.kind === "bearer" && profile.auth.anonymousPull;
      const store = path.join(dir, "store");
      const pull = await runCli(
        ["pull", "--insecure", "--models", store, `${proxy.host}/team/model:1`],
        { env: anonymous ? { ...trust, HOME: dir, DOCKER_CONFIG: path.join(dir, "none") } : env },
      );
      assert.equal(pull.code, 0, pull.stderr);
      await verifyStore(store, fx);
      const manifest = path.join(store, "manifests", proxy.host, "team", "model", "1");
      assert.deepEqual(new Uint8Array(await fsp.readFile(manifest)), fx.manifest);

      // Copy from another registry into this one: chunks from memory (16 MiB, ranged).
      await pushFixture(plain, "src/copy", "latest", fx);
      const before = proxy.requests.length;
      const copy = await runCli([
        "copy",
        "--insecure",
        `${plain.url.replace("http://", "")}/src/copy:latest`,
        `${proxy.host}/team/copied:1`,
      ], { env });
      assert.equal(copy.code, 0, copy.stderr);
      assert.equal(await upstreamDigest(registry.url, "team/copied", "1"), fx.manifestDigest);
      const copied = uploadBytes(proxy, before);
      assert(copied <= 1.3 * total, `copy sent ${copied} bytes for ${total}`);
      console.log(
        `${profile.id}: push sent ${(sent / total).toFixed(3)}x, copy ${
          (copied / total).toFixed(3)
        }x the blobs' bytes`,
      );
    } finally {
      await proxy.stop();
      await plain.stop();
      await registry.stop();
      await fx.cleanup?.();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});

const ghcr = PROFILES.find((p) => p.id === "ghcr")!;
const dockerhub = PROFILES.find((p) => p.id === "dockerhub")!;
const artifactory = PROFILES.find((p) => p.id === "artifactory")!;
const hf = PROFILES.find((p) => p.id === "hf")!;
const quay = PROFILES.find((p) => p.id === "quay")!;

Deno.test("OCI-Chunk-Min-Length is honoured: --chunk-size 2M against a registry asking 8 MiB sends 8 MiB chunks", async () => {
  const registry = await startRegistry();
  const proxy = await startProfileProxy(registry.url, quay, { chunkMinLength: 8 << 20 });
  const dir = await tmpDir("haul-profile-minchunk");
  const fx = makeOllamaModel({ layerSizes: [20_000_007, 300], seed: 324 });
  try {
    await fsp.mkdir(path.join(dir, "docker"));
    await fsp.writeFile(path.join(dir, "docker", "config.json"), dockerConfigFor(quay, proxy.host));
    const src = path.join(dir, "src");
    await storeFixture(src, { host: "127.0.0.1:9", repository: "src/model" }, fx);
    const r = await runCli([
      "push",
      "--insecure",
      "--chunk-size",
      "2M",
      "--models",
      src,
      "127.0.0.1:9/src/model",
      `${proxy.host}/team/min:1`,
    ], { env: { DOCKER_CONFIG: path.join(dir, "docker") } });
    assert.equal(r.code, 0, r.stderr);
    const patches = proxy.requests.filter((q) => q.method === "PATCH").map((q) => q.bytesIn);
    assert.equal(patches.reduce((a, b) => a + b, 0), 20_000_007);
    assert.deepEqual(patches.slice(0, -1), [8 << 20, 8 << 20], JSON.stringify(patches));
    assert.equal(await upstreamDigest(registry.url, "team/min", "1"), fx.manifestDigest);
  } finally {
    await proxy.stop();
    await registry.stop();
    await fx.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("a mixed-case hf.co model pulls by its name as written, default tag and all, and lists as Ollama names it", async () => {
  const registry = await startRegistry();
  const fx = makeOllamaModel({ layerSizes: [20_000_001, 600], seed: 323 });
  // Hugging Face is case-insensitive; the registry behind the proxy holds it lower-cased.
  await pushFixture(registry, "bartowski/llama-3.2-1b-instruct-gguf", "q4_k_m", fx);
  const proxy = await startProfileProxy(registry.url, hf);
  const dir = await tmpDir("haul-profile-hf");
  try {
    const env = { DOCKER_CONFIG: path.join(dir, "none"), DENO_CERT: proxy.caFile };
    for (const ref of ["Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct-GGUF:Q4_K_M"]) {
      const r = await runCli(
        ["pull", "--insecure", "--models", dir, `${proxy.host}/bartowski/${ref}`],
        { env },
      );
      assert.equal(r.code, 0, r.stderr);
    }
    await verifyStore(dir, fx);
    const base = path.join(dir, "manifests", proxy.host, "bartowski", "Llama-3.2-1B-Instruct-GGUF");
    assert.deepEqual((await fsp.readdir(base)).sort(), ["Q4_K_M", "latest"]);
    const list = await runCli(["list", "--models", dir]);
    assert.match(list.stdout, /bartowski\/Llama-3\.2-1B-Instruct-GGUF:Q4_K_M/);
  } finally {
    await proxy.stop();
    await registry.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("GHCR's 4 MiB cap under the Bun runtime too: the push streams unranged, 1.0x the bytes", async () => {
  const registry = await startRegistry();
  const proxy = await startProfileProxy(registry.url, ghcr);
  const dir = await tmpDir("haul-profile-ghcr-bun");
  const fx = makeOllamaModel({ layerSizes: [LAYER, 900], seed: 325 });
  const total = fx.blobs.reduce((n, b) => n + b.size, 0);
  try {
    await fsp.mkdir(path.join(dir, "docker"));
    await fsp.writeFile(path.join(dir, "docker", "config.json"), dockerConfigFor(ghcr, proxy.host));
    const src = path.join(dir, "src");
    await storeFixture(src, { host: "127.0.0.1:9", repository: "src/model" }, fx);
    const r = await runCli([
      "push",
      "--insecure",
      "--models",
      src,
      "127.0.0.1:9/src/model",
      `${proxy.host}/team/bun:1`,
    ], { env: { DOCKER_CONFIG: path.join(dir, "docker") }, runtime: "bun" });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await upstreamDigest(registry.url, "team/bun", "1"), fx.manifestDigest);
    const sent = uploadBytes(proxy);
    assert(sent <= 1.1 * total, `sent ${sent} bytes for ${total}`);
    assert(!proxy.requests.some((q) => q.status === 416), "no PATCH hit the cap");
  } finally {
    await proxy.stop();
    await registry.stop();
    await fx.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("a pull that outlives its presigned URLs (1 s expiry, about 4 s of transfer) ends verified, fetching <= 1.1x the model", async () => {
  const registry = await startRegistry();
  const fx = makeOllamaModel({ layerSizes: [LAYER, 700], seed: 320 });
  await pushFixture(registry, "team/slow", "latest", fx);
  const proxy = await startProfileProxy(registry.url, ghcr, {
    cdnExpiresMs: 1000,
    cdnRate: 10 << 20,
  });
  const dir = await tmpDir("haul-profile-expiry");
  try {
    const r = await runCli(
      // Two connections and 4 MiB parts: parts keep starting long after the first URL expired.
      [
        "pull",
        "--insecure",
        "--concurrency",
        "2",
        "--part-size",
        "4M",
        "--models",
        dir,
        `${proxy.host}/team/slow`,
      ],
      { env: { DOCKER_CONFIG: path.join(dir, "none") } },
    );
    assert.equal(r.code, 0, r.stderr);
    await verifyStore(dir, fx);
    const expired = proxy.requests.filter((q) => q.host === "cdn" && q.status === 403);
    assert(expired.length > 0, "the CDN refused an expired URL at least once");
    const size = fx.blobs.reduce((n, b) => n + b.size, 0);
    const fetched = proxy.requests.filter((q) => q.host === "cdn").reduce(
      (n, q) => n + q.bytesOut,
      0,
    );
    assert(fetched <= 1.1 * size, `fetched ${fetched} bytes for ${size}`);
    console.log(`expiry: ${expired.length} URLs refused, fetched ${(fetched / size).toFixed(3)}x`);
    // Never Authorization to the object store.
    assert(proxy.requests.filter((q) => q.host === "cdn").every((q) => !q.authorization));
  } finally {
    await proxy.stop();
    await registry.stop();
    await fx.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("Docker Hub's used-up pull limit ends the pull at once, in one line with the time to wait (exit 10)", async () => {
  const registry = await startRegistry();
  const fx = makeOllamaModel({ layerSizes: [2000], seed: 321 });
  await pushFixture(registry, "library/limited", "latest", fx);
  const proxy = await startProfileProxy(registry.url, dockerhub, {
    rateLimit: { limit: 100, windowSec: 21600, remaining: 0 },
  });
  const dir = await tmpDir("haul-profile-429");
  try {
    const started = Date.now();
    const r = await runCli(
      ["pull", "--insecure", "--models", dir, `${proxy.host}/library/limited`],
      { env: { DOCKER_CONFIG: path.join(dir, "none"), DENO_CERT: proxy.caFile } },
    );
    assert.equal(r.code, 10, r.stderr);
    assert(Date.now() - started < 20_000, "no minute of retries");
    const lines = r.stderr.trim().split("\n").filter((l) =>
      l.startsWith("haul:") && !l.includes("--insecure")
    );
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /pull rate limit reached \(100 per 6 h\): try again in 6 h/);
    const tries = proxy.requests.filter((q) => q.status === 429).length;
    assert.equal(tries, 1, "asked once");
  } finally {
    await proxy.stop();
    await registry.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("Warning headers and a low Docker Hub allowance reach the user once, on stderr and in --json", async () => {
  const registry = await startRegistry();
  const fx = makeOllamaModel({ layerSizes: [2000, 300], seed: 322 });
  await pushFixture(registry, "team/warned", "latest", fx);
  const proxy = await startProfileProxy(registry.url, artifactory, {
    rateLimit: { limit: 100, windowSec: 21600, remaining: 5 },
  });
  const dir = await tmpDir("haul-profile-warn");
  try {
    await fsp.mkdir(path.join(dir, "docker"));
    await fsp.writeFile(
      path.join(dir, "docker", "config.json"),
      dockerConfigFor(artifactory, proxy.host),
    );
    const r = await runCli(
      ["pull", "--insecure", "--json", "--models", dir, `${proxy.host}/team/warned`],
      { env: { DOCKER_CONFIG: path.join(dir, "docker") } },
    );
    assert.equal(r.code, 0, r.stderr);
    const warned = r.stderr.split("\n").filter((l) => l.includes("this repository is deprecated"));
    assert.equal(warned.length, 1, r.stderr);
    assert.match(r.stderr, /haul: warning: 127\.0\.0\.1:\d+: 4 of 100 pulls per 6 h left/);
    const statuses = r.stdout.trim().split("\n").map((l) => JSON.parse(l).status as string);
    assert.equal(statuses.filter((s) => s.includes("this repository is deprecated")).length, 1);
    assert.equal(statuses.at(-1), "success");
  } finally {
    await proxy.stop();
    await registry.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("docs/REGISTRIES.md is what scripts/registries_doc.ts writes from the profiles", async () => {
  const doc = await fsp.readFile(path.join(REPO_ROOT, "docs", "REGISTRIES.md"), "utf8");
  assert.equal(doc, registriesDoc(PROFILES), "run: deno run -A scripts/registries_doc.ts");
});
