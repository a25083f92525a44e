/**
 * A small blob: one GET, hashed as the bytes stream, written to a private temp
 * file, renamed when size and digest match; any failure starts it over.
 */
import { rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { IntegrityError, storeError } from "../errors.ts";
import { Sha256 } from "../digest.ts";
import type { BlockWriter } from "../disk/block_writer.ts";
import { createWriter, type OffsetWriter, renamePath } from "../disk/fsio.ts";
import { backoffDelay, sleep } from "../transport/retry.ts";
import type { BlobContext, BlobJob } from "./blob_job.ts";
import { RangeLie, runAttempt } from "./attempt.ts";
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
    let file: OffsetWriter | undefined;
    try {
      const hash = new Sha256();
      // One handle for the temp file's life: created, written, synced and closed on it.
      file = await createWriter(tmp).catch((e) => {
        throw storeError("create", tmp, e);
      });
      got = await runAttempt(
        { ...ctx, writer: sequentialWriter(file) },
        job,
        0,
        job.size,
        tmp,
        hash,
        (n) => {
          transferred += n;
          ctx.onBytes(n);
        },
        { restartOnError: true },
      );
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
      // fsync, then the final name; the directory is synced once for all small blobs, by
      // download().
      try {
        await file.sync();
        file.close();
        await renamePath(tmp, job.path);
      } catch (e) {
        throw storeError("finish", job.path, e);
      }
      return transferred;
    } catch (err) {
      file?.close();
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

/**
 * The block writer of one attempt at a small blob: its bytes go in order, from offset 0,
 * through the temp file's one handle (no seek, no open per write).
 */
function sequentialWriter(file: OffsetWriter): BlockWriter {
  let at = 0;
  const check = (offset: number) => {
    if (offset !== at) throw new RangeError(`Small blob write at ${offset}, expected ${at}`);
  };
  return {
    async write(_path, offset, buf, len) {
      check(offset);
      await file.write(len === buf.byteLength ? buf : buf.subarray(0, len));
      at += len;
      return buf;
    },
    async writeChunks(_path, offset, chunks) {
      check(offset);
      for (const c of chunks) {
        await file.write(c);
        at += c.byteLength;
      }
    },
    close() {},
  };
}
