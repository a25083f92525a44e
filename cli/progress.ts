/**
 * Progress renderers. `lib/` reports progress as {@linkcode ProgressEvent}s; this module folds
 * them into a {@linkcode ProgressState} and turns that into terminal bars (like `ollama pull`),
 * plain log lines (stderr is not a terminal) or Ollama's `/api/pull` NDJSON.
 *
 * Everything here is pure apart from the injected `write`; time comes from the injected `now`
 * (milliseconds, any monotonic origin), so frames and throttling are tested as strings.
 *
 * @module
 */

import type { ProgressEvent } from "../lib/progress_events.ts";

/** Direction of a blob transfer. */
export type TransferOp = "pull" | "push";

// ---------------------------------------------------------------------------------------------
// Formatting

const UNITS: ReadonlyArray<readonly [number, string]> = [
  [1e12, "TB"],
  [1e9, "GB"],
  [1e6, "MB"],
  [1e3, "KB"],
];

/**
 * Formats a byte count with decimal units as Ollama's `format.HumanBytes` does: "96 B", "1 KB",
 * "1.5 GB", "42 GB", "999 MB" (one decimal below 10, whole numbers truncated from 10 up).
 */
export function formatBytes(n: number): string {
  if (Number.isNaN(n)) return "0 B";
  if (n < 0) return `-${formatBytes(-n)}`;
  const b = Math.floor(n);
  for (const [size, unit] of UNITS) {
    if (b < size) continue;
    const v = b / size;
    if (v >= 10 || v === Math.trunc(v)) return `${Math.trunc(v)} ${unit}`;
    const s = v.toFixed(1);
    // 9.96 rounds up to "10.0": print it as the whole number Ollama would show from 10 up.
    return `${s === "10.0" ? "10" : s} ${unit}`;
  }
  return `${b} B`;
}

/**
 * Formats seconds with at most two units, as Ollama's progress bar does: "4s", "1m36s", "1h2m",
 * and "99h+" from 100 hours (or for an infinite duration). Negative or NaN input gives "0s".
 */
export function formatDuration(seconds: number): string {
  if (Number.isNaN(seconds) || seconds <= 0) return "0s";
  const s = Math.round(seconds);
  if (s >= 100 * 3600) return "99h+";
  if (s >= 3600) return `${Math.floor(s / 3600)}h${Math.floor(s / 60) % 60}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${s % 60}s`;
  return `${s}s`;
}

/** Formats a transfer rate: "112 MB/s", "0 B/s". */
export function formatRate(bytesPerSec: number): string {
  return `${formatBytes(bytesPerSec)}/s`;
}

/**
 * "1.2/4.0 GB" when both sides share a unit (one decimal below 10 on both, so the two read
 * alike), else "512 MB/4 GB".
 */
function formatSizePair(completed: number, total: number): string {
  const a = formatBytes(completed);
  const b = formatBytes(total);
  const unit = b.split(" ")[1];
  if (unit === "B" && a.endsWith(" B")) return `${a.split(" ")[0]}/${b}`;
  const size = UNITS.find(([, u]) => u === unit)?.[0];
  if (size === undefined || a.split(" ")[1] !== unit) return `${a}/${b}`;
  const done = Math.floor(completed) / size;
  // Completed rounds down so a running blob never reads "4.0/4.0 GB".
  const left = done >= 10 ? String(Math.trunc(done)) : (Math.floor(done * 10) / 10).toFixed(1);
  const whole = Math.floor(total) / size;
  const shown = b.split(" ")[0]; // rounded as formatBytes rounds, "4" or "1.5" or "10"
  const right = whole < 10 && shown.length === 1 ? `${shown}.0` : shown;
  return `${left}/${right} ${unit}`;
}

/** The 12 hex digits Ollama shows for a digest (`digest[7:19]` for sha256). */
function shortDigest(digest: string): string {
  return digest.slice(digest.indexOf(":") + 1).slice(0, 12);
}

function opWord(op: TransferOp): string {
  return op === "pull" ? "pulling" : "pushing";
}

// ---------------------------------------------------------------------------------------------
// State

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
      return "pulling manifest";
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

function clamp(n: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, n));
}

function percentOf(blob: BlobProgress): number {
  if (blob.done) return 100;
  if (blob.total <= 0) return 0;
  // Floor, so 100% only shows once the blob is done.
  return Math.floor(clamp(blob.completed / blob.total, 0, 1) * 100);
}

// ---------------------------------------------------------------------------------------------
// TTY frame

/** Options for {@linkcode renderTty}. */
export interface RenderTtyOptions {
  /** Terminal columns. Lines use at most `width - 1` so the terminal never auto-wraps. */
  width: number;
  /** Current time in ms, for speed and ETA. */
  now: number;
}

// Fixed suffix columns, as in Ollama's progress bar: size (13, "999 MB/999 GB"),
// "  " + speed (8, "999 MB/s"), "  " + ETA (6, "59m59s").
const SIZE_COLS = 13;
const RATE_COLS = 10;
const ETA_COLS = 8;
const SUFFIX_COLS = SIZE_COLS + RATE_COLS + ETA_COLS;

function truncate(line: string, max: number): string {
  const chars = Array.from(line);
  if (chars.length <= max) return line;
  if (max <= 0) return "";
  return chars.slice(0, max - 1).join("").trimEnd() + "…";
}

function blobLine(state: ProgressState, blob: BlobProgress, limit: number, now: number): string {
  const pre = `${opWord(blob.op)} ${shortDigest(blob.digest)}: ${
    String(percentOf(blob)).padStart(3)
  }%`;
  let suf: string;
  if (blob.done) {
    suf = formatBytes(blob.total).padStart(6);
  } else {
    suf = formatSizePair(blob.completed, blob.total).padStart(SIZE_COLS);
    const speed = state.speed(blob, now);
    suf += speed === undefined ? " ".repeat(RATE_COLS) : `  ${formatRate(speed).padStart(8)}`;
    const eta = state.eta(blob, now);
    suf += eta === undefined ? "" : `  ${formatDuration(eta).padStart(6)}`;
  }
  // The bar takes what the fixed columns leave, sized as if every column were filled so bars of
  // running and finished blobs line up.
  const barCols = limit - pre.length - SUFFIX_COLS - 4;
  if (barCols < 1) {
    // Too narrow for a bar: drop the column padding too.
    return truncate([pre, ...suf.trim().split(/ {2,}/)].join("  "), limit);
  }
  const fraction = blob.done ? 1 : blob.total > 0 ? clamp(blob.completed / blob.total, 0, 1) : 0;
  const filled = Math.floor(barCols * fraction);
  const bar = "█".repeat(filled) + " ".repeat(barCols - filled);
  return truncate(`${pre} ▕${bar}▏ ${suf}`.trimEnd(), limit);
}

/**
 * Renders the state as lines like `ollama pull` draws them:
 *
 * ```text
 * pulling manifest
 * pulling de20d2cf2dc4: 100% ▕██████████████████▏  42 GB
 * pulling 3a1f2b3c4d5e:  30% ▕█████             ▏    1.2/4.0 GB  240 MB/s     12s
 * verifying sha256 digest
 * ```
 *
 * No line is longer than `width - 1` code points; trailing blanks are trimmed.
 */
export function renderTty(state: ProgressState, options: RenderTtyOptions): string[] {
  const limit = Math.max(1, Math.floor(options.width) - 1);
  return state.rows.map((row) =>
    row.kind === "phase"
      ? truncate(row.status, limit)
      : blobLine(state, row.blob, limit, options.now)
  );
}

// ---------------------------------------------------------------------------------------------
// Renderers

/** Turns progress events into output. */
export interface Renderer {
  /** Takes one event; output may be throttled. */
  handle(e: ProgressEvent): void;
  /**
   * Writes what is due now without waiting for another event. Call it on a timer to keep speed
   * and ETA current while a transfer stalls.
   */
  flush(): void;
  /** Writes the final output; later events are ignored. */
  close(): void;
}

/** Options shared by every renderer. */
export interface RendererOptions {
  /** Receives output; the renderers' only side effect. */
  write: (s: string) => void;
  /** Current time in ms (e.g. `() => performance.now()`). */
  now: () => number;
  /**
   * Minimum ms between throttled writes.
   * @default {100} for tty and json, 5000 for plain
   */
  intervalMs?: number;
  /**
   * Width in ms of the window speed and ETA are measured over.
   * @default {5000}
   */
  windowMs?: number;
}

/** Options for {@linkcode TtyRenderer}. */
export interface TtyRendererOptions extends RendererOptions {
  /**
   * Terminal columns, or a function read at each frame so resizes are followed.
   * @default {80}
   */
  width?: number | (() => number);
  /**
   * Terminal rows, or a function read at each frame; a taller frame shows its last rows, since
   * the cursor cannot move above the screen.
   * @default {Infinity}
   */
  height?: number | (() => number);
}

const ESC = "\x1b[";
const HIDE_CURSOR = `${ESC}?25l`;
const SHOW_CURSOR = `${ESC}?25h`;
const CLEAR_LINE = `${ESC}2K`;
// Synchronized output (DEC mode 2026): terminals that know it paint the frame at once, the rest
// ignore it. Ollama wraps its frames the same way.
const SYNC_BEGIN = `${ESC}?2026h`;
const SYNC_END = `${ESC}?2026l`;

function checkInterval(what: string, intervalMs: number): number {
  if (!Number.isFinite(intervalMs) || intervalMs < 0) {
    throw new RangeError(
      `Cannot create ${what}: intervalMs must be a finite number >= 0, received ${intervalMs}`,
    );
  }
  return intervalMs;
}

function checkSize(what: string, name: string, value: number | (() => number)): void {
  if (typeof value === "number" && !(value >= 1)) {
    throw new RangeError(`Cannot create ${what}: ${name} must be >= 1, received ${value}`);
  }
}

function readSize(value: number | (() => number), fallback: number): number {
  const n = typeof value === "function" ? value() : value;
  return n >= 1 ? n : fallback;
}

/**
 * Redraws the whole progress block in place on a terminal, like `ollama pull`. Frames are
 * throttled to `intervalMs`, except that phase changes and finished blobs draw at once; each
 * frame is one `write`.
 */
export class TtyRenderer implements Renderer {
  #state: ProgressState;
  #write: (s: string) => void;
  #now: () => number;
  #width: number | (() => number);
  #height: number | (() => number);
  #intervalMs: number;
  #drawn = 0;
  #lastDraw = -Infinity;
  #closed = false;

  constructor(options: TtyRendererOptions) {
    const { write, now, width = 80, height = Infinity, intervalMs = 100, windowMs } = options;
    checkSize("TTY renderer", "width", width);
    checkSize("TTY renderer", "height", height);
    this.#intervalMs = checkInterval("TTY renderer", intervalMs);
    this.#state = new ProgressState({ windowMs });
    this.#write = write;
    this.#now = now;
    this.#width = width;
    this.#height = height;
  }

  /** The folded state (read-only use). */
  get state(): ProgressState {
    return this.#state;
  }

  handle(e: ProgressEvent): void {
    if (this.#closed) return;
    const now = this.#now();
    this.#state.apply(e, now);
    if (e.type === "retry") return;
    const immediate = e.type !== "blob-start" && e.type !== "blob-progress";
    if (immediate || now - this.#lastDraw >= this.#intervalMs) this.#draw(now, false);
  }

  flush(): void {
    if (!this.#closed) this.#draw(this.#now(), false);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#draw(this.#now(), true);
  }

  #draw(now: number, final: boolean): void {
    const width = readSize(this.#width, 80);
    const height = Math.floor(readSize(this.#height, Infinity));
    let lines = renderTty(this.#state, { width, now });
    if (lines.length > height) lines = lines.slice(lines.length - height);
    if (lines.length === 0) return;
    let s = SYNC_BEGIN;
    if (this.#drawn === 0) {
      s += HIDE_CURSOR;
    } else {
      // The cursor rests at the end of the previous frame's last line.
      s += "\r";
      if (this.#drawn > 1) s += `${ESC}${this.#drawn - 1}A`;
    }
    s += lines.map((line) => CLEAR_LINE + line).join("\n");
    const extra = this.#drawn - lines.length;
    if (extra > 0) s += `\n${CLEAR_LINE}`.repeat(extra) + `${ESC}${extra}A`;
    if (final) s += `\n${SHOW_CURSOR}`;
    s += SYNC_END;
    this.#drawn = lines.length;
    this.#lastDraw = now;
    this.#write(s);
  }
}

/**
 * Log lines for a stderr that is not a terminal: a line when a blob starts, one per active blob
 * every `intervalMs` (@default 5000), one when it is done, one per retry and one per phase.
 */
export class PlainRenderer implements Renderer {
  #state: ProgressState;
  #write: (s: string) => void;
  #now: () => number;
  #intervalMs: number;
  #lastLine = new Map<string, number>();
  #closed = false;

  constructor(options: RendererOptions) {
    const { write, now, intervalMs = 5000, windowMs } = options;
    this.#intervalMs = checkInterval("plain renderer", intervalMs);
    this.#state = new ProgressState({ windowMs });
    this.#write = write;
    this.#now = now;
  }

  handle(e: ProgressEvent): void {
    if (this.#closed) return;
    const now = this.#now();
    const rowsBefore = this.#state.rows.length;
    this.#state.apply(e, now);
    switch (e.type) {
      case "manifest":
        if (this.#state.rows.length > rowsBefore) {
          this.#line(e.ref ? `pulling manifest for ${e.ref}` : "pulling manifest");
        }
        return;
      case "success":
        if (this.#state.rows.length > rowsBefore) {
          this.#line(e.ref ? `success: ${e.ref}` : "success");
        }
        return;
      case "verify":
      case "manifest-write":
        if (this.#state.rows.length > rowsBefore) this.#line(phaseStatus(e) ?? "");
        return;
      case "retry": {
        const what = e.digest === undefined ? "retrying" : `retrying ${shortDigest(e.digest)}`;
        const delay = e.delayMs > 0 ? `, in ${formatDuration(e.delayMs / 1000)}` : "";
        this.#line(`${what} (attempt ${e.attempt}${delay}): ${e.reason}`);
        return;
      }
      case "blob-start":
      case "blob-progress": {
        const blob = this.#state.blob(e.op, e.digest);
        if (blob === undefined) return;
        const key = `${e.op} ${e.digest}`;
        const last = this.#lastLine.get(key);
        if (last === undefined) {
          const resume = blob.initial > 0 ? ` (resuming at ${formatBytes(blob.initial)})` : "";
          this.#line(
            `${opWord(blob.op)} ${shortDigest(blob.digest)} ${formatBytes(blob.total)}${resume}`,
          );
          this.#lastLine.set(key, now);
        } else if (now - last >= this.#intervalMs) {
          this.#progressLine(blob, now);
        }
        return;
      }
      case "blob-done": {
        const blob = this.#state.blob(e.op, e.digest);
        if (blob === undefined) return;
        this.#lastLine.delete(`${e.op} ${e.digest}`);
        const name = `${opWord(blob.op)} ${shortDigest(blob.digest)}`;
        if (blob.mounted) return this.#line(`${name} mounted`);
        if (blob.skipped) return this.#line(`${name} already present`);
        const took = formatDuration(((blob.doneAt ?? now) - blob.startedAt) / 1000);
        const speed = this.#state.speed(blob, now);
        const rate = speed === undefined ? "" : `, ${formatRate(speed)}`;
        this.#line(`${name} done (${formatBytes(blob.total)} in ${took}${rate})`);
        return;
      }
    }
  }

  flush(): void {
    if (this.#closed) return;
    const now = this.#now();
    for (const row of this.#state.rows) {
      if (row.kind !== "blob" || row.blob.done) continue;
      const last = this.#lastLine.get(`${row.blob.op} ${row.blob.digest}`);
      if (last !== undefined && now - last >= this.#intervalMs) this.#progressLine(row.blob, now);
    }
  }

  close(): void {
    this.#closed = true;
  }

  #progressLine(blob: BlobProgress, now: number): void {
    const parts = [
      `${opWord(blob.op)} ${shortDigest(blob.digest)}`,
      `${percentOf(blob)}%`,
      formatSizePair(blob.completed, blob.total),
    ];
    const speed = this.#state.speed(blob, now);
    if (speed !== undefined) parts.push(formatRate(speed));
    const eta = this.#state.eta(blob, now);
    if (eta !== undefined) parts.push(`${formatDuration(eta)} left`);
    this.#line(parts.join(" "));
    this.#lastLine.set(`${blob.op} ${blob.digest}`, now);
  }

  #line(s: string): void {
    this.#write(`${s}\n`);
  }
}

/** One line of Ollama's `/api/pull` / `/api/push` stream (`api.ProgressResponse`). */
export interface OllamaProgressLine {
  status: string;
  digest?: string;
  total?: number;
  completed?: number;
}

interface JsonBlob {
  op: TransferOp;
  digest: string;
  total: number;
  completed: number;
  /** When a line for this blob was last written; undefined while none was. */
  writtenAt: number | undefined;
  written: { total: number; completed: number } | undefined;
}

/**
 * Ollama's `/api/pull` NDJSON: `{"status":"pulling manifest"}`, per layer
 * `{"status":"pulling <12 hex>","digest":"sha256:…","total":N,"completed":M}`, then
 * `verifying sha256 digest`, `writing manifest` (push: `pushing manifest`), `success`.
 * Like Ollama's Go struct (`omitempty`), zero `total` / `completed` are left out. Per-layer lines
 * are throttled per digest to `intervalMs` (@default 100), always keeping the first and the
 * final one (completed == total). Retries are not part of the protocol and are not written.
 */
export class JsonRenderer implements Renderer {
  #write: (s: string) => void;
  #now: () => number;
  #intervalMs: number;
  #blobs = new Map<string, JsonBlob>();
  #lastStatus: string | undefined;
  #closed = false;

  constructor(options: RendererOptions) {
    const { write, now, intervalMs = 100 } = options;
    this.#intervalMs = checkInterval("JSON renderer", intervalMs);
    this.#write = write;
    this.#now = now;
  }

  handle(e: ProgressEvent): void {
    if (this.#closed) return;
    switch (e.type) {
      case "retry":
        return;
      case "blob-start":
      case "blob-progress":
      case "blob-done": {
        const key = `${e.op} ${e.digest}`;
        let blob = this.#blobs.get(key);
        if (blob === undefined) {
          blob = {
            op: e.op,
            digest: e.digest,
            total: 0,
            completed: 0,
            writtenAt: undefined,
            written: undefined,
          };
          this.#blobs.set(key, blob);
        }
        blob.total = Math.max(0, e.total);
        blob.completed = e.type === "blob-done" ? blob.total : clamp(e.completed, 0, blob.total);
        const now = this.#now();
        const final = blob.completed === blob.total && e.type !== "blob-start";
        if (final) {
          if (blob.written?.completed !== blob.total || blob.written.total !== blob.total) {
            this.#writeBlob(blob, now);
          }
        } else if (
          blob.writtenAt === undefined || e.type === "blob-start" ||
          now - blob.writtenAt >= this.#intervalMs
        ) {
          this.#writeBlob(blob, now);
        }
        if (e.type === "blob-done") this.#blobs.delete(key);
        return;
      }
      default: {
        const status = phaseStatus(e);
        if (status === undefined || status === this.#lastStatus) return;
        this.#emit({ status });
      }
    }
  }

  /** Writes the latest value of every blob whose line was throttled away. */
  flush(): void {
    if (this.#closed) return;
    const now = this.#now();
    for (const blob of this.#blobs.values()) {
      const w = blob.written;
      if (w === undefined || w.completed !== blob.completed || w.total !== blob.total) {
        this.#writeBlob(blob, now);
      }
    }
  }

  close(): void {
    this.flush();
    this.#closed = true;
  }

  #writeBlob(blob: JsonBlob, now: number): void {
    const line: OllamaProgressLine = {
      status: `${opWord(blob.op)} ${shortDigest(blob.digest)}`,
      digest: blob.digest,
    };
    if (blob.total !== 0) line.total = blob.total;
    if (blob.completed !== 0) line.completed = blob.completed;
    this.#emit(line);
    blob.writtenAt = now;
    blob.written = { total: blob.total, completed: blob.completed };
  }

  #emit(line: OllamaProgressLine): void {
    this.#lastStatus = line.digest === undefined ? line.status : undefined;
    this.#write(`${JSON.stringify(line)}\n`);
  }
}

/** Writes nothing (`--quiet`). */
export class QuietRenderer implements Renderer {
  handle(_e: ProgressEvent): void {}
  flush(): void {}
  close(): void {}
}

/** Output modes of {@linkcode createRenderer}. */
export type RendererMode = "tty" | "plain" | "json" | "quiet";

/** Creates the renderer for a mode; `width` and `height` are used by "tty" only. */
export function createRenderer(mode: RendererMode, options: TtyRendererOptions): Renderer {
  switch (mode) {
    case "tty":
      return new TtyRenderer(options);
    case "plain":
      return new PlainRenderer(options);
    case "json":
      return new JsonRenderer(options);
    case "quiet":
      return new QuietRenderer();
    default:
      throw new RangeError(
        `Cannot create renderer: mode must be "tty", "plain", "json" or "quiet", received "${
          String(mode)
        }"`,
      );
  }
}
