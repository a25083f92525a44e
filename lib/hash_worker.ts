/**
 * Hashes files in order from the page cache, off the main thread.
 * Messages are handled synchronously one at a time, so reads never interleave.
 * Protocol: see hasher.ts.
 */
import { createHash, type Hash } from "node:crypto";
import * as fs from "node:fs";

interface Job {
  fd: number;
  hash: Hash;
  pos: number;
}
type Msg =
  | { op: "open"; id: number; path: string; start?: number }
  | { op: "advance"; id: number; to: number }
  | { op: "finish"; id: number; size: number }
  | { op: "close"; id: number };

const jobs = new Map<number, Job>();
const BUF = new Uint8Array(8 << 20);

function advance(job: Job, to: number): void {
  while (job.pos < to) {
    const n = fs.readSync(job.fd, BUF, 0, Math.min(BUF.byteLength, to - job.pos), job.pos);
    if (n <= 0) throw new Error(`file ended at ${job.pos} before ${to}`);
    job.hash.update(n === BUF.byteLength ? BUF : BUF.subarray(0, n));
    job.pos += n;
  }
}

function close(id: number): void {
  const job = jobs.get(id);
  if (job) fs.closeSync(job.fd);
  jobs.delete(id);
}

// deno-lint-ignore no-explicit-any
const scope = globalThis as any as {
  onmessage: (e: MessageEvent<Msg>) => void;
  postMessage: (m: unknown) => void;
};
scope.onmessage = (e: MessageEvent<Msg>) => {
  const m = e.data;
  try {
    if (m.op === "open") {
      jobs.set(m.id, { fd: fs.openSync(m.path, "r"), hash: createHash("sha256"), pos: 0 });
    } else if (m.op === "advance") {
      const job = jobs.get(m.id);
      if (job) advance(job, m.to);
    } else if (m.op === "finish") {
      const job = jobs.get(m.id);
      if (!job) return;
      advance(job, m.size);
      const digest = "sha256:" + job.hash.digest("hex");
      const bytes = job.pos;
      close(m.id);
      scope.postMessage({ id: m.id, digest, bytes });
    } else if (m.op === "close") {
      close(m.id);
    }
  } catch (err) {
    close(m.id);
    scope.postMessage({ id: m.id, error: String((err as Error)?.message ?? err) });
  }
};
