/**
 * One token bucket shared by every stream of a transfer, so `--limit-rate`
 * caps the whole transfer (as curl's does for its one stream), not each part.
 */
import { sleep } from "./retry.ts";

export class RateLimiter {
  readonly bytesPerSec: number;
  #next = 0; // time (ms) when the bucket is next empty
  #burstMs: number;

  /**
   * @param bytesPerSec the cap; @param burstMs how far ahead a stream may run: at most that
   * many ms of bytes over the cap in any window (50 ms: 1% of a 5 s window). @default 50
   */
  constructor(bytesPerSec: number, burstMs = 50) {
    if (!(bytesPerSec > 0)) throw new RangeError(`Rate must be positive, got ${bytesPerSec}`);
    this.bytesPerSec = bytesPerSec;
    this.#burstMs = burstMs;
  }

  /** Accounts `n` bytes; resolves when the caller may go on. */
  async take(n: number, signal?: AbortSignal): Promise<void> {
    const now = Date.now();
    this.#next = Math.max(this.#next, now - this.#burstMs) + (n / this.bytesPerSec) * 1000;
    const wait = this.#next - now - this.#burstMs;
    if (wait > 0) await sleep(wait, signal);
  }
}
