/** Terminal progress: one frame of bars redrawn in place, like `ollama pull`. */
import type { ProgressEvent } from "../../lib/progress_events.ts";
import {
  formatBytes,
  formatDuration,
  formatRate,
  formatSizePair,
  opWord,
  shortDigest,
} from "./format.ts";
import {
  checkInterval,
  checkSize,
  readSize,
  type Renderer,
  type TtyRendererOptions,
} from "./renderer.ts";
import { type BlobProgress, clamp, percentOf, ProgressState } from "./state.ts";

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

const ESC = "\x1b[";
/** Columns the terminal's echo of Ctrl-C ("^C") takes. */
const ECHO_COLS = 2;
const HIDE_CURSOR = `${ESC}?25l`;
const SHOW_CURSOR = `${ESC}?25h`;
const CLEAR_LINE = `${ESC}2K`;
// Synchronized output (DEC mode 2026): terminals that know it paint the frame at once, the rest
// ignore it. Ollama wraps its frames the same way.
const SYNC_BEGIN = `${ESC}?2026h`;
const SYNC_END = `${ESC}?2026l`;

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
    // Two columns stay free after the last line, where the cursor rests: a Ctrl-C makes the
    // terminal echo "^C" there, and a line that then wraps would push the cursor one row down,
    // so the final frame would be drawn a row too low under a copy of its first line.
    let lines = renderTty(this.#state, { width: Math.max(1, width - ECHO_COLS), now });
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
