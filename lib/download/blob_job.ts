/**
 * What a blob download is given: the blob ({@link BlobJob}), the machinery it
 * shares with the other downloads of a pull ({@link BlobContext}) and the
 * tuning ({@link RangeTuning}).
 */
import type { BlockWriter } from "../disk/block_writer.ts";
import type { BufferPool, Semaphore } from "../transport/pool.ts";
import type { RateLimiter } from "../transport/rate_limit.ts";
import type { RetryPolicy } from "../transport/retry.ts";
import type { Fetch } from "../transport/fetch.ts";
import type { PartRamp } from "./ramp.ts";
import type { SpeedTracker } from "./speed_tracker.ts";

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

export interface BlobJob {
  digest: string;
  size: number;
  /** URL to GET (already resolved past cross-host redirects for large blobs). */
  url: string;
  /** Final path of the blob. */
  path: string;
  /** Path of the partial file (large blobs) — never the final name. */
  partialPath: string;
  /**
   * Per-chunk digests offered by the registry (Ollama's chunksums): a digest mismatch is
   * repaired chunk by chunk.
   */
  chunks?: { digest: string; start: number; end: number }[];
  /**
   * Asks the registry where the bytes are now (a fresh redirect), for when the object store
   * refuses `url` (a presigned URL that expired); undefined when `url` is the registry's own.
   */
  relocate?: () => Promise<string>;
}

export interface BlobContext {
  fetch: Fetch;
  /** Where bytes are written (a Worker thread when available). */
  writer: BlockWriter;
  /** Shared cap on the bytes per second of the whole transfer. */
  limiter?: RateLimiter;
  tuning: RangeTuning;
  slots: Semaphore;
  /** Connections for small blobs (apart from `slots`). @default slots */
  smallSlots?: Semaphore;
  /** Range parts at once (a gate below `slots`, opened further by the ramp). */
  parts?: PartRamp;
  /** Write buffers of `tuning.bufferSize` bytes, reused from part to part. */
  buffers?: BufferPool;
  speeds: SpeedTracker;
  signal?: AbortSignal;
  /** Bytes added (positive) or discarded (negative) for progress. */
  onBytes: (delta: number) => void;
  onRetry?: (info: { attempt: number; reason: string; delayMs: number }) => void;
  /**
   * A large blob's bytes `[offset, offset + length)` are written to `job.partialPath` (not yet
   * verified): a reader may serve them before the blob is done (`haul serve --upstream`).
   */
  onWritten?: (offset: number, length: number) => void;
  /** Bytes reported by `onWritten` may be wrong or gone (a bad chunk, a digest mismatch). */
  onDiscarded?: () => void;
}
