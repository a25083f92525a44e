/** Waiting and trying again after a step failed in a way worth retrying. */
import type { Blob } from "../registry/manifest.ts";
import { backoffDelay, sleep } from "../transport/retry.ts";
import type { UploadContext } from "./context.ts";
import { unwrap, UploadStepError } from "./errors.ts";

/** Runs a bodiless step, retrying the failures worth retrying. */
export async function withRetries<T>(
  ctx: UploadContext,
  b: Blob,
  step: () => Promise<T>,
): Promise<T> {
  for (let attempt = 0;; attempt++) {
    try {
      return await step();
    } catch (err) {
      if (!(err instanceof UploadStepError) || !err.retryable || attempt >= ctx.policy.maxRetries) {
        throw unwrap(err);
      }
      await pause(ctx, b, attempt, err);
    }
  }
}

/** Backs off before retry `attempt + 1`, telling the renderer why. */
export async function pause(
  ctx: UploadContext,
  b: Blob,
  attempt: number,
  err: Error,
): Promise<void> {
  const delayMs = backoffDelay(attempt + 1, ctx.policy);
  ctx.emit({ type: "retry", digest: b.digest, attempt: attempt + 1, reason: err.message, delayMs });
  await sleep(delayMs, ctx.signal);
}
