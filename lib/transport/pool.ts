function checkSize(size: number): void {
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`Semaphore size must be a positive integer, got ${size}`);
  }
}

/** A counting semaphore: bounds connections across every blob and part of a transfer. */
export class Semaphore {
  #free: number;
  #size: number;
  #waiters: (() => void)[] = [];
  constructor(size: number) {
    checkSize(size);
    this.#free = size;
    this.#size = size;
  }
  /** Permits in total. */
  get size(): number {
    return this.#size;
  }
  /** Whether every permit is taken and someone waits for one. */
  get saturated(): boolean {
    return this.#free <= 0 && this.#waiters.length > 0;
  }
  /**
   * Changes the number of permits. Growing wakes waiters at once; shrinking
   * takes effect as holders release (nobody is interrupted).
   */
  resize(size: number): void {
    checkSize(size);
    this.#free += size - this.#size;
    this.#size = size;
    while (this.#free > 0 && this.#waiters.length) {
      this.#free--;
      this.#waiters.shift()!();
    }
  }
  async acquire(signal?: AbortSignal): Promise<() => void> {
    if (this.#free > 0) {
      this.#free--;
    } else {
      await new Promise<void>((resolve, reject) => {
        const w = () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        };
        const onAbort = () => {
          const i = this.#waiters.indexOf(w);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(signal!.reason);
        };
        if (signal?.aborted) return reject(signal.reason);
        signal?.addEventListener("abort", onAbort, { once: true });
        this.#waiters.push(w);
      });
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (this.#free < 0) {
        this.#free++; // shrunk while held: this permit is gone
        return;
      }
      const next = this.#waiters.shift();
      if (next) next();
      else this.#free++;
    };
  }
}

/** Runs `fn` over `items` with at most `limit` at once; rejects with the first error. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i], i);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const n = Math.max(1, Math.min(limit, items.length));
  await Promise.all(Array.from({ length: n }, worker));
  return out;
}

/**
 * Write buffers of one size, reused from part to part. A 2 GiB pull runs 128
 * parts and an 8 GiB one 512; a fresh 1 MiB buffer per part is garbage the
 * engine collects late (external memory), which showed as peak RSS growing with
 * the blob's size (Deno: ~167 MB at 2 GiB, ~195 MB at 8 GiB).
 */
export class BufferPool {
  readonly size: number;
  readonly max: number;
  #free: Uint8Array<ArrayBuffer>[] = [];
  /** Buffers of `size` bytes; at most `max` are kept for reuse. */
  constructor(size: number, max = 32) {
    this.size = size;
    this.max = max;
  }
  /** A buffer of `size` bytes, reused when one is free. */
  take(): Uint8Array<ArrayBuffer> {
    return this.#free.pop() ?? new Uint8Array(this.size);
  }
  /**
   * Hands a buffer back. Only whole, live buffers of `size` bytes are kept: a
   * detached one (transferred away by a failed write or a pending read) is not.
   */
  give(buf: Uint8Array<ArrayBuffer>): void {
    if (
      buf.byteLength === this.size && buf.byteOffset === 0 &&
      buf.buffer.byteLength === this.size && this.#free.length < this.max &&
      !this.#free.includes(buf)
    ) this.#free.push(buf);
  }
}
