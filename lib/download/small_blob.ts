/**
 * A small blob: one GET, hashed as the bytes stream, written to a private temp
 * file, renamed when size and digest match; any failure starts it over.
 */
import { rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { IntegrityError, storeError } from "../errors.ts";
import { Sha256 } from "../digest.ts";
import { createSized } from "../disk/fsio.ts";
import { backoffDelay, sleep } from "../transport/retry.ts";
import type { BlobContext, BlobJob } from "./blob_job.ts";
import { RangeLie, runAttempt } from "./attempt.ts";
import { finalize } from "./partial_file.ts";
import { classify } from "./retry_verdict.ts";

/** Returns bytes transferred over the network for this blob. */
export async function downloadSmall(job: BlobJob, ctx: BlobContext): Promise<number> {
  // `<partial>.<pid>-<hex>.tmp`, never `<blob>-partial-…`: stock Ollama JSON-decodes every
  // file matching `<blob>-partial-*` as its own part state (server/download.go, Prepare).
  const tmp = `${job.partialPath}.${process.pid}-${randomBytes(4).toString("hex")}.tmp`;
  let transferred = 0;
  let failures = 0;
  let stalls = 0;
  for (;;) {
    const slot = await (ctx.smallSlots ?? ctx.slots).acquire(ctx.signal);
    let held = true;
    // The connection is free once the bytes are in: the checks, fsync and rename below run
    // while the next blob's GET goes out (measured: 300 blobs of 64 KiB 0.85 s → see P8).
    const release = () => {
      if (held) slot();
      held = false;
    };
    let got = 0;
    try {
      const hash = new Sha256();
      await createSized(tmp, 0).catch((e) => {
        throw storeError("create", tmp, e);
      });
      try {
        got = await runAttempt(ctx, job, 0, job.size, tmp, hash, (n) => {
          transferred += n;
          ctx.onBytes(n);
        }, { restartOnError: true });
      } finally {
        ctx.writer.close(tmp);
      }
      release();
      if (hash.bytes !== job.size) {
        throw new IntegrityError(
          `Blob ${job.digest} is ${hash.bytes} bytes, the manifest says ${job.size}`,
        );
      }
      const digest = hash.digest();
      if (digest !== job.digest) {
        throw new IntegrityError(`Digest mismatch for ${job.digest}: the data hashes to ${digest}`);
      }
      // The directory is synced once for all small blobs, by download().
      await finalize(tmp, job.path, false);
      return transferred;
    } catch (err) {
      ctx.onBytes(-got);
      await rm(tmp, { force: true });
      const verdict = classify(err, ctx, failures, stalls);
      if (verdict.stall) stalls++;
      else failures++;
      // A corrupt small blob is fetched again from scratch once.
      if (err instanceof IntegrityError && !(err instanceof RangeLie) && failures <= 1) {
        continue;
      }
      if (verdict.fatal) throw verdict.fatal;
      const delayMs = verdict.stall ? 0 : backoffDelay(failures, ctx.tuning.retry);
      ctx.onRetry?.({ attempt: failures + stalls, reason: verdict.reason, delayMs });
      await sleep(delayMs, ctx.signal);
    } finally {
      release();
    }
  }
}
