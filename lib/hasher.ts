/**
 * Ordered SHA-256 of a file that is being written out of order.
 *
 * The range downloader tells the hasher how far the contiguous written prefix
 * reaches (`advance`); the hasher reads that prefix back from the page cache and
 * hashes it, in a Worker when the runtime has one (Deno, Bun) so hashing runs on
 * the second core while the main thread drives the network. Reading back from the
 * page cache costs ~0.1 s per 2 GiB here; hashing ~1.4 s. What is hashed is what is
 * on disk, so the digest vouches for the file that gets renamed.
 */
import * as fs from "node:fs";
import { createHash } from "node:crypto";

export interface FileHasher {
  /** Bytes [0, to) of the file are written. Must not decrease. */
  advance(to: number): void;
  /** Hashes up to `size` and resolves with the digest; the hasher is then closed. */
  finish(size: number): Promise<{ digest: string; bytes: number }>;
  /** Stops hashing and releases the file. */
  close(): void;
}

type Reply = { id: number; digest?: string; bytes?: number; error?: string };

let worker: Worker | undefined;
let workerRefs = 0;
let nextId = 1;
const pending = new Map<number, { resolve: (r: Reply) => void }>();

function getWorker(): Worker | undefined {
  if (typeof Worker !== "function") return undefined;
  if (!worker) {
    try {
      worker = new Worker(new URL("./hash_worker.ts", import.meta.url).href, { type: "module" });
    } catch {
      return undefined;
    }
    worker.onmessage = (e: MessageEvent<Reply>) => {
      const p = pending.get(e.data.id);
      pending.delete(e.data.id);
      p?.resolve(e.data);
    };
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault?.();
      for (const [id, p] of pending) p.resolve({ id, error: e.message || "hash worker failed" });
      pending.clear();
      worker?.terminate();
      worker = undefined;
    };
  }
  workerRefs++;
  return worker;
}

function releaseWorker(): void {
  if (--workerRefs <= 0 && worker) {
    worker.terminate();
    worker = undefined;
    workerRefs = 0;
  }
}

/** Options for {@link createFileHasher}. */
export interface FileHasherOptions {
  /** Hash on the calling thread instead of a Worker. @default false */
  inline?: boolean;
}

/** Starts an ordered hasher over `path`. */
export function createFileHasher(path: string, options: FileHasherOptions = {}): FileHasher {
  const w = options.inline ? undefined : getWorker();
  return w ? workerHasher(w, path) : inlineHasher(path);
}

function workerHasher(w: Worker, path: string): FileHasher {
  const id = nextId++;
  let closed = false;
  let sent = 0;
  w.postMessage({ op: "open", id, path });
  return {
    advance(to) {
      if (closed || to <= sent) return;
      sent = to;
      w.postMessage({ op: "advance", id, to });
    },
    finish(size) {
      if (closed) return Promise.reject(new Error("hasher closed"));
      closed = true;
      return new Promise((resolve, reject) => {
        pending.set(id, {
          resolve: (r) => {
            releaseWorker();
            if (r.error || r.digest === undefined) reject(new Error(r.error ?? "no digest"));
            else resolve({ digest: r.digest, bytes: r.bytes ?? 0 });
          },
        });
        w.postMessage({ op: "finish", id, size });
      });
    },
    close() {
      if (closed) return;
      closed = true;
      w.postMessage({ op: "close", id });
      releaseWorker();
    },
  };
}

function inlineHasher(path: string): FileHasher {
  const fd = fs.openSync(path, "r");
  const hash = createHash("sha256");
  const buf = new Uint8Array(4 << 20);
  let pos = 0;
  let closed = false;
  const read = (to: number) => {
    while (pos < to) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.byteLength, to - pos), pos);
      if (n <= 0) throw new Error(`file ended at ${pos} before ${to}`);
      hash.update(buf.subarray(0, n));
      pos += n;
    }
  };
  const close = () => {
    if (!closed) fs.closeSync(fd);
    closed = true;
  };
  return {
    advance(to) {
      if (!closed) read(to);
    },
    finish(size) {
      try {
        read(size);
        const digest = "sha256:" + hash.digest("hex");
        close();
        return Promise.resolve({ digest, bytes: pos });
      } catch (e) {
        close();
        return Promise.reject(e);
      }
    },
    close,
  };
}
