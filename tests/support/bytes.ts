/** Deterministic test data: the same seed gives the same bytes, in memory or in a file. */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import { MiB } from "./util.ts";

/** Blobs at least this large live in temp files instead of memory. */
export const FILE_BACKED_THRESHOLD = 64 * MiB;
export const PIECE = 8 * MiB;

/**
 * Fills `words` with xorshift32 output starting from `state`; returns the next state,
 * so a stream of pieces continues the same sequence as one big buffer.
 */
function fillXorshift(words: Uint32Array, state: number): number {
  let x = state >>> 0;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  return x >>> 0;
}

function seedState(seed: number): number {
  // Mix the seed so that nearby seeds diverge at once; never zero (xorshift's fixed point).
  let h = (Math.imul((seed | 0) ^ 0x9e3779b9, 0x85ebca6b) ^ 0xc2b2ae35) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x27d4eb2d) >>> 0;
  return h === 0 ? 0x6d2b79f5 : h;
}

/** Pseudo-random bytes, identical for the same (size, seed); ~1 GB/s. */
export function deterministicBytes(size: number, seed: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(size / 4));
  fillXorshift(words, seedState(seed));
  return new Uint8Array(words.buffer, 0, size);
}

/**
 * Writes `deterministicBytes(size, seed)` to `file` in 8 MiB pieces (never holding it all),
 * hashing on the way.
 */
export async function writeDeterministicFile(
  file: string,
  size: number,
  seed: number,
): Promise<{ digest: string; size: number }> {
  const fh = await fsp.open(file, "w");
  try {
    const hash = crypto.createHash("sha256");
    const words = new Uint32Array(PIECE / 4);
    let state = seedState(seed);
    for (let off = 0; off < size; off += PIECE) {
      state = fillXorshift(words, state);
      const piece = new Uint8Array(words.buffer, 0, Math.min(PIECE, size - off));
      hash.update(piece);
      let done = 0;
      while (done < piece.length) {
        const { bytesWritten } = await fh.write(piece, done, piece.length - done);
        done += bytesWritten;
      }
    }
    return { digest: `sha256:${hash.digest("hex")}`, size };
  } finally {
    await fh.close();
  }
}

/** Synchronous twin of writeDeterministicFile, for the synchronous fixture builders. */
export function writeDeterministicFileSync(file: string, size: number, seed: number): string {
  const fd = fs.openSync(file, "w");
  try {
    const hash = crypto.createHash("sha256");
    const words = new Uint32Array(PIECE / 4);
    let state = seedState(seed);
    for (let off = 0; off < size; off += PIECE) {
      state = fillXorshift(words, state);
      const piece = new Uint8Array(words.buffer, 0, Math.min(PIECE, size - off));
      hash.update(piece);
      let done = 0;
      while (done < piece.length) done += fs.writeSync(fd, piece, done, piece.length - done);
    }
    return `sha256:${hash.digest("hex")}`;
  } finally {
    fs.closeSync(fd);
  }
}

/** SHA-256 of a file, streamed. */
export async function sha256File(file: string): Promise<string> {
  const fh = await fsp.open(file, "r");
  try {
    const hash = crypto.createHash("sha256");
    const buf = new Uint8Array(PIECE);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
    }
    return hash.digest("hex");
  } finally {
    await fh.close();
  }
}
