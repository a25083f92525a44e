/**
 * How many Range parts run at once: a start below the `concurrency` limit, raised step by step
 * while each step brings more throughput, and kept at the last step that did.
 *
 * Why: on an unthrottled link (loopback, a LAN registry) the benchmark sweep found no speed past
 * 8 parts but ~3 MB of peak RSS per part in Deno and ~4.4-11 MB in Bun, so 24 parts cost
 * 40-70 MB for nothing; behind a per-connection cap (a CDN, nginx `limit_rate`) throughput grows
 * with every connection until the link or the CPU is the bound, and that point depends on the
 * cap and the machine. So transfers start at a share of the limit; once every part is busy with
 * more waiting, one whole interval (150 ms, or twice the time to the first byte if longer) gives
 * the rate, the parts are doubled (see {@link nextLevel}), and if the next interval is at least
 * 25% faster (twice the connections under a per-connection cap show up to +100%; a CPU-bound
 * pull wobbles by up to ~20%, and 15% let a probe open on loopback in 2 of 5 runs) that level is
 * kept and the next step is tried, up to the limit. Once a step has shown that connections are
 * the bound, a later one needs only 10% more (P2, 25 MB/s per connection: 16 → 24 parts gave
 * +19% in each of 3 runs, which 25% threw away). The first step that does not help goes back to
 * the level before it, and the ramp stops there.
 */
import process from "node:process";
import type { Semaphore } from "../transport/pool.ts";

/** Options for {@link PartRamp}. */
export interface RampOptions {
  /** Length of each measurement. @default 150 ms */
  intervalMs?: number;
  /** Rate gain that counts as "more connections help" at the first step. @default 0.25 */
  minGain?: number;
  /** The gain that keeps a later step, once the first one helped. @default 0.1 */
  laterGain?: number;
  /** No timer: the owner calls {@link PartRamp.tick} (tests). @default false */
  manual?: boolean;
}

/**
 * The level a step from `level` tries: twice as many, at most `max`. Doubling shows a
 * per-connection cap as +100% even through a CPU-bound pull's ~20% wobble, and reaches the
 * limit in few intervals: with steps of a third, Bun's 6 parts took five intervals to reach 24
 * and a 512 MiB blob behind 25 MB/s per connection ran at a quarter of the limit for most of its
 * transfer (3.6 s against aria2c's 1.75).
 */
export function nextLevel(level: number, max: number): number {
  return Math.min(max, Math.max(level + 2, level * 2));
}

export class PartRamp {
  readonly gate: Semaphore;
  #level: number;
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
  #laterGain: number;
  #manual: boolean;
  /** The levels tried, in order (the last one is where the ramp stands). */
  readonly steps: number[];
  /** The rate (bytes/ms) measured at each level tried but the last, in order. */
  readonly rates: number[] = [];

  /** `gate` starts with `start` permits and may be raised to `max`. */
  constructor(gate: Semaphore, start: number, max: number, options: RampOptions = {}) {
    this.gate = gate;
    this.#level = start;
    this.#max = max;
    this.#intervalMs = options.intervalMs ?? 150;
    this.#minGain = options.minGain ?? 0.25;
    this.#laterGain = options.laterGain ?? 0.1;
    this.#manual = options.manual ?? false;
    this.#done = max <= start;
    this.steps = [start];
  }

  /** Parts allowed at once now. */
  get level(): number {
    return this.#level;
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
      // added for a probe are flowing within it on a distant server as well.
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
      this.#probing = false;
      this.rates.push(rate);
      // The first step must show that connections are the bound (a CPU-bound pull wobbles by
      // up to ~20%); once one has, a later step is kept for any clear gain.
      const gain = this.steps.length > 2 ? this.#laterGain : this.#minGain;
      if (rate >= this.#base * (1 + gain)) {
        // The step helped: keep it, and try the next from here.
        this.#level = this.gate.size;
        this.#base = rate;
        if (this.#level >= this.#max) return this.stop();
        return this.#step();
      }
      this.gate.resize(this.#level);
      this.steps.push(this.#level);
      return this.stop();
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
    this.rates.push(rate);
    this.#step();
  }

  #step(): void {
    const next = nextLevel(this.#level, this.#max);
    this.#probing = true;
    this.steps.push(next);
    this.gate.resize(next);
  }

  stop(): void {
    // HAUL_TRACE=ramp: one line on stderr with the levels tried and their rates (benchmarks).
    if (!this.#done && this.steps.length > 1 && /\bramp\b/.test(process.env.HAUL_TRACE ?? "")) {
      const mbs = this.rates.map((r) => `${(r / 1e3).toFixed(0)} MB/s`);
      const tried = this.steps.map((n, i) => (mbs[i] ? `${n} (${mbs[i]})` : `${n}`));
      process.stderr.write(`haul: ramp: parts ${tried.join(" → ")}\n`);
    }
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
