/**
 * One request: a GET of bytes [start, end) (the whole blob when it is small),
 * checked against the range asked for, streamed into the block writer in
 * `bufferSize` batches, optionally hashed, watched for stalls.
 */
import {
  HaulError,
  IntegrityError,
  InterruptedError,
  isFatalFsError,
  NetworkError,
  redactUrl,
  storeError,
} from "../errors.ts";
import type { Sha256 } from "../digest.ts";
import { errorFromResponse } from "../registry/client.ts";
import type { BlobContext, BlobJob } from "./blob_job.ts";
import type { SpeedTracker } from "./speed_tracker.ts";
import { type AttemptCut, type Watched, watchForStalls } from "./stall_watch.ts";

/** A server answered a Range request in a way that cannot be used. */
export class RangeLie extends IntegrityError {}

export interface AttemptHooks {
  signal?: AbortSignal;
  /** `n` bytes written to the file at `offset` (the part's position). */
  onFlushed?: (n: number, offset: number) => void;
  /** The server sent the whole body for a Range request; returns the offset to resume at. */
  onWholeBody?: () => number;
  /** A failure discards everything (small blobs); else what was written is kept. */
  restartOnError?: boolean;
  speeds?: SpeedTracker;
}

/** One attempt in flight: what its steps share (the stall watch reads the clock fields). */
class Attempt implements Watched {
  lastByte = Date.now();
  headersAt = 0;
  received = 0;
  cut: AttemptCut | undefined = undefined;
  readonly ac = new AbortController();
  /**
   * The body's reader while it is read. Aborting the fetch does not always settle
   * a pending read of a re-wrapped body (Deno; scripts/bench/repro_wrapped_abort.ts):
   * it is cancelled as well.
   */
  reader: { cancel(reason?: unknown): Promise<void> } | undefined = undefined;
  readonly ctx: BlobContext;
  readonly job: BlobJob;
  /** The range asked for, [start, end). */
  readonly start: number;
  readonly end: number;
  readonly path: string;
  readonly hash: Sha256 | undefined;
  readonly hooks: AttemptHooks;
  /** A Range request (anything but the whole of a small blob). */
  readonly ranged: boolean;
  /** Where this attempt's bytes start landing. */
  base: number;
  /** Absolute offset the writer is at. */
  written: number;
  /** Absolute end (exclusive) of what to take from this body. */
  limit: number;
  /** Bytes of a whole-body 200 to drop before `start`. */
  skip = 0;
  /**
   * The write buffer of a BYOB read (taken when the body is read); `filled` bytes of it
   * wait to be written at `written`.
   */
  buf: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  /** Its size: also the batch of chunks that goes to the writer at once. */
  readonly bufSize: number;
  /** Without BYOB: the chunks as read (`filled` bytes), handed to the writer as they are. */
  chunks: Uint8Array[] | undefined = undefined;
  filled = 0;
  flushedAt = Date.now();

  constructor(
    ctx: BlobContext,
    job: BlobJob,
    range: { start: number; end: number },
    path: string,
    hash: Sha256 | undefined,
    hooks: AttemptHooks,
  ) {
    const { start, end } = range;
    this.ctx = ctx;
    this.job = job;
    this.start = start;
    this.end = end;
    this.path = path;
    this.hash = hash;
    this.hooks = hooks;
    this.ranged = start > 0 || end < job.size || job.size > ctx.tuning.singleStreamMax;
    this.base = this.written = start;
    this.limit = end;
    this.bufSize = Math.min(ctx.tuning.bufferSize, Math.max(end - start, 1 << 16));
  }

  takeBuffer(): void {
    const want = this.bufSize;
    this.buf = this.ctx.buffers?.size === want ? this.ctx.buffers.take() : new Uint8Array(want);
  }
}

/**
 * One GET of bytes [start, end) (the whole blob when it is small), streamed into
 * `writer` in `bufferSize` batches, optionally hashed. Returns bytes received.
 */
export async function runAttempt(
  ctx: BlobContext,
  job: BlobJob,
  start: number,
  end: number,
  path: string,
  hash: Sha256 | undefined,
  onBytes: (n: number) => void,
  hooks: AttemptHooks = {},
): Promise<number> {
  const a = new Attempt(ctx, job, { start, end }, path, hash, hooks);
  const outer = hooks.signal ?? ctx.signal;
  const onAbort = () => stopAttempt(a, outer?.reason ?? new InterruptedError());
  outer?.addEventListener("abort", onAbort, { once: true });
  if (outer?.aborted) onAbort();
  const timer = watchForStalls(a, ctx.tuning, hooks.speeds, (cut) => stopAttempt(a, cut));
  try {
    const body = await requestRange(a);
    await receiveBody(a, body, onBytes);
    await flushBuffer(a);
    if (a.written < a.limit) {
      // A stall or slow-part cut cancels the reader, and a cancelled read may end the body
      // as if the server had closed it: the cut is the reason then.
      throw a.cut ?? new NetworkError(
        `Connection closed after ${a.written - a.base} of ${
          a.limit - a.base
        } bytes of ${job.digest}`,
      );
    }
    return a.received;
  } catch (err) {
    await keepWhatArrived(a, err, onBytes);
    throw err;
  } finally {
    clearInterval(timer);
    outer?.removeEventListener("abort", onAbort);
    ctx.buffers?.give(a.buf);
  }
}

function stopAttempt(a: Attempt, reason: unknown): void {
  a.ac.abort(reason);
  a.reader?.cancel(reason).catch(() => {});
}

/** Sends the GET and checks the answer against what was asked; returns the body. */
async function requestRange(a: Attempt): Promise<ReadableStream<Uint8Array>> {
  const { job, start, end } = a;
  const headers = new Headers();
  if (a.ranged) headers.set("range", `bytes=${start}-${end - 1}`);
  let res: Response;
  for (let moved = 0;; moved++) {
    const url = job.url;
    try {
      res = await a.ctx.fetch(new Request(url, { headers, signal: a.ac.signal }));
    } catch (err) {
      throw a.cut ?? err;
    }
    if (!job.relocate || !expiredUrl(res) || moved >= MAX_RELOCATIONS) break;
    // The object store refused its presigned URL (expired): ask the registry where the
    // bytes are now and ask again from the same offset; parts already done stay done.
    await res.body?.cancel().catch(() => {});
    await relocate(job, url);
  }
  a.lastByte = a.headersAt = Date.now();
  if (res.status === 206) await checkContentRange(a, res);
  else if (res.status === 200) await acceptWholeBody(a, res);
  else throw await errorFromResponse(res, "GET", job.url);
  if (!res.body) throw new NetworkError(`Empty body from ${redactUrl(job.url)}`);
  return res.body;
}

/** A read under a rate limit: about 10 ms of the rate, 16 KiB to 256 KiB. */
function limitedRead(bytesPerSec: number): number {
  return Math.max(16 << 10, Math.min(256 << 10, Math.floor(bytesPerSec / 100)));
}

/** Fresh redirects one request may ask for before the refusal stands. */
const MAX_RELOCATIONS = 3;

/**
 * An object store refusing a presigned URL: S3/R2 "Request has expired" (403 AccessDenied),
 * Azure SAS (403 AuthenticationFailed), CloudFront (403), a stale signature (400), 401.
 */
function expiredUrl(res: Response): boolean {
  return res.status === 401 || res.status === 403 || res.status === 400;
}

/** Refreshes `job.url` once for all parts that saw `stale` refused (concurrent parts share it). */
const relocating = new WeakMap<BlobJob, Promise<void>>();
async function relocate(job: BlobJob, stale: string): Promise<void> {
  if (job.url !== stale) return; // another part already got a fresh one
  let p = relocating.get(job);
  if (!p) {
    p = job.relocate!().then((fresh) => {
      job.url = fresh;
    }).finally(() => relocating.delete(job));
    relocating.set(job, p);
  }
  await p;
}

/** A 206 must carry exactly the range asked for, of a blob of the manifest's size. */
async function checkContentRange(a: Attempt, res: Response): Promise<void> {
  const { job, start, end } = a;
  const cr = res.headers.get("content-range") ?? "";
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(cr.trim());
  if (
    !m || Number(m[1]) !== start || Number(m[2]) !== end - 1 ||
    (m[3] !== "*" && Number(m[3]) !== job.size)
  ) {
    await res.body?.cancel().catch(() => {});
    throw new RangeLie(
      `Server answered Range bytes=${start}-${end - 1} of ${job.digest} with Content-Range ${
        JSON.stringify(cr)
      }`,
    );
  }
}

/**
 * A 200 carries the whole blob. Answering a Range request, it turns this attempt
 * into the stream for the rest of the blob (`onWholeBody` says where to resume);
 * the bytes before that are dropped as they arrive.
 */
async function acceptWholeBody(a: Attempt, res: Response): Promise<void> {
  const { job } = a;
  const cl = res.headers.get("content-length");
  if (cl !== null && Number(cl) !== job.size) {
    await res.body?.cancel().catch(() => {});
    throw new IntegrityError(
      `Server sent ${cl} bytes for blob ${job.digest}, the manifest says ${job.size}`,
    );
  }
  if (a.ranged) {
    const resumeAt = a.hooks.onWholeBody ? a.hooks.onWholeBody() : a.start;
    if (resumeAt !== a.written) a.written = a.base = resumeAt;
    a.skip = resumeAt;
    a.limit = job.size;
  }
}

/**
 * The per-chunk loop: read into the write buffer, drop what a whole-body 200 sent
 * before the range, count and throttle the bytes, write each full buffer (or one
 * held for over a second). It stays one function with no per-chunk allocation:
 * a BYOB reader (Deno) fills the buffer in place, measured at half the RSS and
 * two thirds of the CPU of the default reader. Without one (Bun, whose fetch body
 * hands out each chunk in a fresh buffer of its own) the chunks go to the writer
 * as they are, `bufferSize` bytes of them at a time, never copied.
 */
async function receiveBody(
  a: Attempt,
  body: ReadableStream<Uint8Array>,
  onBytes: (n: number) => void,
): Promise<void> {
  const { ctx, job, start, limit } = a;
  let skip = a.skip;
  let byob: ReadableStreamBYOBReader | undefined;
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  try {
    byob = body.getReader({ mode: "byob" });
    a.takeBuffer();
  } catch {
    // Bun: each chunk arrives in a buffer of its own; they go to the writer as they are
    // (a Worker takes them over) rather than copied into a write buffer.
    reader = body.getReader();
    a.chunks = [];
  }
  a.reader = byob ?? reader;
  if (a.ac.signal.aborted) a.reader!.cancel(a.ac.signal.reason).catch(() => {});
  try {
    for (;;) {
      let chunk: Uint8Array;
      let inPlace = false;
      try {
        if (byob) {
          const size = a.buf.byteLength; // the read detaches buf; the result hands it back
          // Under --limit-rate, small reads: a stream must not take a whole buffer that
          // piled up in its socket while it waited (a lead of 1 MiB per stream).
          const room = ctx.limiter
            ? Math.min(size - a.filled, limitedRead(ctx.limiter.bytesPerSec))
            : size - a.filled;
          const r = await byob.read(new Uint8Array(a.buf.buffer, a.filled, room));
          if (r.value) a.buf = new Uint8Array(r.value.buffer, 0, size);
          if (r.done) break;
          chunk = a.buf.subarray(a.filled, a.filled + r.value.byteLength);
          inPlace = true;
        } else {
          const r = await reader!.read();
          if (r.done) break;
          chunk = r.value;
        }
      } catch (err) {
        if (byob && a.buf.buffer.byteLength === 0) a.buf = new Uint8Array(0);
        throw a.cut ?? err;
      }
      a.lastByte = Date.now();
      if (skip) {
        if (chunk.byteLength <= skip) {
          skip -= chunk.byteLength;
          continue;
        }
        if (inPlace) a.buf.copyWithin(a.filled, a.filled + skip, a.filled + chunk.byteLength);
        chunk = inPlace
          ? a.buf.subarray(a.filled, a.filled + chunk.byteLength - skip)
          : chunk.subarray(skip);
        skip = 0;
      }
      if (a.written + a.filled + chunk.byteLength > limit) {
        throw new RangeLie(
          `Server sent more than the ${limit - start} bytes asked for from ${job.digest}`,
        );
      }
      a.received += chunk.byteLength;
      if (ctx.limiter) {
        // Counted once the bucket lets them through, so progress moves at the rate.
        await ctx.limiter.take(chunk.byteLength, a.ac.signal);
        a.lastByte = Date.now(); // time spent throttled is not a stall
      }
      onBytes(chunk.byteLength);
      if (inPlace) {
        a.filled += chunk.byteLength;
        // Full, or a slow stream holding data for over a second: write it, so an
        // interruption loses at most a second of a slow part.
        if (a.filled === a.buf.byteLength || Date.now() - a.flushedAt > 1000) await flushBuffer(a);
        continue;
      }
      a.chunks!.push(chunk);
      a.filled += chunk.byteLength;
      if (a.filled >= a.bufSize || Date.now() - a.flushedAt > 1000) await flushBuffer(a);
    }
  } finally {
    a.reader = undefined;
    (byob ?? reader)!.releaseLock();
  }
}

/** Hashes and writes the buffered bytes at the writer's offset. */
async function flushBuffer(a: Attempt): Promise<void> {
  if (!a.filled) return;
  if (a.chunks) return await flushChunks(a, a.chunks);
  if (a.buf.byteLength === 0) {
    // A failed BYOB read took the buffer with it: those bytes were never written.
    a.filled = 0;
    return;
  }
  a.hash?.update(a.buf.subarray(0, a.filled));
  try {
    a.buf = await a.ctx.writer.write(a.path, a.written, a.buf, a.filled);
  } catch (e) {
    throw storeError("write", a.path, e);
  }
  a.written += a.filled;
  a.hooks.onFlushed?.(a.filled, a.written - a.filled);
  a.filled = 0;
  a.flushedAt = Date.now();
}

/** Hashes and writes the chunks read at the writer's offset; they are the writer's then. */
async function flushChunks(a: Attempt, chunks: Uint8Array[]): Promise<void> {
  const n = a.filled;
  a.chunks = [];
  a.filled = 0;
  if (a.hash) { for (const c of chunks) a.hash.update(c); }
  try {
    await a.ctx.writer.writeChunks(a.path, a.written, chunks);
  } catch (e) {
    throw storeError("write", a.path, e);
  }
  a.written += n;
  a.hooks.onFlushed?.(n, a.written - n);
  a.flushedAt = Date.now();
}

/** After a failure: keep what arrived intact (a retry continues after it) and discount the rest. */
async function keepWhatArrived(
  a: Attempt,
  err: unknown,
  onBytes: (n: number) => void,
): Promise<void> {
  if (!(err instanceof HaulError && isFatalFsError(err.cause)) && !(err instanceof RangeLie)) {
    await flushBuffer(a).catch(() => {});
  }
  if (a.hooks.restartOnError) return; // small blobs restart from zero; the caller discounts `received`
  onBytes(-(a.received - (a.written - a.base)));
}
