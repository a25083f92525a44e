/**
 * Writes blocks at offsets off the main thread. Profiles of Deno pulls showed
 * `op_write` (page-cache copies) taking 1-3.6 s of the main thread per 2 GiB,
 * time the network then waits for; here it runs on its own thread. Buffers
 * arrive transferred (no copy) and go back the same way for reuse. Where the
 * file system allows it the aligned middle of each block goes out with O_DIRECT
 * through an aligned staging buffer (see direct_io.ts); heads and tails that are
 * not 4 KiB aligned, and every write elsewhere, go through the page cache.
 * Protocol: see block_writer.ts.
 */
import * as fs from "node:fs";
import { alignDown, alignedBuffers, alignUp, DIRECT_ALIGN, openDirect } from "./direct_io.ts";

type Msg =
  | { op: "ping" }
  | { op: "write"; id: number; path: string; offset: number; buf: ArrayBuffer; len: number }
  | { op: "writev"; id: number; path: string; offset: number; bufs: ArrayBuffer[]; at: number[] }
  | { op: "close"; path: string };

interface DenoFile {
  seekSync(offset: number, whence: number): number;
  writeSync(p: Uint8Array): number;
  close(): void;
}
// deno-lint-ignore no-explicit-any
const D = (globalThis as any).Deno as
  | { openSync(p: string, o: { write: boolean }): DenoFile }
  | undefined;
const useDeno = typeof D?.openSync === "function" && !("Bun" in globalThis);

/**
 * Largest single buffered write(2). On the VMs measured here (Firecracker with
 * free page reporting) a 2 GiB file written in 1-8 MiB calls cost 3-5.7 s of
 * system time after a cache drop but 0.4-1.6 s in 32-256 KiB calls.
 */
const SYSCALL_MAX = 256 << 10;
/** Staging buffer for direct writes: one copy, then one write(2) per MiB. */
const STAGE = 1 << 20;

interface Target {
  buffered: DenoFile | number;
  direct?: number;
}
const files = new Map<string, Target>();
let stage: Uint8Array<ArrayBuffer> | undefined;
/** Set when direct I/O failed in a way that says it is not for this process. */
let directOff = false;

function openTarget(path: string): Target {
  const t: Target = {
    buffered: useDeno ? D!.openSync(path, { write: true }) : fs.openSync(path, "r+"),
  };
  if (!directOff) {
    const fd = openDirect(path, true);
    if (fd !== undefined) {
      // The staging buffer is found (its alignment probed) once per worker.
      if (!stage) {
        stage = alignedBuffers(path, 1, STAGE)?.[0];
        if (!stage) directOff = true;
      }
      if (stage) t.direct = fd;
      else fs.closeSync(fd);
    }
  }
  return t;
}

function writeBuffered(t: Target, offset: number, data: Uint8Array): void {
  const f = t.buffered;
  const len = data.byteLength;
  let n = 0;
  if (typeof f === "number") {
    while (n < len) n += fs.writeSync(f, data, n, Math.min(len - n, SYSCALL_MAX), offset + n);
  } else {
    // Deno.FsFile positional writes measured 3x faster than node:fs writeSync in Deno.
    f.seekSync(offset, 0);
    while (n < len) n += f.writeSync(data.subarray(n, Math.min(len, n + SYSCALL_MAX)));
  }
}

function writeAt(path: string, offset: number, data: Uint8Array): void {
  let t = files.get(path);
  if (t === undefined) {
    t = openTarget(path);
    files.set(path, t);
  }
  const end = offset + data.byteLength;
  const a = alignUp(offset);
  const b = alignDown(end);
  if (t.direct === undefined || !stage || b - a < DIRECT_ALIGN) {
    return writeBuffered(t, offset, data);
  }
  if (a > offset) writeBuffered(t, offset, data.subarray(0, a - offset));
  for (let pos = a; pos < b;) {
    const n = Math.min(STAGE, b - pos);
    const piece = data.subarray(pos - offset, pos - offset + n);
    if (t.direct !== undefined) {
      stage.set(piece);
      try {
        let w = 0;
        while (w < n) w += fs.writeSync(t.direct, stage, w, n - w, pos + w);
      } catch (err) {
        // EINVAL and friends: this file (or file system) will not take direct
        // writes after all; everything from here goes through the page cache.
        if ((err as { code?: string }).code === "ENOSPC") throw err;
        fs.closeSync(t.direct);
        t.direct = undefined;
        writeBuffered(t, pos, piece);
      }
    } else {
      writeBuffered(t, pos, piece);
    }
    pos += n;
  }
  if (end > b) writeBuffered(t, b, data.subarray(b - offset));
}

/**
 * Chunks of any size at `offset`: through the page cache, gathered into writev(2) calls
 * that end on SYSCALL_MAX boundaries of the file (what a 1 MiB block's writes do), so
 * that no call is over SYSCALL_MAX and pages are not filled in pieces by two calls.
 * Direct I/O and Deno's file (no writev) take them one by one.
 */
function writeChunksAt(path: string, offset: number, chunks: Uint8Array[]): void {
  let t = files.get(path);
  if (t === undefined) {
    t = openTarget(path);
    files.set(path, t);
  }
  const fd = t.buffered;
  if (t.direct !== undefined || typeof fd !== "number") {
    for (const c of chunks) {
      writeAt(path, offset, c);
      offset += c.byteLength;
    }
    return;
  }
  let group: Uint8Array[] = [];
  let groupAt = offset;
  let pos = offset;
  const flush = () => {
    const n = fs.writevSync(fd, group, groupAt);
    // A short write (rare): the rest goes out through writeSync.
    if (n < pos - groupAt) writeRest(fd, group, n, groupAt);
    group = [];
    groupAt = pos;
  };
  for (let c of chunks) {
    while (c.byteLength) {
      const room = SYSCALL_MAX - (pos % SYSCALL_MAX);
      const piece = c.byteLength <= room ? c : c.subarray(0, room);
      group.push(piece);
      pos += piece.byteLength;
      c = c.subarray(piece.byteLength);
      if (pos % SYSCALL_MAX === 0) flush();
    }
  }
  if (group.length) flush();
}

/** After a short writev of `done` bytes: the rest of `group`, from `at + done`. */
function writeRest(fd: number, group: Uint8Array[], done: number, at: number): void {
  let skip = done;
  let pos = at + done;
  for (const g of group) {
    if (skip >= g.byteLength) {
      skip -= g.byteLength;
      continue;
    }
    const rest = g.subarray(skip);
    skip = 0;
    let n = 0;
    while (n < rest.byteLength) n += fs.writeSync(fd, rest, n, rest.byteLength - n, pos + n);
    pos += rest.byteLength;
  }
}

function closeTarget(t: Target): void {
  if (typeof t.buffered === "number") fs.closeSync(t.buffered);
  else t.buffered.close();
  if (t.direct !== undefined) fs.closeSync(t.direct);
}

// deno-lint-ignore no-explicit-any
const scope = globalThis as any as {
  onmessage: (e: MessageEvent<Msg>) => void;
  postMessage: (m: unknown, transfer?: Transferable[]) => void;
};
scope.onmessage = (e: MessageEvent<Msg>) => {
  const m = e.data;
  if (m.op === "ping") return scope.postMessage({ pong: true });
  if (m.op === "close") {
    const t = files.get(m.path);
    files.delete(m.path);
    if (t) closeTarget(t);
    return;
  }
  if (m.op === "writev") {
    // A batch of chunks: written in order; their buffers stay here (garbage once written).
    try {
      const chunks = m.bufs.map((b, i) => new Uint8Array(b, m.at[2 * i], m.at[2 * i + 1]));
      writeChunksAt(m.path, m.offset, chunks);
      scope.postMessage({ id: m.id });
    } catch (err) {
      const code = (err as { code?: string }).code;
      scope.postMessage({ id: m.id, error: String((err as Error)?.message ?? err), code });
    }
    return;
  }
  try {
    writeAt(m.path, m.offset, new Uint8Array(m.buf, 0, m.len));
    scope.postMessage({ id: m.id, buf: m.buf }, [m.buf]);
  } catch (err) {
    const code = (err as { code?: string }).code;
    scope.postMessage(
      { id: m.id, buf: m.buf, error: String((err as Error)?.message ?? err), code },
      [m.buf],
    );
  }
};
