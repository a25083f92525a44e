/**
 * OCI image layouts: OciLayout's index.json handling, and `haul pull --oci` / `haul push
 * --oci` checked against a client no one here wrote (skopeo 1.9, Debian) and Debian's
 * docker-registry: skopeo reads what haul wrote and haul reads what skopeo wrote, byte for
 * byte (manifests by digest at a second registry, blobs as files).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { OciLayout, REF_NAME_ANNOTATION } from "../../lib/store/oci_layout.ts";
import { NotFoundError, UsageError } from "../../lib/errors.ts";
import {
  type Fixture,
  makeOllamaModel,
  pushFixture,
  type Registry,
  runCli,
  sha256hex,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import {
  getBlob,
  getManifest,
  layoutBlob,
  layoutBlobNames,
  makeImage,
  readIndexJson,
} from "../support/oci_fixtures.ts";

const MiB = 1024 * 1024;
const D = (c: string) => "sha256:" + c.repeat(64);

function skopeo(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile("skopeo", args, { timeout: 120_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`skopeo ${args.join(" ")}: ${err.message}\n${stderr}`));
      else resolve(String(stdout));
    });
  });
}

async function withTmp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tmpDir("haul-oci");
  try {
    await fn(dir);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------- OciLayout

Deno.test("OciLayout.addManifest() keeps other entries and replaces one with the same ref name", async () => {
  await withTmp(async (dir) => {
    // A layout someone else wrote: an unknown top-level key, an entry with extra fields.
    await fsp.writeFile(path.join(dir, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
    const foreign = {
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest: D("a"),
      size: 10,
      annotations: { [REF_NAME_ANNOTATION]: "other", "com.example.note": "keep me" },
      "x-extra": [1, 2],
    };
    await fsp.writeFile(
      path.join(dir, "index.json"),
      JSON.stringify({ schemaVersion: 2, annotations: { owner: "skopeo" }, manifests: [foreign] }),
    );
    const layout = new OciLayout(dir);
    await layout.init();
    const mt = "application/vnd.oci.image.manifest.v1+json";
    await layout.addManifest({ mediaType: mt, digest: D("b"), size: 20 }, "v1");
    await layout.addManifest({ mediaType: mt, digest: D("c"), size: 30 }, "v2");
    await layout.addManifest({ mediaType: mt, digest: D("d"), size: 40 }, "v1"); // replaces v1
    await layout.addManifest({ mediaType: mt, digest: D("e"), size: 50 }); // no name
    await layout.addManifest({ mediaType: mt, digest: D("e"), size: 50 }); // same again: once

    const doc = await readIndexJson(dir);
    assert.deepEqual((doc as unknown as { annotations: unknown }).annotations, { owner: "skopeo" });
    assert.deepEqual(doc.manifests[0], foreign, "a foreign entry is kept as it was");
    assert.deepEqual(
      doc.manifests.map((m) => [m.digest, m.annotations?.[REF_NAME_ANNOTATION]]),
      [[D("a"), "other"], [D("d"), "v1"], [D("c"), "v2"], [D("e"), undefined]],
    );
    assert.deepEqual(
      (await fsp.readdir(dir)).sort(),
      ["blobs", "index.json", "oci-layout"],
      "no temp or lock file left",
    );
    assert.equal((await layout.find({ refName: "v2" })).descriptor.digest, D("c"));
    assert.equal((await layout.find({ digest: D("e") })).refName, undefined);
    await assert.rejects(layout.find({ refName: "nope" }), (e) => {
      assert.ok(e instanceof NotFoundError);
      assert.match(e.message, /"nope".*other, v1, v2/);
      return true;
    });
  });
});

Deno.test("OciLayout.init() writes oci-layout once and refuses another major version", async () => {
  await withTmp(async (dir) => {
    const layout = new OciLayout(path.join(dir, "new"));
    await layout.init();
    assert.equal(
      await fsp.readFile(path.join(dir, "new", "oci-layout"), "utf8"),
      '{"imageLayoutVersion":"1.0.0"}',
    );
    assert.ok((await fsp.stat(path.join(dir, "new", "blobs", "sha256"))).isDirectory());
    await fsp.writeFile(path.join(dir, "new", "oci-layout"), '{"imageLayoutVersion":"2.0.0"}');
    await assert.rejects(layout.init(), UsageError);
    await assert.rejects(new OciLayout(path.join(dir, "none")).open(), NotFoundError);
  });
});

Deno.test("OciLayout.writeBlob() and readBlob() verify digests", async () => {
  await withTmp(async (dir) => {
    const layout = new OciLayout(dir);
    await layout.init();
    const bytes = new TextEncoder().encode('{"schemaVersion":2}');
    const digest = `sha256:${sha256hex(bytes)}`;
    await assert.rejects(layout.writeBlob(D("f"), bytes), /hashes to/);
    await layout.writeBlob(digest, bytes);
    assert.deepEqual(await layout.readBlob(digest), bytes);
    await fsp.writeFile(layout.blobPath(digest), "tampered");
    await assert.rejects(layout.readBlob(digest), /hashes to/);
  });
});

// ---------------------------------------------------------------------------- end to end

async function withRegistries(
  n: number,
  fn: (regs: Registry[]) => Promise<void>,
): Promise<void> {
  const regs: Registry[] = [];
  try {
    for (let i = 0; i < n; i++) regs.push(await startRegistry());
    await fn(regs);
  } finally {
    await Promise.all(regs.map((r) => r.stop()));
  }
}

async function assertLayoutHas(dir: string, fx: Fixture): Promise<void> {
  assert.deepEqual(await layoutBlob(dir, fx.manifestDigest), fx.manifest, "manifest blob");
  for (const b of fx.blobs) {
    assert.deepEqual(await layoutBlob(dir, b.digest), b.data, `blob ${b.digest}`);
  }
}

Deno.test("haul pull --oci writes a layout skopeo reads; a second image joins without disturbing the first", async () => {
  const app = makeImage({ layerSizes: [3000, 24 * MiB + 5], seed: 11 });
  const model = makeOllamaModel({ layerSizes: [400, 2 * MiB], seed: 12 });
  await withRegistries(2, async ([origin, dest]) => {
    await pushFixture(origin, "acme/app", "v1", app);
    await pushFixture(origin, "library/tiny", "latest", model);
    await withTmp(async (dir) => {
      const layout = path.join(dir, "layout");
      const r = await runCli([
        "pull",
        "--insecure",
        "--part-size",
        "4M",
        "--oci",
        layout,
        `${origin.host}/acme/app:v1`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(
        await fsp.readFile(path.join(layout, "oci-layout"), "utf8"),
        '{"imageLayoutVersion":"1.0.0"}',
      );
      await assertLayoutHas(layout, app);
      let index = await readIndexJson(layout);
      assert.equal(index.schemaVersion, 2);
      assert.deepEqual(index.manifests, [{
        mediaType: app.mediaType,
        digest: app.manifestDigest,
        size: app.manifest.byteLength,
        annotations: { [REF_NAME_ANNOTATION]: "v1" },
      }]);
      assert.deepEqual(
        await layoutBlobNames(layout),
        [app.manifestDigest, ...app.blobs.map((b) => b.digest)].map((d) => d.slice(7)).sort(),
        "only blobs named by their hex digest: no partial, state or temp file",
      );

      // A second image (an Ollama model) into the same layout.
      const r2 = await runCli([
        "pull",
        "--insecure",
        "--oci",
        layout,
        `${origin.host}/library/tiny`,
      ]);
      assert.equal(r2.code, 0, r2.stderr);
      await assertLayoutHas(layout, app);
      await assertLayoutHas(layout, model);
      index = await readIndexJson(layout);
      assert.deepEqual(
        index.manifests.map((m) => [m.annotations?.[REF_NAME_ANNOTATION], m.digest]),
        [["v1", app.manifestDigest], ["latest", model.manifestDigest]],
      );

      // skopeo reads haul's layout: pushed to a second registry, the digest is the same.
      await skopeo([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        `oci:${layout}:v1`,
        `docker://${dest.host}/acme/app:v1`,
      ]);
      const got = await getManifest(dest, "acme/app", "v1");
      assert.equal(got.digest, app.manifestDigest);
      assert.deepEqual(got.bytes, app.manifest);
      for (const b of app.blobs) {
        assert.deepEqual(await getBlob(dest, "acme/app", b.digest), b.data);
      }
    });
  });
});

Deno.test("haul push --oci reads a layout skopeo wrote; haul's and skopeo's layouts hold the same bytes", async () => {
  const app = makeImage({ layerSizes: [5000, 20 * MiB + 1, 700], seed: 13 });
  await withRegistries(2, async ([origin, dest]) => {
    await pushFixture(origin, "acme/app", "v2", app);
    await withTmp(async (dir) => {
      const bySkopeo = path.join(dir, "skopeo");
      const byHaul = path.join(dir, "haul");
      await skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        `docker://${origin.host}/acme/app:v2`,
        `oci:${bySkopeo}:v2`,
      ]);
      const r = await runCli(["pull", "--insecure", "--oci", byHaul, `${origin.host}/acme/app:v2`]);
      assert.equal(r.code, 0, r.stderr);
      // Same blob files, byte for byte (manifest included), in both layouts.
      const names = await layoutBlobNames(bySkopeo);
      assert.deepEqual(await layoutBlobNames(byHaul), names);
      for (const n of names) {
        assert.deepEqual(
          await layoutBlob(byHaul, `sha256:${n}`),
          await layoutBlob(bySkopeo, `sha256:${n}`),
          n,
        );
      }
      const skopeoIndex = await readIndexJson(bySkopeo);
      assert.equal(skopeoIndex.manifests[0].annotations?.[REF_NAME_ANNOTATION], "v2");
      assert.equal(skopeoIndex.manifests[0].digest, app.manifestDigest);

      // haul pushes skopeo's layout: the tag of REF picks the entry, DEST names the target.
      const push = await runCli([
        "push",
        "--insecure",
        "--oci",
        bySkopeo,
        "acme/app:v2",
        `${dest.host}/team/copy:v2`,
      ]);
      assert.equal(push.code, 0, push.stderr);
      const got = await getManifest(dest, "team/copy", "v2");
      assert.equal(got.digest, app.manifestDigest);
      assert.deepEqual(got.bytes, app.manifest);
      for (const b of app.blobs) {
        assert.deepEqual(await getBlob(dest, "team/copy", b.digest), b.data);
      }

      // A tag the layout does not have: exit 6, naming what it has.
      const missing = await runCli([
        "push",
        "--insecure",
        "--oci",
        bySkopeo,
        "acme/app:nope",
        `${dest.host}/team/copy:nope`,
      ]);
      assert.equal(missing.code, 6, missing.stderr);
      assert.match(missing.stderr, /"nope".*v2/);
    });
  });
});

Deno.test("haul pull --oci replaces the entry of a re-pulled tag and refuses --models with --oci", async () => {
  const one = makeImage({ layerSizes: [1000], seed: 14 });
  const two = makeImage({ layerSizes: [2000], seed: 15 });
  await withRegistries(1, async ([origin]) => {
    await withTmp(async (dir) => {
      await pushFixture(origin, "acme/app", "latest", one);
      assert.equal(
        (await runCli(["pull", "-q", "--insecure", "--oci", dir, `${origin.host}/acme/app`])).code,
        0,
      );
      await pushFixture(origin, "acme/app", "latest", two); // the tag moves
      const r = await runCli(["pull", "-q", "--insecure", "--oci", dir, `${origin.host}/acme/app`]);
      assert.equal(r.code, 0, r.stderr);
      const index = await readIndexJson(dir);
      assert.deepEqual(index.manifests.map((m) => m.digest), [two.manifestDigest]);
      await assertLayoutHas(dir, two);
      await assertLayoutHas(dir, one); // blobs stay (garbage collection is not pull's job)

      const both = await runCli([
        "pull",
        "--oci",
        dir,
        "--models",
        dir,
        `${origin.host}/acme/app`,
      ]);
      assert.equal(both.code, 2, both.stderr);
      assert.match(both.stderr, /--oci and --models/);
    });
  });
});
