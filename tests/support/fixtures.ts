/** Fixture images: Ollama models and OCI images built from deterministic bytes. */
import { Buffer } from "node:buffer";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { deterministicBytes, FILE_BACKED_THRESHOLD, writeDeterministicFileSync } from "./bytes.ts";
import { sha256hex } from "./util.ts";

export const MEDIA = {
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ollama: (kind: string): string => `application/vnd.ollama.image.${kind}`,
} as const;

export interface FixtureBlob {
  digest: string;
  size: number;
  mediaType: string;
  /** In-memory content (blobs under 64 MiB). */
  data?: Uint8Array;
  /** Temp file holding the content (blobs of 64 MiB and more). */
  path?: string;
}

export interface Fixture {
  manifest: Uint8Array;
  manifestDigest: string;
  mediaType: string;
  /** Config first, then layers in manifest order. */
  blobs: FixtureBlob[];
  /** Removes temp files of file-backed blobs (present only when there are some). */
  cleanup?: () => Promise<void>;
}

export interface FixtureOptions {
  layerSizes: number[];
  seed?: number;
  /** Where file-backed blobs go; default a fresh temp dir (removed by `cleanup`). */
  dir?: string;
  /**
   * makeOllamaModel: layers Ollama can load, so `ollama show` works: the model layer starts
   * with a GGUF header (no tensors; fixture bytes after it), params is JSON, the other
   * text layers are text (each padded to its size). Default false.
   */
  loadable?: boolean;
}

/** A GGUF v3 header with no tensors and the metadata `ollama show` prints (fs/ggml/gguf.go). */
export function ggufHeader(): Uint8Array {
  const parts: Buffer[] = [];
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    parts.push(b);
  };
  const u64 = (n: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    parts.push(b);
  };
  const str = (s: string) => {
    u64(Buffer.byteLength(s));
    parts.push(Buffer.from(s));
  };
  const kv: [string, string | number][] = [
    ["general.architecture", "llama"],
    ["general.name", "haul-fixture"],
    ["general.file_type", 15], // Q4_K_M
    ["llama.context_length", 4096],
    ["llama.embedding_length", 64],
    ["llama.block_count", 1],
    ["llama.attention.head_count", 1],
  ];
  parts.push(Buffer.from("GGUF"));
  u32(3);
  u64(0); // tensors
  u64(kv.length);
  for (const [k, v] of kv) {
    str(k);
    if (typeof v === "string") {
      u32(8);
      str(v);
    } else {
      u32(4);
      u32(v);
    }
  }
  return new Uint8Array(Buffer.concat(parts));
}

/** Text of exactly `size` bytes that Ollama reads as the layer `kind` (padded with spaces). */
function loadableText(kind: string, size: number): Uint8Array {
  const text = kind === "params"
    ? '{"temperature":0.7,"stop":["<|end|>"]}'
    : kind === "template"
    ? "{{ .System }} {{ .Prompt }}"
    : `haul fixture ${kind}`;
  if (Buffer.byteLength(text) > size) throw new Error(`${kind} layer needs ${text.length} bytes`);
  return new TextEncoder().encode(text.padEnd(size, " "));
}

const OLLAMA_KINDS = ["model", "template", "license", "params", "system", "messages", "adapter"];

/** Builds layer blobs: small ones in memory, large ones in files. */
function buildLayers(opts: FixtureOptions, mediaTypeOf: (i: number) => string) {
  const seed = opts.seed ?? 1;
  let dir: string | undefined;
  let ownDir = false;
  const layers: FixtureBlob[] = opts.layerSizes.map((size, i) => {
    const layerSeed = seed * 1009 + i + 1;
    const mediaType = mediaTypeOf(i);
    const kind = mediaType.split(".").pop()!;
    if (opts.loadable && kind !== "model") {
      const data = loadableText(kind, size);
      return { digest: `sha256:${sha256hex(data)}`, size, mediaType, data };
    }
    const header = opts.loadable ? ggufHeader() : undefined;
    if (size >= FILE_BACKED_THRESHOLD) {
      if (!dir) {
        dir = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "haul-fixture-"));
        ownDir = !opts.dir;
      }
      const file = path.join(dir, `layer-${seed}-${i}-${size}.bin`);
      let digest = writeDeterministicFileSync(file, size, layerSeed);
      if (header) {
        const fd = fs.openSync(file, "r+");
        fs.writeSync(fd, header, 0, header.length, 0);
        fs.closeSync(fd);
        digest = `sha256:${
          crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex")
        }`;
      }
      return { digest, size, mediaType, path: file };
    }
    const data = deterministicBytes(size, layerSeed);
    if (header) data.set(header, 0);
    return { digest: `sha256:${sha256hex(data)}`, size, mediaType, data };
  });
  const cleanup = dir === undefined ? undefined : async () => {
    for (const l of layers) if (l.path) await fsp.rm(l.path, { force: true });
    if (ownDir && dir) await fsp.rm(dir, { recursive: true, force: true });
  };
  return { layers, cleanup };
}

function jsonBlob(value: unknown, mediaType: string): FixtureBlob {
  const data = new TextEncoder().encode(JSON.stringify(value));
  return { digest: `sha256:${sha256hex(data)}`, size: data.length, mediaType, data };
}

function finish(
  mediaType: string,
  config: FixtureBlob,
  layers: FixtureBlob[],
  cleanup: (() => Promise<void>) | undefined,
  extra: Record<string, unknown> = {},
): Fixture {
  const desc = (b: FixtureBlob) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
  const manifest = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType,
    config: desc(config),
    layers: layers.map(desc),
    ...extra,
  }));
  const fx: Fixture = {
    manifest,
    manifestDigest: `sha256:${sha256hex(manifest)}`,
    mediaType,
    blobs: [config, ...layers],
  };
  if (cleanup) fx.cleanup = cleanup;
  return fx;
}

/**
 * An Ollama-style model: Docker schema2 manifest, a small Ollama-like config, the first layer
 * `application/vnd.ollama.image.model`, then template/license/params/… layers.
 */
export function makeOllamaModel(opts: FixtureOptions): Fixture {
  const { layers, cleanup } = buildLayers(
    opts,
    (i) => MEDIA.ollama(OLLAMA_KINDS[i % OLLAMA_KINDS.length]),
  );
  const config = jsonBlob({
    model_format: "gguf",
    model_family: "llama",
    model_families: ["llama"],
    model_type: "1B",
    file_type: "Q4_K_M",
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
  }, MEDIA.dockerConfig);
  return finish(MEDIA.dockerManifest, config, layers, cleanup);
}

/** An OCI image: OCI manifest and config, tar+gzip layers (arbitrary bytes). */
export function makeOciImage(
  opts: FixtureOptions & { annotations?: Record<string, string> },
): Fixture {
  const { layers, cleanup } = buildLayers(opts, () => MEDIA.ociLayerGzip);
  const config = jsonBlob({
    architecture: "amd64",
    os: "linux",
    config: { Cmd: ["/bin/sh"] },
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
  }, MEDIA.ociConfig);
  const extra = opts.annotations ? { annotations: opts.annotations } : {};
  return finish(MEDIA.ociManifest, config, layers, cleanup, extra);
}
