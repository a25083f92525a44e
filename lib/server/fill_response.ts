/**
 * The answer to a GET or HEAD of a blob that is still landing (a {@link BlobFill}): a range on
 * disk at once, one still coming as its bytes land, the blob's last byte held until the blob is
 * verified, a cut body when the fill fails or discards bytes already sent; see blob_fill.ts.
 */
import type { BlobFill } from "./blob_fill.ts";

/** Options for {@link fillResponse}. */
export interface FillResponseOptions {
  /** Bytes per read (memory per client is ~2 of these). @default 256 KiB */
  readSize?: number;
  /**
   * Longest wait for the first byte of the range before the headers go out (then the body
   * waits for the bytes). Within it, a fill that fails gets the client an error answer.
   * @default 5000
   */
  headerWaitMs?: number;
  /**
   * Blobs up to this size land in one piece (the engine reports no ranges of them): a client
   * waits for the whole blob, up to {@link SMALL_BLOB_WAIT_MS}, and gets it or an error answer.
   * @default 16 MiB (the engine's `singleStreamMax`)
   */
  smallBlobMax?: number;
  /** Aborting cuts the response (server shutdown). */
  signal?: AbortSignal;
}

/** Default {@link FillResponseOptions.headerWaitMs}. */
export const DEFAULT_HEADER_WAIT_MS = 5000;

/** Longest wait for a small blob (see {@link FillResponseOptions.smallBlobMax}). */
export const SMALL_BLOB_WAIT_MS = 30_000;

/**
 * Answers `req` for `range` (undefined: the whole blob; the caller has parsed it and answered
 * 416 and If-None-Match) from `fill`. Undefined when the fill is done by the time it would
 * answer: the blob is in the store, serve it from there.
 */
export async function fillResponse(
  req: Request,
  fill: BlobFill,
  range: { start: number; end: number } | undefined,
  options: FillResponseOptions = {},
): Promise<Response | undefined> {
  const [start, end] = range ? [range.start, range.end] : [0, fill.size];
  if (req.method !== "HEAD") {
    const wait = options.headerWaitMs ?? DEFAULT_HEADER_WAIT_MS;
    const small = fill.size <= (options.smallBlobMax ?? 16 << 20);
    const deadline = Date.now() + (small ? Math.max(wait, SMALL_BLOB_WAIT_MS) : wait);
    while (
      fill.state === "filling" && fill.availableFrom(start) === start && Date.now() < deadline &&
      !options.signal?.aborted
    ) {
      await fill.changed(deadline - Date.now(), options.signal);
    }
  }
  if (fill.state === "failed") return failureResponse(req, fill);
  if (fill.state === "done") return undefined;
  const headers = new Headers({
    "content-type": "application/octet-stream",
    "docker-content-digest": fill.digest,
    etag: `"${fill.digest}"`,
    "accept-ranges": "bytes",
    "content-length": String(end - start),
  });
  if (range) headers.set("content-range", `bytes ${start}-${end - 1}/${fill.size}`);
  // Stock Ollama accepts only a 307 or a 200 naming a Location (see registry_server.ts blob).
  else headers.set("location", new URL(req.url).href);
  const status = range ? 206 : 200;
  if (req.method === "HEAD" || end === start) return new Response(null, { status, headers });
  return new Response(landingStream(fill, start, end, options), { status, headers });
}

/** The registry error a client waiting for a failed fill gets. */
export function failureResponse(req: Request, fill: BlobFill): Response {
  const f = fill.failure ?? { status: 502, code: "UNKNOWN", message: "upstream fetch failed" };
  const body = new TextEncoder().encode(
    JSON.stringify({ errors: [{ code: f.code, message: f.message }] }),
  );
  return new Response(req.method === "HEAD" ? null : body, {
    status: f.status,
    headers: { "content-type": "application/json", "content-length": String(body.byteLength) },
  });
}

/**
 * Bytes `[start, end)` of `fill` as they land. Reads only what is on disk in the current
 * generation; holds the blob's last byte until the fill is done; errors (the server then cuts the
 * connection) when the fill fails, or discards bytes after this stream sent some.
 */
function landingStream(
  fill: BlobFill,
  start: number,
  end: number,
  options: FillResponseOptions,
): ReadableStream<Uint8Array> {
  const readSize = options.readSize ?? 256 << 10;
  const release = fill.reader();
  let pos = start;
  let generation = fill.generation;
  const next = async (): Promise<Uint8Array> => {
    for (;;) {
      if (fill.state === "failed") throw new Error(fill.failure?.message ?? "upstream failed");
      if (fill.generation !== generation) {
        if (pos > start) throw new Error(`bytes of ${fill.digest} were discarded upstream`);
        generation = fill.generation;
      }
      if (options.signal?.aborted) throw new Error("server stopping");
      // The blob's last byte waits for the verified blob: no response ever completes a blob
      // with bytes that turn out wrong.
      const limit = fill.state === "done"
        ? end
        : Math.min(end, fill.size - 1, fill.availableFrom(pos));
      if (limit > pos) {
        const fh = await fill.file();
        if (fh) {
          const buf = new Uint8Array(Math.min(readSize, limit - pos));
          const { bytesRead } = await fh.read(buf, 0, buf.byteLength, pos);
          // Read from a file a discard replaced meanwhile: not sent.
          if (fill.generation === generation && bytesRead > 0) {
            pos += bytesRead;
            return buf.subarray(0, bytesRead);
          }
          continue;
        }
      }
      await fill.changed(1000, options.signal);
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        controller.enqueue(await next());
        if (pos >= end) {
          controller.close();
          release();
        }
      } catch (err) {
        release();
        controller.error(err);
      }
    },
    cancel() {
      release();
    },
  }, { highWaterMark: 1 });
}
