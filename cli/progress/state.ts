/** Progress state: events folded into per-blob rows, speeds and ETAs over a window. */
import type { ProgressEvent } from "../../lib/progress_events.ts";
import { type TransferOp } from "./format.ts";

/** One speed sample: bytes completed at a point in time. */
export interface ProgressSample {
  readonly at: number;
  readonly completed: number;
}

/** What is known about one blob transfer. */
export interface BlobProgress {
  readonly op: TransferOp;
  readonly digest: string;
  readonly total: number;
  /** Bytes done, clamped to `0..total`; goes down when a failed attempt's bytes are dropped. */
  readonly completed: number;
  /** Bytes credited when the blob was first seen (already on disk); not counted as speed. */
  readonly initial: number;
  readonly done: boolean;
  /** Nothing had to be transferred (present locally, on the registry, or mounted). */
  readonly skipped: boolean;
  readonly mounted: boolean;
  readonly startedAt: number;
  readonly doneAt: number | undefined;
  /** Retry events seen for this digest. */
  readonly retries: number;
  /** Recent samples, oldest first, spaced at least 200 ms apart (the newest one floats). */
  readonly samples: readonly ProgressSample[];
}

/** A row of the progress display, in the order events introduced it. */
export type ProgressRow =
  | { readonly kind: "phase"; readonly status: string }
  | { readonly kind: "blob"; readonly blob: BlobProgress };

interface MutableBlob {
  op: TransferOp;
  digest: string;
  total: number;
  completed: number;
  initial: number;
  done: boolean;
  skipped: boolean;
  mounted: boolean;
  startedAt: number;
  doneAt: number | undefined;
  retries: number;
  samples: { at: number; completed: number }[];
}

/** Options for {@linkcode ProgressState}. */
export interface ProgressStateOptions {
  /**
   * Width in ms of the sliding window that speed and ETA are measured over.
   * @default {5000}
   */
  windowMs?: number;
}

const DEFAULT_WINDOW_MS = 5000;
/** New samples closer than this to the previous one replace the newest sample. */
const SAMPLE_SPACING_MS = 200;
/** Below this much measured time a speed is noise: report none. */
const MIN_SPEED_SPAN_MS = 1000;

/** Status text for a phase event, exactly as Ollama's `/api/pull` and `/api/push` send it. */
export function phaseStatus(event: ProgressEvent): string | undefined {
  switch (event.type) {
    case "manifest":
      return event.op === "push" ? "retrieving manifest" : "pulling manifest";
    case "verify":
      return "verifying sha256 digest";
    case "manifest-write":
      return event.op === "pull" ? "writing manifest" : "pushing manifest";
    case "success":
      return "success";
    default:
      return undefined;
  }
}

/**
 * Folds {@linkcode ProgressEvent}s into per-blob state and an ordered list of rows (phase
 * messages and blobs) that the renderers draw.
 */
export class ProgressState {
  #windowMs: number;
  #rows: ProgressRow[] = [];
  #blobs = new Map<string, MutableBlob>();

  constructor(options: ProgressStateOptions = {}) {
    const { windowMs = DEFAULT_WINDOW_MS } = options;
    if (!Number.isFinite(windowMs) || windowMs <= 0) {
      throw new RangeError(
        `Cannot create progress state: windowMs must be a positive number, received ${windowMs}`,
      );
    }
    this.#windowMs = windowMs;
  }

  /** Rows in the order they appeared. */
  get rows(): readonly ProgressRow[] {
    return this.#rows;
  }

  /** The blob for an op and digest, if an event named it. */
  blob(op: TransferOp, digest: string): BlobProgress | undefined {
    return this.#blobs.get(`${op} ${digest}`);
  }

  /** Applies one event observed at `now` (ms). */
  apply(event: ProgressEvent, now: number): void {
    switch (event.type) {
      case "blob-start":
      case "blob-progress": {
        const blob = this.#blobFor(event.op, event.digest, event.total, event.completed, now);
        if (event.type === "blob-start" && blob.done) {
          // Seen again (shared by a second model): start over in the same row.
          Object.assign(
            blob,
            this.#fresh(event.op, event.digest, event.total, event.completed, now),
          );
          return;
        }
        if (blob.done) return; // a late report for a finished blob
        blob.total = Math.max(0, event.total);
        this.#record(blob, event.completed, now);
        return;
      }
      case "blob-done": {
        const blob = this.#blobFor(event.op, event.digest, event.total, 0, now);
        blob.total = Math.max(0, event.total);
        if (event.skipped) blob.initial = blob.total;
        blob.completed = blob.total;
        blob.done = true;
        blob.skipped = event.skipped;
        blob.mounted = event.mounted === true;
        blob.doneAt = now;
        return;
      }
      case "retry": {
        if (event.digest === undefined) return;
        for (const blob of this.#blobs.values()) {
          if (blob.digest === event.digest && !blob.done) blob.retries++;
        }
        return;
      }
      default: {
        const status = phaseStatus(event);
        if (status === undefined) return;
        const last = this.#rows.at(-1);
        // lib/ may report a phase once per blob; Ollama shows it once.
        if (last?.kind === "phase" && last.status === status) return;
        this.#rows.push({ kind: "phase", status });
      }
    }
  }

  /**
   * Bytes per second over the sliding window ending at `now`: 0 when nothing moved during the
   * whole window (stalled), `undefined` until at least a second has been measured. A finished
   * blob reports its average speed over the transfer (`undefined` when skipped).
   */
  speed(blob: BlobProgress, now: number): number | undefined {
    if (blob.done) {
      if (blob.skipped || blob.doneAt === undefined) return undefined;
      const span = blob.doneAt - blob.startedAt;
      const moved = blob.completed - blob.initial;
      return span > 0 && moved > 0 ? moved / (span / 1000) : undefined;
    }
    const samples = blob.samples;
    const latest = samples.at(-1);
    if (latest === undefined) return undefined;
    const base = samples.find((s) => s.at >= now - this.#windowMs);
    if (base === undefined) return 0;
    const span = now - base.at;
    if (span < MIN_SPEED_SPAN_MS) return undefined;
    return Math.max(0, latest.completed - base.completed) / (span / 1000);
  }

  /** Seconds left at the current {@linkcode speed}; `undefined` when unknown or stalled. */
  eta(blob: BlobProgress, now: number): number | undefined {
    if (blob.done) return undefined;
    const speed = this.speed(blob, now);
    if (speed === undefined || speed <= 0) return undefined;
    return Math.max(0, blob.total - blob.completed) / speed;
  }

  #fresh(op: TransferOp, digest: string, total: number, completed: number, now: number) {
    const c = clamp(completed, 0, Math.max(0, total));
    return {
      op,
      digest,
      total: Math.max(0, total),
      completed: c,
      initial: c,
      done: false,
      skipped: false,
      mounted: false,
      startedAt: now,
      doneAt: undefined,
      retries: 0,
      samples: [{ at: now, completed: c }],
    } satisfies MutableBlob;
  }

  #blobFor(
    op: TransferOp,
    digest: string,
    total: number,
    completed: number,
    now: number,
  ): MutableBlob {
    const key = `${op} ${digest}`;
    let blob = this.#blobs.get(key);
    if (blob === undefined) {
      blob = this.#fresh(op, digest, total, completed, now);
      this.#blobs.set(key, blob);
      this.#rows.push({ kind: "blob", blob });
    }
    return blob;
  }

  #record(blob: MutableBlob, completed: number, now: number): void {
    const c = clamp(completed, 0, blob.total);
    const drop = blob.completed - c;
    if (drop > 0) {
      // A failed attempt's bytes were subtracted (Ollama's x/transfer does this). Shift the
      // window by the same amount so the loss reads as "no progress", not negative speed.
      for (const s of blob.samples) s.completed -= drop;
    }
    blob.completed = c;
    const samples = blob.samples;
    const prev = samples.at(-2);
    if (prev !== undefined && now - prev.at < SAMPLE_SPACING_MS) {
      samples[samples.length - 1] = { at: now, completed: c };
    } else {
      samples.push({ at: now, completed: c });
    }
    while (samples.length > 1 && samples[0].at < now - this.#windowMs) samples.shift();
  }
}

export function clamp(n: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, n));
}

export function percentOf(blob: BlobProgress): number {
  if (blob.done) return 100;
  if (blob.total <= 0) return 0;
  // Floor, so 100% only shows once the blob is done.
  return Math.floor(clamp(blob.completed / blob.total, 0, 1) * 100);
}
