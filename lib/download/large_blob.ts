/**
 * A large blob, the driver: wait for another haul pulling the same blob, open
 * (or resume) the partial file, run the Range parts (part_runner.ts) while the
 * ordered hash follows the written prefix, then check the digest and rename. A
 * digest mismatch of the assembled file starts over once, from scratch, or with chunksums
 * checks every chunk from disk and fetches only the bad ones again.
 */
import { rm, stat } from "node:fs/promises";
import {
  HaulError,
  IntegrityError,
  InterruptedError,
  NetworkError,
  storeError,
} from "../errors.ts";
import { createFileHasher } from "../disk/hasher.ts";
import { type BlobLock, waitForLock } from "../disk/lock.ts";
import type { BlobContext, BlobJob } from "./blob_job.ts";
import { RangeLie } from "./attempt.ts";
import {
  BackgroundSync,
  discardPartial,
  finalize,
  loadState,
  openPartial,
  type State,
  statePath,
  StateSaver,
} from "./partial_file.ts";
import { chunkParts, watermark } from "./plan_parts.ts";
import { type LargeRun, runWorker } from "./part_runner.ts";
import { adoptOllamaPartial } from "./ollama_partial.ts";

/** Returns bytes transferred over the network for this blob. */
export async function downloadLarge(job: BlobJob, ctx: BlobContext): Promise<number> {
  const waited = { shown: 0 };
  const lock = await waitForOtherHaul(job, ctx, waited);
  if (lock === "done") {
    if (waited.shown !== job.size) ctx.onBytes(job.size - waited.shown);
    return 0;
  }
  if (waited.shown) ctx.onBytes(-waited.shown);
  try {
    // An interrupted stock `ollama pull` of this blob: continue from what it wrote.
    if (!(await loadState(job))) await adoptOllamaPartial(job, ctx.tuning.partSize).catch(() => {});
    return await downloadStartingOverOnce(job, ctx);
  } finally {
    await lock.release();
  }
}

/**
 * Another haul process pulling the same blob into this store: wait for it
 * (showing its progress in `waited.shown`) instead of writing the same partial
 * file twice. "done" when it finished the blob.
 */
async function waitForOtherHaul(
  job: BlobJob,
  ctx: BlobContext,
  waited: { shown: number },
): Promise<BlobLock | "done"> {
  const lockPath = `${job.partialPath}.lock`;
  return await waitForLock(
    lockPath,
    () => stat(job.path).then((s) => s.size === job.size, () => false),
    {
      signal: ctx.signal,
      tick: async () => {
        const st = await loadState(job);
        const done = st ? st.parts.reduce((a, p) => a + p.done, 0) : waited.shown;
        if (done !== waited.shown) ctx.onBytes(done - waited.shown);
        waited.shown = done;
      },
    },
  ).catch((e) => {
    if (e instanceof HaulError) throw e;
    throw storeError("lock", lockPath, e);
  });
}

/** The whole-blob digest failed where chunksums can tell which chunks are bad. */
class ChunksToCheck extends IntegrityError {}

/**
 * Digest mismatch of the assembled file: once more, from scratch, or (with chunksums) with
 * every chunk checked from disk and only the bad ones fetched again.
 */
async function downloadStartingOverOnce(job: BlobJob, ctx: BlobContext): Promise<number> {
  let transferred = 0;
  let credited = 0;
  const inner: BlobContext = {
    ...ctx,
    onBytes: (n) => {
      credited += n;
      ctx.onBytes(n);
    },
  };
  for (let round = 0;; round++) {
    try {
      await downloadLargeOnce(job, inner, (n) => transferred += n);
      return transferred;
    } catch (err) {
      if (err instanceof IntegrityError && !(err instanceof RangeLie) && round === 0) {
        if (!(err instanceof ChunksToCheck)) await discardPartial(job);
        ctx.onBytes(-credited);
        credited = 0;
        continue;
      }
      throw err;
    }
  }
}

async function downloadLargeOnce(
  job: BlobJob,
  ctx: BlobContext,
  count: (n: number) => void,
): Promise<number> {
  const state = await openPartial(job, ctx.tuning.partSize);
  const already = state.parts.reduce((a, p) => a + p.done, 0);
  if (already) ctx.onBytes(already);
  for (const p of state.parts) if (p.done) ctx.onWritten?.(p.offset, p.done);
  const run = startRun(job, ctx, state, count);
  const onOuterAbort = () => run.blobAbort.abort(new InterruptedError());
  ctx.signal?.addEventListener("abort", onOuterAbort, { once: true });
  if (ctx.signal?.aborted) onOuterAbort();
  run.hasher.advance(watermark(state.parts));
  try {
    const n = Math.max(1, Math.min(run.queue.length, 64));
    await Promise.all(Array.from({ length: n }, () => runWorker(run)));
    await run.saver.save(true);
    if (run.firstError) throw run.firstError;
    await finishLarge(run);
    return run.transferred;
  } catch (err) {
    run.hasher.close();
    await run.saver.settled();
    throw err;
  } finally {
    ctx.writer.close(job.partialPath);
    ctx.signal?.removeEventListener("abort", onOuterAbort);
  }
}

/** What the parts share for one run over the blob; the queue holds the unfinished parts. */
function startRun(
  job: BlobJob,
  ctx: BlobContext,
  state: State,
  count: (n: number) => void,
): LargeRun {
  return {
    job,
    ctx,
    state,
    // Unfinished parts, and finished chunks not yet checked (after a whole-digest mismatch).
    queue: state.parts.filter((p) => p.done < p.size || (p.digest && !p.verified)),
    hasher: createFileHasher(job.partialPath, { inline: !ctx.tuning.hashWorker }),
    blobAbort: new AbortController(),
    attempts: new Set(),
    saver: new StateSaver(job, state),
    sync: new BackgroundSync(job.partialPath, ctx.tuning.syncEvery),
    sequential: false,
    transferred: 0,
    count,
    firstError: undefined,
  };
}

/** Every part is on disk: check the whole-blob digest, sync, rename into place. */
async function finishLarge(run: LargeRun): Promise<void> {
  const { job, ctx, state, hasher } = run;
  if (ctx.signal?.aborted) throw new InterruptedError();
  if (state.parts.some((p) => p.done < p.size)) {
    throw new NetworkError(`Blob ${job.digest} is incomplete`);
  }
  let result: { digest: string; bytes: number };
  try {
    result = await hasher.finish(job.size);
  } catch (e) {
    throw storeError("read back", job.partialPath, e);
  }
  if (result.digest !== job.digest) {
    ctx.onDiscarded?.();
    const message =
      `Digest mismatch for ${job.digest}: the downloaded data hashes to ${result.digest}`;
    if (job.chunks?.length) {
      // With chunksums the partial file is kept: each chunk is checked from disk on the
      // next round and only the bad ones are fetched again.
      state.parts = chunkParts(job);
      await run.saver.save(true);
      throw new ChunksToCheck(message);
    }
    await discardPartial(job);
    throw new IntegrityError(message);
  }
  await run.sync.settled();
  await finalize(job.partialPath, job.path);
  await rm(statePath(job), { force: true });
}
