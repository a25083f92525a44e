/**
 * Interop: haul against more than one real registry, read back by other clients. For each
 * implementation (Debian's docker-registry 2.8 and distribution 3, see startRegistry's `impl`):
 * `haul push` of a model (a 40 MiB layer among small ones, in 8 MiB chunks) and of an OCI image
 * from an Ollama store, a second push mounted within the registry, and `haul pull` back into a
 * fresh store byte for byte; the same behind Bearer tokens (push, copy within the registry,
 * pull); `haul copy` from 2.8 to 3 and from 3 to 2.8. The registry's log shows haul took the
 * same path on both (PATCH chunks, mounts answered 201, no refused request). After every push
 * and copy, crane (`crane manifest`, `crane digest`, `crane blob`) and oras (`oras manifest
 * fetch`, with `--descriptor`, and `oras blob fetch`) must read back exactly the manifest bytes,
 * digest and blobs haul pushed. crane, oras and distribution 3 are the pinned builds of
 * scripts/go_peers.sh (HAUL_CRANE, HAUL_ORAS, HAUL_REGISTRY3); a missing one fails the test.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { spawn } from "node:child_process";
import * as crypto from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import {
  type CliResult,
  type Fixture,
  goPeer,
  makeOciImage,
  makeOllamaModel,
  type Registry,
  REGISTRY_IMPLS,
  type RegistryImpl,
  type RegistryOptions,
  runCli,
  sha256File,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { storeFixture } from "../server/serve_fixtures.ts";

const MiB = 1024 * 1024;
const NAME: Record<RegistryImpl, string> = Object.fromEntries(
  REGISTRY_IMPLS.map((r) => [r.impl, r.name]),
) as Record<RegistryImpl, string>;

// ---------------------------------------------------------------------------
// crane and oras

interface PeerResult {
  code: number | null;
  /** stdout whole when it is at most 1 MiB (manifests, digests), else empty. */
  stdout: Uint8Array;
  /** SHA-256 and length of all of stdout (blobs are hashed as they stream, never held). */
  sha256: string;
  size: number;
  stderr: string;
}

/**
 * Runs a peer CLI with HOME and DOCKER_CONFIG the test's own folder (its config.json, if any, the
 * only credentials it sees).
 */
function runPeer(bin: string, args: string[], docker: string): Promise<PeerResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: docker, DOCKER_CONFIG: docker },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const hash = crypto.createHash("sha256");
    const head: Uint8Array[] = [];
    let size = 0;
    const err: Uint8Array[] = [];
    child.stdout.on("data", (c: Uint8Array) => {
      hash.update(c);
      size += c.length;
      if (size <= MiB) head.push(c);
    });
    child.stderr.on("data", (c: Uint8Array) => err.push(c));
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      const stdout = size <= MiB ? new Uint8Array(Buffer.concat(head)) : new Uint8Array();
      resolve({
        code,
        stdout,
        sha256: `sha256:${hash.digest("hex")}`,
        size,
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
  });
}

async function peer(name: "crane" | "oras", args: string[], docker: string) {
  const bin = await goPeer(name, name === "crane" ? "HAUL_CRANE" : "HAUL_ORAS");
  const r = await runPeer(bin, args, docker);
  assert.equal(r.code, 0, `${name} ${args.join(" ")}: ${r.stderr}`);
  return r;
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

/**
 * crane and oras read `ref` (`host/repo:tag`) on `reg` back: the manifest bytes haul pushed,
 * its digest (the registry's Docker-Content-Digest, via crane digest and oras's descriptor),
 * and every blob, which must hash to its digest.
 */
async function assertReadBack(reg: Registry, ref: string, fx: Fixture, docker: string) {
  const where = `${ref} on ${NAME[reg.impl]}`;
  const repo = ref.replace(/:[^:/]+$/, "");
  const crane = (...a: string[]) => peer("crane", [...a, "--insecure"], docker);
  const oras = (...a: string[]) => peer("oras", [...a, "--plain-http"], docker);

  const cm = await crane("manifest", ref);
  assert.deepEqual(cm.stdout, fx.manifest, `crane manifest ${where}: the bytes haul pushed`);
  const cd = await crane("digest", ref);
  assert.equal(text(cd.stdout).trim(), fx.manifestDigest, `crane digest ${where}`);
  const om = await oras("manifest", "fetch", ref);
  assert.deepEqual(om.stdout, fx.manifest, `oras manifest fetch ${where}: the bytes haul pushed`);
  const od = JSON.parse(text((await oras("manifest", "fetch", "--descriptor", ref)).stdout));
  assert.deepEqual(
    { mediaType: od.mediaType, digest: od.digest, size: od.size },
    { mediaType: fx.mediaType, digest: fx.manifestDigest, size: fx.manifest.length },
    `oras manifest fetch --descriptor ${where}`,
  );
  // The same manifest by digest, as crane resolves a pinned reference.
  const byDigest = await crane("manifest", `${repo}@${fx.manifestDigest}`);
  assert.deepEqual(byDigest.stdout, fx.manifest, `crane manifest ${repo}@digest on ${where}`);

  for (const b of fx.blobs) {
    const cb = await crane("blob", `${repo}@${b.digest}`);
    assert.deepEqual([cb.sha256, cb.size], [b.digest, b.size], `crane blob ${b.digest} ${where}`);
    const ob = await oras("blob", "fetch", "--output", "-", `${repo}@${b.digest}`);
    assert.deepEqual(
      [ob.sha256, ob.size],
      [b.digest, b.size],
      `oras blob fetch ${b.digest} ${where}`,
    );
  }
}

// ---------------------------------------------------------------------------
// The registry's side: its access log

interface Logged {
  method: string;
  uri: string;
  status: number;
}

/**
 * haul's requests in the registry's log (both implementations log each response as
 * `msg="response completed" http.request.method=… http.request.uri=… http.response.status=…`),
 * from the `from`th one on, once `done` holds (the line may land just after the response).
 */
async function haulRequests(
  reg: Registry,
  from: number,
  done: (reqs: Logged[]) => boolean,
): Promise<Logged[]> {
  const field = (line: string, key: string) => {
    const v = new RegExp(`${key.replaceAll(".", "\\.")}=("(?:[^"\\\\]|\\\\.)*"|\\S+)`).exec(line)
      ?.[1];
    return v?.startsWith('"') ? JSON.parse(v) as string : v;
  };
  const deadline = Date.now() + 5000;
  for (;;) {
    const reqs = (await fsp.readFile(reg.logFile, "utf8")).split("\n")
      .filter((l) =>
        /msg="response completed/.test(l) && field(l, "http.request.useragent")?.startsWith("haul/")
      )
      .map((l) => ({
        method: field(l, "http.request.method") ?? "",
        uri: field(l, "http.request.uri") ?? "",
        status: Number(field(l, "http.response.status")),
      })).slice(from);
    if (done(reqs) || Date.now() > deadline) return reqs;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Every request got 2xx/3xx, but for HEADs asking whether a blob or manifest is there. */
function assertClean(reqs: Logged[], where: string) {
  const bad = reqs.filter((r) => r.status >= 400 && !(r.method === "HEAD" && r.status === 404));
  assert.deepEqual(bad, [], `haul's failed requests on ${where}`);
}

// ---------------------------------------------------------------------------
// haul

/** The model (Docker schema2, Ollama layers, 40 MiB model layer) and an OCI image. */
function fixtures(seed: number): { model: Fixture; image: Fixture } {
  return {
    model: makeOllamaModel({
      layerSizes: [40 * MiB + 7, 611, 1200, 96, 3 * MiB + 5],
      seed,
    }),
    image: makeOciImage({ layerSizes: [2048, 20 * MiB + 3], seed: seed + 1 }),
  };
}

/** One test's world: a source store, a DOCKER_CONFIG folder, registries; all removed after. */
interface World {
  /** Ollama store holding `library/interop:latest` (the model) and `acme/app:v1` (the image). */
  models: string;
  /** DOCKER_CONFIG (and HOME of crane and oras): empty, or the credentials `login` wrote. */
  docker: string;
  model: Fixture;
  image: Fixture;
  /** Runs the CLI with DOCKER_CONFIG; it must exit 0. */
  haul(args: string[], what: string): Promise<CliResult>;
  /** Writes config.json with user:password for these registries. */
  login(hosts: string[], user: string, pass: string): Promise<void>;
}

async function withWorld(
  seed: number,
  regs: RegistryOptions[],
  fn: (w: World, ...regs: Registry[]) => Promise<void>,
): Promise<void> {
  const { model, image } = fixtures(seed);
  const models = await tmpDir("haul-interop-src");
  const docker = await tmpDir("haul-interop-docker");
  const started: Registry[] = [];
  try {
    await storeFixture(models, { repository: "library/interop" }, model);
    await storeFixture(models, { repository: "acme/app", tag: "v1" }, image);
    for (const o of regs) started.push(await startRegistry(o));
    const world: World = {
      models,
      docker,
      model,
      image,
      async haul(args, what) {
        const r = await runCli(args, { env: { DOCKER_CONFIG: docker } });
        assert.equal(r.code, 0, `haul ${what}: ${r.stderr}`);
        return r;
      },
      login: (hosts, user, pass) =>
        fsp.writeFile(
          path.join(docker, "config.json"),
          JSON.stringify({
            auths: Object.fromEntries(hosts.map((h) => [h, { auth: btoa(`${user}:${pass}`) }])),
          }),
        ),
    };
    await fn(world, ...started);
  } finally {
    for (const r of started) await r.stop();
    await model.cleanup?.();
    await image.cleanup?.();
    for (const d of [models, docker]) await fsp.rm(d, { recursive: true, force: true });
  }
}

/** Asserts the store holds exactly `fx` at host/repo:tag: manifest bytes and every blob. */
async function assertStored(models: string, host: string, repo: string, tag: string, fx: Fixture) {
  const manifest = await fsp.readFile(
    path.join(models, "manifests", host, ...repo.split("/"), tag),
  );
  assert.deepEqual(new Uint8Array(manifest), fx.manifest, `manifest of ${host}/${repo}:${tag}`);
  for (const b of fx.blobs) {
    const file = path.join(models, "blobs", b.digest.replace(":", "-"));
    assert.equal((await fsp.stat(file)).size, b.size, `size of ${b.digest}`);
    if (b.data) assert.deepEqual(new Uint8Array(await fsp.readFile(file)), b.data, b.digest);
    else assert.equal(`sha256:${await sha256File(file)}`, b.digest);
  }
  const stray = (await fsp.readdir(path.join(models, "blobs"))).filter((n) =>
    !/^sha256-[0-9a-f]{64}$/.test(n)
  );
  assert.deepEqual(stray, [], "no partial or temp files left");
}

/**
 * `haul pull` of each ref into a fresh store, then that store checked byte for byte; `host` is
 * how the registry is named (default reg.host).
 */
async function pullBack(
  w: World,
  reg: Registry,
  refs: [string, string, Fixture][],
  host = reg.host,
) {
  const back = await tmpDir("haul-interop-back");
  try {
    await w.haul([
      "pull",
      "--insecure",
      "--quiet",
      "--models",
      back,
      ...refs.map(([repo, tag]) => `${host}/${repo}:${tag}`),
    ], `pull from ${NAME[reg.impl]}`);
    for (const [repo, tag, fx] of refs) await assertStored(back, host, repo, tag, fx);
  } finally {
    await fsp.rm(back, { recursive: true, force: true });
  }
}

const manifestPut = (repo: string) => (reqs: Logged[]) =>
  reqs.some((r) => r.method === "PUT" && r.uri.startsWith(`/v2/${repo}/manifests/`));
const patches = (reqs: Logged[]) =>
  reqs.filter((r) => r.method === "PATCH" && r.status === 202).length;

// ---------------------------------------------------------------------------
// Tests

for (const [i, { impl, name }] of REGISTRY_IMPLS.entries()) {
  Deno.test(`interop ${name}: haul push, crane and oras read back the same bytes, haul pull gives them back`, async () => {
    await withWorld(60 + 10 * i, [{ impl }], async (w, reg) => {
      const { model, image } = w;
      const push = (ref: string, dest: string, ...flags: string[]) =>
        w.haul(
          ["push", "--insecure", "--quiet", ...flags, "--models", w.models, ref, dest],
          `push ${dest} to ${name}`,
        );
      // Chunked: the 40 MiB layer in six PATCHes, every other blob in one PUT.
      await push("library/interop", `${reg.host}/library/interop:v1`, "--chunk-size", "8M");
      let reqs = await haulRequests(reg, 0, manifestPut("library/interop"));
      assertClean(reqs, name);
      assert.equal(patches(reqs), 6);
      assert.equal(
        reqs.filter((r) => r.method === "PUT" && /\/blobs\/uploads\//.test(r.uri)).length,
        model.blobs.length,
        "one commit per blob",
      );
      let mark = reqs.length;
      await assertReadBack(reg, `${reg.host}/library/interop:v1`, model, w.docker);

      // An OCI image with the default sizes: the 20 MiB layer streamed in one PATCH.
      await push("acme/app:v1", `${reg.host}/acme/app:v1`);
      reqs = await haulRequests(reg, mark, manifestPut("acme/app"));
      assertClean(reqs, name);
      assert.equal(patches(reqs), 1);
      mark += reqs.length;
      await assertReadBack(reg, `${reg.host}/acme/app:v1`, image, w.docker);

      // Another repository of the same registry: every blob mounted from the first push's.
      const again = await w.haul([
        "push",
        "--insecure",
        "--json",
        "--models",
        w.models,
        "library/interop",
        `${reg.host}/team/interop:v2`,
      ], `push team/interop to ${name}`);
      assert.deepEqual(
        again.stdout.trim().split("\n").map((l) => JSON.parse(l)).slice(-2),
        [{ status: "pushing manifest" }, { status: "success" }],
      );
      reqs = await haulRequests(reg, mark, manifestPut("team/interop"));
      assertClean(reqs, name);
      const mounts = reqs.filter((r) => r.method === "POST" && /[?&]mount=/.test(r.uri));
      assert.equal(mounts.length, model.blobs.length, "every blob mounted");
      assert.ok(mounts.every((r) => r.status === 201), "201 Created: mounted");
      assert.deepEqual(reqs.filter((r) => r.method === "PATCH" || /uploads\/[^?]/.test(r.uri)), []);
      await assertReadBack(reg, `${reg.host}/team/interop:v2`, model, w.docker);

      await pullBack(w, reg, [
        ["library/interop", "v1", model],
        ["team/interop", "v2", model],
        ["acme/app", "v1", image],
      ]);
    });
  });

  Deno.test(`interop ${name} behind Bearer tokens: haul push, copy (mounted) and pull; crane and oras read back with the same login`, async () => {
    await withWorld(
      65 + 10 * i,
      [{ impl, auth: "token", anonymousPull: false, realmHost: "localhost" }],
      async (w, reg) => {
        // Named localhost, realm on localhost too: haul sends credentials to a plain-http realm
        // only on the registry's own host name, and crane takes a realm on another port only
        // when it is not a private IP literal.
        const host = `localhost:${reg.port}`;
        await w.login([host], "alice", "wonderland");
        await w.haul([
          "push",
          "--insecure",
          "--quiet",
          "--chunk-size",
          "8M",
          "--models",
          w.models,
          "library/interop",
          `${host}/team/interop:v1`,
        ], `push to ${name} with a token`);
        await w.haul([
          "copy",
          "--insecure",
          "--quiet",
          `${host}/team/interop:v1`,
          `${host}/mirror/interop:v1`,
        ], `copy within ${name} with a token`);
        const reqs = await haulRequests(reg, 0, manifestPut("mirror/interop"));
        // Nothing refused but challenges (401, before a token) and the HEADs asking what is there.
        assert.deepEqual(
          reqs.filter((r) => r.status >= 400 && !(r.method === "HEAD" && r.status === 404))
            .filter((r) => r.status !== 401),
          [],
        );
        assert.equal(patches(reqs), 6);
        const mounts = reqs.filter((r) => r.method === "POST" && /[?&]mount=/.test(r.uri));
        assert.equal(mounts.filter((r) => r.status === 201).length, w.model.blobs.length);
        const granted = reg.token!.requests.flatMap((q) => q.granted ?? []);
        assert.ok(granted.includes("repository:team/interop:pull,push"), granted.join(" "));
        assert.ok(granted.includes("repository:mirror/interop:pull,push"), granted.join(" "));
        for (const repo of ["team/interop", "mirror/interop"]) {
          await assertReadBack(reg, `${host}/${repo}:v1`, w.model, w.docker);
        }
        await pullBack(w, reg, [["mirror/interop", "v1", w.model]], host);
      },
    );
  });
}

for (
  const [src, dst] of [["distribution2", "distribution3"], ["distribution3", "distribution2"]] as [
    RegistryImpl,
    RegistryImpl,
  ][]
) {
  Deno.test(`interop: haul copy ${NAME[src]} -> ${NAME[dst]}, crane and oras read back the same bytes`, async () => {
    const seed = src === "distribution2" ? 80 : 90;
    await withWorld(seed, [{ impl: src }, { impl: dst }], async (w, one, two) => {
      for (
        const [ref, dest] of [["library/interop", "library/interop:v1"], [
          "acme/app:v1",
          "acme/app:v1",
        ]]
      ) {
        await w.haul(
          ["push", "--insecure", "--quiet", "--models", w.models, ref, `${one.host}/${dest}`],
          `push to ${NAME[src]}`,
        );
      }
      await w.haul([
        "copy",
        "--insecure",
        "--quiet",
        "--chunk-size",
        "8M",
        `${one.host}/library/interop:v1`,
        `${two.host}/mirror/interop:v1`,
      ], `copy to ${NAME[dst]}`);
      const reqs = await haulRequests(two, 0, manifestPut("mirror/interop"));
      assertClean(reqs, NAME[dst]);
      assert.equal(patches(reqs), 6);
      await assertReadBack(two, `${two.host}/mirror/interop:v1`, w.model, w.docker);
      await w.haul([
        "copy",
        "--insecure",
        "--quiet",
        `${one.host}/acme/app:v1`,
        `${two.host}/mirror/app:v1`,
      ], `copy to ${NAME[dst]}`);
      await assertReadBack(two, `${two.host}/mirror/app:v1`, w.image, w.docker);
      await pullBack(w, two, [["mirror/interop", "v1", w.model], ["mirror/app", "v1", w.image]]);
    });
  });
}
