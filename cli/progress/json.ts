/** Ollama's `/api/pull` NDJSON. */
import type { ProgressEvent } from "../../lib/progress_events.ts";
import { opWord, shortDigest, type TransferOp } from "./format.ts";
import { checkInterval, type Renderer, type RendererOptions } from "./renderer.ts";
import { clamp, phaseStatus } from "./state.ts";

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
      case "warning":
        // What a registry said beside its answer (a `Warning` header, a rate limit running low).
        this.#emit({ status: `warning: ${e.message}` });
        return;
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
