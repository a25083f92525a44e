/**
 * What `upload()` is asked for: the options, the tuning with its measured defaults
 * (the one place they live), and what it answers.
 */
import type { BlobReader } from "../disk/blob_file.ts";
import type { OnProgress } from "../progress_events.ts";
import type { Blob } from "../registry/manifest.ts";
import type { ConnectionOptions, Session } from "../registry/session.ts";

/** Tuning for uploads; every field has a measured default (see {@link DEFAULT_UPLOAD_TUNING}). */
export interface UploadTuning {
  /** Blobs uploading at once (each blob is one sequential session). @default 8 */
  concurrency?: number;
  /**
   * Bytes per PATCH request; blobs up to this size go up in a single PUT. Without
   * it: blobs up to 16 MiB go up in one PUT, larger ones from a file are streamed
   * in 256 MiB PATCHes without Content-Range (a streamed upload, as docker push sends
   * it: read as sent, so memory does not grow with the chunk, and taken by registries
   * that cap ranged chunks, like GHCR's 4 MiB), and sources that cannot stream (copy)
   * send 16 MiB chunks from memory. Given, every PATCH carries its Content-Range.
   * @default see above
   */
  chunkSize?: number;
}

/**
 * Defaults. 16 MiB chunks, measured with scripts/bench_push.ts (2 GiB blob, empty
 * docker-registry on loopback, medians of 3): on disk 16/32/64 MiB took 22.3/21.3/
 * 20.7 s, within noise, as the registry syncs each PATCH to disk; on tmpfs 16 MiB
 * took 14.5 s and 64 MiB 24.1 s. Peak RSS under Deno was 268/381/956 MiB: Deno
 * copies a `Uint8Array` body into the Request and again on each `clone()` (the
 * redirect and auth layers keep one for replays), so memory grows with the chunk.
 * Smaller chunks pay the registry's per-request sync more often: 256 MiB went up
 * in 8.2 s with 4 MiB chunks and 5.1 s with 16 MiB ones (curl, for scale: 7.3 s in
 * 16 MiB PATCHes, 4.2 s in 64 MiB ones, 2.2 s as one PUT).
 */
export const DEFAULT_UPLOAD_TUNING = {
  concurrency: 8,
  /** Single-PUT limit and chunk size for sources that cannot stream. */
  chunkSize: 16 << 20,
  /** Chunk size for streamed chunks (store and OCI layout files). */
  streamChunkSize: 256 << 20,
} as const;

/** Opens a blob for reading; the upload calls it only for blobs it has to send. */
export type OpenBlob = (blob: Blob, signal?: AbortSignal) => Promise<BlobReader>;

export type { BlobReader } from "../disk/blob_file.ts";

export interface UploadOptions extends ConnectionOptions, UploadTuning {
  /** Blobs to put in place; `from` names a repository on the same registry to mount from. */
  blobs: Blob[];
  /** Registry base URL, e.g. `https://registry.ollama.ai`. */
  baseUrl: string;
  /** Destination repository, e.g. `library/llama3.2`. */
  repository: string;
  /** Directory holding the blobs as `sha256-<hex>` (Ollama's `blobs/`); needed unless `open` is given. */
  srcDir?: string;
  /** Reads blob bytes from somewhere else than `srcDir` (copy streams from another registry). */
  open?: OpenBlob;
  /**
   * Directory for upload state files (`sha256-<hex>-upload-<dest hash>.json`), which let a
   * later run resume a large blob's session. `null`: resume only within this run.
   * @default srcDir
   */
  stateDir?: string | null;
  /** Aggregate progress: bytes in place (present, mounted or sent) and the total. */
  onProgress?: (completed: number, total: number) => void;
  /** Per-blob events (for renderers), with op "push". */
  onEvent?: OnProgress;
  signal?: AbortSignal;
  /** Manifest bytes to PUT after every blob is in place, unchanged. */
  manifest?: Uint8Array;
  /** Tag or digest to PUT the manifest under. @default the manifest's digest */
  manifestRef?: string;
  /** Content-Type of the manifest PUT. @default the manifest's own `mediaType` field */
  manifestMediaType?: string;
  /** Reuse an existing session (push and copy build one with the mount scopes). */
  session?: Session;
  /**
   * Send each blob as Ollama's registry takes it: parts announced with
   * `X-Redirect-Uploads: 1`, PUT to the storage URL the registry redirects to, committed with
   * `?digest=&etag=` (lib/upload/redirected.ts); a registry that does not redirect gets chunks.
   * @default false (push turns it on for Ollama's registry and when an Ollama key is named)
   */
  redirectUploads?: boolean;
}

export interface UploadResult {
  /** Blob bytes sent in request bodies, failed attempts included. */
  transferred: number;
  /** Blobs the destination already had. */
  skipped: number;
  /** Blobs mounted from another repository (no bytes sent). */
  mounted: number;
  /** Blobs uploaded. */
  uploaded: number;
  /** Uploads that continued an existing session instead of starting over. */
  resumed: number;
  /** Digest of the manifest, when one was pushed. */
  manifestDigest?: string;
}

/** {@link UploadTuning} with every default filled in. */
export type Tuning = Required<UploadTuning> & {
  streamChunkSize: number;
  /** Streamed PATCHes carry Content-Range and Content-Length (`chunkSize` was given). */
  rangedStreams: boolean;
};

/** The tuning with its defaults, checked. */
export function tuningFrom(o: UploadTuning): Tuning {
  const concurrency = o.concurrency ?? DEFAULT_UPLOAD_TUNING.concurrency;
  const chunkSize = o.chunkSize ?? DEFAULT_UPLOAD_TUNING.chunkSize;
  const streamChunkSize = o.chunkSize ?? DEFAULT_UPLOAD_TUNING.streamChunkSize;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new RangeError(`concurrency must be a positive integer, got ${concurrency}`);
  }
  if (!Number.isInteger(chunkSize) || chunkSize < 1 << 16 || chunkSize > 1 << 30) {
    throw new RangeError(`chunkSize must be an integer from 64 KiB to 1 GiB, got ${chunkSize}`);
  }
  return { concurrency, chunkSize, streamChunkSize, rangedStreams: o.chunkSize !== undefined };
}
