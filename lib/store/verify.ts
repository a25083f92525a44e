/** Verifying an Ollama store: every blob of the models re-hashed against its digest. */
import { createHash } from "node:crypto";
import { type FileHandle, open } from "node:fs/promises";
import { InterruptedError, NotFoundError, storeError } from "../errors.ts";
import { parseReference } from "../registry/reference.ts";
import { listModels } from "./list.ts";
import type { OllamaStore } from "./ollama.ts";
import {
  compare,
  type FileInfo,
  info,
  openStore,
  readModel,
  removeIfUnchanged,
  statOrUndefined,
  type StoredModel,
  type StoreOpsOptions,
} from "./scan.ts";

/** Read size when hashing a blob. */
const READ_SIZE = 8 << 20;

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
  const models = refs.length
    ? await findModels(store, refs, options.signal)
    : await listModels(options);
  const { jobs, manifestProblems } = planJobs(store, models);
  const { problems, bytes } = await checkBlobs(jobs, concurrency, options);
  return {
    models,
    blobs: jobs.length,
    bytes,
    problems,
    manifestProblems,
    ok: problems.length === 0 && manifestProblems.length === 0,
  };
}

/** The models `refs` name, each once. */
async function findModels(
  store: OllamaStore,
  refs: string[],
  signal?: AbortSignal,
): Promise<StoredModel[]> {
  const models: StoredModel[] = [];
  const seen = new Set<string>();
  for (const input of refs) {
    const path = store.manifestPath(parseReference(input));
    if (seen.has(path)) continue;
    seen.add(path);
    const found = await readModel(store, path, signal);
    if (!found) throw new NotFoundError(`Model ${JSON.stringify(input)} is not in ${store.root}`);
    models.push(found.model);
  }
  return models;
}

/** One job per distinct blob of the usable models; what is wrong with the others. */
function planJobs(
  store: OllamaStore,
  models: StoredModel[],
): { jobs: BlobJob[]; manifestProblems: ManifestProblem[] } {
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
  return { jobs, manifestProblems };
}

/**
 * Hashes the jobs' blobs, `concurrency` at a time, reporting progress; with `fix`, removes
 * damaged ones. Returns the problems by digest and the bytes hashed.
 */
async function checkBlobs(
  jobs: BlobJob[],
  concurrency: number,
  options: VerifyOptions,
): Promise<{ problems: BlobProblem[]; bytes: number }> {
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
  return { problems, bytes: progress.bytesDone };
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
