/**
 * What every step of one `upload()` call shares: the destination, the tuning and retry
 * policy, the signal, the running result and the progress accounting.
 */
import type { OnProgress } from "../progress_events.ts";
import type { Blob } from "../registry/manifest.ts";
import type { RegistryTraits } from "../registry/session.ts";
import type { RetryPolicy } from "../transport/retry.ts";
import type { UploadTarget } from "./target.ts";
import type { OpenBlob, Tuning, UploadResult } from "./options.ts";

/** One `upload()` call, passed from step to step. */
export interface UploadContext {
  readonly target: UploadTarget;
  /** Registry base URL (state files are keyed by its origin). */
  readonly baseUrl: string;
  readonly repository: string;
  readonly tuning: Tuning;
  readonly policy: RetryPolicy;
  /** Aborted on the caller's signal and on the first blob that fails. */
  readonly signal: AbortSignal;
  readonly emit: OnProgress;
  /** Counted as the steps go. */
  readonly result: UploadResult;
  readonly progress: Progress;
  readonly openBlob: OpenBlob;
  /** Where state files go; undefined: resume only within this run. */
  readonly stateDir?: string;
  /** The directory blobs are read from, named in a corrupt-blob message. */
  readonly srcDir?: string;
  /** The store to re-hash a refused blob in; undefined when blobs come from `open`. */
  readonly storeDir?: string;
  /** Send the bytes as Ollama's registry wants them (redirected.ts). */
  readonly redirectUploads: boolean;
  /** What the registry has shown it wants (the session's, shared by the run). */
  readonly learned: RegistryTraits;
}

/** Bytes in place per blob, summed for `onProgress`, with per-blob events. */
export class Progress {
  readonly #total: number;
  readonly #emit: OnProgress;
  readonly #onProgress?: (completed: number, total: number) => void;
  readonly #credited = new Map<string, number>();
  #completed = 0;
  constructor(
    total: number,
    emit: OnProgress,
    onProgress?: (completed: number, total: number) => void,
  ) {
    this.#total = total;
    this.#emit = emit;
    this.#onProgress = onProgress;
  }

  /** `n` bytes of `b` are in place (it may go back, when a session starts over). */
  credit(b: Blob, n: number): void {
    this.#completed += n - (this.#credited.get(b.digest) ?? 0);
    this.#credited.set(b.digest, n);
    this.#onProgress?.(this.#completed, this.#total);
  }

  /** The registry has `b` already, or mounted it. */
  present(b: Blob, mounted: boolean): void {
    // Ollama sends one line for a layer the registry has; blob-done alone renders as that.
    this.credit(b, b.size);
    this.#emit({
      type: "blob-done",
      op: "push",
      digest: b.digest,
      total: b.size,
      skipped: true,
      ...(mounted ? { mounted: true } : {}),
    });
  }

  /** `n` bytes of `b` sent (or acknowledged). */
  sent(b: Blob, n: number): void {
    this.credit(b, n);
    this.#emit({
      type: "blob-progress",
      op: "push",
      digest: b.digest,
      total: b.size,
      completed: n,
    });
  }
}
