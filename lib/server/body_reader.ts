/**
 * Reading a response body for the socket into reused buffers. A blob on disk is a byte
 * stream (lib/disk/file_stream.ts), read here with a BYOB reader into buffers that come
 * back ({@link BodyReader.release}) once node:http has written them, so serving a blob
 * allocates no buffer per read: a fresh 256 KiB buffer per read (zeroed, then collected
 * by V8) was most of what haul serve spent beyond the kernel's copies. Any other body
 * (a blob still landing, JSON) is read as it comes.
 */

/** One buffer; the size of a stored blob's reads (lib/disk/file_stream.ts DEFAULT_READ_SIZE). */
const BUFFER_SIZE = 256 << 10;
/** Free buffers kept between responses (8 MiB). */
const POOL_MAX = 32;
const pool: ArrayBuffer[] = [];

/** A body read for the socket. */
export interface BodyReader {
  /** The next chunk; one more read is already under way (one read ahead). */
  read(): Promise<ReadableStreamReadResult<Uint8Array>>;
  /** `chunk`, a value {@link read} returned, is no longer used: its buffer may be reused. */
  release(chunk: Uint8Array): void;
  cancel(reason?: unknown): Promise<void>;
}

/** Reads `body` with reused buffers when it is a byte stream, else as it comes. */
export function bodyReader(body: ReadableStream<Uint8Array>): BodyReader {
  let byob: ReadableStreamBYOBReader;
  try {
    byob = body.getReader({ mode: "byob" });
  } catch {
    // Not a byte stream.
    const reader = body.getReader();
    return { read: () => reader.read(), release() {}, cancel: (r) => reader.cancel(r) };
  }
  const next = () =>
    byob.read(new Uint8Array(pool.pop() ?? new ArrayBuffer(BUFFER_SIZE))).then((r) => {
      // The last read comes back empty, with its buffer.
      if (r.done && r.value) give(r.value);
      return r as ReadableStreamReadResult<Uint8Array>;
    });
  let ahead: Promise<ReadableStreamReadResult<Uint8Array>> | undefined;
  return {
    read() {
      const current = ahead ?? next();
      ahead = next();
      ahead.catch(() => {}); // the error comes with the read that awaits it
      return current;
    },
    release: give,
    cancel: (reason) => byob.cancel(reason),
  };
}

function give(chunk: Uint8Array): void {
  const buf = chunk.buffer;
  if (buf instanceof ArrayBuffer && buf.byteLength === BUFFER_SIZE && pool.length < POOL_MAX) {
    pool.push(buf);
  }
}
