/**
 * How many Range parts run at once: a start below the `concurrency` limit,
 * raised to the limit only when more connections bring more throughput.
 *
 * Why: on an unthrottled link (loopback, a LAN registry) the benchmark sweep
 * found no speed past 8 parts but ~3 MB of peak RSS per part in Deno and ~4.4 MB
 * in Bun, so 24 parts cost 40-70 MB for nothing; behind a per-connection cap (a
 * CDN, nginx `limit_rate`) throughput grows with every connection, and 24 is
 * what beats aria2c's 16. So transfers start at half the limit; once those are
 * all busy with parts waiting, one whole interval (150 ms, or twice the time to
 * the first byte if longer) gives the rate, a third more parts are added, and if
 * the next interval is at least 25% faster (a third more connections under a
 * per-connection cap measured +45-55% on loopback; a CPU-bound pull wobbles by
 * up to ~20%, and 15% let it open in 2 of 5 runs) the limit is opened fully,
 * else it goes back to the start and stays there.
 */
import type { Semaphore } from "../transport/pool.ts";

/** Options for {@link PartRamp}. */
export interface RampOptions {
  /** Length of each measurement. @default 150 ms */
  intervalMs?: number;
  /** Rate gain that counts as "more connections help". @default 0.25 */
  minGain?: number;
  /** No timer: the owner calls {@link PartRamp.tick} (tests). @default false */
  manual?: boolean;
}

export class PartRamp {
  readonly gate: Semaphore;
  #start: number;
  #max: number;
  #bytes = 0;
  #timer: ReturnType<typeof setInterval> | undefined;
  #created = performance.now();
  #last = 0;
  #measuring = false;
  #base = 0;
  #probing = false;
  #done: boolean;
  #intervalMs: number;
  #minGain: number;
  #manual: boolean;

  /** `gate` starts with `start` permits and may be raised to `max`. */
  constructor(gate: Semaphore, start: number, max: number, options: RampOptions = {}) {
    this.gate = gate;
    this.#start = start;
    this.#max = max;
    this.#intervalMs = options.intervalMs ?? 150;
    this.#minGain = options.minGain ?? 0.25;
    this.#manual = options.manual ?? false;
    this.#done = max <= start;
  }

  /** Bytes received by parts. */
  count(n: number): void {
    if (n <= 0 || this.#done) return;
    this.#bytes += n;
    if (this.#manual && !this.#last) {
      this.#last = performance.now();
      this.#measuring = this.gate.saturated;
    }
    if (this.#timer === undefined && !this.#manual) {
      // The interval is at least twice the time to the first byte, so that parts
      // added for the probe are flowing within it on a distant server as well.
      const now = performance.now();
      const ms = Math.max(this.#intervalMs, 2 * (now - this.#created));
      this.#last = now;
      // Already saturated at the first byte: the first interval is a whole one.
      this.#measuring = this.gate.saturated;
      this.#timer = setInterval(() => this.tick(), ms);
      (this.#timer as { unref?: () => void }).unref?.();
    }
  }

  /** One measurement interval ends at `now` (called by the timer). */
  tick(now = performance.now()): void {
    if (this.#done) return;
    const rate = this.#bytes / Math.max(1, now - this.#last);
    this.#bytes = 0;
    this.#last = now;
    if (this.#probing) {
      const helped = rate >= this.#base * (1 + this.#minGain);
      this.gate.resize(helped ? this.#max : this.#start);
      this.stop();
      return;
    }
    // Measure only whole intervals in which every permit was busy and more parts
    // waited: otherwise more permits could not have changed anything.
    if (!this.gate.saturated) {
      this.#measuring = false;
      return;
    }
    if (!this.#measuring) {
      this.#measuring = true;
      return;
    }
    this.#base = rate;
    this.#probing = true;
    this.gate.resize(Math.min(this.#max, this.#start + Math.ceil(this.#start / 3)));
  }

  stop(): void {
    this.#done = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

/**
 * Parts to start with for a `concurrency` limit: half (a quarter under Bun), at least 4, at
 * most the limit. Bun's fetch holds about 11 MB per open part (1 GiB from docker-registry on
 * loopback, the binary: 212-236 MB peak RSS at 12 parts, 143-147 MB at 6, in the same 1.6 s),
 * against Deno's ~3 MB; the ramp still opens the rest when more parts are faster.
 */
export function rampStart(concurrency: number): number {
  const share = "Bun" in globalThis ? 4 : 2;
  return Math.min(concurrency, Math.max(4, Math.ceil(concurrency / share)));
}
