/**
 * haul in a fleet with distribution's pull-through cache (Debian's docker-registry 2.8,
 * `proxy: remoteurl:`), in front of it and behind it:
 *
 * (a) origin registry ← distribution proxy ← `haul pull --mirror <proxy>`
 * (b) `haul serve` ← distribution proxy (remoteurl = haul serve) ← `haul pull` and skopeo
 * (c) origin ← distribution proxy ← `haul serve --upstream <proxy>` ← `haul pull`
 *
 * Each time the proxy is shown to hold what it served: the source behind it is stopped and a
 * fresh client pulls again through the proxy alone.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import {
  type Fixture,
  makeOciImage,
  makeOllamaModel,
  pushFixture,
  runCli,
  sha256File,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { startServe, storeFixture } from "./serve_fixtures.ts";

const MiB = 1 << 20;

function exec(cmd: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 120_000, maxBuffer: 16 * MiB }, (err, _stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stderr });
    });
  });
}

/** The store at `models` holds `fx` under `host/repository:tag`, every blob verified. */
async function assertStored(
  models: string,
  host: string,
  repository: string,
  fx: Fixture,
  tag = "latest",
) {
  const manifest = await fsp.readFile(
    path.join(models, "manifests", host, ...repository.split("/"), tag),
  );
  assert.deepEqual(new Uint8Array(manifest), fx.manifest, "manifest bytes");
  for (const b of fx.blobs) {
    const file = path.join(models, "blobs", b.digest.replace(":", "-"));
    assert.equal(`sha256:${await sha256File(file)}`, b.digest, `blob ${b.digest}`);
  }
}

/** `haul pull` with no mirrors but the ones given (the user's config is not read). */
function pull(dir: string, models: string, args: string[]) {
  return runCli(["pull", "--insecure", "--part-size", "4M", "--models", models, ...args], {
    env: { HAUL_CONFIG: path.join(dir, "no-config.json"), HAUL_MIRRORS: "" },
    timeoutMs: 120_000,
  });
}

/** Request lines distribution logged for `uri` (its text access log). */
async function logged(logFile: string, uri: string): Promise<string[]> {
  const log = await fsp.readFile(logFile, "utf8");
  // logrus quotes a value only when it holds characters such as ':'.
  return log.split("\n").filter((l) =>
    l.includes("response completed") &&
    (l.includes(`http.request.uri="${uri}"`) || l.includes(`http.request.uri=${uri} `))
  );
}

Deno.test("fleet (a): origin ← distribution proxy cache ← haul pull --mirror", async () => {
  const dir = await tmpDir("haul-fleet-a");
  const model = makeOllamaModel({ layerSizes: [24 * MiB, 3000, 200], seed: 181 });
  const origin = await startRegistry();
  const proxy = await startRegistry({ proxyRemote: origin.url });
  try {
    await pushFixture(origin, "library/fleet", "latest", model);
    const ref = `${origin.host}/library/fleet`;
    const big = model.blobs[1];

    // 1. Through the cold cache: verified, and every blob came by the proxy.
    let r = await pull(dir, path.join(dir, "m1"), ["--mirror", proxy.url, ref]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /warning/);
    await assertStored(path.join(dir, "m1"), origin.host, "library/fleet", model);
    const byHaul = (l: string) => /http\.request\.useragent="?haul\//.test(l);
    const tag = await logged(origin.logFile, "/v2/library/fleet/manifests/latest");
    assert.ok(tag.some(byHaul), "haul resolved the tag at the origin");
    for (const b of model.blobs) {
      const uri = `/v2/library/fleet/blobs/${b.digest}`;
      const served = (await logged(proxy.logFile, uri)).filter(byHaul);
      assert.ok(served.length > 0, `the proxy served ${b.digest} to haul`);
      const direct = (await logged(origin.logFile, uri)).filter(byHaul);
      assert.deepEqual(direct, [], `haul fetched no ${b.digest} from the origin itself`);
    }
    assert.ok(
      (await logged(origin.logFile, `/v2/library/fleet/blobs/${big.digest}`)).length > 0,
      "the proxy filled itself from the origin",
    );

    // 2. A client naming the cache as its registry (as Docker's registry-mirrors and Ollama
    //    clients do): the proxy resolves the tag at the origin and keeps it.
    r = await pull(dir, path.join(dir, "m2"), [`${proxy.host}/library/fleet`]);
    assert.equal(r.code, 0, r.stderr);
    await assertStored(path.join(dir, "m2"), proxy.host, "library/fleet", model);

    // 3. The origin gone: fresh stores pull the model from the proxy alone, by digest, and by
    //    tag (haul resolves a tag at the origin and fetches the manifest by digest, so the
    //    proxy knows the tag only from 2), saying the tag was not checked against the origin.
    await origin.stop();
    r = await pull(dir, path.join(dir, "m3"), [
      "--mirror",
      proxy.url,
      `${ref}@${model.manifestDigest}`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const pinnedTag = model.manifestDigest.replace(":", "-");
    await assertStored(path.join(dir, "m3"), origin.host, "library/fleet", model, pinnedTag);
    r = await pull(dir, path.join(dir, "m4"), ["--mirror", proxy.url, ref]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /is unreachable.*resolved by the mirror/s);
    await assertStored(path.join(dir, "m4"), origin.host, "library/fleet", model);
  } finally {
    await proxy.stop();
    await origin.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("fleet (b): haul serve ← distribution proxy cache ← haul pull and skopeo", async () => {
  const dir = await tmpDir("haul-fleet-b");
  const store = path.join(dir, "store");
  const model = makeOllamaModel({ layerSizes: [24 * MiB, 3000, 200], seed: 182 });
  const image = makeOciImage({ layerSizes: [2 * MiB, 1000], seed: 183 });
  await storeFixture(store, { repository: "library/fleet" }, model);
  await storeFixture(store, { repository: "library/img" }, image);
  const server = await startServe(store, { extra: ["--verbose"] });
  const proxy = await startRegistry({ proxyRemote: server.url });
  try {
    // 1. haul pull from the proxy: it fetched every blob from haul serve.
    let r = await pull(dir, path.join(dir, "m1"), [`${proxy.host}/library/fleet`]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /warning/);
    await assertStored(path.join(dir, "m1"), proxy.host, "library/fleet", model);
    const served = server.child.output().stderr;
    for (const b of model.blobs) {
      assert.match(served, new RegExp(`GET /v2/library/fleet/blobs/${b.digest} 200`));
    }

    // 2. skopeo from the proxy (an OCI image: skopeo 1.9 refuses Ollama's media types).
    const layout = path.join(dir, "oci");
    const s = await exec("skopeo", [
      "copy",
      "--preserve-digests",
      "--src-tls-verify=false",
      `docker://${proxy.host}/library/img:latest`,
      `oci:${layout}:latest`,
    ]);
    assert.equal(s.code, 0, s.stderr);
    const index = JSON.parse(await fsp.readFile(path.join(layout, "index.json"), "utf8"));
    assert.equal(index.manifests[0].digest, image.manifestDigest);
    for (const d of [image.manifestDigest, ...image.blobs.map((b) => b.digest)]) {
      const file = path.join(layout, "blobs", "sha256", d.slice(7));
      assert.equal(`sha256:${await sha256File(file)}`, d);
    }

    // 3. haul serve gone: the proxy serves both from its cache.
    await server.stop();
    r = await pull(dir, path.join(dir, "m2"), [`${proxy.host}/library/fleet`]);
    assert.equal(r.code, 0, r.stderr);
    await assertStored(path.join(dir, "m2"), proxy.host, "library/fleet", model);
    await fsp.rm(layout, { recursive: true, force: true });
    const again = await exec("skopeo", [
      "copy",
      "--preserve-digests",
      "--src-tls-verify=false",
      `docker://${proxy.host}/library/img:latest`,
      `oci:${layout}:latest`,
    ]);
    assert.equal(again.code, 0, again.stderr);
  } finally {
    await proxy.stop();
    await server.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("fleet (c): origin ← distribution proxy cache ← haul serve --upstream ← haul pull", async () => {
  const dir = await tmpDir("haul-fleet-c");
  const model = makeOllamaModel({ layerSizes: [24 * MiB, 3000, 200], seed: 184 });
  const origin = await startRegistry();
  const proxy = await startRegistry({ proxyRemote: origin.url });
  await fsp.mkdir(path.join(dir, "store"));
  const server = await startServe(path.join(dir, "store"), { extra: ["--upstream", proxy.url] });
  try {
    await pushFixture(origin, "library/fleet", "latest", model);
    let r = await pull(dir, path.join(dir, "m1"), [`${server.host}/library/fleet`]);
    assert.equal(r.code, 0, r.stderr);
    await assertStored(path.join(dir, "m1"), server.host, "library/fleet", model);
    // haul serve's store keeps it under the proxy's host; the proxy fetched it from the origin.
    await assertStored(path.join(dir, "store"), proxy.host, "library/fleet", model);
    for (const b of model.blobs) {
      const uri = `/v2/library/fleet/blobs/${b.digest}`;
      const byHaul = (await logged(proxy.logFile, uri)).filter((l) =>
        /http\.request\.useragent="?haul\//.test(l)
      );
      assert.ok(byHaul.length > 0, `haul serve fetched ${b.digest} from the proxy`);
    }
    assert.ok(
      (await logged(origin.logFile, `/v2/library/fleet/blobs/${model.blobs[1].digest}`))
        .length > 0,
      "the proxy filled itself from the origin",
    );

    // Both caches behind it gone: haul serve answers from its store.
    await proxy.stop();
    await origin.stop();
    r = await pull(dir, path.join(dir, "m2"), [`${server.host}/library/fleet`]);
    assert.equal(r.code, 0, r.stderr);
    await assertStored(path.join(dir, "m2"), server.host, "library/fleet", model);
  } finally {
    await server.stop();
    await proxy.stop();
    await origin.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
