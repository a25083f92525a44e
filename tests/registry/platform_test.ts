/**
 * Image indexes and Docker manifest lists: platform matching (lib/registry/platform.ts), and end to
 * end against docker-registry with an index and a manifest list pushed by hand: --platform
 * selection into the Ollama store and an OCI layout, the none-matches error, and
 * --all-platforms (checked with skopeo and by pushing the layout back out).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import type { IndexManifest, Platform } from "../../lib/registry/manifest.ts";
import {
  availablePlatforms,
  normalizePlatform,
  platformMatches,
  selectManifest,
} from "../../lib/registry/platform.ts";
import { REF_NAME_ANNOTATION } from "../../lib/store/oci_layout.ts";
import { type Registry, runCli, startRegistry, tmpDir } from "../support/harness.ts";
import {
  getBlob,
  getManifest,
  type IndexFixture,
  layoutBlob,
  makeImage,
  makeIndex,
  pushIndex,
  readIndexJson,
} from "../support/oci_fixtures.ts";

const MiB = 1024 * 1024;
const D = (c: string) => "sha256:" + c.repeat(64);

function index(...platforms: (Platform | undefined)[]): IndexManifest {
  return {
    kind: "index",
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: platforms.map((platform, i) => ({
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest: D("abcdef0123"[i]),
      size: 100,
      ...(platform ? { platform } : {}),
    })),
  };
}

// ---------------------------------------------------------------------------- unit

Deno.test("normalizePlatform() canonicalises architecture aliases and default variants", () => {
  assert.deepEqual(normalizePlatform({ os: "Linux", architecture: "aarch64" }), {
    os: "linux",
    architecture: "arm64",
    variant: "v8",
  });
  assert.deepEqual(normalizePlatform({ os: "linux", architecture: "x86_64" }), {
    os: "linux",
    architecture: "amd64",
    variant: "v1",
  });
  assert.deepEqual(normalizePlatform({ os: "linux", architecture: "armhf" }), {
    os: "linux",
    architecture: "arm",
    variant: "v7",
  });
  assert.deepEqual(normalizePlatform({ os: "linux", architecture: "arm", variant: "6" }), {
    os: "linux",
    architecture: "arm",
    variant: "v6",
  });
});

Deno.test("platformMatches() treats arm64 without a variant as v8, both ways", () => {
  const arm64 = { os: "linux", architecture: "arm64" };
  const arm64v8 = { os: "linux", architecture: "arm64", variant: "v8" };
  assert.ok(platformMatches(arm64v8, arm64), "entry v8, request without variant");
  assert.ok(platformMatches(arm64, arm64v8), "entry without variant, request v8");
  assert.ok(platformMatches(arm64, { os: "linux", architecture: "aarch64" }));
  assert.ok(!platformMatches({ ...arm64, variant: "v9" }, arm64v8));
  assert.ok(!platformMatches(arm64, { os: "linux", architecture: "amd64" }));
  assert.ok(!platformMatches(arm64, { os: "windows", architecture: "arm64" }));
  assert.ok(!platformMatches(undefined, arm64));
  assert.ok(!platformMatches({ os: "unknown", architecture: "unknown" }, arm64));
});

Deno.test("selectManifest() prefers the exact variant and lets 32-bit arm fall back to older ones", () => {
  const idx = index(
    { os: "linux", architecture: "arm", variant: "v6" },
    { os: "linux", architecture: "arm", variant: "v7" },
    { os: "linux", architecture: "arm64", variant: "v8" },
    { os: "linux", architecture: "amd64" },
    { os: "unknown", architecture: "unknown" },
    undefined,
  );
  const pick = (p: Platform) => selectManifest(idx, p)?.digest;
  assert.equal(pick({ os: "linux", architecture: "arm", variant: "v7" }), D("b"));
  assert.equal(pick({ os: "linux", architecture: "arm", variant: "v6" }), D("a"));
  assert.equal(pick({ os: "linux", architecture: "arm" }), D("b"), "default arm is v7");
  assert.equal(pick({ os: "linux", architecture: "arm64" }), D("c"));
  assert.equal(pick({ os: "linux", architecture: "amd64" }), D("d"));
  assert.equal(pick({ os: "linux", architecture: "s390x" }), undefined);
  const v6only = index({ os: "linux", architecture: "arm", variant: "v6" });
  assert.equal(
    selectManifest(v6only, { os: "linux", architecture: "arm", variant: "v7" })?.digest,
    D("a"),
    "a v7 machine runs v6",
  );
  assert.equal(
    selectManifest(index({ os: "linux", architecture: "arm", variant: "v7" }), {
      os: "linux",
      architecture: "arm",
      variant: "v6",
    }),
    undefined,
    "a v6 machine does not run v7",
  );
  assert.deepEqual(availablePlatforms(idx), [
    "linux/arm/v6",
    "linux/arm/v7",
    "linux/arm64/v8",
    "linux/amd64",
    "unknown/unknown",
    "unknown",
  ]);
});

// ---------------------------------------------------------------------------- end to end

interface MultiArch {
  amd64: ReturnType<typeof makeImage>;
  arm64: ReturnType<typeof makeImage>;
  oci: IndexFixture;
  docker: IndexFixture;
  dockerAmd64: ReturnType<typeof makeImage>;
  dockerArm64: ReturnType<typeof makeImage>;
}

function multiArch(): MultiArch {
  const amd64p = { os: "linux", architecture: "amd64" };
  const arm64p = { os: "linux", architecture: "arm64", variant: "v8" };
  const amd64 = makeImage({ layerSizes: [1500, 18 * MiB], seed: 31, platform: amd64p });
  const arm64 = makeImage({ layerSizes: [1600, 3 * MiB], seed: 32, platform: arm64p });
  const dockerAmd64 = makeImage({ layerSizes: [900], seed: 33, platform: amd64p, docker: true });
  const dockerArm64 = makeImage({ layerSizes: [800], seed: 34, platform: arm64p, docker: true });
  return {
    amd64,
    arm64,
    dockerAmd64,
    dockerArm64,
    oci: makeIndex([{ fx: amd64, platform: amd64p }, { fx: arm64, platform: arm64p }]),
    docker: makeIndex([{ fx: dockerAmd64, platform: amd64p }, {
      fx: dockerArm64,
      platform: arm64p,
    }], {
      docker: true,
    }),
  };
}

async function withMultiArch(fn: (reg: Registry, m: MultiArch, dir: string) => Promise<void>) {
  const m = multiArch();
  const reg = await startRegistry();
  const dir = await tmpDir("haul-platform");
  try {
    await pushIndex(reg, "acme/multi", "v1", m.oci);
    await pushIndex(reg, "acme/list", "v1", m.docker);
    await fn(reg, m, dir);
  } finally {
    await reg.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

Deno.test("haul pull --platform picks from an OCI index and a Docker manifest list (store and layout)", async () => {
  await withMultiArch(async (reg, m, dir) => {
    // Ollama's store: the arm64 manifest, stored under the tag.
    const models = path.join(dir, "models");
    let r = await runCli([
      "pull",
      "-q",
      "--insecure",
      "--models",
      models,
      "--platform",
      "linux/arm64",
      `${reg.host}/acme/multi:v1`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      new Uint8Array(
        await fsp.readFile(path.join(models, "manifests", reg.host, "acme", "multi", "v1")),
      ),
      m.arm64.manifest,
    );
    for (const b of m.arm64.blobs) {
      assert.ok((await fsp.stat(path.join(models, "blobs", b.digest.replace(":", "-")))).isFile());
    }
    const amd64Layer = m.amd64.blobs[2].digest.replace(":", "-");
    await assert.rejects(fsp.stat(path.join(models, "blobs", amd64Layer)), "no amd64 blob");

    // An OCI layout, from a Docker manifest list, with the variant written out.
    const layout = path.join(dir, "layout");
    r = await runCli([
      "pull",
      "-q",
      "--insecure",
      "--oci",
      layout,
      "--platform",
      "linux/arm64/v8",
      `${reg.host}/acme/list:v1`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const idx = await readIndexJson(layout);
    assert.deepEqual(idx.manifests, [{
      mediaType: m.dockerArm64.mediaType,
      digest: m.dockerArm64.manifestDigest,
      size: m.dockerArm64.manifest.byteLength,
      platform: { os: "linux", architecture: "arm64", variant: "v8" },
      annotations: { [REF_NAME_ANNOTATION]: "v1" },
    }]);
    assert.deepEqual(
      await layoutBlob(layout, m.dockerArm64.manifestDigest),
      m.dockerArm64.manifest,
    );

    // No --platform: this machine's (the tests run on linux/amd64 or linux/arm64).
    const mine = process.arch === "arm64" ? m.arm64 : m.amd64;
    r = await runCli([
      "pull",
      "-q",
      "--insecure",
      "--oci",
      layout,
      `${reg.host}/acme/multi:v1`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await layoutBlob(layout, mine.manifestDigest), mine.manifest);
  });
});

Deno.test("haul pull: no manifest for the platform lists the available ones (exit 9)", async () => {
  await withMultiArch(async (reg, _m, dir) => {
    for (const target of [["--models", path.join(dir, "m")], ["--oci", path.join(dir, "o")]]) {
      const r = await runCli([
        "pull",
        "--insecure",
        ...target,
        "--platform",
        "linux/s390x",
        `${reg.host}/acme/multi:v1`,
      ]);
      assert.equal(r.code, 9, r.stderr);
      const lines = r.stderr.trim().split("\n").filter((l) =>
        l.startsWith("haul:") && !l.includes("--insecure:")
      );
      assert.equal(lines.length, 1, r.stderr);
      assert.match(
        lines[0],
        /no manifest for linux\/s390x; available: linux\/amd64, linux\/arm64\/v8/,
      );
    }
    const bad = await runCli([
      "pull",
      "--insecure",
      "--platform",
      "linux",
      `${reg.host}/acme/multi:v1`,
    ]);
    assert.equal(bad.code, 2, bad.stderr);
  });
});

function skopeo(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile("skopeo", args, { timeout: 120_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`skopeo ${args.join(" ")}: ${err.message}\n${stderr}`));
      else resolve(String(stdout));
    });
  });
}

Deno.test("haul pull --all-platforms keeps the whole index in a layout; skopeo and haul push it back out", async () => {
  await withMultiArch(async (reg, m, dir) => {
    const layout = path.join(dir, "all");
    const r = await runCli([
      "pull",
      "-q",
      "--insecure",
      "--oci",
      layout,
      "--all-platforms",
      `${reg.host}/acme/multi:v1`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const idx = await readIndexJson(layout);
    assert.deepEqual(idx.manifests, [{
      mediaType: m.oci.mediaType,
      digest: m.oci.digest,
      size: m.oci.bytes.byteLength,
      annotations: { [REF_NAME_ANNOTATION]: "v1" },
    }]);
    assert.deepEqual(await layoutBlob(layout, m.oci.digest), m.oci.bytes, "index byte for byte");
    for (const fx of [m.amd64, m.arm64]) {
      assert.deepEqual(await layoutBlob(layout, fx.manifestDigest), fx.manifest);
      for (const b of fx.blobs) assert.deepEqual(await layoutBlob(layout, b.digest), b.data);
    }

    // Ollama's store cannot hold an index: a usage error that says why, before any transfer.
    const refused = await runCli([
      "pull",
      "--insecure",
      "--models",
      path.join(dir, "models"),
      "--all-platforms",
      `${reg.host}/acme/multi:v1`,
    ]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /--all-platforms needs --oci/);
    assert.match(refused.stderr, /one manifest per model name/);

    // skopeo --all copies haul's layout to a second registry: same index digest there.
    const dest = await startRegistry();
    try {
      await skopeo([
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        `oci:${layout}:v1`,
        `docker://${dest.host}/acme/multi:v1`,
      ]);
      let got = await getManifest(dest, "acme/multi", "v1");
      assert.equal(got.digest, m.oci.digest);
      assert.deepEqual(got.bytes, m.oci.bytes);

      // haul push --oci of the same layout: every platform manifest, then the index.
      const push = await runCli([
        "push",
        "-q",
        "--insecure",
        "--oci",
        layout,
        "acme/multi:v1",
        `${dest.host}/team/multi:v1`,
      ]);
      assert.equal(push.code, 0, push.stderr);
      got = await getManifest(dest, "team/multi", "v1");
      assert.equal(got.digest, m.oci.digest);
      assert.deepEqual(got.bytes, m.oci.bytes);
      for (const fx of [m.amd64, m.arm64]) {
        const child = await getManifest(dest, "team/multi", fx.manifestDigest);
        assert.deepEqual(child.bytes, fx.manifest);
        for (const b of fx.blobs) {
          assert.deepEqual(await getBlob(dest, "team/multi", b.digest), b.data);
        }
      }
    } finally {
      await dest.stop();
    }
  });
});
