#!/usr/bin/env -S deno run -A
/**
 * haul command line: argument parsing, progress wiring and exit codes only.
 * Everything else is in lib/ (see lib/mod.ts).
 */
import process from "node:process";
import { COMMIT, ExitCode, HaulError, UsageError, VERSION } from "./lib/mod.ts";
import type { Command } from "./cli/common.ts";
import { pullCommand } from "./cli/pull.ts";
import { copyCommand, pushCommand } from "./cli/push.ts";
import { listCommand, pruneCommand, rmCommand, verifyCommand } from "./cli/store.ts";
import { loginCommand, logoutCommand } from "./cli/login.ts";
import { completionCommand } from "./cli/completion.ts";
import { serveCommand } from "./cli/serve.ts";

/** Subcommands; each module parses its own flags. */
const COMMANDS: Record<string, Command> = {
  pull: pullCommand,
  push: pushCommand,
  copy: copyCommand,
  list: listCommand,
  ls: listCommand,
  rm: rmCommand,
  prune: pruneCommand,
  verify: verifyCommand,
  login: loginCommand,
  logout: logoutCommand,
  completion: completionCommand,
  serve: serveCommand,
};

const HELP = `haul ${VERSION}: fast, verified transfers of models and images between
OCI / Ollama registries and disk.

Usage:
  haul pull [options] REF...     fetch models into Ollama's store
  haul push [options] REF [DEST] upload a model from Ollama's store
  haul copy [options] SRC DEST   copy registry to registry, no local store
  haul list [--json]             list the models in the store
  haul rm REF...                 remove models and the blobs no other model uses
  haul prune [--dry-run]         remove unused blobs and stale partial downloads
  haul verify [--fix] [REF...]   re-hash blobs, report damaged or missing ones
  haul login [-u USER] REGISTRY  save credentials for a registry (Docker's config.json)
  haul logout REGISTRY           remove saved credentials for a registry
  haul completion SHELL          print a bash, zsh or fish completion script
  haul serve [options]           share a model store as a read-only registry
  haul --version | --help

REF follows Ollama: "llama3.2" is registry.ollama.ai/library/llama3.2:latest;
"user/model:tag"; "host[:port]/ns/model:tag"; "…@sha256:<hex>" pins a digest.

Run "haul <command> --help" for a command's options.`;

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
      default: {
        const run = COMMANDS[cmd];
        if (!run) throw new UsageError(`Unknown command ${JSON.stringify(cmd)} (see haul --help)`);
        await run(rest, ac.signal);
        return 0;
      }
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
