/**
 * Pruning an Ollama store: blobs no manifest references, stale partial downloads and temp
 * files, and empty directories under `manifests/` (guarded against a running pull: see
 * lib/store/scan.ts).
 */
import { rmdir, stat } from "node:fs/promises";
import { join } from "node:path";
import {
  alive,
  checkMinAge,
  type FileInfo,
  listDir,
  MAX_DEPTH,
  openStore,
  removeIfUnchanged,
  scanBlobs,
  scanManifests,
  type StoreOpsOptions,
  transferActivity,
} from "./scan.ts";

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
 * `-partial.json`, `-partial.<pid>-<rand>.tmp` (`-partial-<pid>-<rand>` before), Ollama's `-partial-<n>`) and stale `.tmp` files,
 * then empty directories under `manifests/`. Files it does not recognise are left alone.
 *
 * Without `force`: partial and temp files modified within `minAge` are in use; an unused
 * blob is kept when it is younger than `minAge` or when any transfer looks active, because a
 * pull writes its manifest only after all of its blobs. Even with `force`, a download whose
 * `-partial.lock` or temp file name (`…-partial.<pid>-<hex>.tmp`, `….<pid>.tmp`) names a running
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
