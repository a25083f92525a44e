/**
 * Everyday operations on an Ollama model store: list the models, remove some, prune what no
 * model uses, and verify blobs against their digests.
 *
 * Concurrency with a running pull (haul's or Ollama's): a pull writes blobs first (through
 * `sha256-<hex>-partial…` files and temp files) and the manifest last. So:
 * - a blob no manifest references may belong to a pull whose manifest is not written yet:
 *   it is removed only when it is older than {@link DEFAULT_MIN_AGE} and no transfer looks
 *   active (no partial or temp file modified within that window);
 * - partial downloads and temp files modified within the window are in use, and so are those
 *   whose lock (`-partial.lock`, lib/lock.ts) or temp name carries a live pid;
 * - manifests are read after the blob directory is listed, so a manifest that lands during
 *   the scan is seen; manifest temp files (`<tag>.<pid>.tmp`) count as references too.
 * `force` drops the time-based guards for when no pull can be running.
 *
 * Nothing here writes to the console; the CLI prints the results.
 */
import { createHash } from "node:crypto";
import { type FileHandle, open, readdir, readFile, rmdir, stat, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join, relative, sep } from "node:path";
import process from "node:process";
import { InterruptedError, NotFoundError, storeError } from "../errors.ts";
import { type Descriptor, manifestBlobs, parseManifest } from "../registry/manifest.ts";
import {
  formatReference,
  parseReference,
  type Reference,
  shortName,
} from "../registry/reference.ts";
import { defaultModelsDir, OllamaStore } from "./ollama.ts";

/** Files modified more recently than this are taken to belong to a running transfer (10 min). */
export const DEFAULT_MIN_AGE = 10 * 60 * 1000;

/** Read size when hashing a blob. */
const READ_SIZE = 8 << 20;
/** Files under `manifests/` larger than this are not manifests and are not scanned. */
const MAX_SCANNED_FILE = 16 << 20;
const MAX_DEPTH = 32;

const BLOB_RE = /^sha256-([0-9a-f]{64})$/;
// `-partial`, `-partial.json`, `-partial.json.<pid>.tmp`, `-partial-<pid>-<rand>` (haul);
// `-partial-<n>` part state files (Ollama).
const PARTIAL_RE = /^sha256-([0-9a-f]{64})-partial(?:[-.].*)?$/;
const TEMP_RE = /\.tmp$/;
// What a manifest being written looks like: `<tag>.<pid>.tmp` (lib/store_ollama.ts).
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

/** Options for {@link listModels}. */
export type ListOptions = StoreOpsOptions;

/**
 * Every model in the store, newest first (as `ollama list`). Walks
 * `manifests/<host>/<repository…>/<tag>`; repositories may have any number of components.
 * A manifest that cannot be parsed is listed with {@link StoredModel.invalid} set.
 *
 * @throws {StoreError} when the store cannot be read.
 */
export async function listModels(options: ListOptions = {}): Promise<StoredModel[]> {
  const store = openStore(options);
  const scan = await scanManifests(store, options.signal);
  return scan.models.sort((a, b) =>
    b.modified.getTime() - a.modified.getTime() || compare(a.name, b.name)
  );
}

// ------------------------------------------------------------------------------------ rm

/** Options for {@link removeModels}. */
export interface RemoveOptions extends StoreOpsOptions {
  /**
   * Remove unused blobs even when a transfer looks active (see the module notes).
   * @default false
   */
  force?: boolean;
  /**
   * Milliseconds within which a modified partial or temp file means a transfer is active.
   * @default 600000 (10 minutes)
   */
  minAge?: number;
}

/** A blob file removed (or that would be, or was kept). */
export interface BlobFile {
  digest: string;
  path: string;
  /** Apparent file size in bytes. */
  size: number;
}

/** What {@link removeModels} did. */
export interface RemoveResult {
  /** Models whose manifest was removed. */
  models: StoredModel[];
  /** Blobs removed because no remaining manifest uses them. */
  blobsRemoved: BlobFile[];
  /** Unused blobs kept because a transfer is active (run prune later). */
  blobsKept: BlobFile[];
  /** Bytes of the removed blobs. */
  bytesFreed: number;
}

/**
 * Removes each model's manifest (and its empty parent directories), then the blobs no other
 * manifest uses. Every reference is checked before anything is removed.
 *
 * @throws {NotFoundError} when a reference is not in the store (nothing is removed).
 * @throws {UsageError} when a reference is malformed.
 * @throws {StoreError} when a file cannot be removed.
 */
export async function removeModels(
  refs: string[],
  options: RemoveOptions = {},
): Promise<RemoveResult> {
  const store = openStore(options);
  const minAge = checkMinAge(options.minAge);
  if (!refs.length) throw new RangeError("removeModels() needs at least one reference");
  const targets: { model: StoredModel; bytes: Uint8Array }[] = [];
  const seen = new Set<string>();
  for (const input of refs) {
    const ref = parseReference(input);
    const path = store.manifestPath(ref);
    if (seen.has(path)) continue;
    seen.add(path);
    const found = await readModel(store, path, options.signal);
    if (!found) throw new NotFoundError(`Model ${JSON.stringify(input)} is not in ${store.root}`);
    if (ref.digest !== undefined && ref.tag !== undefined && found.model.digest !== ref.digest) {
      throw new NotFoundError(
        `Model ${
          shortName(ref)
        } is in the store with digest ${found.model.digest}, not ${ref.digest}`,
      );
    }
    targets.push(found);
  }

  // Blobs are listed before the manifests are read (see the module notes).
  const blobs = await scanBlobs(store, options.signal);
  for (const { model } of targets) {
    await unlink(model.manifestPath).catch((e) => {
      if ((e as { code?: string }).code !== "ENOENT") {
        throw storeError("remove", model.manifestPath, e);
      }
    });
    await removeEmptyParents(dirname(model.manifestPath), store.manifestsDir);
  }
  const { referenced } = await scanManifests(store, options.signal);
  const activity = transferActivity(blobs, minAge);
  const busy = activity.live || (!options.force && activity.recent);
  const result: RemoveResult = {
    models: targets.map((t) => t.model),
    blobsRemoved: [],
    blobsKept: [],
    bytesFreed: 0,
  };
  const candidates = new Set<string>();
  for (const { model, bytes } of targets) {
    for (const d of model.blobs) candidates.add(d.digest);
    // An invalid manifest still names its blobs.
    for (const d of digestsIn(bytes)) candidates.add(d);
  }
  for (const digest of candidates) {
    if (referenced.has(digest)) continue;
    const file = blobs.complete.get(digest);
    if (!file) continue;
    const entry = { digest, path: file.path, size: file.size };
    if (busy) {
      result.blobsKept.push(entry);
      continue;
    }
    if (await removeIfUnchanged(file)) {
      result.blobsRemoved.push(entry);
      result.bytesFreed += file.size;
    }
  }
  return result;
}

// ------------------------------------------------------------------------------------ prune

/** Options for {@link prune}. */
export interface PruneOptions extends StoreOpsOptions {
  /**
   * Report what would be removed and remove nothing.
   * @default false
   */
  dryRun?: boolean;
  /**
   * Remove partial downloads and unused blobs however recently they were modified. Only safe
   * when no pull (haul or Ollama) is running on this store.
   * @default false
   */
  force?: boolean;
  /**
   * Milliseconds within which a modified file is taken to belong to a running transfer.
   * @default 600000 (10 minutes)
   */
  minAge?: number;
}

/** What a pruned file was. */
export type PrunedKind = "blob" | "partial" | "temp";

/** A file prune removed, would remove, or kept. */
export interface PrunedFile {
  kind: PrunedKind;
  path: string;
  /** The blob's digest (blobs and partial downloads). */
  digest?: string;
  /** Apparent file size in bytes. */
  size: number;
  /** Why it was kept (only in {@link PruneResult.kept}). */
  reason?: string;
}

/** What {@link prune} did (or would do with `dryRun`). */
export interface PruneResult {
  dryRun: boolean;
  /** Files removed (or that would be). */
  removed: PrunedFile[];
  /** Candidates kept because a running transfer may be using them. */
  kept: PrunedFile[];
  /** Bytes removed (or that would be). */
  bytesFreed: number;
  /** True when a partial or temp file was modified within `minAge` (a transfer looks active). */
  transferActive: boolean;
}

/**
 * Removes blobs no manifest references, stale partial downloads (`sha256-<hex>-partial`,
 * `-partial.json`, `-partial-<pid>-<rand>`, Ollama's `-partial-<n>`) and stale `.tmp` files,
 * then empty directories under `manifests/`. Files it does not recognise are left alone.
 *
 * Without `force`: partial and temp files modified within `minAge` are in use; an unused
 * blob is kept when it is younger than `minAge` or when any transfer looks active, because a
 * pull writes its manifest only after all of its blobs. Even with `force`, a download whose
 * `-partial.lock` or temp file name (`…-partial-<pid>-<hex>`, `….<pid>.tmp`) names a running
 * process on this host is kept, and so is every unused blob while one exists.
 *
 * @throws {StoreError} when the store cannot be read or a file cannot be removed.
 */
export async function prune(options: PruneOptions = {}): Promise<PruneResult> {
  const store = openStore(options);
  const minAge = checkMinAge(options.minAge);
  const force = options.force ?? false;
  const dryRun = options.dryRun ?? false;
  const blobs = await scanBlobs(store, options.signal);
  const manifests = await scanManifests(store, options.signal);
  const activity = transferActivity(blobs, minAge, manifests.temps);
  const active = activity.live || (!force && activity.recent);
  const result: PruneResult = {
    dryRun,
    removed: [],
    kept: [],
    bytesFreed: 0,
    transferActive: activity.live || activity.recent,
  };
  const now = Date.now();
  const fresh = (f: FileInfo) => now - f.mtimeMs < minAge;
  /** Why a partial or temp file is in use, or undefined when it may go. */
  const inUse = (files: FileInfo[]): string | undefined => {
    const owner = files.find((f) => f.owner !== undefined && alive(f.owner))?.owner;
    if (owner !== undefined) return `in use by running process ${owner}`;
    if (!force && files.some(fresh)) return "in use: modified recently";
    return undefined;
  };

  const candidates: { file: FileInfo; entry: PrunedFile }[] = [];
  for (const [digest, file] of blobs.complete) {
    if (manifests.referenced.has(digest)) continue;
    const entry: PrunedFile = { kind: "blob", path: file.path, digest, size: file.size };
    if (!force && fresh(file)) {
      result.kept.push({
        ...entry,
        reason: "modified recently: a pull may not have written its manifest yet",
      });
    } else if (active) {
      result.kept.push({ ...entry, reason: "a transfer is in progress: its manifest may use it" });
    } else {
      candidates.push({ file, entry });
    }
  }
  for (const [digest, files] of blobs.partials) {
    // A partial download is one unit: its data, state, lock and temp files go together.
    const why = inUse(files);
    for (const file of files) {
      const entry: PrunedFile = { kind: "partial", path: file.path, digest, size: file.size };
      if (why) result.kept.push({ ...entry, reason: why });
      else candidates.push({ file, entry });
    }
  }
  for (const file of [...blobs.temps, ...manifests.temps]) {
    const entry: PrunedFile = { kind: "temp", path: file.path, size: file.size };
    const why = inUse([file]);
    if (why) result.kept.push({ ...entry, reason: why });
    else candidates.push({ file, entry });
  }

  for (const { file, entry } of candidates) {
    options.signal?.throwIfAborted();
    if (dryRun || await removeIfUnchanged(file)) {
      result.removed.push(entry);
      result.bytesFreed += entry.size;
    }
  }
  if (!dryRun) {
    await removeEmptyDirs(store.manifestsDir, store.manifestsDir, force ? 0 : minAge);
  }
  return result;
}

// ------------------------------------------------------------------------------------ verify

/** Progress of {@link verify}, reported after each read. */
export interface VerifyProgress {
  blobsDone: number;
  blobsTotal: number;
  bytesDone: number;
  bytesTotal: number;
}

/** Options for {@link verify}. */
export interface VerifyOptions extends StoreOpsOptions {
  /**
   * Remove damaged blobs (wrong size or content) so that the next `pull` fetches them again:
   * a pull trusts a blob file of the right size.
   * @default false
   */
  fix?: boolean;
  /**
   * Blobs hashed at the same time.
   * @default 2
   */
  concurrency?: number;
  /** Called as bytes are hashed. */
  onProgress?: (progress: VerifyProgress) => void;
}

/** What is wrong with a blob. */
export type BlobProblemKind = "missing" | "size" | "digest";

/** A damaged or missing blob. */
export interface BlobProblem {
  digest: string;
  path: string;
  problem: BlobProblemKind;
  /** Human-readable description: "missing", "size 10 bytes, expected 12", … */
  detail: string;
  expectedSize: number;
  actualSize?: number;
  actualDigest?: string;
  /** Names of the models that use the blob. */
  models: string[];
  /** True when `fix` removed the file. */
  removed: boolean;
}

/** A manifest that cannot be used. */
export interface ManifestProblem {
  name: string;
  path: string;
  detail: string;
}

/** What {@link verify} found. */
export interface VerifyResult {
  /** Models checked. */
  models: StoredModel[];
  /** Distinct blobs checked. */
  blobs: number;
  /** Bytes hashed. */
  bytes: number;
  problems: BlobProblem[];
  manifestProblems: ManifestProblem[];
  /** True when nothing is wrong. */
  ok: boolean;
}

/**
 * Re-hashes every blob of the given models (default: every model in the store), each blob
 * once however many models share it, and reports missing blobs, wrong sizes and wrong
 * content. Damage is reported, not thrown: the result says what is wrong.
 *
 * @throws {NotFoundError} when a reference is not in the store.
 * @throws {UsageError} when a reference is malformed.
 * @throws {InterruptedError} when `signal` aborts.
 */
export async function verify(
  refs: string[] = [],
  options: VerifyOptions = {},
): Promise<VerifyResult> {
  const store = openStore(options);
  const concurrency = options.concurrency ?? 2;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    throw new RangeError(`concurrency must be a positive integer, got ${concurrency}`);
  }
  let models: StoredModel[];
  if (refs.length) {
    models = [];
    const seen = new Set<string>();
    for (const input of refs) {
      const path = store.manifestPath(parseReference(input));
      if (seen.has(path)) continue;
      seen.add(path);
      const found = await readModel(store, path, options.signal);
      if (!found) throw new NotFoundError(`Model ${JSON.stringify(input)} is not in ${store.root}`);
      models.push(found.model);
    }
  } else {
    models = await listModels(options);
  }

  const manifestProblems: ManifestProblem[] = [];
  const wanted = new Map<string, { size: number; models: string[] }>();
  for (const m of models) {
    if (m.invalid !== undefined) {
      manifestProblems.push({ name: m.name, path: m.manifestPath, detail: m.invalid });
      continue;
    }
    if (m.pinned !== undefined && m.pinned !== m.digest) {
      manifestProblems.push({
        name: m.name,
        path: m.manifestPath,
        detail: `manifest content hashes to ${m.digest}, not the pinned ${m.pinned}`,
      });
    }
    for (const b of m.blobs) {
      const w = wanted.get(b.digest);
      if (w) w.models.push(m.name);
      else wanted.set(b.digest, { size: b.size, models: [m.name] });
    }
  }

  const jobs = [...wanted].map(([digest, w]) => ({ digest, ...w, path: store.blobPath(digest) }));
  const progress: VerifyProgress = {
    blobsDone: 0,
    blobsTotal: jobs.length,
    bytesDone: 0,
    bytesTotal: jobs.reduce((a, j) => a + j.size, 0),
  };
  const report = () => options.onProgress?.({ ...progress });
  report();
  const problems: BlobProblem[] = [];
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const job = jobs[next++];
      options.signal?.throwIfAborted();
      const problem = await checkBlob(job, options.signal, (n) => {
        progress.bytesDone += n;
        report();
      });
      if (problem) {
        if (options.fix && problem.problem !== "missing" && problem.file) {
          problem.removed = await removeIfUnchanged(problem.file);
        }
        delete problem.file;
        problems.push(problem);
      }
      progress.blobsDone++;
      report();
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, jobs.length) }, worker));
  } catch (err) {
    if (options.signal?.aborted) throw new InterruptedError(undefined, { cause: err });
    throw err;
  }
  problems.sort((a, b) => compare(a.digest, b.digest));
  return {
    models,
    blobs: jobs.length,
    bytes: progress.bytesDone,
    problems,
    manifestProblems,
    ok: problems.length === 0 && manifestProblems.length === 0,
  };
}

/** SHA-256 of a file as `sha256:<hex>`, read in 8 MiB pieces (the next read overlaps hashing). */
export async function hashFile(
  path: string,
  options: { signal?: AbortSignal; onBytes?: (n: number) => void } = {},
): Promise<{ digest: string; size: number }> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r");
  } catch (e) {
    throw storeError("open", path, e);
  }
  let pending: Promise<{ bytesRead: number }> | undefined;
  try {
    const hash = createHash("sha256");
    const bufs = [new Uint8Array(READ_SIZE), new Uint8Array(READ_SIZE)];
    let which = 0;
    let position = 0;
    pending = fh.read(bufs[0], 0, READ_SIZE, 0);
    for (;;) {
      const { bytesRead } = await pending;
      pending = undefined;
      if (bytesRead === 0) break;
      const current = bufs[which];
      position += bytesRead;
      which ^= 1;
      options.signal?.throwIfAborted();
      pending = fh.read(bufs[which], 0, READ_SIZE, position);
      hash.update(current.subarray(0, bytesRead));
      options.onBytes?.(bytesRead);
    }
    return { digest: `sha256:${hash.digest("hex")}`, size: position };
  } catch (e) {
    if (options.signal?.aborted) throw e;
    throw storeError("read", path, e);
  } finally {
    // Never close the handle under a read in flight.
    await pending?.catch(() => {});
    await fh.close().catch(() => {});
  }
}

// ------------------------------------------------------------------------------------ format

/**
 * How long ago, as `ollama list` shows it: "Less than a second ago", "About a minute ago",
 * "3 minutes ago", "About an hour ago", "5 hours ago", "3 days ago", "2 weeks ago",
 * "4 months ago", "2 years ago"; "… from now" for future times.
 */
export function formatAge(then: Date | number, now: Date | number = Date.now()): string {
  const ms = Number(now) - Number(then);
  return ms < 0 ? `${humanDuration(-ms)} from now` : `${humanDuration(ms)} ago`;
}

function humanDuration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < 1) return "Less than a second";
  if (seconds === 1) return "1 second";
  if (seconds < 60) return `${seconds} seconds`;
  const minutes = Math.floor(seconds / 60);
  if (minutes === 1) return "About a minute";
  if (minutes < 60) return `${minutes} minutes`;
  const hours = Math.round(ms / 3_600_000);
  if (hours === 1) return "About an hour";
  if (hours < 48) return `${hours} hours`;
  if (hours < 24 * 14) return `${Math.floor(hours / 24)} days`;
  if (hours < 24 * 60) return `${Math.floor(hours / 24 / 7)} weeks`;
  if (hours < 24 * 365 * 2) return `${Math.floor(hours / 24 / 30)} months`;
  return `${Math.floor(hours / 24 / 365)} years`;
}

// ------------------------------------------------------------------------------------ internals

interface FileInfo {
  path: string;
  size: number;
  mtimeMs: number;
  ino: number;
  /** Process that owns the file, when its name or content says (same host only). */
  owner?: number;
}

interface BlobScan {
  /** Complete blobs by digest. */
  complete: Map<string, FileInfo>;
  /** Partial-download files by digest. */
  partials: Map<string, FileInfo[]>;
  /** Other `.tmp` files in `blobs/`. */
  temps: FileInfo[];
}

interface ManifestScan {
  models: StoredModel[];
  /** Every digest named in any file under `manifests/` (temp files included). */
  referenced: Set<string>;
  /** Manifest temp files (`<tag>.<pid>.tmp`). */
  temps: FileInfo[];
}

function openStore(options: StoreOpsOptions): OllamaStore {
  options.signal?.throwIfAborted();
  return new OllamaStore(options.modelsDir ?? defaultModelsDir());
}

function checkMinAge(minAge: number | undefined): number {
  const v = minAge ?? DEFAULT_MIN_AGE;
  if (!Number.isFinite(v) || v < 0) {
    throw new RangeError(`minAge must be a non-negative number of milliseconds, got ${v}`);
  }
  return v;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function info(path: string, s: { size: number; mtimeMs: number; ino: number }): FileInfo {
  return { path, size: s.size, mtimeMs: s.mtimeMs, ino: s.ino };
}

async function listDir(dir: string) {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    throw storeError("read directory", dir, e);
  }
}

/** Stat that follows symlinks; undefined when the entry vanished. */
async function statOrUndefined(path: string) {
  try {
    return await stat(path);
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return undefined;
    throw storeError("stat", path, e);
  }
}

async function scanBlobs(store: OllamaStore, signal?: AbortSignal): Promise<BlobScan> {
  const scan: BlobScan = { complete: new Map(), partials: new Map(), temps: [] };
  for (const e of await listDir(store.blobsDir)) {
    signal?.throwIfAborted();
    const path = join(store.blobsDir, e.name);
    const complete = BLOB_RE.exec(e.name);
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
  return scan;
}

/**
 * Signs of a running transfer: `live` when a lock or temp file names a running process,
 * `recent` when a partial or temp file was modified within `minAge`.
 */
function transferActivity(
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

function alive(pid: number): boolean {
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
 * `…-partial-<pid>-<hex>` and `….<pid>.tmp`, and a `-partial.lock` holds `{pid, host}`
 * (lib/lock.ts). Undefined when unknown or on another host.
 */
async function ownerOf(path: string, name: string): Promise<number | undefined> {
  const m = /-partial-(\d+)-[0-9a-f]+$/.exec(name) ?? /\.(\d+)\.tmp$/.exec(name);
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

function digestsIn(bytes: Uint8Array): Set<string> {
  const text = new TextDecoder("latin1").decode(bytes);
  return new Set([...text.matchAll(DIGEST_IN_TEXT_RE)].map((m) => `sha256:${m[1]}`));
}

/** Walks `manifests/`: models at `<host>/<repo…>/<tag>`, and every digest any file names. */
async function scanManifests(store: OllamaStore, signal?: AbortSignal): Promise<ManifestScan> {
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
  return scan;
}

/** Reads one manifest file as a model; undefined when it does not exist. */
async function readModel(
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
      model.invalid = "an image index, not a manifest (haul and Ollama store one platform)";
    } else {
      model.size = [doc.config, ...doc.layers].reduce((a, d) => a + d.size, 0);
      model.blobs = manifestBlobs(doc);
    }
  } catch (e) {
    model.invalid = (e as Error).message;
  }
  return model;
}

interface BlobJob {
  digest: string;
  size: number;
  path: string;
  models: string[];
}

async function checkBlob(
  job: BlobJob,
  signal: AbortSignal | undefined,
  onBytes: (n: number) => void,
): Promise<(BlobProblem & { file?: FileInfo }) | undefined> {
  const base = {
    digest: job.digest,
    path: job.path,
    expectedSize: job.size,
    models: job.models,
    removed: false,
  };
  const s = await statOrUndefined(job.path);
  if (!s || !s.isFile()) return { ...base, problem: "missing", detail: "missing" };
  const file = info(job.path, s);
  if (s.size !== job.size) {
    return {
      ...base,
      problem: "size",
      detail: `size differs: ${s.size} bytes, expected ${job.size}`,
      actualSize: s.size,
      file,
    };
  }
  let got: { digest: string; size: number };
  try {
    got = await hashFile(job.path, { signal, onBytes });
  } catch (e) {
    if ((e as { cause?: { code?: string } }).cause?.code === "ENOENT") {
      return { ...base, problem: "missing", detail: "missing" };
    }
    throw e;
  }
  if (got.size !== job.size) {
    return {
      ...base,
      problem: "size",
      detail: `size differs: ${got.size} bytes, expected ${job.size}`,
      actualSize: got.size,
      file,
    };
  }
  if (got.digest !== job.digest) {
    return {
      ...base,
      problem: "digest",
      detail: `content hash differs: ${got.digest}`,
      actualSize: got.size,
      actualDigest: got.digest,
      file,
    };
  }
  return undefined;
}

/** Unlinks a file unless it was replaced or modified since it was looked at. */
async function removeIfUnchanged(file: FileInfo): Promise<boolean> {
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

/** Removes `dir` and its parents while empty, stopping at `stop` (kept). */
async function removeEmptyParents(dir: string, stop: string): Promise<void> {
  while (dir !== stop && dir.startsWith(stop + sep)) {
    try {
      await rmdir(dir);
    } catch {
      return; // not empty, or gone: either way done
    }
    dir = dirname(dir);
  }
}

/**
 * Removes empty directories below `dir` (depth first); `root` itself is kept, and so is a
 * directory changed within `minAge` (a pull may have just created it for its manifest).
 */
async function removeEmptyDirs(
  dir: string,
  root: string,
  minAge: number,
  depth = 0,
): Promise<boolean> {
  if (depth > MAX_DEPTH) return false;
  let empty = true;
  for (const e of await listDir(dir)) {
    if (e.isDirectory() && await removeEmptyDirs(join(dir, e.name), root, minAge, depth + 1)) {
      continue;
    }
    empty = false;
  }
  if (!empty || dir === root) return false;
  try {
    if (Date.now() - (await stat(dir)).mtimeMs < minAge) return false;
    await rmdir(dir);
    return true;
  } catch {
    return false;
  }
}
