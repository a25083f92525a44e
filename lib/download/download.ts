/**
 * Blob-level download API (the shape of Ollama's transfer package): fetch a set
 * of content-addressed blobs of one repository into a directory, in parallel,
 * verified, skipping blobs already present.
 */
import { basename, join } from "node:path";
import { checkDigest, digestToFileName, sha256Digest } from "../digest.ts";
import { HaulError, InterruptedError, storeError } from "../errors.ts";
import { MAX_BLOB_SIZE } from "../registry/manifest.ts";
import { type Chunksum, fetchChunksums } from "../registry/chunksums.ts";
import { acquireBlockWriter, type BlockWriter } from "../disk/block_writer.ts";
import { syncDir } from "../disk/fsio.ts";
import { BufferPool, Semaphore } from "../transport/pool.ts";
import { RateLimiter } from "../transport/rate_limit.ts";
import { PartRamp, rampStart } from "./ramp.ts";
import type { OnProgress } from "../progress_events.ts";
import {
  type BlobContext,
  downloadBlob,
  type RangeTuning,
  SpeedTracker,
} from "./range_download.ts";
import { DEFAULT_RETRY } from "../transport/retry.ts";
import { type ConnectionOptions, createSession, type Session } from "../registry/session.ts";
import { mkdir, readdir, readFile, rm, stat } from "node:fs/promises";

import type { Blob } from "../registry/manifest.ts";
export type { Blob };

/** Tuning shared by pull and download; every field has a measured default. */
export interface TransferTuning {
  /**
   * Simultaneous HTTP transfers (blobs and parts together). Range parts of large
   * blobs start at half of it and get all of it only when more connections prove
   * faster (see lib/ramp.ts and {@link TransferTuning.rampUp}). @default 24
   */
  concurrency?: number;
  /**
   * Start Range parts at half of `concurrency` and open the rest only when a probe
   * shows more connections bring more throughput (per-connection caps); false
   * runs `concurrency` parts from the start. @default true
   */
  rampUp?: boolean;
  /** Range part size in bytes. @default 16 MiB */
  partSize?: number;
  /** Blobs up to this size are fetched as one stream. @default 16 MiB */
  singleStreamMax?: number;
  /** Write batch size per stream in bytes. @default 1 MiB */
  bufferSize?: number;
  /** Seconds without a byte before a part is re-fetched. @default 30 */
  stallTimeout?: number;
  /** Stall re-fetches allowed per part. @default 10 */
  maxStalls?: number;
  /** Hash in a Worker when the runtime has one. @default true */
  hashWorker?: boolean;
  /** Background fsync interval in bytes for large blobs (0: only before the rename). @default 256 MiB */
  syncEvery?: number;
  /** Cap on bytes per second across every stream (like curl's --limit-rate). @default unlimited */
  limitRate?: number;
  /**
   * Ask the registry for chunksums of large blobs, to repair a digest mismatch chunk by chunk.
   * @default true
   */
  chunksums?: boolean;
}

export const DEFAULT_TUNING = {
  concurrency: 24,
  partSize: 16 << 20,
  singleStreamMax: 16 << 20,
  bufferSize: 1 << 20,
  stallTimeout: 30,
  maxStalls: 10,
  hashWorker: true,
  syncEvery: 256 << 20,
} as const;

/** Bytes of a large blob written to its partial file, before the blob is verified. */
export interface WrittenRange {
  digest: string;
  /** The partial file the bytes are in (renamed to the blob's final name once verified). */
  path: string;
  offset: number;
  length: number;
}

/**
 * Follows a large blob's bytes as they land, so that a reader (`haul serve --upstream`) can serve
 * them before the blob is verified. Small blobs (up to `singleStreamMax`) report nothing: they
 * are in place, verified, when their download resolves.
 */
export interface WrittenHooks {
  /** Bytes written to `path`, including those a resumed download finds there. */
  onWritten?: (range: WrittenRange) => void;
  /**
   * Bytes reported for `digest` may be wrong or gone (a chunk failed its chunksum, or the whole
   * digest did not match and the blob starts over): whoever served them must stop; later
   * `onWritten` calls report the bytes written again.
   */
  onDiscarded?: (digest: string) => void;
}

export interface DownloadOptions extends ConnectionOptions, TransferTuning, WrittenHooks {
  blobs: Blob[];
  /** Registry base URL, e.g. `https://registry.ollama.ai`. */
  baseUrl: string;
  /** Repository the blobs belong to, e.g. `library/llama3.2`. */
  repository: string;
  /** Directory the blobs land in as `sha256-<hex>` (Ollama's `blobs/`). */
  destDir: string;
  /**
   * A blob's file name inside `destDir` (a plain name, no separator); partial and temp
   * files add suffixes to it. @default `sha256-<hex>` (Ollama's); an OCI layout uses `<hex>`
   */
  fileName?: (digest: string) => string;
  /**
   * Directory for partial downloads, their resume state, locks and temp files (same
   * filesystem as `destDir`, so the final rename is atomic). A pull into Ollama's store uses
   * `<models>/.haul/partial/`, out of reach of Ollama's startup prune, which deletes every
   * file in `blobs/` not named `sha256-<hex>` (server/images.go, PruneLayers).
   * @default destDir
   */
  partialDir?: string;
  /** Aggregate progress: bytes present or transferred, and the total. */
  onProgress?: (completed: number, total: number) => void;
  /** Per-blob events (for renderers). */
  onEvent?: OnProgress;
  signal?: AbortSignal;
  /** Reuse an existing session (internal: pull shares one per registry). */
  session?: Session;
  /** Internal: a connection pool and rate limit shared with other downloads of one pull. */
  shared?: SharedTransfer;
}

/** A connection pool, Range-part ramp and rate limit shared by the downloads of one pull. */
export interface SharedTransfer {
  slots: Semaphore;
  /** Connections for small blobs (one GET each), apart from `slots`. */
  smallSlots: Semaphore;
  parts: PartRamp;
  buffers: BufferPool;
  limiter?: RateLimiter;
}

/**
 * Small blobs at once when `concurrency` is not given. A small blob costs a round trip and
 * little else, so with a registry far away the round trips are the time: the P8 bench (many
 * 64 KiB blobs, 50 ms away) is bound by blobs in flight, not bytes. An explicit `concurrency`
 * caps small blobs too.
 */
export const SMALL_BLOB_CONCURRENCY = 64;

/** The shared state for a transfer with `options`' tuning. */
export function sharedTransfer(options: TransferTuning): SharedTransfer {
  const concurrency = options.concurrency ?? DEFAULT_TUNING.concurrency;
  const start = options.rampUp === false ? concurrency : rampStart(concurrency);
  return {
    slots: new Semaphore(concurrency),
    smallSlots: new Semaphore(options.concurrency ?? SMALL_BLOB_CONCURRENCY),
    parts: new PartRamp(new Semaphore(start), start, concurrency),
    buffers: new BufferPool(options.bufferSize ?? DEFAULT_TUNING.bufferSize),
    limiter: options.limitRate ? new RateLimiter(options.limitRate) : undefined,
  };
}

export interface DownloadResult {
  /** Bytes received over the network. */
  transferred: number;
  /** Blobs that were already present. */
  skipped: number;
  /** Blobs fetched. */
  fetched: number;
}

function tuningFrom(o: TransferTuning & ConnectionOptions): RangeTuning & { concurrency: number } {
  const t = {
    ...DEFAULT_TUNING,
    ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)),
  };
  const positive = (name: string, v: number, min = 1) => {
    if (!Number.isFinite(v) || v < min) {
      throw new RangeError(`${name} must be at least ${min}, got ${v}`);
    }
  };
  positive("concurrency", t.concurrency);
  positive("partSize", t.partSize, 1 << 16);
  positive("bufferSize", t.bufferSize, 1 << 12);
  positive("stallTimeout", t.stallTimeout, 0.05);
  return {
    concurrency: Math.floor(t.concurrency),
    partSize: Math.floor(t.partSize),
    singleStreamMax: Math.floor(t.singleStreamMax),
    bufferSize: Math.floor(t.bufferSize),
    stallTimeoutMs: t.stallTimeout * 1000,
    maxStalls: t.maxStalls,
    hashWorker: t.hashWorker,
    syncEvery: Math.max(0, Math.floor(t.syncEvery)),
    retry: { ...DEFAULT_RETRY, ...o.retry },
  };
}

/** Downloads `blobs` into `destDir`; resolves when every blob is verified in place. */
export async function download(options: DownloadOptions): Promise<DownloadResult> {
  const tuning = tuningFrom(options);
  checkBlobs(options.blobs);
  const session = options.session ??
    createSession(options.baseUrl, [`repository:${options.repository}:pull`], options);
  await mkdir(options.destDir, { recursive: true }).catch((e) => {
    throw storeError("create directory", options.destDir, e);
  });
  const partialDir = options.partialDir ?? options.destDir;
  if (partialDir !== options.destDir) {
    await mkdir(partialDir, { recursive: true }).catch((e) => {
      throw storeError("create directory", partialDir, e);
    });
  }
  // Its names also stand in for a failing stat per blob not there (40 ms of CPU per 1000).
  const listed = await removeDeadTempFiles(options.destDir);
  if (partialDir !== options.destDir) await removeDeadTempFiles(partialDir);
  const seen = new Set<string>();
  const blobs = options.blobs.filter((b) => !seen.has(b.digest) && seen.add(b.digest));
  const run = startDownload(options, tuning, session, blobs);
  run.listed = listed;
  const onOuter = () => run.abort.abort(new InterruptedError());
  options.signal?.addEventListener("abort", onOuter, { once: true });
  if (options.signal?.aborted) onOuter();

  let firstError: unknown;
  try {
    await Promise.all(blobs.map((b) =>
      downloadOne(run, b).catch((err) => {
        if (firstError === undefined) {
          firstError = err;
          run.abort.abort(err);
        }
      })
    ));
    // Small blobs were renamed without a directory fsync each: one for all of them.
    if (run.result.fetched) await syncDir(options.destDir);
  } finally {
    if (!options.shared) run.shared.parts.stop();
    run.writer.release();
    options.signal?.removeEventListener("abort", onOuter);
  }
  if (firstError !== undefined) {
    if (options.signal?.aborted && !(firstError instanceof HaulError)) throw new InterruptedError();
    throw firstError;
  }
  return run.result;
}

/** Every digest well-formed and every size within bounds, before anything is fetched. */
function checkBlobs(blobs: Blob[]): void {
  for (const b of blobs) {
    checkDigest(b.digest, "blob digest");
    if (!Number.isSafeInteger(b.size) || b.size < 0 || b.size > MAX_BLOB_SIZE) {
      throw new RangeError(`Blob ${b.digest} has an invalid size ${b.size}`);
    }
  }
}

/** What the blobs of one download() share. */
interface DownloadRun {
  options: DownloadOptions;
  tuning: RangeTuning;
  session: Session;
  shared: SharedTransfer;
  writer: BlockWriter & { release(): void };
  speeds: SpeedTracker;
  /** Aborted by the caller's signal or the first blob that fails. */
  abort: AbortController;
  emit: OnProgress;
  result: DownloadResult;
  /** Bytes present or transferred, of `total`. */
  completed: number;
  total: number;
  /** The names in `destDir` when the download started (undefined: not listed). */
  listed?: Set<string>;
}

function startDownload(
  options: DownloadOptions,
  tuning: RangeTuning,
  session: Session,
  blobs: Blob[],
): DownloadRun {
  const shared = options.shared ?? sharedTransfer(options);
  return {
    options,
    tuning,
    session,
    shared,
    writer: acquireBlockWriter({ worker: tuning.hashWorker }),
    speeds: new SpeedTracker(),
    abort: new AbortController(),
    emit: options.onEvent ?? (() => {}),
    result: { transferred: 0, skipped: 0, fetched: 0 },
    completed: 0,
    total: blobs.reduce((a, b) => a + b.size, 0),
  };
}

function reportProgress(run: DownloadRun): void {
  run.options.onProgress?.(run.completed, run.total);
}

/** One blob: skipped when present, else located and downloaded. */
async function downloadOne(run: DownloadRun, b: Blob): Promise<void> {
  const { emit } = run;
  const path = blobPath(run.options, b.digest);
  if ((!run.listed || run.listed.has(basename(path))) && await isPresent(path, b, run.tuning)) {
    run.completed += b.size;
    run.result.skipped++;
    emit({ type: "blob-start", op: "pull", digest: b.digest, total: b.size, completed: b.size });
    emit({ type: "blob-done", op: "pull", digest: b.digest, total: b.size, skipped: true });
    reportProgress(run);
    return;
  }
  emit({ type: "blob-start", op: "pull", digest: b.digest, total: b.size, completed: 0 });
  const { url, chunks } = await locateBlob(run, b);
  const n = await downloadBlob(
    {
      digest: b.digest,
      size: b.size,
      url,
      path,
      partialPath: partialPathOf(run.options, path),
      chunks,
      relocate: url === run.session.client.blobUrl(run.options.repository, b.digest)
        ? undefined
        : async () =>
          (await run.session.client.resolveBlob(run.options.repository, b.digest, {
            signal: run.abort.signal,
          })).url,
    },
    blobContext(run, b, partialPathOf(run.options, path)),
  );
  run.result.transferred += n;
  run.result.fetched++;
  emit({ type: "blob-done", op: "pull", digest: b.digest, total: b.size, skipped: false });
}

/** Where `path`'s download is written until verified: `<partialDir>/<name>-partial`. */
function partialPathOf(options: DownloadOptions, path: string): string {
  return options.partialDir
    ? join(options.partialDir, `${basename(path)}-partial`)
    : `${path}-partial`;
}

/** The blob's path in `destDir`, from `fileName` (checked to be a plain file name). */
function blobPath(options: DownloadOptions, digest: string): string {
  const name = (options.fileName ?? digestToFileName)(digest);
  if (!name || name === "." || name === ".." || /[\\/\0]/.test(name)) {
    throw new RangeError(
      `fileName gave ${JSON.stringify(name)} for ${digest}: not a file name`,
    );
  }
  return join(options.destDir, name);
}

/**
 * Present with the right size: trusted, as Ollama does (haul renames a blob into
 * place only after verifying it; `haul verify` re-hashes). Small blobs (configs,
 * templates) are cheap to re-hash, so those are checked on every pull.
 */
async function isPresent(path: string, b: Blob, tuning: RangeTuning): Promise<boolean> {
  const present = await stat(path).then((s) => s.isFile() && s.size === b.size, () => false);
  if (present && b.size <= tuning.singleStreamMax) {
    return await readFile(path).then((d) => sha256Digest(d) === b.digest, () => false);
  }
  return present;
}

/** Where to GET the blob from, and its chunksums when the registry offers them. */
async function locateBlob(
  run: DownloadRun,
  b: Blob,
): Promise<{ url: string; chunks: Chunksum[] | undefined }> {
  const { options, session, abort } = run;
  const url = session.client.blobUrl(options.repository, b.digest);
  if (b.size <= run.tuning.singleStreamMax) return { url, chunks: undefined };
  // A registry offering chunksums (Ollama's, `haul serve`) lets a digest mismatch be
  // repaired chunk by chunk; without them it starts over.
  const offered = options.chunksums === false ? undefined : await fetchChunksums(
    session.client,
    { repository: options.repository, digest: b.digest, size: b.size },
    { signal: abort.signal },
  ).catch((err) => {
    if (abort.signal.aborted) throw err;
    return undefined;
  });
  if (offered) return { url: offered.url, chunks: offered.chunks };
  // Resolve once: parts then go straight to the final (CDN) URL.
  const signal = abort.signal;
  const resolved = await session.client.resolveBlob(options.repository, b.digest, { signal });
  return { url: resolved.url, chunks: undefined };
}

/** The shared machinery for one blob, with its progress reported as events. */
function blobContext(run: DownloadRun, b: Blob, partialPath: string): BlobContext {
  const { shared, emit } = run;
  const { onWritten, onDiscarded } = run.options;
  let blobDone = 0;
  return {
    fetch: run.session.fetch,
    writer: run.writer,
    limiter: shared.limiter,
    tuning: run.tuning,
    slots: shared.slots,
    smallSlots: shared.smallSlots,
    parts: shared.parts,
    buffers: shared.buffers,
    speeds: run.speeds,
    signal: run.abort.signal,
    onBytes: (d) => {
      blobDone += d;
      run.completed += d;
      emit({
        type: "blob-progress",
        op: "pull",
        digest: b.digest,
        total: b.size,
        completed: blobDone,
      });
      reportProgress(run);
    },
    onRetry: (info) => emit({ type: "retry", digest: b.digest, ...info }),
    onWritten: onWritten &&
      ((offset, length) => onWritten({ digest: b.digest, path: partialPath, offset, length })),
    onDiscarded: onDiscarded && (() => onDiscarded(b.digest)),
  };
}

/**
 * Small blobs download to `sha256-<hex>-partial.<pid>-<rand>.tmp` and resume state is
 * replaced through `…-partial.json.<pid>.tmp`; a process killed with -9 can leave
 * either behind. Remove those whose process is gone. Returns the names `dir` held.
 */
async function removeDeadTempFiles(dir: string): Promise<Set<string> | undefined> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return undefined;
  }
  for (const name of names) {
    // Small-blob temp files (`-partial.<pid>-<hex>.tmp`; `-partial-<pid>-<hex>` from older
    // haul, which stock Ollama chokes on) and resume-state temp files
    // (`-partial.json.<pid>.tmp`).
    const m =
      /^sha256-[0-9a-f]{64}-partial(?:-(\d+)-[0-9a-f]{8}|\.(\d+)-[0-9a-f]{8}\.tmp|\.json\.(\d+)\.tmp)$/
        .exec(name);
    const pid = Number(m?.[1] ?? m?.[2] ?? m?.[3]);
    if (!m || pid === process.pid) continue;
    try {
      process.kill(pid, 0);
      continue; // alive: another haul is writing it
    } catch (e) {
      if ((e as { code?: string }).code === "EPERM") continue;
    }
    await rm(join(dir, name), { force: true }).catch(() => {});
  }
  return new Set(names);
}
