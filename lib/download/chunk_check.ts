/**
 * Chunksums (Ollama's per-chunk digests): parts follow the chunks; a chunk is checked from disk
 * when the whole-blob digest fails (and when a resume finds one not yet taken), so a bad chunk
 * is fetched again alone.
 */
import { IntegrityError, storeError } from "../errors.ts";
import { Sha256 } from "../digest.ts";
import { open } from "node:fs/promises";
import type { BlobJob } from "./blob_job.ts";
import type { Part } from "./plan_parts.ts";

/** A chunk's bytes did not match its chunksum. */
export class ChunkMismatch extends IntegrityError {}

/** A hash of the part's bytes already on disk, ready to continue. */
export async function primeChunkHash(job: BlobJob, part: Part): Promise<Sha256> {
  const hash = new Sha256();
  if (!part.done) return hash;
  const fh = await open(job.partialPath, "r").catch((e) => {
    throw storeError("read", job.partialPath, e);
  });
  try {
    const buf = new Uint8Array(Math.min(part.done, 4 << 20));
    let pos = part.offset;
    const end = part.offset + part.done;
    while (pos < end) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.byteLength, end - pos), pos);
      if (bytesRead <= 0) throw new Error(`${job.partialPath} ends at ${pos}`);
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return hash;
}

export async function checkChunk(
  job: BlobJob,
  part: Part,
  hash: Sha256 | undefined,
): Promise<void> {
  const h = hash && hash.bytes === part.size ? hash : await primeChunkHash(job, part);
  const got = h.digest();
  if (got !== part.digest) {
    throw new ChunkMismatch(
      `Chunk ${part.offset}-${
        part.offset + part.size - 1
      } of ${job.digest} hashes to ${got}, not ${part.digest}`,
    );
  }
  part.verified = true;
}
