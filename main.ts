#!/usr/bin/env -S deno run -A
/**
 * haul command line: argument parsing, progress wiring and exit codes only.
 * Everything else is in lib/ (see lib/mod.ts).
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { COMMIT, ExitCode, HaulError, pull, UsageError, VERSION } from "./lib/mod.ts";
import { createRenderer, type Renderer } from "./lib/progress.ts";
import type { ProgressEvent } from "./lib/progress_events.ts";

const HELP = `haul ${VERSION}: fast, verified transfers of models and images between
OCI / Ollama registries and disk.

Usage:
  haul pull [options] REF...     fetch models into Ollama's store
  haul --version | --help

REF follows Ollama: "llama3.2" is registry.ollama.ai/library/llama3.2:latest;
"user/model:tag"; "host[:port]/ns/model:tag"; "…@sha256:<hex>" pins a digest.

Run "haul <command> --help" for a command's options.`;

const PULL_HELP = `Usage: haul pull [options] REF...

Fetches each REF's manifest and every blob it references, in parallel, into
Ollama's model store, so that "ollama run NAME" uses it at once. Large blobs
are split into HTTP Range parts; SHA-256 is verified as data streams; an
interrupted pull resumes where it stopped.

Options:
  --models DIR          store root (default $OLLAMA_MODELS or ~/.ollama/models)
  --insecure            allow plain http (and an http:// REF)
  --concurrency N       simultaneous transfers, blobs and parts (default 16)
  --part-size SIZE      Range part size, e.g. 64M (default 64M)
  --stall-timeout SECS  re-fetch a part after this long without data (default 30)
  --platform OS/ARCH    platform to pick from an image index (default this machine)
  --json                print Ollama's /api/pull NDJSON progress on stdout
  --quiet, -q           print nothing but errors
  -h, --help            this help

Examples:
  haul pull llama3.2
  haul pull --insecure --models /tmp/models 127.0.0.1:5000/library/tiny:latest
  haul pull --json qwen2.5:0.5b | jq .status`;

/** Parses sizes like 64M, 1.5GiB, 65536 into bytes (binary units). */
export function parseSize(s: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`${flag}: invalid size ${JSON.stringify(s)} (try 64M)`);
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[
    m[2].toLowerCase() as "" | "k" | "m" | "g" | "t"
  ];
  return Math.floor(Number(m[1]) * mult);
}

function parseNumber(s: string | undefined, flag: string, min: number): number | undefined {
  if (s === undefined) return undefined;
  const n = Number(s);
  if (!Number.isFinite(n) || n < min) {
    throw new UsageError(`${flag}: expected a number ≥ ${min}, got ${JSON.stringify(s)}`);
  }
  return n;
}

function parsePlatform(s: string | undefined) {
  if (s === undefined) return undefined;
  const [os, architecture, variant, extra] = s.split("/");
  if (!os || !architecture || extra !== undefined) {
    throw new UsageError(`--platform: expected OS/ARCH[/VARIANT], got ${JSON.stringify(s)}`);
  }
  return variant ? { os, architecture, variant } : { os, architecture };
}

function renderMode(
  values: { json?: boolean; quiet?: boolean },
): "json" | "quiet" | "tty" | "plain" {
  if (values.json) return "json";
  if (values.quiet) return "quiet";
  return process.stderr.isTTY ? "tty" : "plain";
}

async function cmdPull(args: string[], signal: AbortSignal): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      models: { type: "string" },
      insecure: { type: "boolean" },
      concurrency: { type: "string" },
      "part-size": { type: "string" },
      "stall-timeout": { type: "string" },
      platform: { type: "string" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(PULL_HELP);
    return;
  }
  if (!positionals.length) throw new UsageError("pull: missing REF (see haul pull --help)");
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
  try {
    await pull(positionals, {
      modelsDir: values.models,
      insecure: values.insecure,
      concurrency: parseNumber(values.concurrency, "--concurrency", 1),
      partSize: values["part-size"] === undefined
        ? undefined
        : parseSize(values["part-size"], "--part-size"),
      stallTimeout: parseNumber(values["stall-timeout"], "--stall-timeout", 0.05),
      platform: parsePlatform(values.platform),
      onEvent: (e: ProgressEvent) => renderer.handle(e),
      signal,
    });
  } finally {
    clearInterval(tick);
    renderer.close();
  }
}

async function main(argv: string[]): Promise<number> {
  const ac = new AbortController();
  let interrupts = 0;
  const onSignal = () => {
    if (++interrupts > 1) process.exit(ExitCode.interrupted);
    ac.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const [cmd, ...rest] = argv;
    switch (cmd) {
      case undefined:
      case "-h":
      case "--help":
      case "help":
        console.log(HELP);
        return cmd === undefined ? ExitCode.usage : 0;
      case "-v":
      case "--version":
      case "version":
        console.log(`haul ${VERSION} (${COMMIT})`);
        return 0;
      case "pull":
        await cmdPull(rest, ac.signal);
        return 0;
      default:
        throw new UsageError(`Unknown command ${JSON.stringify(cmd)} (see haul --help)`);
    }
  } catch (err) {
    return report(err, ac.signal.aborted);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

function report(err: unknown, interrupted: boolean): number {
  if (interrupted) {
    process.stderr.write("haul: interrupted; run the same command again to resume\n");
    return ExitCode.interrupted;
  }
  if (err instanceof HaulError) {
    process.stderr.write(`haul: ${oneLine(err.message)}\n`);
    return err.exitCode;
  }
  // parseArgs and option validation raise plain errors for bad flags.
  const code = (err as { code?: string })?.code ?? "";
  if (err instanceof RangeError || code.startsWith("ERR_PARSE_ARGS")) {
    process.stderr.write(`haul: ${oneLine((err as Error).message)}\n`);
    return ExitCode.usage;
  }
  process.stderr.write(
    `haul: internal error: ${oneLine(String((err as Error)?.message ?? err))}\n`,
  );
  return ExitCode.internal;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, " ").trim();
}

if (import.meta.main) {
  const code = await main(process.argv.slice(2));
  process.exitCode = code;
  // Exit now: a pending Worker or timer must not keep the process alive.
  process.exit(code);
}
