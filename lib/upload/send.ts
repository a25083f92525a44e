/**
 * Step 4: sending the bytes. A small blob goes up in one `PUT <location>?digest=` with
 * the bytes ({@link sendWhole}); a large one chunk by chunk, `PATCH <location>` each
 * ({@link sendChunk}, driven by chunked.ts). When the registry refuses the bytes
 * (DIGEST_INVALID), the source is hashed again to tell a corrupt blob from bytes
 * changed on the way ({@link checkSource}).
 */
import { createHash } from "node:crypto";
import { type BlobReader, openStoreBlob } from "../disk/blob_file.ts";
import { sha256Digest } from "../digest.ts";
import { type HaulError, IntegrityError, NotFoundError } from "../errors.ts";
import type { Blob } from "../registry/manifest.ts";
import { SEND_ONCE } from "../transport/fetch.ts";
import { commitBlob } from "./commit.ts";
import type { UploadContext } from "./context.ts";
import { checkBlob } from "./mount.ts";
import {
  corruptSource,
  garbledInTransit,
  isDigestInvalid,
  SourceDigestError,
  unwrap,
  unwrapCause,
  UploadStepError,
} from "./errors.ts";
import { pause } from "./retry.ts";
import { openSession } from "./session.ts";
import { OCTET, parseUploadRange, withDigest } from "./target.ts";

/** A chunk's body: bytes in memory, or read as it is sent (`Blob`: replayable; stream: once). */
export type ChunkBody = Uint8Array | {
  stream: ReadableStream<Uint8Array<ArrayBuffer>> | globalThis.Blob;
  length: number;
};

/** What the registry said to a PATCH: the next URL and the bytes it holds. */
export interface ChunkAck {
  location: string;
  /** Bytes acknowledged: the chunk's end, or less when the registry's Range says so. */
  offset: number;
  /** The Range header as sent, for messages. */
  range: string | null;
}

/**
 * Sends one chunk at `offset`, from memory or streamed (sent once: see SEND_ONCE);
 * returns the next URL and the offset the registry reports.
 */
export async function sendChunk(
  ctx: UploadContext,
  b: Blob,
  location: string,
  offset: number,
  data: ChunkBody,
  ranged = true,
): Promise<ChunkAck> {
  const streamed = !(data instanceof Uint8Array);
  const length = streamed ? data.length : data.byteLength;
  const step = `sending bytes ${offset}-${offset + length - 1} of ${b.digest}`;
  const headers: Record<string, string> = { "content-type": OCTET };
  if (ranged || !streamed) {
    headers["content-length"] = String(length);
    headers["content-range"] = `${offset}-${offset + length - 1}`;
  }
  // Unranged: a streamed upload (chunked, no Content-Range), even from a file slice.
  const stream = streamed && !ranged && data.stream instanceof globalThis.Blob
    ? pulledFrom(data.stream)
    : streamed
    ? data.stream
    : undefined;
  const once = stream !== undefined && !(stream instanceof globalThis.Blob);
  if (once) headers[SEND_ONCE] = "1";
  const res = await ctx.target.send(
    new Request(location, {
      method: "PATCH",
      headers,
      body: stream ?? data as Uint8Array<ArrayBuffer>,
      signal: ctx.signal,
      // deno-lint-ignore no-explicit-any
      ...(once ? { duplex: "half" } as any : {}),
    }),
    step,
    length,
  );
  // ECR answers a PATCH with 201 (kitops-ml/kitops, jdx/mise#11376).
  if (res.status !== 202 && res.status !== 204 && res.status !== 201) {
    return await ctx.target.fail(res, "PATCH", location, step);
  }
  await res.body?.cancel().catch(() => {});
  const expected = offset + length;
  const reported = parseUploadRange(res.headers.get("range"), expected);
  return {
    location: res.headers.get("location")
      ? ctx.target.location(res, location, "PATCH", step)
      : location,
    offset: reported !== undefined && reported < expected ? reported : expected,
    range: res.headers.get("range"),
  };
}

/**
 * The whole blob in one `PUT <location>?digest=` (a registry without chunked uploads:
 * Artifact Registry), streamed from the file; a failure worth it is tried again in a new
 * session.
 */
export async function sendMonolithic(
  ctx: UploadContext,
  b: Blob,
  first: string,
  reader: BlobReader,
): Promise<void> {
  let location = first;
  for (let attempt = 0;; attempt++) {
    const url = withDigest(location, b.digest);
    const step = `sending ${b.digest} in one PUT (${b.size} bytes, monolithic)`;
    const body = reader.stream
      ? reader.stream(0, b.size, (n) => ctx.progress.sent(b, n))
      : await reader.read(0, b.size, ctx.signal) as Uint8Array<ArrayBuffer>;
    const once = body instanceof ReadableStream;
    ctx.result.transferred += b.size;
    try {
      const res = await ctx.target.send(
        new Request(url, {
          method: "PUT",
          headers: {
            "content-type": OCTET,
            "content-length": String(b.size),
            ...(once ? { [SEND_ONCE]: "1" } : {}),
          },
          body,
          signal: ctx.signal,
          // deno-lint-ignore no-explicit-any
          ...(once ? { duplex: "half" } as any : {}),
        }),
        step,
        b.size,
      );
      if (res.status !== 201 && res.status !== 204 && res.status !== 200) {
        return await ctx.target.fail(res, "PUT", url, step);
      }
      await res.body?.cancel().catch(() => {});
      return;
    } catch (err) {
      ctx.progress.sent(b, 0);
      if (!(err instanceof UploadStepError) || !err.retryable || attempt >= ctx.policy.maxRetries) {
        throw unwrap(err);
      }
      await pause(ctx, b, attempt, err);
      if (await checkBlob(ctx, b)) return;
      location = await openSession(ctx, b);
    }
  }
}

/**
 * A Blob (Bun's file slice) as a stream read 1 MiB at a time as it is sent. Not the Blob's own
 * `stream()`: Bun sends that with the Blob's Content-Length (a ranged-size body to a registry
 * that caps those), and piping it reads the file ahead without backpressure (457 MiB peak RSS
 * for a 1 GiB push, against 47 MiB).
 */
function pulledFrom(blob: globalThis.Blob): ReadableStream<Uint8Array<ArrayBuffer>> {
  let at = 0;
  return new ReadableStream<Uint8Array<ArrayBuffer>>({
    async pull(c) {
      if (at >= blob.size) return c.close();
      const end = Math.min(blob.size, at + PULL_PIECE);
      const piece = new Uint8Array(await blob.slice(at, end).arrayBuffer());
      at = end;
      c.enqueue(piece);
    },
  }, { highWaterMark: 2 });
}

const PULL_PIECE = 1 << 20;

/** A small blob: one PUT with the bytes; a failed attempt starts a new session. */
export async function sendWhole(
  ctx: UploadContext,
  b: Blob,
  first: string,
  reader: BlobReader,
): Promise<void> {
  const data = await readWhole(ctx, b, reader);
  let location = first;
  let digestRetried = false;
  for (let attempt = 0;; attempt++) {
    try {
      ctx.result.transferred += data.byteLength;
      await commitBlob(ctx, b, location, data);
      return;
    } catch (err) {
      ctx.progress.sent(b, 0);
      if (isDigestInvalid(unwrapCause(err))) {
        // The bytes in hand are what was sent: if they hash right, they changed on the way.
        const got = sha256Digest(data);
        if (got !== b.digest) throw corruptSource(b, ctx.srcDir, got);
        if (digestRetried) throw garbledInTransit(b);
        digestRetried = true;
        location = await openSession(ctx, b);
        continue;
      }
      if (!(err instanceof UploadStepError) || !err.retryable || attempt >= ctx.policy.maxRetries) {
        throw unwrap(err);
      }
      await pause(ctx, b, attempt, err);
      if (await checkBlob(ctx, b)) return;
      location = await openSession(ctx, b);
    }
  }
}

/** All of a small blob's bytes; a source that sent other bytes once (copy) gets one more read. */
export async function readWhole(
  ctx: UploadContext,
  b: Blob,
  reader: BlobReader,
): Promise<Uint8Array> {
  try {
    return await reader.read(0, b.size, ctx.signal);
  } catch (err) {
    if (!(err instanceof SourceDigestError)) throw err;
    return await reader.read(0, b.size, ctx.signal);
  }
}

/**
 * Re-hashes a store blob after the registry refused its bytes: an IntegrityError when
 * the file does not hash to its name, undefined when it does (or the source is not a
 * store file: copy's reader checks the digest as it streams).
 */
export async function checkSource(ctx: UploadContext, b: Blob): Promise<HaulError | undefined> {
  const dir = ctx.storeDir;
  if (dir === undefined) return undefined;
  let r: BlobReader;
  try {
    r = await openStoreBlob(dir, b);
  } catch (e) {
    if (e instanceof IntegrityError || e instanceof NotFoundError) return e;
    throw e;
  }
  const h = createHash("sha256");
  try {
    for (let at = 0; at < b.size;) {
      const n = Math.min(8 << 20, b.size - at);
      h.update(await r.read(at, n, ctx.signal));
      at += n;
    }
  } finally {
    await r.close();
  }
  const got = `sha256:${h.digest("hex")}`;
  return got === b.digest ? undefined : corruptSource(b, dir, got);
}
