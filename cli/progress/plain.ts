/** Plain log lines for a stderr that is not a terminal. */
import type { ProgressEvent } from "../../lib/progress_events.ts";
import {
  formatBytes,
  formatDuration,
  formatRate,
  formatSizePair,
  opWord,
  shortDigest,
} from "./format.ts";
import { checkInterval, type Renderer, type RendererOptions } from "./renderer.ts";
import { type BlobProgress, percentOf, phaseStatus, ProgressState } from "./state.ts";

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
          const what = e.op === "push" ? "retrieving manifest" : "pulling manifest";
          this.#line(e.ref ? `${what} for ${e.ref}` : what);
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
