/**
 * Progress renderers. `lib/` reports progress as {@linkcode ProgressEvent}s; this module folds
 * them into a {@linkcode ProgressState} and turns that into terminal bars (like `ollama pull`),
 * plain log lines (stderr is not a terminal) or Ollama's `/api/pull` NDJSON.
 *
 * Everything here is pure apart from the injected `write`; time comes from the injected `now`
 * (milliseconds, any monotonic origin), so frames and throttling are tested as strings.
 *
 * The pieces live in cli/progress/: format, state, renderer, tty, plain, json.
 *
 * @module
 */

import type { ProgressEvent } from "../lib/progress_events.ts";
import { type Renderer, type TtyRendererOptions } from "./progress/renderer.ts";
import { TtyRenderer } from "./progress/tty.ts";
import { PlainRenderer } from "./progress/plain.ts";
import { JsonRenderer } from "./progress/json.ts";

export { formatBytes, formatDuration, formatRate, type TransferOp } from "./progress/format.ts";
export {
  type BlobProgress,
  phaseStatus,
  type ProgressRow,
  type ProgressSample,
  ProgressState,
  type ProgressStateOptions,
} from "./progress/state.ts";
export {
  type Renderer,
  type RendererOptions,
  type TtyRendererOptions,
} from "./progress/renderer.ts";
export { renderTty, type RenderTtyOptions, TtyRenderer } from "./progress/tty.ts";
export { PlainRenderer } from "./progress/plain.ts";
export { JsonRenderer, type OllamaProgressLine } from "./progress/json.ts";

/** Writes nothing (`--quiet`). */
export class QuietRenderer implements Renderer {
  handle(_e: ProgressEvent): void {}
  flush(): void {}
  close(): void {}
}

/** Output modes of {@linkcode createRenderer}. */
export type RendererMode = "tty" | "plain" | "json" | "quiet";

/** Creates the renderer for a mode; `width` and `height` are used by "tty" only. */
export function createRenderer(mode: RendererMode, options: TtyRendererOptions): Renderer {
  switch (mode) {
    case "tty":
      return new TtyRenderer(options);
    case "plain":
      return new PlainRenderer(options);
    case "json":
      return new JsonRenderer(options);
    case "quiet":
      return new QuietRenderer();
    default:
      throw new RangeError(
        `Cannot create renderer: mode must be "tty", "plain", "json" or "quiet", received "${
          String(mode)
        }"`,
      );
  }
}
