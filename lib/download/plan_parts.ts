/**
 * How a large blob is cut into Range parts (fixed-size parts; the registry's
 * chunksums for a repair), and how far the parts are written without a gap.
 */
import type { BlobJob } from "./blob_job.ts";

export interface Part {
  offset: number;
  size: number;
  done: number;
  /** Chunksums (a repair round): the digest of this part's bytes, checked from disk. */
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

/**
 * The parts of `job`'s first fetch: `partSize` parts, with or without chunksums. Parts of
 * the registry's 64 MiB chunks made the last wave of parts ~1 GiB (16 at once), all of it
 * hashed after the last byte: 2 GiB from haul serve, 395-414 ms from the last byte to the
 * end against 86-132 ms with 16 MiB parts. Chunksums serve the repair ({@link chunkParts}).
 */
export function planJob(job: BlobJob, partSize: number): Part[] {
  return planParts(job.size, partSize);
}

/**
 * `job`'s chunks as parts, all on disk and none checked: after a whole-blob digest
 * mismatch the next round checks each from disk and fetches only the bad ones again.
 */
export function chunkParts(job: BlobJob): Part[] {
  return (job.chunks ?? []).map((c) => ({
    offset: c.start,
    size: c.end - c.start + 1,
    done: c.end - c.start + 1,
    digest: c.digest,
    verified: false,
  }));
}

/**
 * How far the file is written without a gap: the ordered whole-blob hash may read
 * that far. A chunk part being written counts as far as it is written, as any part
 * does (it is taken on the whole-blob digest when it completes, part_runner.ts); a
 * complete chunk not yet checked (a resume, or a whole-digest mismatch) counts only
 * once it is checked from disk, so a bad chunk is fetched again before it is hashed.
 */
export function watermark(parts: Part[]): number {
  let w = 0;
  for (const p of parts) {
    if (p.digest && !p.verified && p.done === p.size) return p.offset;
    w = p.offset + p.done;
    if (p.done < p.size) break;
  }
  return w;
}
