/**
 * How a large blob is cut into Range parts (fixed-size parts, or the registry's
 * chunksums), and how far the parts are written without a gap.
 */
import type { BlobJob } from "./blob_job.ts";

export interface Part {
  offset: number;
  size: number;
  done: number;
  /** Chunksums: the digest of this part's bytes, checked when the part completes. */
  digest?: string;
  /** Chunksums: the part's bytes were checked against `digest`. */
  verified?: boolean;
}

/** Parts of `partSize` bytes (the last one shorter) covering `size` bytes. */
export function planParts(size: number, partSize: number): Part[] {
  const parts: Part[] = [];
  for (let off = 0; off < size; off += partSize) {
    parts.push({ offset: off, size: Math.min(partSize, size - off), done: 0 });
  }
  return parts;
}

/** The parts of `job`: one per chunksum when the registry offered them, else `partSize` parts. */
export function planJob(job: BlobJob, partSize: number): Part[] {
  return job.chunks?.length
    ? job.chunks.map((c) => ({
      offset: c.start,
      size: c.end - c.start + 1,
      done: 0,
      digest: c.digest,
    }))
    : planParts(job.size, partSize);
}

/**
 * How far the file is written (and, for chunk parts, verified) without a gap:
 * the ordered whole-blob hash may read that far. A chunk part counts only once
 * its own digest matched, so a bad chunk is re-fetched before it is hashed.
 */
export function watermark(parts: Part[]): number {
  let w = 0;
  for (const p of parts) {
    if (p.digest && !p.verified) return p.offset;
    w = p.offset + p.done;
    if (p.done < p.size) break;
  }
  return w;
}
