/** The renderer interface and the options every renderer shares. */
import type { ProgressEvent } from "../../lib/progress_events.ts";

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

export function checkInterval(what: string, intervalMs: number): number {
  if (!Number.isFinite(intervalMs) || intervalMs < 0) {
    throw new RangeError(
      `Cannot create ${what}: intervalMs must be a finite number >= 0, received ${intervalMs}`,
    );
  }
  return intervalMs;
}

export function checkSize(what: string, name: string, value: number | (() => number)): void {
  if (typeof value === "number" && !(value >= 1)) {
    throw new RangeError(`Cannot create ${what}: ${name} must be >= 1, received ${value}`);
  }
}

export function readSize(value: number | (() => number), fallback: number): number {
  const n = typeof value === "function" ? value() : value;
  return n >= 1 ? n : fallback;
}
