/**
 * Positional block writes, on a Worker thread when the runtime has one (see
 * write_worker.ts), else on the calling thread. The caller hands over its buffer
 * and gets it back (the same memory, transferred twice) when the bytes are in
 * the file.
 */
import { open } from "node:fs/promises";

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
  /** Closes the writer's handle on `path` (after its last write). */
  close(path: string): void;
}

type Reply = { id: number; buf: ArrayBuffer; error?: string; code?: string } | { pong: true };

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
    else p.resolve(r.buf);
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

/** Options for {@link acquireBlockWriter}. */
export interface BlockWriterOptions {
  /** Use a Worker thread when one can start. @default true */
  worker?: boolean;
}

/** A writer for one transfer; `release()` it when done so the worker can stop. */
export function acquireBlockWriter(options: BlockWriterOptions = {}): BlockWriter & {
  release(): void;
} {
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
