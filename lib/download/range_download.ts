/**
 * Downloads one blob into a file, verified, resumable.
 *
 * Small blobs: one GET, hashed as the bytes stream, written to a private temp
 * file, renamed when size and digest match.
 *
 * Large blobs: one `<blob>-partial` file of full size; HTTP Range parts fetched
 * concurrently and written in place at their offsets (batched writes); a JSON
 * state file records how much of each part is on disk, so a later run continues
 * where this one stopped. SHA-256 runs in order over the contiguous written prefix
 * as it grows (see hasher.ts), so the digest is ready when the last byte lands:
 * no second read of the finished file. A part that stalls is re-fetched from
 * where it stopped without counting as a retry (bounded separately); a part far
 * slower than the median is re-fetched (counted from the third time), as in
 * Ollama's transfer code. A server that answers a Range request with 200 and the
 * whole body (distribution's proxy mode) is handled by turning the rest of the
 * blob into one sequential stream.
 *
 * The steps, one file each:
 * - small_blob.ts: the small-blob download;
 * - large_blob.ts: the large-blob driver (lock, resume, run the parts, verify, rename);
 * - plan_parts.ts: cutting a blob into parts, and the written-without-a-gap watermark;
 * - partial_file.ts: the partial file, its resume state, background fsync, the final rename;
 * - part_runner.ts: one part's attempts and retries, and a 200 taking over the blob;
 * - attempt.ts: one GET streamed into the file (the per-chunk loop);
 * - stall_watch.ts: stall and slow-part detection; speed_tracker.ts: the median speed;
 * - retry_verdict.ts: what a failure means; chunk_check.ts: chunksum checks.
 */
import type { BlobContext, BlobJob } from "./blob_job.ts";
import { downloadLarge } from "./large_blob.ts";
import { downloadSmall } from "./small_blob.ts";

export type { BlobContext, BlobJob, RangeTuning } from "./blob_job.ts";
export { SpeedTracker } from "./speed_tracker.ts";

/** Returns bytes transferred over the network for this blob. */
export async function downloadBlob(job: BlobJob, ctx: BlobContext): Promise<number> {
  if (job.size <= ctx.tuning.singleStreamMax) return await downloadSmall(job, ctx);
  return await downloadLarge(job, ctx);
}
