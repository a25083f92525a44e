/**
 * Chunksums (Ollama's 2025 client, PR 9746): a blob described as contiguous byte
 * ranges, each with its own SHA-256, so that a downloader can fetch ranges in
 * parallel and verify each one as it arrives.
 *
 *   GET /v2/<name>/chunksums/<digest>
 *   Content-Location: <URL to Range-GET the blob from>
 *
 *   sha256:<hex> <start>-<end>
 *   …
 *
 * `start`/`end` are inclusive (usable as `Range: bytes=<start>-<end>`); the chunks
 * are contiguous and cover the whole blob. This module parses and formats that
 * body, fetches it from a registry, and computes it for a file on disk.
 */
import { open } from "node:fs/promises";
import { createHash } from "node:crypto";
import { checkDigest, isDigest } from "../digest.ts";
import { HaulError, IntegrityError, InterruptedError, NetworkError, redactUrl } from "../errors.ts";
import { errorFromResponse } from "./client.ts";
import { type Fetch, finalUrl, isLoopback } from "../transport/fetch.ts";

/** One chunk of a blob: bytes `start`..`end` inclusive hash to `digest`. */
export interface Chunksum {
  /** `sha256:<hex>` of the chunk's bytes. */
  digest: string;
  /** First byte offset. */
  start: number;
  /** Last byte offset (inclusive). */
  end: number;
}

/** The chunk size haul serves (Ollama's chunking threshold is 64 MiB too). */
export const DEFAULT_CHUNK_SIZE = 64 << 20;

/**
 * Largest chunksums body accepted: ~90 bytes a line, so 8 MiB lists ~93 000 chunks
 * (5.7 TiB at 64 MiB chunks) while a hostile server cannot make the client buffer more.
 */
export const MAX_CHUNKSUMS_BYTES = 8 << 20;

/**
 * Parses a chunksums body for a blob of `size` bytes: whitespace-separated
 * `<digest> <start>-<end>` pairs, which must start at 0, be contiguous, and end
 * at `size - 1` (an empty blob has no chunks).
 *
 * @throws {IntegrityError} when the body is malformed, too large, or does not tile the blob.
 * @throws {RangeError} when `size` is not a non-negative safe integer.
 */
export function parseChunksums(text: string, size: number): Chunksum[] {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new RangeError(`Blob size must be a non-negative safe integer, got ${size}`);
  }
  if (text.length > MAX_CHUNKSUMS_BYTES) {
    throw new IntegrityError(
      `Chunksums body is ${text.length} bytes, over the ${MAX_CHUNKSUMS_BYTES}-byte limit`,
    );
  }
  const words = text.split(/\s+/).filter((w) => w !== "");
  if (words.length % 2 !== 0) {
    throw new IntegrityError("Chunksums body has a digest without a range");
  }
  const chunks: Chunksum[] = [];
  let next = 0;
  for (let i = 0; i < words.length; i += 2) {
    const [digest, range] = [words[i], words[i + 1]];
    const line = `chunk ${i / 2 + 1} (${JSON.stringify(`${digest} ${range}`.slice(0, 120))})`;
    if (!isDigest(digest)) throw new IntegrityError(`Chunksums ${line} has an invalid digest`);
    const m = /^(0|[1-9][0-9]{0,15})-(0|[1-9][0-9]{0,15})$/.exec(range);
    if (!m) throw new IntegrityError(`Chunksums ${line} has an invalid range`);
    const start = Number(m[1]);
    const end = Number(m[2]);
    if (!Number.isSafeInteger(end) || end < start) {
      throw new IntegrityError(`Chunksums ${line} ends before it starts`);
    }
    if (start !== next) {
      throw new IntegrityError(
        `Chunksums ${line} starts at ${start}, expected ${next} (chunks must be contiguous)`,
      );
    }
    if (end >= size) {
      throw new IntegrityError(`Chunksums ${line} ends past the blob's last byte ${size - 1}`);
    }
    chunks.push({ digest, start, end });
    next = end + 1;
  }
  if (next !== size) {
    throw new IntegrityError(`Chunksums cover ${next} of the blob's ${size} bytes`);
  }
  return chunks;
}

/** Formats chunks as the body Ollama's client reads: one `<digest> <start>-<end>` line each. */
export function formatChunksums(chunks: readonly Chunksum[]): string {
  return chunks.map((c) => `${c.digest} ${c.start}-${c.end}\n`).join("");
}

/** Options for {@link computeChunksums}. */
export interface ComputeChunksumsOptions {
  /** Bytes per chunk. @default 64 MiB */
  chunkSize?: number;
  /** Bytes per read (the only buffer held). @default 4 MiB */
  readSize?: number;
  signal?: AbortSignal;
}

/**
 * Hashes a file chunk by chunk with one reused buffer (bounded memory whatever
 * the file's size). The chunks tile the bytes read; a file that changes size
 * while being read is an error.
 *
 * @throws {RangeError} when an option is invalid.
 */
export async function computeChunksums(
  path: string,
  options: ComputeChunksumsOptions = {},
): Promise<{ size: number; chunks: Chunksum[] }> {
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  const readSize = options.readSize ?? 4 << 20;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) {
    throw new RangeError(`chunkSize must be a positive integer, got ${chunkSize}`);
  }
  if (!Number.isSafeInteger(readSize) || readSize < 1) {
    throw new RangeError(`readSize must be a positive integer, got ${readSize}`);
  }
  const fh = await open(path, "r");
  try {
    const { size } = await fh.stat();
    const buf = new Uint8Array(Math.min(readSize, Math.max(size, 1)));
    const chunks: Chunksum[] = [];
    for (let start = 0; start < size; start += chunkSize) {
      const end = Math.min(start + chunkSize, size) - 1;
      const hash = createHash("sha256");
      for (let pos = start; pos <= end;) {
        if (options.signal?.aborted) throw new InterruptedError();
        const want = Math.min(buf.byteLength, end + 1 - pos);
        const { bytesRead } = await fh.read(buf, 0, want, pos);
        if (bytesRead === 0) {
          throw new IntegrityError(
            `${path} ended at ${pos} while hashing (expected ${size} bytes)`,
          );
        }
        hash.update(buf.subarray(0, bytesRead));
        pos += bytesRead;
      }
      chunks.push({ digest: "sha256:" + hash.digest("hex"), start, end });
    }
    return { size, chunks };
  } finally {
    await fh.close();
  }
}

/** What {@link fetchChunksums} needs of a registry client (a `RegistryClient` fits). */
export interface ChunksumsClient {
  /** `https://host[:port]`. */
  baseUrl: string;
  /** The session's fetch (auth, redirects, retry). */
  fetch: Fetch;
}

/** A blob in a repository. */
export interface ChunksumsBlob {
  repository: string;
  digest: string;
  size: number;
}

/** Options for {@link fetchChunksums}. */
export interface FetchChunksumsOptions {
  /** Body size limit. @default MAX_CHUNKSUMS_BYTES (8 MiB) */
  maxBytes?: number;
  signal?: AbortSignal;
}

/** A registry's chunksums for a blob. */
export interface FetchedChunksums {
  /** Absolute URL to Range-GET the chunks from (the response's `Content-Location`). */
  url: string;
  chunks: Chunksum[];
}

/**
 * GETs `/v2/<repository>/chunksums/<digest>` and validates it against the blob's size.
 *
 * @returns undefined when the registry does not offer chunksums (404, 405, 501): the
 *   caller falls back to plain Range parts.
 * @throws {RegistryError} on another HTTP error.
 * @throws {IntegrityError} when the body is malformed, oversized or does not tile the blob,
 *   or `Content-Location` is unusable.
 */
export async function fetchChunksums(
  client: ChunksumsClient,
  blob: ChunksumsBlob,
  options: FetchChunksumsOptions = {},
): Promise<FetchedChunksums | undefined> {
  const digest = checkDigest(blob.digest, "blob digest");
  const maxBytes = options.maxBytes ?? MAX_CHUNKSUMS_BYTES;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) {
    throw new RangeError(`maxBytes must be a positive integer, got ${maxBytes}`);
  }
  const base = client.baseUrl.replace(/\/+$/, "");
  const url = `${base}/v2/${blob.repository}/chunksums/${digest}`;
  const res = await client.fetch(new Request(url, { signal: options.signal }));
  if (res.status === 404 || res.status === 405 || res.status === 501) {
    await res.body?.cancel().catch(() => {});
    return undefined;
  }
  if (!res.ok) throw await errorFromResponse(res, "GET", url);
  const from = finalUrl(res, url);
  const location = res.headers.get("content-location");
  let blobUrl = `${base}/v2/${blob.repository}/blobs/${digest}`;
  if (location !== null) {
    let to: URL;
    try {
      to = new URL(location, from);
    } catch {
      await res.body?.cancel().catch(() => {});
      throw new IntegrityError(`Chunksums for ${digest} name an invalid Content-Location`);
    }
    // The transport's redirect rules: http(s) only, never https → plain http off loopback.
    if (
      (to.protocol !== "https:" && to.protocol !== "http:") ||
      (new URL(from).protocol === "https:" && to.protocol === "http:" && !isLoopback(to))
    ) {
      await res.body?.cancel().catch(() => {});
      throw new IntegrityError(
        `Chunksums for ${digest} point at an unsafe Content-Location ${redactUrl(to)}`,
      );
    }
    blobUrl = to.href;
  }
  const text = await readText(res, maxBytes, digest, options.signal);
  return { url: blobUrl, chunks: parseChunksums(text, blob.size) };
}

async function readText(
  res: Response,
  max: number,
  digest: string,
  signal?: AbortSignal,
): Promise<string> {
  const tooBig = () => new IntegrityError(`Chunksums for ${digest} are over the ${max}-byte limit`);
  const cl = res.headers.get("content-length");
  if (cl !== null && Number(cl) > max) {
    await res.body?.cancel().catch(() => {});
    throw tooBig();
  }
  if (!res.body) return "";
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      n += value.byteLength;
      if (n > max) {
        await reader.cancel().catch(() => {});
        throw tooBig();
      }
      parts.push(value);
    }
  } catch (err) {
    if (err instanceof HaulError) throw err;
    if (signal?.aborted) throw new InterruptedError();
    throw new NetworkError(`Reading chunksums for ${digest} failed: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const all = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.byteLength;
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(all);
  } catch {
    throw new IntegrityError(`Chunksums for ${digest} are not UTF-8 text`);
  }
}
