/**
 * Stall and slow-part detection for one attempt in flight: no byte for the stall
 * timeout, or a part under 10% of the median part speed (Ollama's x/transfer
 * rule), cuts the attempt so it can be re-sent.
 */
import type { RangeTuning } from "./blob_job.ts";
import type { SpeedTracker } from "./speed_tracker.ts";

/** Raised inside an attempt to say why it was cut short. */
export class AttemptCut extends Error {
  constructor(readonly kind: "stall" | "slow" | "superseded", message: string) {
    super(message);
  }
}

/** What the watch reads from an attempt, and the cut it leaves there. */
export interface Watched {
  /** When the last byte arrived (ms since the epoch). */
  lastByte: number;
  /**
   * When the response headers arrived (0: not yet). The clocks start then: the
   * wait for them (retry backoff, Retry-After, a slow origin) is bounded by the
   * transport's header timeout.
   */
  headersAt: number;
  /** Bytes received by the attempt. */
  received: number;
  /** Why the watch cut the attempt, once it has. */
  cut: AttemptCut | undefined;
}

/** Checks `w` on a timer and cuts it through `stop`; clear the returned timer when done. */
export function watchForStalls(
  w: Watched,
  tuning: RangeTuning,
  speeds: SpeedTracker | undefined,
  stop: (cut: AttemptCut) => void,
): ReturnType<typeof setInterval> {
  return setInterval(() => {
    const now = Date.now();
    if (!w.headersAt) return;
    if (now - w.lastByte >= tuning.stallTimeoutMs) {
      w.cut = new AttemptCut("stall", `no data for ${tuning.stallTimeoutMs / 1000} s`);
      stop(w.cut);
      return;
    }
    const median = speeds?.median();
    const elapsed = now - w.headersAt;
    if (median && elapsed > 5000 && w.received / elapsed < median * 0.1) {
      w.cut = new AttemptCut("slow", `part is under 10% of the median speed`);
      stop(w.cut);
    }
  }, Math.min(1000, Math.max(50, tuning.stallTimeoutMs / 4)));
}
