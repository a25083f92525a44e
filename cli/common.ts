/** Helpers shared by the command modules: flag parsing and progress wiring. */
import process from "node:process";
import { UsageError } from "../lib/errors.ts";
import type { ProgressEvent } from "../lib/progress_events.ts";
import { createRenderer, type Renderer } from "./progress.ts";

/** A command: parses its own flags, runs, throws typed errors. */
export type Command = (args: string[], signal: AbortSignal) => Promise<void>;

/** Parses sizes like 64M, 1.5GiB, 65536 into bytes (binary units). */
export function parseSize(s: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`${flag}: invalid size ${JSON.stringify(s)} (try 64M)`);
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[
    m[2].toLowerCase() as "" | "k" | "m" | "g" | "t"
  ];
  return Math.floor(Number(m[1]) * mult);
}

export function parseNumber(s: string | undefined, flag: string, min: number): number | undefined {
  if (s === undefined) return undefined;
  const n = Number(s);
  if (!Number.isFinite(n) || n < min) {
    throw new UsageError(`${flag}: expected a number ≥ ${min}, got ${JSON.stringify(s)}`);
  }
  return n;
}

export function parsePlatform(s: string | undefined) {
  if (s === undefined) return undefined;
  const [os, architecture, variant, extra] = s.split("/");
  if (!os || !architecture || extra !== undefined) {
    throw new UsageError(`--platform: expected OS/ARCH[/VARIANT], got ${JSON.stringify(s)}`);
  }
  return variant ? { os, architecture, variant } : { os, architecture };
}

export function renderMode(
  values: { json?: boolean; quiet?: boolean },
): "json" | "quiet" | "tty" | "plain" {
  if (values.json) return "json";
  if (values.quiet) return "quiet";
  return process.stderr.isTTY ? "tty" : "plain";
}

/**
 * The progress handler of a transfer command: warnings go to stderr in every mode but --quiet
 * (stdout may be NDJSON), and into the NDJSON too with --json; the rest to the renderer.
 */
export function progressHandler(
  renderer: Renderer,
  values: { json?: boolean; quiet?: boolean },
): (e: ProgressEvent) => void {
  return (e) => {
    if (e.type === "warning") {
      if (!values.quiet) process.stderr.write(`haul: warning: ${e.message}\n`);
      if (values.json) renderer.handle(e);
      return;
    }
    renderer.handle(e);
  };
}

/** A renderer for the chosen mode, ticking while the transfer runs; call `stop()` at the end. */
export function startProgress(values: { json?: boolean; quiet?: boolean }): {
  renderer: Renderer;
  stop: () => void;
} {
  const mode = renderMode(values);
  const renderer: Renderer = createRenderer(mode, {
    write: (s: string) => {
      if (mode === "json") process.stdout.write(s);
      else process.stderr.write(s);
    },
    now: () => Date.now(),
    width: () => process.stderr.columns || 80,
    height: () => process.stderr.rows || 24,
  });
  // Renderers own no timers: tick them so speed and ETA move while data stalls.
  const tick = setInterval(() => renderer.flush(), mode === "plain" ? 1000 : 200);
  return {
    renderer,
    stop: () => {
      clearInterval(tick);
      renderer.close();
    },
  };
}

/** Parses durations like 300ms, 30s, 5m, 1h, 1.5 (seconds) into milliseconds. */
export function parseDuration(s: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`${flag}: invalid duration ${JSON.stringify(s)} (try 30s or 5m)`);
  const unit = (m[2] ?? "s").toLowerCase() as "ms" | "s" | "m" | "h";
  return Math.round(Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit]);
}
