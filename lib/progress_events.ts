/**
 * Progress leaves `lib/` as plain event objects; renderers in `progress.ts`
 * turn them into terminal bars, plain log lines or Ollama's `/api/pull` NDJSON.
 */

export type ProgressEvent =
  /** Resolving a reference: Ollama's "pulling manifest" (push: "retrieving manifest"). */
  | { type: "manifest"; ref: string; op?: "pull" | "push" }
  /** A blob is known; `completed` is what is already on disk (credited up front). */
  | { type: "blob-start"; op: "pull" | "push"; digest: string; total: number; completed: number }
  /** Bytes moved for a blob. `completed` may go down when a failed attempt is discarded. */
  | { type: "blob-progress"; op: "pull" | "push"; digest: string; total: number; completed: number }
  /** A blob is in place; `skipped` when nothing had to be transferred (present or mounted). */
  | {
    type: "blob-done";
    op: "pull" | "push";
    digest: string;
    total: number;
    skipped: boolean;
    mounted?: boolean;
  }
  /** A retry is about to happen (shown in plain / verbose output only). */
  | { type: "retry"; digest?: string; attempt: number; reason: string; delayMs: number }
  /** Ollama's "verifying sha256 digest". */
  | { type: "verify" }
  /** Ollama's "writing manifest" / "pushing manifest". */
  | { type: "manifest-write"; op: "pull" | "push" }
  /** Ollama's "success". */
  | { type: "success"; ref: string }
  /** Something the user should know that did not stop the transfer (a mirror fell over). */
  | { type: "warning"; message: string };

export type OnProgress = (event: ProgressEvent) => void;
