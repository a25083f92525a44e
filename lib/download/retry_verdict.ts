/**
 * What a failed attempt means: a stall (re-fetched at once, bounded separately),
 * a failure worth a retry with backoff, or the end of the download.
 */
import {
  HaulError,
  IntegrityError,
  InterruptedError,
  isFatalFsError,
  NetworkError,
  RegistryError,
} from "../errors.ts";
import { isTransientError } from "../transport/retry.ts";
import type { BlobContext } from "./blob_job.ts";
import { AttemptCut } from "./stall_watch.ts";

export interface Verdict {
  stall: boolean;
  reason: string;
  fatal?: Error;
  exhausted?: Error;
}

export function classify(
  err: unknown,
  ctx: BlobContext,
  failures: number,
  stalls: number,
): Verdict {
  if (ctx.signal?.aborted) {
    return { stall: false, reason: "interrupted", fatal: new InterruptedError() };
  }
  if (err instanceof AttemptCut) {
    const v: Verdict = {
      stall: err.kind === "stall",
      reason: err.message,
      exhausted: new NetworkError(
        `A part of the blob stayed under 10% of the median part speed after ${failures + 1} tries`,
      ),
    };
    if (err.kind === "stall" && stalls + 1 > ctx.tuning.maxStalls) {
      v.fatal = new NetworkError(
        `Download stalled ${stalls + 1} times (no data for ${
          ctx.tuning.stallTimeoutMs / 1000
        } s); giving up`,
      );
    }
    return v;
  }
  if (err instanceof HaulError && isFatalFsError(err.cause)) {
    return { stall: false, reason: err.message, fatal: err };
  }
  if (err instanceof RegistryError) {
    // The transport already retried retryable statuses (honouring Retry-After)
    // as often as the policy allows: another round here would square the count.
    return { stall: false, reason: err.message, fatal: err };
  }
  const message = (err as Error)?.message ?? String(err);
  const exhausted = err instanceof HaulError
    ? err
    : new NetworkError(`Download failed after ${failures + 1} attempts: ${message}`, {
      cause: err,
    });
  if (failures + 1 > ctx.tuning.retry.maxRetries) {
    return { stall: false, reason: message, fatal: exhausted };
  }
  if (err instanceof IntegrityError || err instanceof NetworkError || isTransientError(err)) {
    return { stall: false, reason: message, exhausted };
  }
  if (err instanceof HaulError) return { stall: false, reason: message, fatal: err };
  return { stall: false, reason: message, exhausted };
}
