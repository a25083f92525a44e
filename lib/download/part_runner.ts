/**
 * The Range parts of one large blob: workers take parts off a queue; each part
 * waits for a connection, runs attempts until its bytes are on disk (and, with
 * chunksums, verified), is re-fetched at once after a stall (bounded separately)
 * or when far slower than the median (counted from the third time, as in
 * Ollama's transfer code), and retried with backoff after a failure. A 200 to a
 * Range request (distribution's proxy mode) turns the rest of the blob into one
 * sequential stream and stops the other parts.
 */
import { NetworkError } from "../errors.ts";
import type { FileHasher } from "../disk/hasher.ts";
import { backoffDelay, sleep } from "../transport/retry.ts";
import type { BlobContext, BlobJob } from "./blob_job.ts";
import { type AttemptHooks, runAttempt } from "./attempt.ts";
import { checkChunk, ChunkMismatch } from "./chunk_check.ts";
import type { BackgroundSync, State, StateSaver } from "./partial_file.ts";
import { type Part, watermark } from "./plan_parts.ts";
import { classify } from "./retry_verdict.ts";
import { AttemptCut } from "./stall_watch.ts";

/** What the parts of one large blob share while it downloads. */
export interface LargeRun {
  job: BlobJob;
  ctx: BlobContext;
  state: State;
  /** Parts no worker has taken yet. */
  queue: Part[];
  /** The ordered whole-blob hash, fed up to the {@link watermark}. */
  hasher: FileHasher;
  /** Aborted when a part fails for good or the caller's signal fires. */
  blobAbort: AbortController;
  /** Attempts in flight, so that a stream taking over the blob can stop the others. */
  attempts: Set<AbortController>;
  saver: StateSaver;
  sync: BackgroundSync;
  /** Set once a 200 answered a Range request. */
  sequential: boolean;
  /** Bytes received over the network by this run. */
  transferred: number;
  /** Counts received bytes for the caller. */
  count: (n: number) => void;
  /** The failure that stopped the blob. */
  firstError: unknown;
}

/** One part's attempts: the part (replaced when one stream takes over) and its counts. */
interface PartRun {
  part: Part;
  failures: number;
  stalls: number;
  slows: number;
}

/** Takes parts off the queue until it is empty or the blob failed. */
export async function runWorker(run: LargeRun): Promise<void> {
  while (!run.blobAbort.signal.aborted) {
    const part = run.queue.shift();
    if (!part) return;
    try {
      await runPart(run, part);
    } catch (err) {
      run.firstError ??= err;
      run.blobAbort.abort(err);
      return;
    }
  }
}

/** Runs attempts at `part` until it is complete, the blob is aborted, or it fails for good. */
async function runPart(run: LargeRun, part: Part): Promise<void> {
  const pr: PartRun = { part, failures: 0, stalls: 0, slows: 0 };
  const { blobAbort } = run;
  if (part.digest && !part.verified && part.done === part.size) {
    // A finished chunk not yet checked (a resume, or the whole digest failed): check it from
    // disk; a bad one is fetched again below, alone.
    try {
      await checkChunk(run.job, part, undefined);
      run.hasher.advance(watermark(run.state.parts));
      return;
    } catch (err) {
      if (!(err instanceof ChunkMismatch)) throw err;
      run.ctx.onDiscarded?.();
      run.ctx.onBytes(-part.done);
      part.done = 0;
      void run.saver.save(true);
    }
  }
  while (pr.part.done < pr.part.size) {
    if (blobAbort.signal.aborted) return;
    const release = await acquireConnection(run);
    if (!release) return;
    const attempt = new AbortController();
    const onBlobAbort = () => attempt.abort(blobAbort.signal.reason);
    blobAbort.signal.addEventListener("abort", onBlobAbort, { once: true });
    run.attempts.add(attempt);
    try {
      await attemptPart(run, pr, attempt);
    } catch (err) {
      // The connection stays held through the backoff.
      if (!await recoverFromFailure(run, pr, attempt, err)) return;
    } finally {
      run.attempts.delete(attempt);
      blobAbort.signal.removeEventListener("abort", onBlobAbort);
      release();
    }
  }
}

/** A Range-part gate and a connection slot; undefined when the blob was aborted meanwhile. */
async function acquireConnection(run: LargeRun): Promise<(() => void) | undefined> {
  const { ctx, blobAbort } = run;
  const gate = ctx.parts
    ? await ctx.parts.gate.acquire(blobAbort.signal).catch(() => undefined)
    : () => {};
  if (!gate) return undefined;
  const slot = await ctx.slots.acquire(blobAbort.signal).catch(() => undefined);
  if (!slot) {
    gate();
    return undefined;
  }
  return () => {
    slot();
    gate();
  };
}

/** One attempt at the rest of the part: fetch it, record its speed, verify a finished chunk. */
async function attemptPart(run: LargeRun, pr: PartRun, attempt: AbortController): Promise<void> {
  const { job, ctx } = run;
  const part = pr.part;
  const start = part.offset + part.done;
  const t0 = Date.now();
  const before = part.done;
  await runAttempt(
    ctx,
    job,
    start,
    part.offset + part.size,
    job.partialPath,
    undefined,
    (n) => {
      run.transferred += n;
      run.count(n);
      ctx.parts?.count(n);
      ctx.onBytes(n);
    },
    partHooks(run, pr, attempt),
  );
  const current = pr.part; // one stream may have taken over the blob
  const ms = Math.max(1, Date.now() - t0);
  if (current.size >= 1 << 20) ctx.speeds.record((current.done - before) / ms);
  if (current.digest && !current.verified && current.done === current.size) {
    // Taken on the whole-blob digest, which the in-order hash checks anyway: hashing each
    // chunk as well cost a second SHA-256 of every byte (1 GiB from haul serve: 1.94-2.56 s
    // against 1.24-1.42 s). Only when the whole digest fails are the chunks checked, from
    // disk, and the bad ones fetched again (large_blob.ts finishLarge).
    current.verified = true;
    run.hasher.advance(watermark(run.state.parts));
    void run.saver.save();
  }
}

/** What an attempt at a part reports back: flushed bytes, and a 200 taking over. */
function partHooks(run: LargeRun, pr: PartRun, attempt: AbortController): AttemptHooks {
  return {
    signal: attempt.signal,
    onFlushed: (n, offset) => {
      pr.part.done += n;
      run.ctx.onWritten?.(offset, n);
      run.hasher.advance(watermark(run.state.parts));
      run.sync.add(n);
      void run.saver.save(false, n);
    },
    onWholeBody: () => takeOverBlob(run, pr, attempt),
    speeds: run.ctx.speeds,
  };
}

/**
 * 200 to a Range request: the rest of the blob comes in this one stream. The other
 * attempts stop, the parts become "the written prefix" and "the rest", and the
 * queue empties. Returns the offset the stream resumes at.
 */
function takeOverBlob(run: LargeRun, pr: PartRun, attempt: AbortController): number {
  if (!run.sequential) {
    run.sequential = true;
    for (const other of run.attempts) {
      if (other !== attempt) {
        other.abort(new AttemptCut("superseded", "one stream took over"));
      }
    }
    const w = watermark(run.state.parts);
    const rest: Part = { offset: w, size: run.job.size - w, done: 0 };
    run.state.parts = w > 0 ? [{ offset: 0, size: w, done: w }, rest] : [rest];
    run.queue = [];
    pr.part = rest;
  }
  return pr.part.offset + pr.part.done;
}

/**
 * After a failed attempt: counts it, throws when the part is out of retries or
 * stalls, waits out the backoff. Returns false when the part should stop quietly
 * (the blob was aborted, or another stream took the part over).
 */
async function recoverFromFailure(
  run: LargeRun,
  pr: PartRun,
  attempt: AbortController,
  err: unknown,
): Promise<boolean> {
  const { job, ctx, blobAbort } = run;
  const { tuning } = ctx;
  if (blobAbort.signal.aborted) return false;
  if (err instanceof ChunkMismatch) {
    // Only this chunk is fetched again.
    ctx.onDiscarded?.();
    ctx.onBytes(-pr.part.done);
    pr.part.done = 0;
    void run.saver.save(true);
  }
  const reason = attempt.signal.reason;
  if (reason instanceof AttemptCut && reason.kind === "superseded") return false;
  const verdict = classify(err, ctx, pr.failures, pr.stalls);
  if (err instanceof AttemptCut && err.kind === "slow") {
    pr.slows++;
    if (pr.slows >= 3) pr.failures++;
  } else if (verdict.stall) pr.stalls++;
  else pr.failures++;
  if (verdict.fatal) throw verdict.fatal;
  if (pr.failures > tuning.retry.maxRetries) {
    throw verdict.exhausted ??
      new NetworkError(`Blob ${job.digest} failed: ${verdict.reason}`);
  }
  if (pr.stalls > tuning.maxStalls) {
    throw new NetworkError(
      `Blob ${job.digest} stalled ${pr.stalls} times (no data for ${
        tuning.stallTimeoutMs / 1000
      } s); giving up`,
    );
  }
  const delayMs = verdict.stall || (err instanceof AttemptCut)
    ? 0
    : backoffDelay(pr.failures, tuning.retry);
  ctx.onRetry?.({ attempt: pr.failures + pr.stalls + pr.slows, reason: verdict.reason, delayMs });
  await sleep(delayMs, blobAbort.signal).catch(() => {});
  return true;
}
