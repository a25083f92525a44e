/**
 * Positional block writes off the calling thread. Under Deno on its own I/O threads
 * (Deno.FsFile's async writes), the buffer lent for the duration of the write;
 * elsewhere, and with direct I/O asked for (`HAUL_DIRECT_IO=1`, which only the
 * Worker stages), on a Worker thread (see write_worker.ts) that the buffer is
 * transferred to and back. Either way the caller gets its buffer back when the
 * bytes are in the file.
 *
 * Measured per GiB of 1 MiB writes into the page cache (scripts/bench/write_probe.ts):
 * a postMessage round trip to the Worker cost 46-83 ms of user CPU in Deno, an
 * FsFile write 20-30 ms; a 1 GiB pull under Deno took 0.80 s of user CPU instead of
 * 0.91 and 119 MB instead of 135 (no Worker isolate). Deno's node:fs `write` runs
 * on the calling thread, so it is not used. Bun keeps the Worker, fed by `writeChunks`:
 * its fetch body hands out every chunk in a buffer of its own, and those buffers are
 * transferred as they are, 1 MiB of them per message, instead of being copied into a
 * write buffer that makes the round trip. A 1 GiB pull from the binary (medians of 3,
 * scripts/bench/cpu_stages.ts): peak RSS 198 → 115 MB, main thread 0.85 → 0.60 CPU-s,
 * user CPU 1.54 → 1.53 s (the Worker now frees the buffers: 0.43 → 0.52 CPU-s).
 * Bun's node:fs `write` on its pool instead of the Worker, tried on top of that: user
 * CPU 1.48 → 1.38 s, but system CPU 1.20 → 1.49 s and RSS 118 → 173 MB (why was not
 * found: its pool threads' own write calls took 0.5 s of system CPU), so it is not used.
 */
import * as fs from "node:fs";
import { open } from "node:fs/promises";
import { directIoWanted } from "./direct_io.ts";

export interface BlockWriter {
  /**
   * Writes `buf[0, len)` at `offset` of `path` (which must exist). Resolves with
   * the buffer to use from now on (`buf` itself may be detached meanwhile).
   */
  write(
    path: string,
    offset: number,
    buf: Uint8Array<ArrayBuffer>,
    len: number,
  ): Promise<Uint8Array<ArrayBuffer>>;
  /**
   * Writes `chunks`, one after the other, at `offset` of `path`. The chunks are the
   * writer's from then on (a Worker takes their buffers over, without a copy): the
   * caller must not touch them again.
   */
  writeChunks(path: string, offset: number, chunks: Uint8Array[]): Promise<void>;
  /** Closes the writer's handle on `path` (after its last write). */
  close(path: string): void;
}

/** `chunks` written one by one through `write` (writers without a batch path). */
async function writeEach(w: BlockWriter, path: string, offset: number, chunks: Uint8Array[]) {
  for (const c of chunks) {
    const own = c.byteOffset === 0 && c.buffer.byteLength === c.byteLength && c.buffer instanceof
        ArrayBuffer
      ? c as Uint8Array<ArrayBuffer>
      : c.slice();
    await w.write(path, offset, own, own.byteLength);
    offset += c.byteLength;
  }
}

type Reply = { id: number; buf?: ArrayBuffer; error?: string; code?: string } | { pong: true };

let worker: Worker | undefined;
let ready = false;
let readyWait: Promise<void> | undefined;
let onReady: (() => void) | undefined;
let broken = false;
let nextId = 1;
let users = 0;
const pending = new Map<
  number,
  { resolve: (b: ArrayBuffer) => void; reject: (e: Error) => void }
>();

function startWorker(): void {
  if (worker || broken || typeof Worker !== "function") return;
  try {
    worker = new Worker(new URL("./write_worker.ts", import.meta.url).href, { type: "module" });
  } catch {
    broken = true;
    return;
  }
  worker.onmessage = (e: MessageEvent<Reply>) => {
    const r = e.data;
    if ("pong" in r) {
      ready = true;
      onReady?.();
      return;
    }
    const p = pending.get(r.id);
    pending.delete(r.id);
    if (!p) return;
    if (r.error) p.reject(Object.assign(new Error(r.error), { code: r.code }));
    else p.resolve(r.buf ?? new ArrayBuffer(0));
    // Released while this write was in flight: stop now (a live Worker keeps the process up).
    if (users === 0 && pending.size === 0) stopWorker();
  };
  worker.onerror = (e: ErrorEvent) => {
    e.preventDefault?.();
    broken = true;
    ready = false;
    worker?.terminate();
    worker = undefined;
    onReady?.();
    for (const p of pending.values()) p.reject(new Error(`write worker failed: ${e.message}`));
    pending.clear();
  };
  // Until the worker answers, writes go through the calling thread: a worker
  // that cannot load (a binary built without it) never holds a buffer.
  worker.postMessage({ op: "ping" });
  // The first writes wait for the worker a little (it loads in ~0.1 s) rather than
  // taking the slow path; a worker not up after 3 s is given up on.
  readyWait = new Promise<void>((resolve) => {
    onReady = resolve;
    const t = setTimeout(() => {
      if (!ready) broken = true;
      resolve();
    }, 3000);
    (t as { unref?: () => void }).unref?.();
  });
}

function stopWorker(): void {
  worker?.terminate();
  worker = undefined;
  ready = false;
  readyWait = undefined;
}

async function writeInline(
  path: string,
  offset: number,
  buf: Uint8Array<ArrayBuffer>,
  len: number,
) {
  const fh = await open(path, "r+");
  try {
    let n = 0;
    while (n < len) n += (await fh.write(buf, n, len - n, offset + n)).bytesWritten;
  } finally {
    await fh.close();
  }
  return buf;
}

/**
 * Largest single buffered write(2), as in write_worker.ts: on the VMs measured here
 * (Firecracker with free page reporting) a 2 GiB file written in 1-8 MiB calls cost
 * 3-5.7 s of system time after a cache drop but 0.4-1.6 s in 32-256 KiB calls.
 */
const SYSCALL_MAX = 256 << 10;

interface DenoFsFile {
  seek(offset: number, whence: number): Promise<number>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}
// deno-lint-ignore no-explicit-any
const D = (globalThis as any).Deno as
  | { open(p: string, o: { write: boolean }): Promise<DenoFsFile> }
  | undefined;
/** Deno: FsFile writes run on its I/O threads (its node:fs `write` on the calling thread). */
const useDenoFile = typeof D?.open === "function" && !("Bun" in globalThis);

/**
 * Open handles on one file. Deno: one FsFile per write in flight (each seeks, then
 * writes; a handle is never shared by two writes). Elsewhere (Node, Bun if chosen):
 * one descriptor, positional writes.
 */
interface Handles {
  /** Idle FsFiles and where each one's position is (an attempt writes on from there). */
  free: { f: DenoFsFile; pos: number }[];
  fd?: Promise<number>;
  busy: number;
  closing: boolean;
}
const handles = new Map<string, Handles>();

function closeHandles(h: Handles): void {
  for (const { f } of h.free.splice(0)) f.close();
  h.fd?.then((fd) => fs.close(fd, () => {}), () => {});
}

function pwrite(fd: number, buf: Uint8Array, off: number, len: number, pos: number) {
  return new Promise<number>((resolve, reject) =>
    fs.write(fd, buf, off, len, pos, (err, n) => err ? reject(err) : resolve(n))
  );
}

/** `buf[0, len)` at `offset`, in calls of at most SYSCALL_MAX, on the runtime's I/O threads. */
async function writeAsync(path: string, offset: number, buf: Uint8Array, len: number) {
  let h = handles.get(path);
  if (!h) handles.set(path, h = { free: [], busy: 0, closing: false });
  h.busy++;
  try {
    let n = 0;
    if (useDenoFile) {
      // The handle the previous block of this stream left here needs no seek.
      const i = h.free.findIndex((x) => x.pos === offset);
      const idle = i >= 0 ? h.free.splice(i, 1)[0] : h.free.pop();
      const f = idle?.f ?? await D!.open(path, { write: true });
      try {
        if (idle?.pos !== offset) await f.seek(offset, 0);
        while (n < len) n += await f.write(buf.subarray(n, Math.min(len, n + SYSCALL_MAX)));
      } catch (err) {
        f.close();
        throw err;
      }
      h.free.push({ f, pos: offset + len });
    } else {
      h.fd ??= new Promise<number>((resolve, reject) =>
        fs.open(path, "r+", (err, fd) => err ? reject(err) : resolve(fd))
      );
      const fd = await h.fd.catch((err) => {
        h!.fd = undefined;
        throw err;
      });
      while (n < len) n += await pwrite(fd, buf, n, Math.min(len - n, SYSCALL_MAX), offset + n);
    }
  } finally {
    if (--h.busy === 0 && h.closing) closeHandles(h);
  }
}

/** Options for {@link acquireBlockWriter}. */
export interface BlockWriterOptions {
  /**
   * Write off the calling thread (Deno's I/O threads, else a Worker); false: on the
   * calling thread, one open per write. @default true
   */
  worker?: boolean;
  /**
   * Under Deno, write on its I/O threads rather than through the Worker (which
   * direct I/O always uses). @default true
   */
  asyncIo?: boolean;
}

/** A writer for one transfer; `release()` it when done so the worker can stop. */
export function acquireBlockWriter(options: BlockWriterOptions = {}): BlockWriter & {
  release(): void;
} {
  if (
    options.worker !== false && options.asyncIo !== false && useDenoFile && !directIoWanted()
  ) return asyncWriter();
  const useWorker = options.worker !== false;
  if (useWorker) {
    users++;
    startWorker();
  }
  let released = false;
  return {
    async write(path, offset, buf, len) {
      if (useWorker && !ready && !broken && readyWait) await readyWait;
      if (!useWorker || !ready || !worker || broken) return writeInline(path, offset, buf, len);
      const w = worker;
      const id = nextId++;
      const size = buf.byteLength;
      return new Promise<Uint8Array<ArrayBuffer>>((resolve, reject) => {
        pending.set(id, { resolve: (b) => resolve(new Uint8Array(b, 0, size)), reject });
        const ab = buf.byteOffset === 0 && buf.buffer.byteLength === size
          ? buf.buffer as ArrayBuffer
          : buf.slice().buffer; // a view into a larger buffer: copy, never transfer others' memory
        w.postMessage({ op: "write", id, path, offset, buf: ab, len }, [ab]);
      });
    },
    async writeChunks(path, offset, chunks) {
      if (useWorker && !ready && !broken && readyWait) await readyWait;
      if (!useWorker || !ready || !worker || broken) return writeEach(this, path, offset, chunks);
      const w = worker;
      const id = nextId++;
      // Each chunk's whole buffer goes over (transferred, no copy) with where the chunk is in it.
      const bufs: ArrayBuffer[] = [];
      const at: number[] = [];
      for (const c of chunks) {
        const whole = c.buffer instanceof ArrayBuffer && !bufs.includes(c.buffer);
        const ab = whole ? c.buffer as ArrayBuffer : c.slice().buffer;
        bufs.push(ab);
        at.push(whole ? c.byteOffset : 0, c.byteLength);
      }
      await new Promise<ArrayBuffer>((resolve, reject) => {
        pending.set(id, { resolve, reject });
        w.postMessage({ op: "writev", id, path, offset, bufs, at }, bufs);
      });
    },
    close(path) {
      worker?.postMessage({ op: "close", path });
    },
    release() {
      if (released || !useWorker) return;
      released = true;
      if (--users === 0 && pending.size === 0) stopWorker();
    },
  };
}

/** The default writer: async positional writes; `close` waits for writes in flight. */
function asyncWriter(): BlockWriter & { release(): void } {
  return {
    async write(path, offset, buf, len) {
      await writeAsync(path, offset, buf, len);
      return buf;
    },
    async writeChunks(path, offset, chunks) {
      for (const c of chunks) {
        await writeAsync(path, offset, c, c.byteLength);
        offset += c.byteLength;
      }
    },
    close(path) {
      const h = handles.get(path);
      if (!h) return;
      handles.delete(path);
      h.closing = true;
      if (h.busy === 0) closeHandles(h);
    },
    release() {},
  };
}
