/**
 * Downloads one blob into a file, verified, resumable.
 *
 * Small blobs: one GET, hashed as the bytes stream, written to a private temp
 * file, renamed when size and digest match.
 *
 * Large blobs: one `<blob>-partial` file of full size; HTTP Range parts fetched
 * concurrently and written in place at their offsets (batched writes); a JSON
 * state file records how much of each part is on disk, so a later run continues
 * where this one stopped. SHA-256 runs in order over the contiguous written prefix
 * as it grows (see hasher.ts), so the digest is ready when the last byte lands:
 * no second read of the finished file. A part that stalls is re-fetched from
 * where it stopped without counting as a retry (bounded separately); a part far
 * slower than the median is re-fetched (counted from the third time), as in
 * Ollama's transfer code. A server that answers a Range request with 200 and the
 * whole body (distribution's proxy mode) is handled by turning the rest of the
 * blob into one sequential stream.
 */
import { open, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import {
  HaulError,
  IntegrityError,
  InterruptedError,
  isFatalFsError,
  NetworkError,
  redactUrl,
  RegistryError,
  storeError,
} from "../errors.ts";
import { Sha256 } from "../digest.ts";
import { createFileHasher, type FileHasher } from "../disk/hasher.ts";
import { createSized, syncDir, syncPath } from "../disk/fsio.ts";
import type { BlockWriter } from "../disk/block_writer.ts";
import type { BufferPool, Semaphore } from "../transport/pool.ts";
import type { PartRamp } from "./ramp.ts";
import { waitForLock } from "../disk/lock.ts";
import type { RateLimiter } from "../transport/rate_limit.ts";
import { backoffDelay, isTransientError, type RetryPolicy, sleep } from "../transport/retry.ts";
import type { Fetch } from "../transport/fetch.ts";
import { errorFromResponse } from "../registry/client.ts";

export interface RangeTuning {
  /** Bytes per Range part. @default 16 MiB */
  partSize: number;
  /** Blobs up to this size are fetched as one stream. @default 16 MiB */
  singleStreamMax: number;
  /** Bytes buffered per stream before a write. @default 1 MiB */
  bufferSize: number;
  /** No byte for this long → the request is re-sent. @default 30000 ms */
  stallTimeoutMs: number;
  /** Stall re-fetches allowed per part (they do not count as retries). @default 10 */
  maxStalls: number;
  /** Retry policy for failed attempts. */
  retry: RetryPolicy;
  /** Hash in a Worker when available. @default true */
  hashWorker: boolean;
  /** Background fsync after this many new bytes (0: only before the rename). @default 256 MiB */
  syncEvery: number;
}

/** Speeds of finished transfers, for the "slow part" rule (x/transfer: median of last 30). */
export class SpeedTracker {
  #samples: number[] = [];
  record(bytesPerMs: number): void {
    this.#samples.push(bytesPerMs);
    if (this.#samples.length > 30) this.#samples.shift();
  }
  /** Median speed, or undefined with fewer than 5 samples. */
  median(): number | undefined {
    if (this.#samples.length < 5) return undefined;
    const s = [...this.#samples].sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)];
  }
}

export interface BlobJob {
  digest: string;
  size: number;
  /** URL to GET (already resolved past cross-host redirects for large blobs). */
  url: string;
  /** Final path of the blob. */
  path: string;
  /** Path of the partial file (large blobs) — never the final name. */
  partialPath: string;
  /** Per-chunk digests offered by the registry (Ollama's chunksums); parts follow them. */
  chunks?: { digest: string; start: number; end: number }[];
}

export interface BlobContext {
  fetch: Fetch;
  /** Where bytes are written (a Worker thread when available). */
  writer: BlockWriter;
  /** Shared cap on the bytes per second of the whole transfer. */
  limiter?: RateLimiter;
  tuning: RangeTuning;
  slots: Semaphore;
  /** Range parts at once (a gate below `slots`, opened further by the ramp). */
  parts?: PartRamp;
  /** Write buffers of `tuning.bufferSize` bytes, reused from part to part. */
  buffers?: BufferPool;
  speeds: SpeedTracker;
  signal?: AbortSignal;
  /** Bytes added (positive) or discarded (negative) for progress. */
  onBytes: (delta: number) => void;
  onRetry?: (info: { attempt: number; reason: string; delayMs: number }) => void;
}

interface Part {
  offset: number;
  size: number;
  done: number;
  /** Chunksums: the digest of this part's bytes, checked when the part completes. */
  digest?: string;
  /** Chunksums: the part's bytes were checked against `digest`. */
  verified?: boolean;
}

interface State {
  version: 1;
  digest: string;
  size: number;
  parts: Part[];
}

/** Raised inside an attempt to say why it was cut short. */
class AttemptCut extends Error {
  constructor(readonly kind: "stall" | "slow" | "superseded", message: string) {
    super(message);
  }
}

/** A server answered a Range request in a way that cannot be used. */
class RangeLie extends IntegrityError {}

/** Returns bytes transferred over the network for this blob. */
export async function downloadBlob(job: BlobJob, ctx: BlobContext): Promise<number> {
  if (job.size <= ctx.tuning.singleStreamMax) return await downloadSmall(job, ctx);
  return await downloadLarge(job, ctx);
}

// ---------------------------------------------------------------- small blobs

async function downloadSmall(job: BlobJob, ctx: BlobContext): Promise<number> {
  const tmp = `${job.partialPath}-${process.pid}-${randomBytes(4).toString("hex")}`;
  let transferred = 0;
  let failures = 0;
  let stalls = 0;
  for (;;) {
    const release = await ctx.slots.acquire(ctx.signal);
    let got = 0;
    try {
      const hash = new Sha256();
      await createSized(tmp, 0).catch((e) => {
        throw storeError("create", tmp, e);
      });
      try {
        got = await runAttempt(ctx, job, 0, job.size, tmp, hash, (n) => {
          transferred += n;
          ctx.onBytes(n);
        }, { restartOnError: true });
      } finally {
        ctx.writer.close(tmp);
      }
      if (hash.bytes !== job.size) {
        throw new IntegrityError(
          `Blob ${job.digest} is ${hash.bytes} bytes, the manifest says ${job.size}`,
        );
      }
      const digest = hash.digest();
      if (digest !== job.digest) {
        throw new IntegrityError(`Digest mismatch for ${job.digest}: the data hashes to ${digest}`);
      }
      // The directory is synced once for all small blobs, by download().
      await finalize(tmp, job.path, false);
      return transferred;
    } catch (err) {
      ctx.onBytes(-got);
      await rm(tmp, { force: true });
      const verdict = classify(err, ctx, failures, stalls);
      if (verdict.stall) stalls++;
      else failures++;
      // A corrupt small blob is fetched again from scratch once.
      if (err instanceof IntegrityError && !(err instanceof RangeLie) && failures <= 1) {
        continue;
      }
      if (verdict.fatal) throw verdict.fatal;
      const delayMs = verdict.stall ? 0 : backoffDelay(failures, ctx.tuning.retry);
      ctx.onRetry?.({ attempt: failures + stalls, reason: verdict.reason, delayMs });
      await sleep(delayMs, ctx.signal);
    } finally {
      release();
    }
  }
}

// ---------------------------------------------------------------- large blobs

function statePath(job: BlobJob): string {
  return `${job.partialPath}.json`;
}

function planParts(size: number, partSize: number): Part[] {
  const parts: Part[] = [];
  for (let off = 0; off < size; off += partSize) {
    parts.push({ offset: off, size: Math.min(partSize, size - off), done: 0 });
  }
  return parts;
}

/** Loads resume state, trusting it only when it is consistent with the partial file. */
async function loadState(job: BlobJob): Promise<State | undefined> {
  try {
    const st = JSON.parse(await readFile(statePath(job), "utf8")) as State;
    const info = await stat(job.partialPath);
    if (st.version !== 1 || st.digest !== job.digest || st.size !== job.size) return undefined;
    if (info.size !== job.size || !Array.isArray(st.parts) || st.parts.length === 0) {
      return undefined;
    }
    let expect = 0;
    for (const p of st.parts) {
      if (
        !Number.isSafeInteger(p.offset) || !Number.isSafeInteger(p.size) ||
        !Number.isSafeInteger(p.done) || p.offset !== expect || p.size <= 0 || p.done < 0 ||
        p.done > p.size
      ) return undefined;
      expect += p.size;
    }
    return expect === job.size ? st : undefined;
  } catch {
    return undefined;
  }
}

async function saveState(job: BlobJob, st: State): Promise<void> {
  const p = statePath(job);
  const tmp = `${p}.${process.pid}.tmp`;
  const json = JSON.stringify(st);
  try {
    await writeFile(tmp, json);
    await rename(tmp, p);
  } catch (err) {
    // A full disk has no room for a new file: rewrite the existing one in place,
    // so what is on disk stays resumable (a torn write is rejected on load).
    await rm(tmp, { force: true }).catch(() => {});
    const fh = await open(p, "r+").catch(() => undefined);
    if (!fh) throw err;
    try {
      await fh.write(json, 0);
      await fh.truncate(new TextEncoder().encode(json).byteLength);
    } finally {
      await fh.close();
    }
  }
}

async function discardPartial(job: BlobJob): Promise<void> {
  await rm(statePath(job), { force: true });
  await rm(job.partialPath, { force: true });
}

async function downloadLarge(job: BlobJob, ctx: BlobContext): Promise<number> {
  // Another haul process pulling the same blob into this store: wait for it
  // (showing its progress) instead of writing the same partial file twice.
  let shown = 0;
  const lockPath = `${job.partialPath}.lock`;
  const lock = await waitForLock(
    lockPath,
    () => stat(job.path).then((s) => s.size === job.size, () => false),
    {
      signal: ctx.signal,
      tick: async () => {
        const st = await loadState(job);
        const done = st ? st.parts.reduce((a, p) => a + p.done, 0) : shown;
        if (done !== shown) ctx.onBytes(done - shown);
        shown = done;
      },
    },
  ).catch((e) => {
    if (e instanceof HaulError) throw e;
    throw storeError("lock", lockPath, e);
  });
  if (lock === "done") {
    if (shown !== job.size) ctx.onBytes(job.size - shown);
    return 0;
  }
  if (shown) ctx.onBytes(-shown);
  try {
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
        // Digest mismatch of the assembled file: start over once, from scratch.
        if (err instanceof IntegrityError && !(err instanceof RangeLie) && round === 0) {
          await discardPartial(job);
          ctx.onBytes(-credited);
          credited = 0;
          continue;
        }
        throw err;
      }
    }
  } finally {
    await lock.release();
  }
}

async function downloadLargeOnce(
  job: BlobJob,
  ctx: BlobContext,
  count: (n: number) => void,
): Promise<number> {
  const { tuning } = ctx;
  let st = await loadState(job);
  if (!st) {
    await discardPartial(job);
    try {
      await createSized(job.partialPath, job.size);
    } catch (e) {
      throw storeError("create", job.partialPath, e);
    }
    st = {
      version: 1,
      digest: job.digest,
      size: job.size,
      parts: job.chunks?.length
        ? job.chunks.map((c) => ({
          offset: c.start,
          size: c.end - c.start + 1,
          done: 0,
          digest: c.digest,
        }))
        : planParts(job.size, tuning.partSize),
    };
    await saveState(job, st).catch((e) => {
      throw storeError("write", statePath(job), e);
    });
  }
  const state = st;
  const already = state.parts.reduce((a, p) => a + p.done, 0);
  if (already) ctx.onBytes(already);

  const hasher: FileHasher = createFileHasher(job.partialPath, { inline: !tuning.hashWorker });
  const blobAbort = new AbortController();
  const onOuterAbort = () => blobAbort.abort(new InterruptedError());
  ctx.signal?.addEventListener("abort", onOuterAbort, { once: true });
  if (ctx.signal?.aborted) onOuterAbort();

  // How far the file is written (and, for chunk parts, verified) without a gap:
  // the ordered whole-blob hash may read that far. A chunk part counts only once
  // its own digest matched, so a bad chunk is re-fetched before it is hashed.
  const watermark = () => {
    let w = 0;
    for (const p of state.parts) {
      if (p.digest && !p.verified) return p.offset;
      w = p.offset + p.done;
      if (p.done < p.size) break;
    }
    return w;
  };
  let lastSave = 0;
  let saving: Promise<void> | undefined;
  const persist = async (force = false) => {
    const now = Date.now();
    if (!force && now - lastSave < 200) return;
    lastSave = now;
    await saving;
    saving = saveState(job, state).catch(() => {});
    await saving;
  };
  hasher.advance(watermark());
  // Flush written data to disk as the download goes, in the background, so the
  // fsync before the rename does not have to write the whole blob at the end.
  let unsynced = 0;
  let syncing: Promise<void> | undefined;
  const backgroundSync = (n: number) => {
    unsynced += n;
    if (!tuning.syncEvery || unsynced < tuning.syncEvery || syncing) return;
    unsynced = 0;
    syncing = syncPath(job.partialPath).catch(() => {}).finally(() => {
      syncing = undefined;
    });
  };

  let sequential = false; // set once a 200 answered a Range request
  let transferred = 0;
  let firstError: unknown;
  let queue = state.parts.filter((p) => p.done < p.size);

  // Attempts in flight, so that a stream taking over the blob can stop the others.
  const attempts = new Set<AbortController>();
  const runPart = async (part: Part) => {
    let failures = 0;
    let stalls = 0;
    let slows = 0;
    while (part.done < part.size) {
      if (blobAbort.signal.aborted) return;
      const gate = ctx.parts
        ? await ctx.parts.gate.acquire(blobAbort.signal).catch(() => undefined)
        : () => {};
      if (!gate) return;
      const slot = await ctx.slots.acquire(blobAbort.signal).catch(() => undefined);
      if (!slot) {
        gate();
        return;
      }
      const release = () => {
        slot();
        gate();
      };
      const attempt = new AbortController();
      const onBlobAbort = () => attempt.abort(blobAbort.signal.reason);
      blobAbort.signal.addEventListener("abort", onBlobAbort, { once: true });
      attempts.add(attempt);
      try {
        if (part.digest && !part.verified && part.done === part.size) {
          await checkChunk(job, part, undefined); // resumed complete chunk: verify it first
          hasher.advance(watermark());
          continue;
        }
        const start = part.offset + part.done;
        const t0 = Date.now();
        const before = part.done;
        // A chunk part hashes its bytes as they are written; after a restart the
        // bytes already on disk are hashed first.
        const chunkHash = part.digest ? await primeChunkHash(job, part) : undefined;
        await runAttempt(
          ctx,
          job,
          start,
          part.offset + part.size,
          job.partialPath,
          chunkHash,
          (n) => {
            transferred += n;
            count(n);
            ctx.parts?.count(n);
            ctx.onBytes(n);
          },
          {
            signal: attempt.signal,
            onFlushed: (n) => {
              part.done += n;
              hasher.advance(watermark());
              backgroundSync(n);
              void persist();
            },
            onWholeBody: () => {
              // 200 to a Range request: the rest of the blob comes in this one stream.
              if (!sequential) {
                sequential = true;
                for (const other of attempts) {
                  if (other !== attempt) {
                    other.abort(new AttemptCut("superseded", "one stream took over"));
                  }
                }
                const w = watermark();
                const rest: Part = { offset: w, size: job.size - w, done: 0 };
                state.parts = w > 0 ? [{ offset: 0, size: w, done: w }, rest] : [rest];
                queue = [];
                part = rest;
              }
              return part.offset + part.done;
            },
            speeds: ctx.speeds,
          },
        );
        const ms = Math.max(1, Date.now() - t0);
        if (part.size >= 1 << 20) ctx.speeds.record((part.done - before) / ms);
        if (part.digest && !part.verified && part.done === part.size) {
          await checkChunk(job, part, chunkHash);
          hasher.advance(watermark());
          void persist();
        }
      } catch (err) {
        if (blobAbort.signal.aborted) return;
        if (err instanceof ChunkMismatch) {
          // Only this chunk is fetched again.
          ctx.onBytes(-part.done);
          part.done = 0;
          void persist(true);
        }
        const reason = attempt.signal.reason;
        if (reason instanceof AttemptCut && reason.kind === "superseded") return;
        const verdict = classify(err, ctx, failures, stalls);
        if (err instanceof AttemptCut && err.kind === "slow") {
          slows++;
          if (slows >= 3) failures++;
        } else if (verdict.stall) stalls++;
        else failures++;
        if (verdict.fatal) throw verdict.fatal;
        if (failures > tuning.retry.maxRetries) {
          throw verdict.exhausted ??
            new NetworkError(`Blob ${job.digest} failed: ${verdict.reason}`);
        }
        if (stalls > tuning.maxStalls) {
          throw new NetworkError(
            `Blob ${job.digest} stalled ${stalls} times (no data for ${
              tuning.stallTimeoutMs / 1000
            } s); giving up`,
          );
        }
        const delayMs = verdict.stall || (err instanceof AttemptCut)
          ? 0
          : backoffDelay(failures, tuning.retry);
        ctx.onRetry?.({ attempt: failures + stalls + slows, reason: verdict.reason, delayMs });
        await sleep(delayMs, blobAbort.signal).catch(() => {});
      } finally {
        attempts.delete(attempt);
        blobAbort.signal.removeEventListener("abort", onBlobAbort);
        release?.();
      }
    }
  };

  const worker = async () => {
    while (!blobAbort.signal.aborted) {
      const part = queue.shift();
      if (!part) return;
      try {
        await runPart(part);
      } catch (err) {
        firstError ??= err;
        blobAbort.abort(err);
        return;
      }
    }
  };
  try {
    const n = Math.max(1, Math.min(queue.length, 64));
    await Promise.all(Array.from({ length: n }, worker));
    await persist(true);
    if (firstError) throw firstError;
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
      await discardPartial(job);
      throw new IntegrityError(
        `Digest mismatch for ${job.digest}: the downloaded data hashes to ${result.digest}`,
      );
    }
    await syncing;
    await finalize(job.partialPath, job.path);
    await rm(statePath(job), { force: true });
    return transferred;
  } catch (err) {
    hasher.close();
    await saving;
    throw err;
  } finally {
    ctx.writer.close(job.partialPath);
    ctx.signal?.removeEventListener("abort", onOuterAbort);
  }
}

/** A chunk's bytes did not match its chunksum. */
class ChunkMismatch extends IntegrityError {}

/** A hash of the part's bytes already on disk, ready to continue. */
async function primeChunkHash(job: BlobJob, part: Part): Promise<Sha256> {
  const hash = new Sha256();
  if (!part.done) return hash;
  const fh = await open(job.partialPath, "r").catch((e) => {
    throw storeError("read", job.partialPath, e);
  });
  try {
    const buf = new Uint8Array(Math.min(part.done, 4 << 20));
    let pos = part.offset;
    const end = part.offset + part.done;
    while (pos < end) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.byteLength, end - pos), pos);
      if (bytesRead <= 0) throw new Error(`${job.partialPath} ends at ${pos}`);
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return hash;
}

async function checkChunk(job: BlobJob, part: Part, hash: Sha256 | undefined): Promise<void> {
  const h = hash && hash.bytes === part.size ? hash : await primeChunkHash(job, part);
  const got = h.digest();
  if (got !== part.digest) {
    throw new ChunkMismatch(
      `Chunk ${part.offset}-${
        part.offset + part.size - 1
      } of ${job.digest} hashes to ${got}, not ${part.digest}`,
    );
  }
  part.verified = true;
}

/** fsync, rename into place, fsync the directory. */
async function finalize(from: string, to: string, dirSync = true): Promise<void> {
  try {
    await syncPath(from);
    await rename(from, to);
    if (dirSync) await syncDir(to.slice(0, to.lastIndexOf("/")) || ".");
  } catch (e) {
    throw storeError("finish", to, e);
  }
}

// ---------------------------------------------------------------- one request

interface AttemptHooks {
  signal?: AbortSignal;
  /** Bytes durably written at the part's position. */
  onFlushed?: (n: number) => void;
  /** The server sent the whole body for a Range request; returns the offset to resume at. */
  onWholeBody?: () => number;
  /** A failure discards everything (small blobs); else what was written is kept. */
  restartOnError?: boolean;
  speeds?: SpeedTracker;
}

/**
 * One GET of bytes [start, end) (the whole blob when it is small), streamed into
 * `writer` in `bufferSize` batches, optionally hashed. Returns bytes received.
 */
async function runAttempt(
  ctx: BlobContext,
  job: BlobJob,
  start: number,
  end: number,
  path: string,
  hash: Sha256 | undefined,
  onBytes: (n: number) => void,
  hooks: AttemptHooks = {},
): Promise<number> {
  const { tuning } = ctx;
  const ac = new AbortController();
  const outer = hooks.signal ?? ctx.signal;
  // Aborting the fetch does not always settle a pending read of a re-wrapped body
  // (Deno; scripts/bench/repro_wrapped_abort.ts): cancel the reader as well.
  let activeReader: { cancel(reason?: unknown): Promise<void> } | undefined;
  const stop = (reason: unknown) => {
    ac.abort(reason);
    activeReader?.cancel(reason).catch(() => {});
  };
  const onAbort = () => stop(outer?.reason ?? new InterruptedError());
  outer?.addEventListener("abort", onAbort, { once: true });
  if (outer?.aborted) onAbort();

  const ranged = start > 0 || end < job.size || job.size > tuning.singleStreamMax;
  const headers = new Headers();
  if (ranged) headers.set("range", `bytes=${start}-${end - 1}`);
  let received = 0;
  let lastByte = Date.now();
  // The clocks start when headers arrive: the wait for them (retry backoff,
  // Retry-After, a slow origin) is bounded by the transport's header timeout.
  let headersAt = 0;
  let cut: AttemptCut | undefined;
  const timer = setInterval(() => {
    const now = Date.now();
    if (!headersAt) return;
    if (now - lastByte >= tuning.stallTimeoutMs) {
      cut = new AttemptCut("stall", `no data for ${tuning.stallTimeoutMs / 1000} s`);
      stop(cut);
      return;
    }
    const median = hooks.speeds?.median();
    const elapsed = now - headersAt;
    if (median && elapsed > 5000 && received / elapsed < median * 0.1) {
      cut = new AttemptCut("slow", `part is under 10% of the median speed`);
      stop(cut);
    }
  }, Math.min(1000, Math.max(50, tuning.stallTimeoutMs / 4)));

  let base = start; // where this attempt's bytes start landing
  const want = Math.min(tuning.bufferSize, Math.max(end - start, 1 << 16));
  let buf = ctx.buffers?.size === want ? ctx.buffers.take() : new Uint8Array(want);
  let filled = 0;
  let written = start; // absolute offset the writer is at
  let skip = 0; // bytes of a whole-body 200 to drop before `start`
  let flushedAt = Date.now();
  const flush = async () => {
    if (!filled) return;
    if (buf.byteLength === 0) {
      // A failed BYOB read took the buffer with it: those bytes were never written.
      filled = 0;
      return;
    }
    hash?.update(buf.subarray(0, filled));
    try {
      buf = await ctx.writer.write(path, written, buf, filled);
    } catch (e) {
      throw storeError("write", path, e);
    }
    written += filled;
    hooks.onFlushed?.(filled);
    filled = 0;
    flushedAt = Date.now();
  };
  try {
    let res: Response;
    try {
      res = await ctx.fetch(new Request(job.url, { headers, signal: ac.signal }));
    } catch (err) {
      throw cut ?? err;
    }
    lastByte = headersAt = Date.now();
    let limit = end; // absolute end (exclusive) of what to take from this body
    if (res.status === 206) {
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
    } else if (res.status === 200) {
      const cl = res.headers.get("content-length");
      if (cl !== null && Number(cl) !== job.size) {
        await res.body?.cancel().catch(() => {});
        throw new IntegrityError(
          `Server sent ${cl} bytes for blob ${job.digest}, the manifest says ${job.size}`,
        );
      }
      if (ranged) {
        const resumeAt = hooks.onWholeBody ? hooks.onWholeBody() : start;
        if (resumeAt !== written) written = base = resumeAt;
        skip = resumeAt;
        limit = job.size;
      }
    } else {
      throw await errorFromResponse(res, "GET", job.url);
    }
    if (!res.body) throw new NetworkError(`Empty body from ${redactUrl(job.url)}`);
    // A BYOB reader (Deno) fills our buffer in place: no per-chunk allocation,
    // measured at half the RSS and two thirds of the CPU of the default reader.
    let byob: ReadableStreamBYOBReader | undefined;
    let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
    try {
      byob = res.body.getReader({ mode: "byob" });
    } catch {
      reader = res.body.getReader();
    }
    activeReader = byob ?? reader;
    if (ac.signal.aborted) activeReader!.cancel(ac.signal.reason).catch(() => {});
    try {
      for (;;) {
        let chunk: Uint8Array;
        let inPlace = false;
        try {
          if (byob) {
            const size = buf.byteLength; // the read detaches buf; the result hands it back
            const r = await byob.read(new Uint8Array(buf.buffer, filled, size - filled));
            if (r.value) buf = new Uint8Array(r.value.buffer, 0, size);
            if (r.done) break;
            chunk = buf.subarray(filled, filled + r.value.byteLength);
            inPlace = true;
          } else {
            const r = await reader!.read();
            if (r.done) break;
            chunk = r.value;
          }
        } catch (err) {
          if (byob && buf.buffer.byteLength === 0) buf = new Uint8Array(0);
          throw cut ?? err;
        }
        lastByte = Date.now();
        if (skip) {
          if (chunk.byteLength <= skip) {
            skip -= chunk.byteLength;
            continue;
          }
          if (inPlace) buf.copyWithin(filled, filled + skip, filled + chunk.byteLength);
          chunk = inPlace
            ? buf.subarray(filled, filled + chunk.byteLength - skip)
            : chunk.subarray(skip);
          skip = 0;
        }
        if (written + filled + chunk.byteLength > limit) {
          throw new RangeLie(
            `Server sent more than the ${limit - start} bytes asked for from ${job.digest}`,
          );
        }
        received += chunk.byteLength;
        onBytes(chunk.byteLength);
        if (ctx.limiter) {
          await ctx.limiter.take(chunk.byteLength, ac.signal);
          lastByte = Date.now(); // time spent throttled is not a stall
        }
        if (inPlace) {
          filled += chunk.byteLength;
          // Full, or a slow stream holding data for over a second: write it, so an
          // interruption loses at most a second of a slow part.
          if (filled === buf.byteLength || Date.now() - flushedAt > 1000) await flush();
          continue;
        }
        while (chunk.byteLength) {
          const n = Math.min(chunk.byteLength, buf.byteLength - filled);
          buf.set(n === chunk.byteLength ? chunk : chunk.subarray(0, n), filled);
          filled += n;
          chunk = chunk.subarray(n);
          if (filled === buf.byteLength) await flush();
        }
        if (filled && Date.now() - flushedAt > 1000) await flush();
      }
    } finally {
      activeReader = undefined;
      (byob ?? reader)!.releaseLock();
    }
    await flush();
    if (written < limit) {
      throw new NetworkError(
        `Connection closed after ${written - base} of ${limit - base} bytes of ${job.digest}`,
      );
    }
    return received;
  } catch (err) {
    // Keep what arrived intact: a retry continues after it.
    if (!(err instanceof HaulError && isFatalFsError(err.cause)) && !(err instanceof RangeLie)) {
      await flush().catch(() => {});
    }
    if (hooks.restartOnError) throw err; // small blobs restart from zero; the caller discounts `received`
    onBytes(-(received - (written - base)));
    throw err;
  } finally {
    clearInterval(timer);
    outer?.removeEventListener("abort", onAbort);
    ctx.buffers?.give(buf);
  }
}

interface Verdict {
  stall: boolean;
  reason: string;
  fatal?: Error;
  exhausted?: Error;
}

function classify(err: unknown, ctx: BlobContext, failures: number, stalls: number): Verdict {
  if (ctx.signal?.aborted) {
    return { stall: false, reason: "interrupted", fatal: new InterruptedError() };
  }
  if (err instanceof AttemptCut) {
    const v: Verdict = {
      stall: err.kind === "stall",
      reason: err.message,
      exhausted: new NetworkError(
        `A part of the blob stayed under 10% of the median part speed after ${failures + 1} tries`,
      ),
    };
    if (err.kind === "stall" && stalls + 1 > ctx.tuning.maxStalls) {
      v.fatal = new NetworkError(
        `Download stalled ${stalls + 1} times (no data for ${
          ctx.tuning.stallTimeoutMs / 1000
        } s); giving up`,
      );
    }
    return v;
  }
  if (err instanceof HaulError && isFatalFsError(err.cause)) {
    return { stall: false, reason: err.message, fatal: err };
  }
  if (err instanceof RegistryError) {
    // The transport already retried retryable statuses (honouring Retry-After)
    // as often as the policy allows: another round here would square the count.
    return { stall: false, reason: err.message, fatal: err };
  }
  const message = (err as Error)?.message ?? String(err);
  const exhausted = err instanceof HaulError
    ? err
    : new NetworkError(`Download failed after ${failures + 1} attempts: ${message}`, {
      cause: err,
    });
  if (failures + 1 > ctx.tuning.retry.maxRetries) {
    return { stall: false, reason: message, fatal: exhausted };
  }
  if (err instanceof IntegrityError || err instanceof NetworkError || isTransientError(err)) {
    return { stall: false, reason: message, exhausted };
  }
  if (err instanceof HaulError) return { stall: false, reason: message, fatal: err };
  return { stall: false, reason: message, exhausted };
}
