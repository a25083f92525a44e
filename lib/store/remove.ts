/**
 * Removing models from an Ollama store: their manifests, then the blobs no other manifest
 * uses (guarded against a running pull: see lib/store/scan.ts).
 */
import { rmdir, unlink } from "node:fs/promises";
import { dirname, sep } from "node:path";
import { NotFoundError, storeError } from "../errors.ts";
import { parseReference, shortName } from "../registry/reference.ts";
import {
  checkMinAge,
  digestsIn,
  openStore,
  readModel,
  removeIfUnchanged,
  scanBlobs,
  scanManifests,
  type StoredModel,
  type StoreOpsOptions,
  transferActivity,
} from "./scan.ts";

/** Options for {@link removeModels}. */
export interface RemoveOptions extends StoreOpsOptions {
  /**
   * Remove unused blobs even when a transfer looks active (see lib/store/scan.ts).
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

  // Blobs are listed before the manifests are read (see lib/store/scan.ts).
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
