import assert from "node:assert/strict";
import {
  manifestBlobs,
  MAX_MANIFEST_BYTES,
  MediaType,
  parseManifest,
} from "../../lib/registry/manifest.ts";
import { checkDigest, digestToFileName, shortDigest } from "../../lib/digest.ts";
import { ManifestError } from "../../lib/errors.ts";

const enc = (v: unknown) => new TextEncoder().encode(typeof v === "string" ? v : JSON.stringify(v));
const D = (c: string) => "sha256:" + c.repeat(64);
const good = {
  schemaVersion: 2,
  mediaType: MediaType.dockerManifest,
  config: { mediaType: MediaType.dockerConfig, digest: D("a"), size: 10 },
  layers: [
    { mediaType: "application/vnd.ollama.image.model", digest: D("b"), size: 100 },
    { mediaType: "application/vnd.ollama.image.license", digest: D("c"), size: 5 },
  ],
};

Deno.test("parseManifest() reads a Docker schema2 Ollama manifest", () => {
  const m = parseManifest(enc(good));
  assert.equal(m.kind, "manifest");
  if (m.kind !== "manifest") return;
  assert.equal(m.layers.length, 2);
  assert.equal(m.config.digest, D("a"));
  assert.deepEqual(manifestBlobs(m).map((b) => b.digest), [D("a"), D("b"), D("c")]);
});

Deno.test("parseManifest() reads an OCI index with platforms", () => {
  const idx = parseManifest(enc({
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: [{
      mediaType: MediaType.ociManifest,
      digest: D("d"),
      size: 300,
      platform: { os: "linux", architecture: "arm64", variant: "v8" },
    }],
  }));
  assert.equal(idx.kind, "index");
  if (idx.kind === "index") {
    assert.deepEqual(idx.manifests[0].platform, {
      os: "linux",
      architecture: "arm64",
      variant: "v8",
    });
  }
});

Deno.test("parseManifest() refuses malicious and broken documents with a reason", () => {
  const bad: [unknown, RegExp][] = [
    ["{not json", /not valid JSON/],
    [[1, 2], /not a JSON object/],
    [{ ...good, schemaVersion: 1 }, /schemaVersion/],
    [{ ...good, layers: [{ ...good.layers[0], digest: "sha256:../../x" }] }, /Invalid digest/],
    [{ ...good, layers: [{ ...good.layers[0], digest: "sha256:abc" }] }, /64 hex/],
    [
      { ...good, layers: [{ ...good.layers[0], digest: "sha512:" + "a".repeat(128) }] },
      /unsupported algorithm/,
    ],
    [{ ...good, layers: [{ ...good.layers[0], digest: D("A") }] }, /lower-case hex/],
    [{ ...good, layers: [{ ...good.layers[0], size: -1 }] }, /size -1/],
    [{ ...good, layers: [{ ...good.layers[0], size: 1.5 }] }, /size 1.5/],
    [{ ...good, layers: [{ ...good.layers[0], size: "12" }] }, /size "12"/],
    [{ ...good, layers: [{ ...good.layers[0], size: 2 ** 52 }] }, /absurd size/],
    [
      { ...good, layers: [good.layers[0], { ...good.layers[0], size: 7 }] },
      /twice with different sizes/,
    ],
    [{ ...good, layers: "nope" }, /no layers/],
    [{ ...good, config: null }, /config is not an object/],
  ];
  for (const [doc, re] of bad) {
    assert.throws(
      () => parseManifest(enc(doc as never)),
      (e: unknown) => e instanceof ManifestError && re.test(e.message),
      String(JSON.stringify(doc)).slice(0, 80),
    );
  }
  assert.throws(() => parseManifest(new Uint8Array(MAX_MANIFEST_BYTES + 1)), /over the/);
});

Deno.test("parseManifest() folds identical duplicate layers", () => {
  const m = parseManifest(enc({ ...good, layers: [good.layers[0], good.layers[0]] }));
  if (m.kind !== "manifest") throw new Error("kind");
  assert.equal(manifestBlobs(m).length, 2);
});

Deno.test("checkDigest() and digestToFileName() allow only safe sha256 names", () => {
  assert.equal(digestToFileName(D("f")), "sha256-" + "f".repeat(64));
  assert.equal(shortDigest(D("f")), "f".repeat(12));
  for (
    const d of [
      "sha256:../../etc/passwd",
      "sha256:" + "g".repeat(64),
      "md5:abc",
      "",
      "sha256/" + "a".repeat(64),
    ]
  ) {
    assert.throws(() => checkDigest(d), ManifestError);
  }
});
