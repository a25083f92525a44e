/**
 * Hashes files in order as they are written, off the main thread. Reads go
 * through O_DIRECT where the write worker wrote that way (see direct_io.ts): the
 * bytes are then on the device, not in the page cache, and a cold buffered read
 * would cost more than hashing. Direct reads run one ahead of the hash (an async
 * read fills one buffer while the other is hashed); page-cache reads are
 * synchronous. Messages are handled strictly one after another (a promise
 * chain), so reads of one file never interleave.
 * Protocol: see hasher.ts.
 */
import { createHash, type Hash } from "node:crypto";
import * as fs from "node:fs";
import { alignDown, alignedBuffers, alignUp, openDirect } from "./direct_io.ts";

interface Job {
  fd: number;
  direct?: number;
  hash: Hash;
  pos: number;
  /** Highest `advance` received so far: queued advances are folded into one read run. */
  target: number;
}
type Msg =
  | { op: "open"; id: number; path: string; start?: number }
  | { op: "advance"; id: number; to: number }
  | { op: "finish"; id: number; size: number }
  | { op: "close"; id: number };

const jobs = new Map<number, Job>();
/** Why a job that is gone failed, kept until its `finish` asks. */
const failed = new Map<number, string>();
const BUF = new Uint8Array(8 << 20);
const DIRECT_BUF = 4 << 20;
let views: [Uint8Array<ArrayBuffer>, Uint8Array<ArrayBuffer>] | undefined;
let directOff = false;

function advanceBuffered(job: Job, to: number): void {
  while (job.pos < to) {
    const n = fs.readSync(job.fd, BUF, 0, Math.min(BUF.byteLength, to - job.pos), job.pos);
    if (n <= 0) throw new Error(`file ended at ${job.pos} before ${to}`);
    job.hash.update(n === BUF.byteLength ? BUF : BUF.subarray(0, n));
    job.pos += n;
  }
}

function readAt(fd: number, buf: Uint8Array, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.read(fd, buf, 0, len, pos, (err, n) => err ? reject(err) : resolve(n))
  );
}

/** One aligned read covering [from, ≤to): resolves with what of it is usable. */
async function readDirect(fd: number, buf: Uint8Array<ArrayBuffer>, from: number, to: number) {
  const start = alignDown(from);
  const len = Math.min(alignUp(to) - start, buf.byteLength);
  const n = await readAt(fd, buf, len, start);
  const upto = Math.min(start + n, to);
  if (upto <= from) throw new Error(`file ended at ${start + n} before ${to}`);
  return { view: buf.subarray(from - start, upto - start), upto };
}

async function advanceDirect(job: Job, to: number): Promise<void> {
  const fd = job.direct!;
  const [a, b] = views!;
  const limit = () => Math.max(to, job.target);
  let next = job.pos < limit() ? readDirect(fd, a, job.pos, limit()) : undefined;
  let spare = b;
  while (next) {
    const r = await next;
    const used = r.view.buffer === a.buffer ? a : b;
    next = r.upto < limit() ? readDirect(fd, spare, r.upto, limit()) : undefined;
    job.hash.update(r.view);
    job.pos = r.upto;
    spare = used;
  }
}

async function advance(job: Job, to: number): Promise<void> {
  if (job.pos >= to) return;
  if (job.direct !== undefined) {
    try {
      return await advanceDirect(job, to);
    } catch (err) {
      if ((err as { code?: string }).code !== "EINVAL") throw err;
      // Misaligned after all: hash the rest through the page cache.
      fs.closeSync(job.direct);
      job.direct = undefined;
      directOff = true;
    }
  }
  advanceBuffered(job, to);
}

function openJob(path: string): Job {
  const job: Job = { fd: fs.openSync(path, "r"), hash: createHash("sha256"), pos: 0, target: 0 };
  if (!directOff && fs.fstatSync(job.fd).size >= 64 << 20) {
    const fd = openDirect(path, false);
    if (fd !== undefined) {
      if (!views) {
        const v = alignedBuffers(path, 2, DIRECT_BUF);
        if (v) views = [v[0], v[1]];
        else directOff = true;
      }
      if (views) job.direct = fd;
      else fs.closeSync(fd);
    }
  }
  return job;
}

function close(id: number): void {
  const job = jobs.get(id);
  if (job) {
    fs.closeSync(job.fd);
    if (job.direct !== undefined) fs.closeSync(job.direct);
  }
  jobs.delete(id);
}

// deno-lint-ignore no-explicit-any
const scope = globalThis as any as {
  onmessage: (e: MessageEvent<Msg>) => void;
  postMessage: (m: unknown) => void;
};

async function handle(m: Msg): Promise<void> {
  try {
    if (m.op === "open") {
      // opened when the message arrived (see onmessage)
    } else if (m.op === "advance") {
      const job = jobs.get(m.id);
      if (job) await advance(job, m.to);
    } else if (m.op === "finish") {
      const job = jobs.get(m.id);
      if (!job) {
        // The open (or an earlier advance) failed: say why now, someone is waiting.
        scope.postMessage({ id: m.id, error: failed.get(m.id) ?? "hash job is not open" });
        failed.delete(m.id);
        return;
      }
      await advance(job, m.size);
      const digest = "sha256:" + job.hash.digest("hex");
      const bytes = job.pos;
      close(m.id);
      scope.postMessage({ id: m.id, digest, bytes });
    } else if (m.op === "close") {
      close(m.id);
      failed.delete(m.id);
    }
  } catch (err) {
    close(m.id);
    const error = String((err as Error)?.message ?? err);
    if (m.op === "finish") scope.postMessage({ id: m.id, error });
    else failed.set(m.id, error);
  }
}

let chain: Promise<void> = Promise.resolve();
scope.onmessage = (e: MessageEvent<Msg>) => {
  const m = e.data;
  if (m.op === "open") {
    try {
      jobs.set(m.id, openJob(m.path));
    } catch (err) {
      failed.set(m.id, String((err as Error)?.message ?? err));
      return;
    }
  } else if (m.op === "advance") {
    const job = jobs.get(m.id);
    if (job) job.target = Math.max(job.target, m.to);
  }
  chain = chain.then(() => handle(m));
};
