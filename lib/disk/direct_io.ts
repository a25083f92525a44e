/**
 * Direct I/O (`O_DIRECT`) for the big sequential writes and reads of a range
 * download, used by the write and hash workers where the platform has it (Linux).
 *
 * Why: a pull writes every byte once and reads it back once to hash it in order.
 * Through the page cache that costs the kernel a page allocation and a copy per
 * 4 KiB both ways; measured on the 2-core benchmark VM after a cache drop, 2 GiB
 * buffered cost 1.3-3.6 s of system time to write and 2.3 s to read cold, against
 * 0.15 s and 0.08 s with O_DIRECT (the device does the copy), and a model pulled
 * this way does not evict everything else from the cache. The costs: writes and
 * reads must be aligned (offset, length and memory address), so the workers copy
 * through an aligned staging buffer and send unaligned heads and tails through
 * an ordinary descriptor; and the hash re-reads every byte from the device
 * instead of the page cache, doubling the disk traffic. On the benchmark VM the
 * system time of a 2 GiB pull fell from ~2.0 s to ~1.0 s but the wall time only
 * 3-5%: the pull is bound by CPU (registry, receive, SHA-256) on two cores, and
 * on a slow disk the read-back would cost more than it saves. So it is opt-in:
 * `HAUL_DIRECT_IO=1`.
 */
import * as fs from "node:fs";
import process from "node:process";

/** Alignment used for offsets, lengths and buffers (covers 512 and 4096-byte sectors). */
export const DIRECT_ALIGN = 4096;

const O_DIRECT: number | undefined = (fs.constants as Record<string, number>).O_DIRECT;

/** Whether direct I/O is asked for (`HAUL_DIRECT_IO=1`) and the platform has it. */
export function directIoWanted(): boolean {
  if (!O_DIRECT) return false;
  let v: string | undefined;
  try {
    v = process.env.HAUL_DIRECT_IO;
  } catch {
    v = undefined; // no env permission: the default
  }
  return v === "1" || v === "true";
}

/**
 * Opens `path` with O_DIRECT (`write`: read-write, else read-only), or returns
 * undefined where the file system refuses it (tmpfs, some FUSE and network mounts).
 */
export function openDirect(path: string, write: boolean): number | undefined {
  if (!directIoWanted()) return undefined;
  try {
    return fs.openSync(path, (write ? fs.constants.O_RDWR : fs.constants.O_RDONLY) | O_DIRECT!);
  } catch {
    return undefined;
  }
}

/**
 * `count` views of `size` bytes whose memory addresses suit direct I/O next to
 * `path`, found by probing: JavaScript cannot see addresses (V8 backing stores
 * are 16-byte aligned in Deno, page aligned in Bun), so each candidate offset
 * writes one block to a scratch file beside `path` with O_DIRECT until the
 * kernel takes it (a misaligned buffer is refused with EINVAL). Reads of holes
 * skip that check, hence a write. The scratch file is named like a small-blob
 * temp file of this process (`<path>-<pid>-<hex>`), so a crash leaves nothing
 * the next pull does not remove. Undefined where direct I/O does not work.
 */
export function alignedBuffers(
  path: string,
  count: number,
  size: number,
): Uint8Array<ArrayBuffer>[] | undefined {
  if (!directIoWanted()) return undefined;
  const scratch = `${path}-${process.pid}-${
    Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, "0")
  }`;
  let fd: number;
  try {
    fd = fs.openSync(
      scratch,
      fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | O_DIRECT!,
      0o600,
    );
  } catch {
    return undefined;
  }
  try {
    const out: Uint8Array<ArrayBuffer>[] = [];
    for (let i = 0; i < count; i++) {
      const raw = new Uint8Array(size + DIRECT_ALIGN);
      let found: Uint8Array<ArrayBuffer> | undefined;
      for (let k = 0; k < DIRECT_ALIGN && !found; k += 16) {
        try {
          fs.writeSync(fd, raw, k, DIRECT_ALIGN, 0);
          found = raw.subarray(k, k + size);
        } catch {
          // EINVAL: misaligned, try the next offset
        }
      }
      if (!found) return undefined;
      out.push(found);
    }
    return out;
  } finally {
    fs.closeSync(fd);
    try {
      fs.unlinkSync(scratch);
    } catch {
      // gone already
    }
  }
}

export const alignDown = (n: number): number => n - (n % DIRECT_ALIGN);
export const alignUp = (n: number): number => alignDown(n + DIRECT_ALIGN - 1);
