/**
 * Copy (registry → registry) without the local store, built on {@link uploadImage}, and
 * {@link RemoteBlobReader}, which streams each source blob into the upload with its digest
 * checked on the way.
 */
import { Sha256 } from "../digest.ts";
import {
  IntegrityError,
  InterruptedError,
  ManifestError,
  NetworkError,
  NotFoundError,
} from "../errors.ts";
import { type Blob, imageBlobs, type ImageManifest, parseManifest } from "../registry/manifest.ts";
import type { OnProgress } from "../progress_events.ts";
import { errorFromResponse } from "../registry/client.ts";
import {
  backoffDelay,
  DEFAULT_RETRY,
  isTransientError,
  type RetryPolicy,
  sleep,
} from "../transport/retry.ts";
import { type ConnectionOptions, createSession, type Session } from "../registry/session.ts";
import type { BlobReader } from "../disk/blob_file.ts";
import {
  describe,
  type OpenBlob,
  SourceDigestError,
  uploadImage,
  type UploadTuning,
} from "../upload/upload.ts";
import { resolveReference } from "./pull.ts";
import { baseOf, manifestRefFor, pushed, type PushResult } from "./push_common.ts";

export interface CopyOptions extends ConnectionOptions, UploadTuning {
  /** Allow plain http for both references. @default false */
  insecure?: boolean;
  /** Seconds without a byte from the source before its request is made again. @default 30 */
  stallTimeout?: number;
  onEvent?: OnProgress;
  signal?: AbortSignal;
}

/**
 * Copies SRC's manifest (or index, with every manifest it lists) and all their
 * blobs to DEST without the local store: each blob streams from the source into
 * the upload one chunk at a time, its digest checked as it goes.
 */
export async function copy(
  src: string,
  dest: string,
  options: CopyOptions = {},
): Promise<PushResult> {
  const source = resolveReference(src, options.insecure);
  const target = resolveReference(dest, options.insecure);
  const stallTimeout = options.stallTimeout ?? 30;
  if (!Number.isFinite(stallTimeout) || stallTimeout < 0.05) {
    throw new RangeError(`stallTimeout must be at least 0.05 s, got ${stallTimeout}`);
  }
  const policy: RetryPolicy = { ...DEFAULT_RETRY, ...options.retry };
  // The source's headers must come within the stall timeout too (each attempt): a source
  // that stops answering is as stalled as one that stops sending.
  const srcSession = createSession(
    baseOf(source),
    [`repository:${source.repository}:pull`],
    { ...options, requestTimeout: Math.min(options.requestTimeout ?? stallTimeout, stallTimeout) },
  );
  const destSession = createSession(
    baseOf(target),
    [`repository:${target.repository}:pull,push`],
    options,
  );
  const srcRef = source.digest ?? source.tag ?? "latest";
  const top = await srcSession.client.getManifest(source.repository, srcRef, {
    signal: options.signal,
  });
  const topDoc = parseManifest(top.bytes, top.mediaType);
  const manifestRef = manifestRefFor(target, top.digest);

  // An index goes up after the manifests it lists, which go up after their blobs.
  const children: { digest: string; bytes: Uint8Array; mediaType: string; doc: ImageManifest }[] =
    [];
  if (topDoc.kind === "index") {
    const seen = new Set<string>();
    for (const m of topDoc.manifests) {
      if (seen.has(m.digest)) continue;
      seen.add(m.digest);
      const got = await srcSession.client.getManifest(source.repository, m.digest, {
        signal: options.signal,
      });
      const doc = parseManifest(got.bytes, got.mediaType);
      if (doc.kind !== "manifest") throw new ManifestError("An index lists another index");
      children.push({ digest: got.digest, bytes: got.bytes, mediaType: doc.mediaType, doc });
    }
  }
  const blobs = imageBlobs(topDoc.kind === "manifest" ? [topDoc] : children.map((c) => c.doc));
  const from = baseOf(source) === baseOf(target) && source.repository !== target.repository
    ? source.repository
    : undefined;
  const open: OpenBlob = (b, signal) =>
    Promise.resolve(
      new RemoteBlobReader(srcSession, source.repository, b, {
        policy,
        stallTimeoutMs: stallTimeout * 1000,
        signal,
      }),
    );
  const res = await uploadImage(
    {
      ...options,
      blobs: blobs.map((b): Blob => from ? { digest: b.digest, size: b.size, from } : b),
      baseUrl: baseOf(target),
      repository: target.repository,
      open,
      stateDir: null,
      session: destSession,
    },
    { kind: topDoc.kind, bytes: top.bytes, mediaType: topDoc.mediaType },
    children,
    manifestRef,
  );
  return pushed(options, res, { source, dest: target, digest: top.digest, blobs });
}

interface RemoteReaderOptions {
  policy: RetryPolicy;
  stallTimeoutMs: number;
  signal?: AbortSignal;
}

/**
 * A blob read from a registry as one GET stream, consumed in order by the
 * upload's chunk reads and hashed on the way; the last read fails with an
 * IntegrityError when the bytes do not hash to the digest, before the upload
 * commits. A read further back than the last chunk (the destination lost bytes)
 * re-opens the stream with `Range`; bytes already hashed are not hashed again.
 * A stream that breaks or stalls is re-opened where it stopped.
 */
class RemoteBlobReader implements BlobReader {
  readonly #session: Session;
  readonly #url: string;
  readonly #blob: Blob;
  readonly #opts: RemoteReaderOptions;
  #reader?: ReadableStreamDefaultReader<Uint8Array>;
  /** Offset of the next byte the open stream delivers. */
  #pos = 0;
  #leftover: Uint8Array | undefined;
  #hash = new Sha256();
  #hashed = 0;
  #last: { start: number; data: Uint8Array } | undefined;
  #failures = 0;

  constructor(session: Session, repository: string, blob: Blob, opts: RemoteReaderOptions) {
    this.#session = session;
    this.#url = session.client.blobUrl(repository, blob.digest);
    this.#blob = blob;
    this.#opts = opts;
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    const last = this.#last;
    if (last && offset >= last.start && offset + length <= last.start + last.data.byteLength) {
      return last.data.subarray(offset - last.start, offset - last.start + length);
    }
    if (offset + length > this.#blob.size) {
      throw new RangeError(`Read past the end of ${this.#blob.digest}`);
    }
    if (offset !== this.#pos || !this.#reader) await this.#open(offset, signal);
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      const piece = await this.#next(signal);
      const take = Math.min(piece.byteLength, length - filled);
      out.set(piece.subarray(0, take), filled);
      this.#consume(piece.subarray(0, take));
      this.#leftover = take < piece.byteLength ? piece.subarray(take) : undefined;
      filled += take;
    }
    this.#last = { start: offset, data: out };
    return out;
  }

  async close(): Promise<void> {
    await this.#reader?.cancel().catch(() => {});
    this.#reader = undefined;
  }

  /** Hashes the bytes at #pos that were not hashed before; checks the digest at the end. */
  #consume(bytes: Uint8Array): void {
    const start = this.#pos;
    this.#pos += bytes.byteLength;
    if (this.#pos > this.#hashed) {
      this.#hash.update(bytes.subarray(Math.max(0, this.#hashed - start)));
      this.#hashed = this.#pos;
      if (this.#hashed === this.#blob.size) {
        const got = this.#hash.digest();
        if (got !== this.#blob.digest) {
          // Forget everything read: the upload reads the blob once more from byte 0.
          this.#hash = new Sha256();
          this.#hashed = 0;
          this.#last = undefined;
          this.#reader?.cancel().catch(() => {});
          this.#reader = undefined;
          throw new SourceDigestError(
            `Source blob ${this.#blob.digest} from ${new URL(this.#url).host} hashes to ${got}`,
          );
        }
      }
    }
  }

  async #open(at: number, signal?: AbortSignal): Promise<void> {
    await this.close();
    this.#leftover = undefined;
    this.#pos = at;
    const headers: Record<string, string> = {};
    if (at > 0) headers.range = `bytes=${at}-`;
    let res: Response;
    try {
      res = await this.#session.fetch(new Request(this.#url, { headers, signal }));
    } catch (err) {
      if (signal?.aborted) throw new InterruptedError();
      // "… failed after 3 attempts: fetch failed" says more with the cause's cause.
      const said = (err as { cause?: Error })?.cause?.message;
      if (err instanceof NetworkError && said && err.message.endsWith(said)) {
        const detail = describe(err.cause);
        if (detail !== said) {
          throw new NetworkError(`${err.message.slice(0, -said.length)}${detail}`, {
            cause: err.cause,
          });
        }
      }
      throw err;
    }
    if (res.status === 404) {
      await res.body?.cancel().catch(() => {});
      throw new NotFoundError(`Blob ${this.#blob.digest} not found at ${new URL(this.#url).host}`);
    }
    if (res.status !== 200 && res.status !== 206) {
      throw await errorFromResponse(res, "GET", this.#url);
    }
    if (!res.body) throw new IntegrityError(`GET ${this.#blob.digest} returned no body`);
    const want = this.#blob.size - at;
    if (res.status === 206) {
      const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
      if (!cr || Number(cr[1]) !== at || Number(cr[2]) !== this.#blob.size - 1) {
        await res.body.cancel().catch(() => {});
        throw new IntegrityError(
          `Source answered bytes=${at}- with Content-Range ${res.headers.get("content-range")}`,
        );
      }
    }
    const cl = res.headers.get("content-length");
    const expected = res.status === 206 ? want : this.#blob.size;
    if (cl !== null && Number(cl) !== expected) {
      await res.body.cancel().catch(() => {});
      throw new IntegrityError(
        `Source sent Content-Length ${cl} for ${this.#blob.digest}, expected ${expected}`,
      );
    }
    this.#reader = res.body.getReader();
    if (res.status === 200 && at > 0) {
      // The source ignored Range: skip to where we are.
      this.#pos = 0;
      let skip = at;
      while (skip > 0) {
        const piece = await this.#next(signal);
        const take = Math.min(piece.byteLength, skip);
        this.#consume(piece.subarray(0, take));
        this.#leftover = take < piece.byteLength ? piece.subarray(take) : undefined;
        skip -= take;
      }
    }
  }

  /** The next bytes of the stream, re-opening it after a break or a stall. */
  async #next(signal?: AbortSignal): Promise<Uint8Array> {
    if (this.#leftover) {
      const l = this.#leftover;
      this.#leftover = undefined;
      return l;
    }
    for (let reopen = false;; reopen = true) {
      if (signal?.aborted) throw new InterruptedError();
      try {
        if (reopen) await this.#open(this.#pos, signal);
        const r = await this.#readWithStall(signal);
        if (r.done) throw new NetworkError(`Source stream of ${this.#blob.digest} ended early`);
        if (this.#pos + r.value.byteLength > this.#blob.size) {
          throw new IntegrityError(`Source sent more than ${this.#blob.size} bytes`);
        }
        if (r.value.byteLength) return r.value;
      } catch (err) {
        if (signal?.aborted || err instanceof IntegrityError) throw err;
        if (!(err instanceof NetworkError) && !isTransientError(err)) throw err;
        if (++this.#failures > this.#opts.policy.maxRetries) {
          const why = describe(err);
          const stalled = /no response/i.test(why) && !/stall/i.test(why) ? "Source stalled: " : "";
          throw new NetworkError(
            `${stalled}Reading ${this.#blob.digest} from ${
              new URL(this.#url).host
            } failed ${this.#failures} times: ${why}`,
            { cause: err },
          );
        }
        await sleep(backoffDelay(this.#failures, this.#opts.policy), signal);
      }
    }
  }

  async #readWithStall(signal?: AbortSignal): Promise<ReadableStreamReadResult<Uint8Array>> {
    const reader = this.#reader;
    if (!reader) throw new NetworkError("Source stream is closed");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reader.cancel().catch(() => {});
        reject(
          new NetworkError(`Source stalled: no data for ${this.#opts.stallTimeoutMs / 1000} s`),
        );
      }, this.#opts.stallTimeoutMs);
    });
    try {
      return await Promise.race([reader.read(), stalled]);
    } finally {
      clearTimeout(timer);
      if (signal?.aborted) await reader.cancel().catch(() => {});
    }
  }
}
