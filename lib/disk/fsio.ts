/**
 * The one place with runtime-specific file I/O.
 *
 * Measured here (2 GiB in 8 MiB writes): Deno's `Deno.FsFile.write` 0.87 s but its
 * `node:fs` positional `writeSync` 2.5 s and `FileHandle.write` 6 s; Bun's
 * `node:fs/promises` `FileHandle.write` 1.3 s. So on Deno a writer is an `FsFile`
 * opened per stream and seeked once (each open has its own file offset, so parallel
 * parts of one file never share a cursor); elsewhere it is positional `node:fs` writes.
 */
import * as fs from "node:fs";
import { open, rename } from "node:fs/promises";

/** A sequential writer starting at a fixed offset of an existing file. */
export interface OffsetWriter {
  /** Writes all of `data` at the current position and advances it. */
  write(data: Uint8Array): Promise<void>;
  /** Flushes file data to disk (fsync). */
  sync(): Promise<void>;
  close(): void;
}

interface DenoFsFile {
  write(p: Uint8Array): Promise<number>;
  seek(offset: number, whence: number): Promise<number>;
  sync(): Promise<void>;
  close(): void;
}
interface DenoNs {
  open(
    path: string,
    opts: { read?: boolean; write?: boolean; create?: boolean; truncate?: boolean },
  ): Promise<DenoFsFile>;
  rename(from: string, to: string): Promise<void>;
}
const denoNs = (globalThis as { Deno?: DenoNs }).Deno;
const useDeno = typeof denoNs?.open === "function" && !("Bun" in globalThis);

/** A writer on a Deno file handle: writes go on from its position; `close` is idempotent. */
function fileWriter(f: DenoFsFile): OffsetWriter {
  let closed = false;
  return {
    async write(data) {
      let n = 0;
      while (n < data.byteLength) n += await f.write(n ? data.subarray(n) : data);
    },
    sync: () => f.sync(),
    close() {
      if (!closed) f.close();
      closed = true;
    },
  };
}

/** Opens `path` (which must exist) for writing at `offset`. */
export async function openWriter(path: string, offset: number): Promise<OffsetWriter> {
  if (useDeno) {
    const f = await denoNs!.open(path, { write: true });
    try {
      if (offset) await f.seek(offset, 0);
    } catch (e) {
      f.close();
      throw e;
    }
    return fileWriter(f);
  }
  const fh = await open(path, "r+");
  let pos = offset;
  let closed = false;
  return {
    async write(data) {
      let n = 0;
      while (n < data.byteLength) {
        const { bytesWritten } = await fh.write(data, n, data.byteLength - n, pos + n);
        n += bytesWritten;
      }
      pos += data.byteLength;
    },
    sync: () => fh.sync(),
    close() {
      if (!closed) fh.close().catch(() => {});
      closed = true;
    },
  };
}

/**
 * Creates (or truncates) `path` and returns a writer at its start: one open for a
 * file written from start to end, synced and closed on the same handle. Small blobs
 * use it: their temp file was opened three times before (create, write, fsync).
 */
export async function createWriter(path: string): Promise<OffsetWriter> {
  if (!useDeno) {
    const fh = await open(path, "w");
    let closed = false;
    return {
      async write(data) {
        let n = 0;
        while (n < data.byteLength) {
          n += (await fh.write(data, n, data.byteLength - n)).bytesWritten;
        }
      },
      sync: () => fh.sync(),
      close() {
        if (!closed) fh.close().catch(() => {});
        closed = true;
      },
    };
  }
  return fileWriter(await denoNs!.open(path, { write: true, create: true, truncate: true }));
}

/**
 * `rename(2)`; under Deno its own op rather than node:fs's promisified wrapper of it.
 */
export function renamePath(from: string, to: string): Promise<void> {
  return useDeno ? denoNs!.rename(from, to) : rename(from, to);
}

/** Creates (or truncates to) a file of exactly `size` bytes, sparse where the FS allows. */
export async function createSized(path: string, size: number): Promise<void> {
  const fh = await open(path, "w");
  try {
    // "w" truncates already: a small blob's empty temp file needs no ftruncate (44 ms of 300).
    if (size > 0) await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

/** fsync a file by path. */
export async function syncPath(path: string): Promise<void> {
  const fh = await open(path, "r+");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync a directory so a rename in it is durable (best effort: not every OS allows it). */
export async function syncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // Windows and some filesystems refuse fsync on directories.
  }
}

/** Reads `length` bytes at `position` synchronously into `buf` (used by the hasher). */
export function preadSync(fd: number, buf: Uint8Array, length: number, position: number): number {
  return fs.readSync(fd, buf, 0, length, position);
}

interface BunNs {
  file(path: string): Blob;
}
const bunNs = (globalThis as { Bun?: BunNs }).Bun;

/**
 * `[start, end)` of a file as a `Blob` the runtime reads as it sends, where the
 * runtime has file-backed blobs (Bun: `Bun.file().slice()`, sent with bounded
 * memory and cheap to clone for a replay); undefined elsewhere (Deno's fetch
 * then gets a `ReadableStream`). Measured: a 2 GiB push in 256 MiB PATCHes took
 * 32 MB of RSS this way in Bun, 1.1 GB with a ReadableStream body (Bun buffers it).
 */
export function fileSliceBody(path: string, start: number, end: number): Blob | undefined {
  return bunNs?.file ? bunNs.file(path).slice(start, end) : undefined;
}
