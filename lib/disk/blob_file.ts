/**
 * Blob files read in pieces for upload: a regular file of the expected size, read
 * by offset into fresh buffers, or streamed as a request body with bounded memory.
 */
import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";
import { digestToFileName } from "../digest.ts";
import { HaulError, IntegrityError, NotFoundError, storeError } from "../errors.ts";
import { fileSliceBody } from "./fsio.ts";

/** Reads a blob's bytes for upload. */
export interface BlobReader {
  /** Exactly the bytes `[offset, offset + length)` of the blob, in a fresh buffer. */
  read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
  /**
   * The same bytes as a body read as it is sent (bounded memory): a file-backed
   * `Blob` where the runtime has one (replayable), else a stream (sent once).
   * Readers that have it get large chunks streamed, see
   * {@link UploadTuning.chunkSize}. `onBytes` gets the stream's bytes handed over so far.
   */
  stream?(
    offset: number,
    length: number,
    onBytes?: (sent: number) => void,
  ): ReadableStream<Uint8Array<ArrayBuffer>> | globalThis.Blob;
  close(): Promise<void>;
}

/** Opens `sha256-<hex>` in `dir`, checking it is a file of the expected size. */
export function openStoreBlob(
  dir: string,
  blob: { digest: string; size: number },
): Promise<BlobReader> {
  return openBlobFile(join(dir, digestToFileName(blob.digest)), blob, {
    where: "the store",
    fix: ": pull the model again",
  });
}

/**
 * Opens a blob file for reading in pieces, checking it is a regular file of the
 * expected size; `where` and `fix` word the errors ("missing from the store").
 */
export async function openBlobFile(
  path: string,
  blob: { digest: string; size: number },
  words: { where: string; fix?: string },
): Promise<BlobReader> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r");
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new NotFoundError(`Blob ${blob.digest} is missing from ${words.where}: ${path}`);
    }
    throw storeError("open", path, e);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new NotFoundError(`Blob ${blob.digest} is not a file: ${path}`);
    if (st.size !== blob.size) {
      throw new IntegrityError(
        `Blob ${path} is ${st.size} bytes but the manifest says ${blob.size}${words.fix ?? ""}`,
      );
    }
  } catch (e) {
    await fh.close().catch(() => {});
    throw e instanceof HaulError ? e : storeError("read", path, e);
  }
  return {
    async read(offset, length) {
      const out = new Uint8Array(length);
      let n = 0;
      while (n < length) {
        let got: number;
        try {
          got = (await fh.read(out, n, length - n, offset + n)).bytesRead;
        } catch (e) {
          throw storeError("read", path, e);
        }
        if (got === 0) {
          throw new IntegrityError(`${path} ended at ${offset + n} bytes while being sent`);
        }
        n += got;
      }
      return out;
    },
    stream(offset, length, onBytes) {
      const blob = fileSliceBody(path, offset, offset + length);
      if (blob) return blob;
      let pos = offset;
      const end = offset + length;
      return new ReadableStream<Uint8Array<ArrayBuffer>>({
        async pull(controller) {
          const n = Math.min(STREAM_READ, end - pos);
          if (n <= 0) return controller.close();
          const buf = new Uint8Array(n);
          let got: number;
          try {
            got = (await fh.read(buf, 0, n, pos)).bytesRead;
          } catch (e) {
            return controller.error(storeError("read", path, e));
          }
          if (got === 0) {
            return controller.error(
              new IntegrityError(`${path} ended at ${pos} bytes while being sent`),
            );
          }
          pos += got;
          controller.enqueue(got === n ? buf : buf.subarray(0, got));
          onBytes?.(pos - offset);
        },
      }, { highWaterMark: 2 });
    },
    close: () => fh.close().catch(() => {}),
  };
}

/** Read size of a streamed chunk: 1 MiB reads, two queued (bounded memory). */
const STREAM_READ = 1 << 20;
