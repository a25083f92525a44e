/** Speeds of finished transfers, for the "slow part" rule (x/transfer: median of last 30). */
export class SpeedTracker {
  #samples: number[] = [];
  record(bytesPerMs: number): void {
    this.#samples.push(bytesPerMs);
    if (this.#samples.length > 30) this.#samples.shift();
  }
  /** Median speed, or undefined with fewer than 5 samples. */
  median(): number | undefined {
    if (this.#samples.length < 5) return undefined;
    const s = [...this.#samples].sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)];
  }
}
