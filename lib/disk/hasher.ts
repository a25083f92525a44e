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

/** A file being hashed by the worker; moves to `inline` if the worker dies. */
interface WorkerJob {
  path: string;
  sent: number;
  inline?: FileHasher;
  finishing?: {
    size: number;
    resolve: (r: { digest: string; bytes: number }) => void;
    reject: (e: Error) => void;
  };
}

let worker: Worker | undefined;
// A worker that failed to start or crashed is not tried again in this process.
let workerBroken = false;
let nextId = 1;
/** Jobs the current worker holds. The worker is terminated when none are left. */
const jobs = new Map<number, WorkerJob>();

function getWorker(): Worker | undefined {
  if (typeof Worker !== "function" || workerBroken) return undefined;
  if (!worker) {
    try {
      // A string path, resolved against this module: `bun build --compile` embeds
      // lib/disk/hash_worker.ts when it is an entrypoint (see scripts/compile.sh).
      worker = new Worker(new URL("./hash_worker.ts", import.meta.url).href, { type: "module" });
    } catch {
      workerBroken = true;
      return undefined;
    }
    worker.onmessage = (e: MessageEvent<Reply>) => {
      const job = jobs.get(e.data.id);
      if (!job?.finishing) return;
      jobs.delete(e.data.id);
      const { resolve, reject } = job.finishing;
      const r = e.data;
      if (r.error || r.digest === undefined) reject(new Error(r.error ?? "no digest"));
      else resolve({ digest: r.digest, bytes: r.bytes ?? 0 });
      releaseWorker();
    };
    // Loading can fail after `new Worker` returned (a compiled binary without the
    // worker file, a blocked import): finish every job on this thread instead.
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault?.();
      workerBroken = true;
      worker?.terminate();
      worker = undefined;
      const moved = [...jobs.values()];
      jobs.clear();
      for (const job of moved) toInline(job);
    };
  }
  return worker;
}

function toInline(job: WorkerJob): void {
  try {
    job.inline = inlineHasher(job.path);
    job.inline.advance(job.sent);
  } catch (err) {
    job.inline?.close();
    job.inline = failedHasher(err as Error);
  }
  const f = job.finishing;
  if (f) job.inline.finish(f.size).then(f.resolve, f.reject);
}

function failedHasher(err: Error): FileHasher {
  return { advance() {}, finish: () => Promise.reject(err), close() {} };
}

function releaseWorker(): void {
  if (jobs.size === 0 && worker) {
    worker.terminate();
    worker = undefined;
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
  const job: WorkerJob = { path, sent: 0 };
  jobs.set(id, job);
  let closed = false;
  w.postMessage({ op: "open", id, path });
  return {
    advance(to) {
      if (closed || to <= job.sent) return;
      job.sent = to;
      if (job.inline) job.inline.advance(to);
      else w.postMessage({ op: "advance", id, to });
    },
    finish(size) {
      if (closed) return Promise.reject(new Error("hasher closed"));
      closed = true;
      if (job.inline) return job.inline.finish(size);
      return new Promise((resolve, reject) => {
        job.finishing = { size, resolve, reject };
        w.postMessage({ op: "finish", id, size });
      });
    },
    close() {
      if (closed) return;
      closed = true;
      if (job.inline) return job.inline.close();
      jobs.delete(id);
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
