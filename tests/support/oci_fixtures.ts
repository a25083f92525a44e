/**
 * Container-image fixtures for the OCI layout, platform and mirror tests: images whose
 * layers are real gzip streams (so skopeo has no reason to touch them), image indexes and
 * Docker manifest lists written by hand, and a raw-HTTP pusher for them.
 *
 * Like tests/harness.ts, nothing here imports lib/: these are the oracle.
 */
import * as crypto from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { gzipSync } from "node:zlib";
import { deterministicBytes, type Fixture, type FixtureBlob, pushFixture } from "./harness.ts";

export const IMAGE_MEDIA = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayer: "application/vnd.oci.image.layer.v1.tar+gzip",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
} as const;

export interface TestPlatform {
  os: string;
  architecture: string;
  variant?: string;
}

const digestOf = (data: Uint8Array) =>
  `sha256:${crypto.createHash("sha256").update(data).digest("hex")}`;

function blob(data: Uint8Array, mediaType: string): FixtureBlob {
  return { digest: digestOf(data), size: data.byteLength, mediaType, data };
}

/**
 * An image for one platform: gzip layers of deterministic bytes (level 1: random data does
 * not compress, speed matters), a config naming the platform, an OCI or Docker manifest.
 */
export function makeImage(opts: {
  layerSizes: number[];
  seed: number;
  platform?: TestPlatform;
  docker?: boolean;
}): Fixture {
  const platform = opts.platform ?? { os: "linux", architecture: "amd64" };
  const m = opts.docker
    ? {
      manifest: IMAGE_MEDIA.dockerManifest,
      config: IMAGE_MEDIA.dockerConfig,
      layer: IMAGE_MEDIA.dockerLayer,
    }
    : {
      manifest: IMAGE_MEDIA.ociManifest,
      config: IMAGE_MEDIA.ociConfig,
      layer: IMAGE_MEDIA.ociLayer,
    };
  const layers = opts.layerSizes.map((size, i) =>
    blob(
      new Uint8Array(gzipSync(deterministicBytes(size, opts.seed * 131 + i), { level: 1 })),
      m.layer,
    )
  );
  const config = blob(
    new TextEncoder().encode(JSON.stringify({
      ...platform,
      config: { Cmd: ["/bin/true"] },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
    })),
    m.config,
  );
  const desc = (b: FixtureBlob) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
  const manifest = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: m.manifest,
    config: desc(config),
    layers: layers.map(desc),
  }));
  return {
    manifest,
    manifestDigest: digestOf(manifest),
    mediaType: m.manifest,
    blobs: [config, ...layers],
  };
}

/** An index (OCI) or manifest list (Docker) of platform images, and an optional extra entry. */
export interface IndexFixture {
  bytes: Uint8Array;
  digest: string;
  mediaType: string;
  children: { fx: Fixture; platform: TestPlatform }[];
}

export function makeIndex(
  children: { fx: Fixture; platform: TestPlatform }[],
  opts: { docker?: boolean } = {},
): IndexFixture {
  const mediaType = opts.docker ? IMAGE_MEDIA.dockerList : IMAGE_MEDIA.ociIndex;
  const bytes = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType,
    manifests: children.map((c) => ({
      mediaType: c.fx.mediaType,
      digest: c.fx.manifestDigest,
      size: c.fx.manifest.byteLength,
      platform: c.platform,
    })),
  }));
  return { bytes, digest: digestOf(bytes), mediaType, children };
}

/** Pushes every child (blobs, then its manifest by digest), then the index under `tag`. */
export async function pushIndex(
  registry: { url: string },
  repo: string,
  tag: string,
  index: IndexFixture,
): Promise<void> {
  for (const c of index.children) {
    await pushFixture(registry, repo, c.fx.manifestDigest, c.fx);
  }
  const res = await fetch(`${registry.url}/v2/${repo}/manifests/${tag}`, {
    method: "PUT",
    headers: { "content-type": index.mediaType },
    body: index.bytes as Uint8Array<ArrayBuffer>,
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`PUT index ${repo}:${tag} → ${res.status}: ${text}`);
}

/** GETs a manifest's raw bytes and the registry's digest for it. */
export async function getManifest(
  registry: { url: string },
  repo: string,
  reference: string,
): Promise<{ bytes: Uint8Array; digest: string | null; status: number }> {
  const res = await fetch(`${registry.url}/v2/${repo}/manifests/${reference}`, {
    headers: {
      accept: [
        IMAGE_MEDIA.ociIndex,
        IMAGE_MEDIA.ociManifest,
        IMAGE_MEDIA.dockerList,
        IMAGE_MEDIA.dockerManifest,
      ].join(", "),
    },
  });
  const bytes = new Uint8Array(await res.arrayBuffer());
  return { bytes, digest: res.headers.get("docker-content-digest"), status: res.status };
}

/** GETs a blob's bytes. */
export async function getBlob(
  registry: { url: string },
  repo: string,
  digest: string,
): Promise<Uint8Array> {
  const res = await fetch(`${registry.url}/v2/${repo}/blobs/${digest}`);
  if (res.status !== 200) throw new Error(`GET blob ${digest} → ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

/** index.json of a layout, parsed. */
export async function readIndexJson(dir: string): Promise<{
  schemaVersion: number;
  mediaType?: string;
  manifests: {
    mediaType: string;
    digest: string;
    size: number;
    platform?: TestPlatform;
    annotations?: Record<string, string>;
  }[];
}> {
  return JSON.parse(await fsp.readFile(path.join(dir, "index.json"), "utf8"));
}

/** The bytes of a blob in an OCI layout. */
export async function layoutBlob(dir: string, digest: string): Promise<Uint8Array> {
  return new Uint8Array(
    await fsp.readFile(path.join(dir, "blobs", "sha256", digest.slice("sha256:".length))),
  );
}

/** Every file under `<dir>/blobs/sha256`, sorted. */
export async function layoutBlobNames(dir: string): Promise<string[]> {
  return (await fsp.readdir(path.join(dir, "blobs", "sha256"))).sort();
}
