/** Formatting for progress output: sizes, durations, rates, digests. */

/** Direction of a blob transfer. */
export type TransferOp = "pull" | "push";

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
export function formatSizePair(completed: number, total: number): string {
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
export function shortDigest(digest: string): string {
  return digest.slice(digest.indexOf(":") + 1).slice(0, 12);
}

export function opWord(op: TransferOp): string {
  return op === "pull" ? "pulling" : "pushing";
}
