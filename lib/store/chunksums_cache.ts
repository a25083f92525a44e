/**
 * Chunksums of store blobs, computed once and kept in sidecar files outside
 * `blobs/` (Ollama never looks there):
 *
 *   <models>/.haul/chunksums/sha256-<hex>-<chunkSize>
 *
 * A sidecar starts with `haul-chunksums 1 size=<bytes> mtime=<ms>` and is reused
 * only while the blob's size and mtime still match; it is written to a temp file
 * and renamed, so a reader never sees half of one. Concurrent requests for the
 * same blob share one computation. A store that cannot be written (read-only
 * mount) still gets chunksums, computed each time, with one warning.
 */
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import {
  computeChunksums,
  DEFAULT_CHUNK_SIZE,
  formatChunksums,
  parseChunksums,
} from "../registry/chunksums.ts";
import { checkDigest } from "../digest.ts";

const MAGIC = "haul-chunksums 1";

/** Options for {@link ChunksumsCache}. */
export interface ChunksumsCacheOptions {
  /** Bytes per chunk. @default 64 MiB */
  chunkSize?: number;
  /** Told once when sidecars cannot be written. */
  onWarn?: (message: string) => void;
  /** Aborting stops computations in flight. */
  signal?: AbortSignal;
}

/** Computes and caches chunksums bodies for blob files. */
export class ChunksumsCache {
  readonly dir: string;
  readonly chunkSize: number;
  #onWarn: (message: string) => void;
  #signal?: AbortSignal;
  #inflight = new Map<string, Promise<string>>();
  #warned = false;

  /** `dir` is the sidecar directory, e.g. `<models>/.haul/chunksums`. */
  constructor(dir: string, options: ChunksumsCacheOptions = {}) {
    this.dir = dir;
    this.chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isSafeInteger(this.chunkSize) || this.chunkSize < 1 << 16) {
      throw new RangeError(
        `chunkSize must be an integer of at least 64 KiB, got ${this.chunkSize}`,
      );
    }
    this.#onWarn = options.onWarn ?? (() => {});
    this.#signal = options.signal;
  }

  /** Sidecar path for a digest. */
  sidecarPath(digest: string): string {
    return join(this.dir, `${checkDigest(digest).replace(":", "-")}-${this.chunkSize}`);
  }

  /**
   * The chunksums body for the blob at `blobPath` (whose name the caller derived
   * from a validated `digest`), or undefined when the file is not there.
   */
  async get(blobPath: string, digest: string): Promise<string | undefined> {
    const st = await stat(blobPath).catch(() => undefined);
    if (!st?.isFile()) return undefined;
    const sidecar = this.sidecarPath(digest);
    const key = `${sidecar} ${st.size} ${st.mtimeMs}`;
    const cached = await this.#read(sidecar, st.size, st.mtimeMs);
    if (cached !== undefined) return cached;
    let p = this.#inflight.get(key);
    if (!p) {
      p = this.#compute(blobPath, sidecar, st.size, st.mtimeMs).finally(() =>
        this.#inflight.delete(key)
      );
      this.#inflight.set(key, p);
    }
    return await p;
  }

  async #read(sidecar: string, size: number, mtimeMs: number): Promise<string | undefined> {
    try {
      const text = await readFile(sidecar, "utf8");
      const nl = text.indexOf("\n");
      if (text.slice(0, nl) !== header(size, mtimeMs)) return undefined;
      const body = text.slice(nl + 1);
      parseChunksums(body, size); // a damaged sidecar is recomputed
      return body;
    } catch {
      return undefined;
    }
  }

  async #compute(blobPath: string, sidecar: string, size: number, mtimeMs: number) {
    const result = await computeChunksums(blobPath, {
      chunkSize: this.chunkSize,
      signal: this.#signal,
    });
    const body = formatChunksums(result.chunks);
    const after = await stat(blobPath).catch(() => undefined);
    if (result.size !== size || after?.size !== size || after.mtimeMs !== mtimeMs) {
      return body; // the blob changed while being read: serve, do not keep
    }
    const tmp = `${sidecar}.${randomBytes(6).toString("hex")}.tmp`;
    try {
      await mkdir(this.dir, { recursive: true });
      await writeFile(tmp, `${header(size, mtimeMs)}\n${body}`);
      await rename(tmp, sidecar);
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => {});
      if (!this.#warned) {
        this.#warned = true;
        this.#onWarn(
          `Cannot cache chunksums in ${this.dir} (${
            (err as Error).message
          }); they will be computed for each request`,
        );
      }
    }
    return body;
  }
}

function header(size: number, mtimeMs: number): string {
  return `${MAGIC} size=${size} mtime=${mtimeMs}`;
}
