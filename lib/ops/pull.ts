/**
 * Manifest-level pull: resolve each reference (picking a platform from an index, or keeping
 * the whole index), fetch every blob (shared between references, once; from mirrors first
 * when configured), then write each manifest last, into Ollama's store or an OCI image
 * layout.
 */
import {
  DEFAULT_TUNING,
  download,
  type DownloadResult,
  type SharedTransfer,
  sharedTransfer,
  type TransferTuning,
  type WrittenHooks,
} from "../download/download.ts";
import {
  HaulError,
  IntegrityError,
  InterruptedError,
  ManifestError,
  UsageError,
} from "../errors.ts";
import {
  type Descriptor,
  imageBlobs,
  type ImageManifest,
  type IndexManifest,
  parseManifest,
  type Platform,
} from "../registry/manifest.ts";
import { type MirrorMap, mirrorsFor } from "../registry/mirror_config.ts";
import { type Source, SourceSet } from "../registry/mirror.ts";
import { availablePlatforms, formatPlatform, selectManifest } from "../registry/platform.ts";
import type { OnProgress } from "../progress_events.ts";
import { formatReference, parseReference, type Reference } from "../registry/reference.ts";
import type { ConnectionOptions } from "../registry/session.ts";
import { defaultModelsDir, OllamaStore } from "../store/ollama.ts";
import { ociBlobFileName, OciLayout } from "../store/oci_layout.ts";

/** `WrittenHooks` follow each large blob's bytes as they land (`haul serve --upstream`). */
export interface PullOptions extends ConnectionOptions, TransferTuning, WrittenHooks {
  /** Store root. @default $OLLAMA_MODELS or ~/.ollama/models */
  modelsDir?: string;
  /**
   * Write an OCI image layout in this directory instead of Ollama's store: blobs (manifests
   * included) under `blobs/sha256/<hex>`, one `index.json` entry per reference, named by its
   * tag (`org.opencontainers.image.ref.name`). Other images in the layout are kept.
   * @default undefined (Ollama's store)
   */
  ociLayout?: string;
  /** Allow plain http (Ollama's `--insecure`). @default false */
  insecure?: boolean;
  /** Platform to pick from an index. @default the running machine's */
  platform?: Platform;
  /**
   * Keep a whole image index (every platform's manifest and blobs) instead of picking one
   * platform. Needs `ociLayout`: Ollama's store holds one manifest per name. @default false
   */
  allPlatforms?: boolean;
  /**
   * Mirrors per registry host (`host[:port]`, or `*` for every host), each
   * `scheme://host[:port]`, tried in order before the origin (see lib/registry/mirror.ts).
   * Store paths and index.json names always use the origin's name. @default no mirrors
   */
  mirrors?: MirrorMap;
  /**
   * Most seconds to wait for a mirror that is still fetching a large blob for itself (a
   * pull-through cache answering Range with 200) before reading it from there as one
   * stream; see {@link SourceSet.awaitCached}. @default max(30, blob size / 20 MB/s);
   * 0: never wait
   */
  mirrorFillWait?: number;
  onEvent?: OnProgress;
  signal?: AbortSignal;
}

export interface PullResult {
  ref: Reference;
  name: string;
  /** Digest of what the name now points at (the index itself with `allPlatforms`). */
  manifestDigest: string;
  /** Media type of that manifest or index. */
  mediaType: string;
  /** Ollama's store: the manifest file. OCI layout: the manifest's blob file. */
  manifestPath: string;
  /** Every blob the manifest (or, with `allPlatforms`, every manifest of the index) references. */
  blobs: Descriptor[];
  /** The platform picked from an index; undefined for a plain manifest or a whole index. */
  platform?: Platform;
  /** Bytes received over the network for this pull (all references together). */
  transferred: number;
}

/** The machine's platform in OCI terms. */
export function currentPlatform(): Platform {
  const arch = ({
    x64: "amd64",
    arm64: "arm64",
    arm: "arm",
    ia32: "386",
    ppc64: "ppc64le",
    s390x: "s390x",
  } as Record<
    string,
    string
  >)[process.arch] ?? process.arch;
  const os = process.platform === "win32" ? "windows" : process.platform;
  return { os, architecture: arch };
}

/** Resolves a reference string against the `--insecure` rule. */
export function resolveReference(input: string, insecure = false): Reference {
  const explicitHttp = /^http:\/\//i.test(input);
  const ref = parseReference(input);
  if (explicitHttp && !insecure) {
    throw new UsageError(`Plain http for ${JSON.stringify(input)} needs --insecure`);
  }
  if (insecure && !/^https:\/\//i.test(input)) ref.scheme = "http";
  return ref;
}

/** A manifest or index document as fetched: bytes kept unchanged. */
interface Doc {
  bytes: Uint8Array;
  digest: string;
  mediaType: string;
}

interface Resolved {
  ref: Reference;
  sources: SourceSet;
  /** What the name points at: a manifest, or the index with allPlatforms. */
  top: Doc;
  /** Every manifest or index document to store as a blob (OCI layout), top included. */
  docs: Doc[];
  /** Image manifests whose blobs are needed. */
  images: ImageManifest[];
  platform?: Platform;
}

/** Nesting allowed for indexes inside indexes (`allPlatforms`). */
const MAX_INDEX_DEPTH = 4;

/** Pulls one or more references into the store (or an OCI layout). */
export async function pull(
  refs: string | string[],
  options: PullOptions = {},
): Promise<PullResult[]> {
  const parsed = checkPull(refs, options);
  const target = await openTarget(parsed, options);
  const emit = options.onEvent ?? (() => {});
  const sourcesFor = sourceSets(options, emit);
  const resolved: Resolved[] = [];
  for (const ref of parsed) {
    emit({ type: "manifest", ref: formatReference(ref) });
    resolved.push(await resolve(ref, sourcesFor(ref), options));
  }
  const transferred = await fetchBlobs(planBlobs(resolved), target, options, emit);
  emit({ type: "verify" });
  return await writeManifests(resolved, target, transferred, options, emit);
}

/** Checks the options and parses the references, before any disk or network work. */
function checkPull(refs: string | string[], options: PullOptions): Reference[] {
  const list = Array.isArray(refs) ? refs : [refs];
  if (!list.length) throw new UsageError("Nothing to pull: give at least one reference");
  if (options.ociLayout !== undefined && options.modelsDir !== undefined) {
    throw new UsageError("Choose Ollama's store (modelsDir) or an OCI layout, not both");
  }
  if (options.allPlatforms && options.ociLayout === undefined) {
    throw new UsageError(
      "--all-platforms needs --oci DIR: Ollama's store keeps one manifest per model name and " +
        "Ollama cannot read an image index; pick one platform with --platform OS/ARCH instead",
    );
  }
  if (options.mirrorFillWait !== undefined && !(options.mirrorFillWait >= 0)) {
    throw new RangeError(`mirrorFillWait must be 0 or more seconds, got ${options.mirrorFillWait}`);
  }
  return list.map((r) => resolveReference(r, options.insecure));
}

/** Where a pull writes: Ollama's store or an OCI image layout. */
interface Target {
  /** Where {@link download} puts blob files. */
  files: { destDir: string; fileName?: (digest: string) => string; partialDir?: string };
  /** True when the blob is already there with its size. */
  has(b: Descriptor): Promise<boolean>;
  /** Writes one reference's manifest (after all of its blobs); returns the manifest's path. */
  write(r: Resolved, signal?: AbortSignal): Promise<string>;
}

/** Opens (and creates) the store or layout the options name. */
async function openTarget(refs: Reference[], options: PullOptions): Promise<Target> {
  if (options.ociLayout !== undefined) {
    const layout = new OciLayout(options.ociLayout);
    await layout.init();
    return {
      files: { destDir: layout.blobsDir, fileName: ociBlobFileName },
      has: (b) => layout.hasBlob(b.digest, b.size),
      write: async (r, signal) => {
        for (const d of r.docs) await layout.writeBlob(d.digest, d.bytes);
        const manifestPath = layout.blobPath(r.top.digest);
        await layout.addManifest(
          {
            mediaType: r.top.mediaType,
            digest: r.top.digest,
            size: r.top.bytes.byteLength,
            platform: r.platform,
          },
          r.ref.tag,
          signal,
        );
        return manifestPath;
      },
    };
  }
  const store = new OllamaStore(options.modelsDir ?? defaultModelsDir());
  // Validate store paths before touching the network or the disk.
  for (const ref of refs) store.manifestPath(ref);
  await store.ensureDirs();
  return {
    files: { destDir: store.blobsDir, partialDir: store.partialDir },
    has: (b) => store.hasBlob(b.digest, b.size),
    write: (r) => store.writeManifest(r.ref, r.top.bytes),
  };
}

/** One set of sources (mirrors, then the origin) per repository: tokens are per repository. */
function sourceSets(options: PullOptions, emit: OnProgress): (ref: Reference) => SourceSet {
  const down = new Map<string, string>();
  const sets = new Map<string, SourceSet>();
  return (ref) => {
    const base = `${ref.scheme}://${ref.host}`;
    const key = `${base} ${ref.repository}`;
    let s = sets.get(key);
    if (!s) {
      s = new SourceSet(base, ref.repository, {
        ...options,
        mirrors: mirrorsFor(options.mirrors, ref.host, base),
        down,
        onEvent: emit,
      });
      sets.set(key, s);
    }
    return s;
  };
}

/** The blobs to fetch from one repository (through one reference's sources). */
interface BlobGroup {
  r: Resolved;
  blobs: Descriptor[];
}

/**
 * Blobs per repository (blob URLs are per repository); a blob shared by two references is
 * fetched once.
 */
function planBlobs(resolved: Resolved[]): BlobGroup[] {
  const groups = new Map<string, BlobGroup>();
  const claimed = new Set<string>();
  for (const r of resolved) {
    const key = `${r.ref.scheme}://${r.ref.host}/${r.ref.repository}`;
    const g = groups.get(key) ?? { r, blobs: [] };
    for (const b of imageBlobs(r.images)) {
      if (claimed.has(b.digest)) continue;
      claimed.add(b.digest);
      g.blobs.push(b);
    }
    groups.set(key, g);
  }
  return [...groups.values()];
}

/**
 * Downloads every group at once, with one connection pool and one rate limit for every
 * reference of this pull. Returns the bytes received.
 */
async function fetchBlobs(
  groups: BlobGroup[],
  target: Target,
  options: PullOptions,
  emit: OnProgress,
): Promise<number> {
  let transferred = 0;
  const shared = sharedTransfer(options);
  try {
    await Promise.all(groups.map(async (g) => {
      // Await first: `transferred += await …` would read the total before the wait and lose
      // the bytes of groups that finish meanwhile.
      const n = await fetchGroup(g, shared, target, options, emit);
      transferred += n;
    }));
  } finally {
    shared.parts.stop();
  }
  return transferred;
}

/** Downloads one repository's blobs: from the origin, or blob by blob through the mirrors. */
async function fetchGroup(
  { r, blobs }: BlobGroup,
  shared: SharedTransfer,
  target: Target,
  options: PullOptions,
  emit: OnProgress,
): Promise<number> {
  const from = (source: Source, items: Descriptor[], signal?: AbortSignal) =>
    download({
      shared,
      ...options,
      ...target.files,
      blobs: items,
      baseUrl: source.base,
      repository: r.ref.repository,
      session: source.session,
      retry: r.sources.retryFor(source),
      onEvent: emit,
      signal,
    });
  if (!r.sources.mirrors.length) {
    return (await from(r.sources.origin, blobs, options.signal)).transferred;
  }
  const singleStreamMax = options.singleStreamMax ?? DEFAULT_TUNING.singleStreamMax;
  // With mirrors, each blob on its own: one may come from a mirror, the next from the origin.
  return await eachBlob(
    blobs,
    options.signal,
    (b, signal) =>
      r.sources.tryEach(`blob ${b.digest}`, async (source) => {
        if (source.mirror && b.size > singleStreamMax && !(await target.has(b))) {
          emit({ type: "blob-start", op: "pull", digest: b.digest, total: b.size, completed: 0 });
          const wait = options.mirrorFillWait ?? Math.max(30, b.size / 20e6);
          if (wait > 0) await r.sources.awaitCached(source, b.digest, wait * 1000, signal);
        }
        return await from(source, [b], signal);
      }, signal),
  );
}

/** Writes each reference's manifest, last, once every blob is in place. */
async function writeManifests(
  resolved: Resolved[],
  target: Target,
  transferred: number,
  options: PullOptions,
  emit: OnProgress,
): Promise<PullResult[]> {
  const results: PullResult[] = [];
  for (const r of resolved) {
    emit({ type: "manifest-write", op: "pull" });
    const manifestPath = await target.write(r, options.signal);
    emit({ type: "success", ref: formatReference(r.ref) });
    results.push({
      ref: r.ref,
      name: formatReference(r.ref),
      manifestDigest: r.top.digest,
      mediaType: r.top.mediaType,
      manifestPath,
      blobs: imageBlobs(r.images),
      ...(r.platform ? { platform: r.platform } : {}),
      transferred,
    });
  }
  return results;
}

/**
 * Runs `one` for every blob concurrently (the shared pool bounds connections); the first
 * failure cancels the rest. Returns the bytes transferred.
 */
async function eachBlob(
  blobs: Descriptor[],
  outer: AbortSignal | undefined,
  one: (b: Descriptor, signal: AbortSignal) => Promise<DownloadResult>,
): Promise<number> {
  const abort = new AbortController();
  const onOuter = () => abort.abort(new InterruptedError());
  outer?.addEventListener("abort", onOuter, { once: true });
  if (outer?.aborted) onOuter();
  let firstError: unknown;
  let transferred = 0;
  try {
    await Promise.all(blobs.map((b) =>
      one(b, abort.signal).then((res) => {
        transferred += res.transferred;
      }, (err) => {
        if (firstError === undefined) {
          firstError = err;
          abort.abort(err);
        }
      })
    ));
  } finally {
    outer?.removeEventListener("abort", onOuter);
  }
  if (firstError !== undefined) {
    if (outer?.aborted && !(firstError instanceof HaulError)) throw new InterruptedError();
    throw firstError;
  }
  return transferred;
}

/** Fetches a reference's manifest; from an index, one platform's manifest or all of them. */
async function resolve(
  ref: Reference,
  sources: SourceSet,
  options: PullOptions,
): Promise<Resolved> {
  const got = await sources.manifest(ref.digest ?? ref.tag ?? "latest", options.signal);
  const doc = parseManifest(got.bytes, got.mediaType);
  const top: Doc = { bytes: got.bytes, digest: got.digest, mediaType: doc.mediaType };
  if (doc.kind === "manifest") return { ref, sources, top, docs: [top], images: [doc] };
  if (options.allPlatforms) {
    const docs: Doc[] = [top];
    const images: ImageManifest[] = [];
    await collectIndex(doc, sources, docs, images, 1, options.signal);
    return { ref, sources, top, docs, images };
  }
  return await selectPlatform(ref, doc, sources, options);
}

/** Picks `options.platform` (default: this machine's) from an index and fetches its manifest. */
async function selectPlatform(
  ref: Reference,
  index: IndexManifest,
  sources: SourceSet,
  options: PullOptions,
): Promise<Resolved> {
  const want = options.platform ?? currentPlatform();
  const pick = selectManifest(index, want);
  if (!pick) {
    throw new ManifestError(
      `${formatReference(ref)} has no manifest for ${formatPlatform(want)}; available: ${
        availablePlatforms(index).join(", ")
      } (choose one with --platform OS/ARCH[/VARIANT])`,
    );
  }
  const child = await fetchChild(pick, sources, options.signal);
  if (child.doc.kind !== "manifest") {
    throw new ManifestError(`The ${formatPlatform(want)} entry of an index is another index`);
  }
  return {
    ref,
    sources,
    top: child.raw,
    docs: [child.raw],
    images: [child.doc],
    ...(pick.platform ? { platform: pick.platform } : {}),
  };
}

/** Fetches an index entry by digest and checks it against the entry's size. */
async function fetchChild(
  entry: Descriptor,
  sources: SourceSet,
  signal?: AbortSignal,
): Promise<{ raw: Doc; doc: ImageManifest | IndexManifest }> {
  const got = await sources.manifestByDigest(entry.digest, signal);
  if (got.bytes.byteLength !== entry.size) {
    throw new IntegrityError(
      `Manifest ${entry.digest} is ${got.bytes.byteLength} bytes, the index says ${entry.size}`,
    );
  }
  const doc = parseManifest(got.bytes, entry.mediaType || got.mediaType);
  return { raw: { bytes: got.bytes, digest: got.digest, mediaType: doc.mediaType }, doc };
}

/** Every manifest an index lists (recursively), for `allPlatforms`. */
async function collectIndex(
  index: IndexManifest,
  sources: SourceSet,
  docs: Doc[],
  images: ImageManifest[],
  depth: number,
  signal?: AbortSignal,
): Promise<void> {
  if (depth > MAX_INDEX_DEPTH) {
    throw new ManifestError(`Indexes nest deeper than ${MAX_INDEX_DEPTH} levels`);
  }
  const seen = new Set(docs.map((d) => d.digest));
  const entries = index.manifests.filter((m) => !seen.has(m.digest) && seen.add(m.digest));
  const children = await Promise.all(entries.map((m) => fetchChild(m, sources, signal)));
  for (const c of children) {
    docs.push(c.raw);
    if (c.doc.kind === "manifest") images.push(c.doc);
    else await collectIndex(c.doc, sources, docs, images, depth + 1, signal);
  }
}
