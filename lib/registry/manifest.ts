/**
 * Manifest and index documents (OCI image-spec, Docker schema2): parsing with
 * validation of everything later used as a file name or a size.
 */
import { checkDigest } from "../digest.ts";
import { ManifestError } from "../errors.ts";

export const MediaType = {
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
} as const;

/** What haul asks for when fetching a manifest (Ollama's registry needs docker v2 listed). */
export const MANIFEST_ACCEPT = [
  MediaType.dockerManifest,
  MediaType.ociManifest,
  MediaType.ociIndex,
  MediaType.dockerList,
].join(", ");

/** Manifests larger than this are refused (distribution's own limit is 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 << 20;
/** Blob sizes above this are treated as a lie rather than a model (16 TiB). */
export const MAX_BLOB_SIZE = 2 ** 44;
const MAX_LAYERS = 100_000;

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
}

export interface ImageManifest {
  kind: "manifest";
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface IndexManifest {
  kind: "index";
  mediaType: string;
  manifests: Descriptor[];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function descriptor(v: unknown, where: string): Descriptor {
  if (!isObject(v)) throw new ManifestError(`Invalid manifest: ${where} is not an object`);
  const digest = checkDigest(v.digest, `digest in ${where}`);
  const size = v.size;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    throw new ManifestError(`Invalid manifest: ${where} has size ${JSON.stringify(size)}`);
  }
  if (size > MAX_BLOB_SIZE) {
    throw new ManifestError(`Invalid manifest: ${where} claims an absurd size of ${size} bytes`);
  }
  const mediaType = typeof v.mediaType === "string" ? v.mediaType : "";
  const d: Descriptor = { mediaType, digest, size };
  if (isObject(v.platform)) {
    const p = v.platform;
    if (typeof p.os === "string" && typeof p.architecture === "string") {
      d.platform = { os: p.os, architecture: p.architecture };
      if (typeof p.variant === "string") d.platform.variant = p.variant;
    }
  }
  if (isObject(v.annotations)) {
    d.annotations = Object.fromEntries(
      Object.entries(v.annotations).filter(([, x]) => typeof x === "string"),
    ) as Record<string, string>;
  }
  return d;
}

/** Parses and validates a manifest or index. `contentType` is the response's media type. */
export function parseManifest(
  bytes: Uint8Array,
  contentType?: string,
): ImageManifest | IndexManifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw new ManifestError(
      `Manifest is ${bytes.byteLength} bytes, over the ${MAX_MANIFEST_BYTES} limit`,
    );
  }
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new ManifestError(`Manifest is not valid JSON: ${(e as Error).message}`);
  }
  if (!isObject(doc)) throw new ManifestError("Manifest is not a JSON object");
  if (doc.schemaVersion !== 2) {
    throw new ManifestError(
      `Unsupported manifest schemaVersion ${JSON.stringify(doc.schemaVersion)} (only 2)`,
    );
  }
  const ct = (contentType ?? "").split(";")[0].trim();
  const mediaType = typeof doc.mediaType === "string" ? doc.mediaType : ct;
  if (
    Array.isArray(doc.manifests) || mediaType === MediaType.ociIndex ||
    mediaType === MediaType.dockerList
  ) {
    if (!Array.isArray(doc.manifests)) throw new ManifestError("Index has no manifests array");
    if (doc.manifests.length > MAX_LAYERS) {
      throw new ManifestError("Index lists too many manifests");
    }
    const manifests = doc.manifests.map((m, i) => descriptor(m, `manifests[${i}]`));
    return { kind: "index", mediaType: mediaType || MediaType.ociIndex, manifests };
  }
  if (!Array.isArray(doc.layers)) throw new ManifestError("Manifest has no layers array");
  if (doc.layers.length > MAX_LAYERS) {
    throw new ManifestError(`Manifest lists ${doc.layers.length} layers, over ${MAX_LAYERS}`);
  }
  const config = descriptor(doc.config, "config");
  const layers = doc.layers.map((l, i) => descriptor(l, `layers[${i}]`));
  const sizes = new Map<string, number>([[config.digest, config.size]]);
  for (const l of layers) {
    const s = sizes.get(l.digest);
    if (s !== undefined && s !== l.size) {
      throw new ManifestError(
        `Manifest lists ${l.digest} twice with different sizes (${s} and ${l.size})`,
      );
    }
    sizes.set(l.digest, l.size);
  }
  return { kind: "manifest", mediaType: mediaType || MediaType.dockerManifest, config, layers };
}

/** The distinct blobs a manifest references (config first), duplicates folded. */
export function manifestBlobs(m: ImageManifest): Descriptor[] {
  return imageBlobs([m]);
}

/** Distinct blobs of several manifests, config first within each, in order. */
export function imageBlobs(images: ImageManifest[]): Descriptor[] {
  const seen = new Set<string>();
  const out: Descriptor[] = [];
  for (const m of images) {
    for (const d of [m.config, ...m.layers]) {
      if (seen.has(d.digest)) continue;
      seen.add(d.digest);
      out.push(d);
    }
  }
  return out;
}

/** A blob to transfer. */
export interface Blob {
  /** `sha256:<hex>` */
  digest: string;
  size: number;
  /** Upload only: a repository on the same registry to mount the blob from. */
  from?: string;
}
