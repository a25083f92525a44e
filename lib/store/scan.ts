/**
 * Reading an Ollama model store for the store operations (lib/store/list.ts, remove.ts,
 * prune.ts, verify.ts): the blob directory, the manifests and the models they name, and
 * signs of a running transfer.
 *
 * Concurrency with a running pull (haul's or Ollama's): a pull writes blobs first (through
 * `sha256-<hex>-partial…` files and temp files) and the manifest last. So:
 * - a blob no manifest references may belong to a pull whose manifest is not written yet:
 *   it is removed only when it is older than {@link DEFAULT_MIN_AGE} and no transfer looks
 *   active (no partial or temp file modified within that window);
 * - partial downloads and temp files modified within the window are in use, and so are those
 *   whose lock (`-partial.lock`, lib/disk/lock.ts) or temp name carries a live pid;
 * - manifests are read after the blob directory is listed, so a manifest that lands during
 *   the scan is seen; manifest temp files (`<tag>.<pid>.tmp`) count as references too.
 * `force` drops the time-based guards for when no pull can be running.
 *
 * Nothing here writes to the console; the CLI prints the results.
 */
import { createHash } from "node:crypto";
import { readdir, readFile, stat, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { join, relative, sep } from "node:path";
import process from "node:process";
import { storeError } from "../errors.ts";
import { type Descriptor, manifestBlobs, parseManifest } from "../registry/manifest.ts";
import { formatReference, type Reference, shortName } from "../registry/reference.ts";
import { defaultModelsDir, OllamaStore } from "./ollama.ts";

/** Files modified more recently than this are taken to belong to a running transfer (10 min). */
export const DEFAULT_MIN_AGE = 10 * 60 * 1000;

/** Files under `manifests/` larger than this are not manifests and are not scanned. */
const MAX_SCANNED_FILE = 16 << 20;
/** Deepest directory walked under `manifests/`. */
export const MAX_DEPTH = 32;

const BLOB_RE = /^sha256-([0-9a-f]{64})$/;
// `-partial`, `-partial.json`, `-partial.json.<pid>.tmp`, `-partial.<pid>-<rand>.tmp` (haul;
// `-partial-<pid>-<rand>` before);
// `-partial-<n>` part state files (Ollama).
const PARTIAL_RE = /^sha256-([0-9a-f]{64})-partial(?:[-.].*)?$/;
const TEMP_RE = /\.tmp$/;
// What a manifest being written looks like: `<tag>.<pid>.tmp` (lib/store/ollama.ts).
const MANIFEST_TEMP_RE = /\.\d+\.tmp$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const PINNED_TAG_RE = /^sha256-([0-9a-f]{64})$/;
const DIGEST_IN_TEXT_RE = /sha256:([0-9a-f]{64})/g;

/** Options shared by the store operations. */
export interface StoreOpsOptions {
  /**
   * Store root.
   * @default $OLLAMA_MODELS, else ~/.ollama/models
   */
  modelsDir?: string;
  /** Cancels the operation between files (and between reads while hashing). */
  signal?: AbortSignal;
}

/** A model (one manifest file) in the store. */
export interface StoredModel {
  /** The name as Ollama shows it: `llama3.2:latest`, `127.0.0.1:5000/library/tiny:latest`. */
  name: string;
  /** Full reference without scheme: `registry.ollama.ai/library/llama3.2:latest`. */
  reference: string;
  host: string;
  repository: string;
  /** Tag; undefined for a digest-pinned pull (stored under the tag `sha256-<hex>`). */
  tag?: string;
  /** Pinned digest for a digest-pinned pull. */
  pinned?: string;
  /** `sha256:<hex>` of the manifest file's bytes. */
  digest: string;
  /** Sum of the config and layer sizes, as `ollama list` counts. */
  size: number;
  /** The manifest file's modification time. */
  modified: Date;
  manifestPath: string;
  /** Distinct blobs, config first; empty when the manifest is invalid. */
  blobs: Descriptor[];
  /** Why the manifest cannot be used, when it cannot. */
  invalid?: string;
}

export interface FileInfo {
  path: string;
  size: number;
  mtimeMs: number;
  ino: number;
  /** Process that owns the file, when its name or content says (same host only). */
  owner?: number;
}

export interface BlobScan {
  /** Complete blobs by digest. */
  complete: Map<string, FileInfo>;
  /** Partial-download files by digest. */
  partials: Map<string, FileInfo[]>;
  /** Other `.tmp` files in `blobs/`. */
  temps: FileInfo[];
}

export interface ManifestScan {
  models: StoredModel[];
  /** Every digest named in any file under `manifests/` (temp files included). */
  referenced: Set<string>;
  /** Manifest temp files (`<tag>.<pid>.tmp`). */
  temps: FileInfo[];
}

export function openStore(options: StoreOpsOptions): OllamaStore {
  options.signal?.throwIfAborted();
  return new OllamaStore(options.modelsDir ?? defaultModelsDir());
}

export function checkMinAge(minAge: number | undefined): number {
  const v = minAge ?? DEFAULT_MIN_AGE;
  if (!Number.isFinite(v) || v < 0) {
    throw new RangeError(`minAge must be a non-negative number of milliseconds, got ${v}`);
  }
  return v;
}

export function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function info(path: string, s: { size: number; mtimeMs: number; ino: number }): FileInfo {
  return { path, size: s.size, mtimeMs: s.mtimeMs, ino: s.ino };
}

export async function listDir(dir: string) {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    throw storeError("read directory", dir, e);
  }
}

/** Stat that follows symlinks; undefined when the entry vanished. */
export async function statOrUndefined(path: string) {
  try {
    return await stat(path);
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return undefined;
    throw storeError("stat", path, e);
  }
}

/**
 * Blobs in `blobs/`, and partial downloads there (Ollama's, an older haul's) and in
 * `.haul/partial/` (haul's).
 */
export async function scanBlobs(store: OllamaStore, signal?: AbortSignal): Promise<BlobScan> {
  const scan: BlobScan = { complete: new Map(), partials: new Map(), temps: [] };
  await scanBlobDir(store.blobsDir, scan, true, signal);
  await scanBlobDir(store.partialDir, scan, false, signal);
  return scan;
}

async function scanBlobDir(
  dir: string,
  scan: BlobScan,
  blobs: boolean,
  signal?: AbortSignal,
): Promise<void> {
  for (const e of await listDir(dir)) {
    signal?.throwIfAborted();
    const path = join(dir, e.name);
    const complete = blobs ? BLOB_RE.exec(e.name) : null;
    const partial = complete ? null : PARTIAL_RE.exec(e.name);
    const temp = !complete && !partial && TEMP_RE.test(e.name);
    if (!complete && !partial && !temp) continue; // not ours: leave it alone
    const s = await statOrUndefined(path);
    if (!s?.isFile()) continue;
    const f = info(path, s);
    if (!complete) {
      const owner = await ownerOf(path, e.name);
      if (owner !== undefined) f.owner = owner;
    }
    if (complete) scan.complete.set(`sha256:${complete[1]}`, f);
    else if (partial) {
      const digest = `sha256:${partial[1]}`;
      const list = scan.partials.get(digest) ?? [];
      list.push(f);
      scan.partials.set(digest, list);
    } else scan.temps.push(f);
  }
}

/**
 * Signs of a running transfer: `live` when a lock or temp file names a running process,
 * `recent` when a partial or temp file was modified within `minAge`.
 */
export function transferActivity(
  blobs: BlobScan,
  minAge: number,
  manifestTemps: FileInfo[] = [],
): { live: boolean; recent: boolean } {
  const now = Date.now();
  const files = [...[...blobs.partials.values()].flat(), ...blobs.temps, ...manifestTemps];
  return {
    live: files.some((f) => f.owner !== undefined && alive(f.owner)),
    recent: files.some((f) => now - f.mtimeMs < minAge),
  };
}

export function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === "EPERM";
  }
}

/**
 * The process a partial or temp file belongs to: haul names temp files
 * `…-partial.<pid>-<hex>.tmp` (`…-partial-<pid>-<hex>` before) and `….<pid>.tmp`, and a `-partial.lock` holds `{pid, host}`
 * (lib/disk/lock.ts). Undefined when unknown or on another host.
 */
async function ownerOf(path: string, name: string): Promise<number | undefined> {
  const m = /-partial-(\d+)-[0-9a-f]+$/.exec(name) ?? /\.(\d+)(?:-[0-9a-f]+)?\.tmp$/.exec(name);
  if (m) {
    const pid = Number(m[1]);
    return pid > 1 ? pid : undefined;
  }
  if (!name.endsWith("-partial.lock")) return undefined;
  try {
    const owner = JSON.parse(await readFile(path, "utf8")) as { pid?: unknown; host?: unknown };
    if (owner.host !== undefined && owner.host !== hostname()) return undefined;
    return typeof owner.pid === "number" && owner.pid > 1 ? owner.pid : undefined;
  } catch {
    return undefined; // being written, or garbage: the age rule decides
  }
}

export function digestsIn(bytes: Uint8Array): Set<string> {
  const text = new TextDecoder("latin1").decode(bytes);
  return new Set([...text.matchAll(DIGEST_IN_TEXT_RE)].map((m) => `sha256:${m[1]}`));
}

/** Walks `manifests/`: models at `<host>/<repo…>/<tag>`, and every digest any file names. */
export async function scanManifests(
  store: OllamaStore,
  signal?: AbortSignal,
): Promise<ManifestScan> {
  const scan: ManifestScan = { models: [], referenced: new Set(), temps: [] };
  const walk = async (dir: string, depth: number): Promise<void> => {
    if (depth > MAX_DEPTH) return;
    for (const e of await listDir(dir)) {
      signal?.throwIfAborted();
      const path = join(dir, e.name);
      const s = await statOrUndefined(path);
      if (!s) continue;
      if (s.isDirectory()) {
        await walk(path, depth + 1);
        continue;
      }
      if (!s.isFile()) continue;
      const isTemp = MANIFEST_TEMP_RE.test(e.name);
      if (isTemp) {
        const f = info(path, s);
        const owner = await ownerOf(path, e.name);
        if (owner !== undefined) f.owner = owner;
        scan.temps.push(f);
      }
      if (s.size > MAX_SCANNED_FILE) continue;
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await readFile(path));
      } catch (err) {
        if ((err as { code?: string }).code === "ENOENT") continue;
        throw storeError("read", path, err);
      }
      // Conservative: anything a file under manifests/ names is in use.
      for (const d of digestsIn(bytes)) scan.referenced.add(d);
      // `<host>/<namespace>/<model…>/<tag>`: at least two repository components, as a
      // parsed reference always has.
      if (!isTemp && depth >= 3 && TAG_RE.test(e.name)) {
        const model = modelFrom(store, path, bytes, s.mtime);
        if (model) scan.models.push(model);
      }
    }
  };
  await walk(store.manifestsDir, 0);
  await scanManifestTemps(store, scan);
  return scan;
}

/** Manifests being written (`.haul/tmp/manifest.<pid>-<hex>.tmp`): what they name is in use. */
async function scanManifestTemps(store: OllamaStore, scan: ManifestScan): Promise<void> {
  for (const e of await listDir(store.tmpDir)) {
    if (!/^manifest\.\d+-[0-9a-f]+\.tmp$/.test(e.name)) continue;
    const path = join(store.tmpDir, e.name);
    const s = await statOrUndefined(path);
    if (!s?.isFile() || s.size > MAX_SCANNED_FILE) continue;
    const f = info(path, s);
    const owner = await ownerOf(path, e.name);
    if (owner !== undefined) f.owner = owner;
    scan.temps.push(f);
    const bytes = await readFile(path).catch(() => undefined);
    if (bytes) { for (const d of digestsIn(new Uint8Array(bytes))) scan.referenced.add(d); }
  }
}

/** Reads one manifest file as a model; undefined when it does not exist. */
export async function readModel(
  store: OllamaStore,
  path: string,
  signal?: AbortSignal,
): Promise<{ model: StoredModel; bytes: Uint8Array } | undefined> {
  signal?.throwIfAborted();
  const s = await statOrUndefined(path);
  if (!s?.isFile()) return undefined;
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(path));
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return undefined;
    throw storeError("read", path, e);
  }
  const model = modelFrom(store, path, bytes, s.mtime);
  return model ? { model, bytes } : undefined;
}

function modelFrom(
  store: OllamaStore,
  path: string,
  bytes: Uint8Array,
  mtime: Date,
): StoredModel | undefined {
  const parts = relative(store.manifestsDir, path).split(sep);
  if (parts.length < 4) return undefined;
  const host = parts[0];
  const tagName = parts[parts.length - 1];
  const repository = parts.slice(1, -1).join("/");
  const ref: Reference = { scheme: "https", host, repository };
  const pinned = PINNED_TAG_RE.exec(tagName);
  if (pinned) ref.digest = `sha256:${pinned[1]}`;
  else ref.tag = tagName;
  const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
  const model: StoredModel = {
    name: shortName(ref),
    reference: formatReference(ref),
    host,
    repository,
    digest,
    size: 0,
    modified: mtime,
    manifestPath: path,
    blobs: [],
  };
  if (ref.tag !== undefined) model.tag = ref.tag;
  if (ref.digest !== undefined) model.pinned = ref.digest;
  try {
    const doc = parseManifest(bytes);
    if (doc.kind === "index") {
      model.invalid =
        "an image index, not a model (haul pull stores one platform; haul serve --upstream keeps the index its clients asked for)";
    } else {
      model.size = [doc.config, ...doc.layers].reduce((a, d) => a + d.size, 0);
      model.blobs = manifestBlobs(doc);
    }
  } catch (e) {
    model.invalid = (e as Error).message;
  }
  return model;
}

/** Unlinks a file unless it was replaced or modified since it was looked at. */
export async function removeIfUnchanged(file: FileInfo): Promise<boolean> {
  const s = await statOrUndefined(file.path);
  if (!s || s.ino !== file.ino || s.mtimeMs !== file.mtimeMs || s.size !== file.size) {
    return false;
  }
  try {
    await unlink(file.path);
    return true;
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return false;
    throw storeError("remove", file.path, e);
  }
}
