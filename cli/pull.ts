/** haul pull */
import process from "node:process";
import { readFile } from "node:fs/promises";
import * as tls from "node:tls";
import { parseArgs } from "node:util";
import { pull } from "../lib/mod.ts";
import type { ProgressEvent } from "../lib/progress_events.ts";
import { UsageError } from "../lib/errors.ts";
import { type Command, parseNumber, parsePlatform, parseSize, startProgress } from "./common.ts";

export const PULL_HELP = `Usage: haul pull [options] REF...

Fetches each REF's manifest and every blob it references, in parallel, into
Ollama's model store, so that "ollama run NAME" uses it at once. Large blobs
are split into HTTP Range parts; SHA-256 is verified as data streams; an
interrupted pull resumes where it stopped.

Options:
  --models DIR          store root (default $OLLAMA_MODELS or ~/.ollama/models)
  --insecure            allow plain http (and an http:// REF)
  --ca-file FILE        also trust the CA certificates in FILE (PEM)
  --concurrency N       simultaneous transfers, blobs and parts (default 24)
  --part-size SIZE      Range part size, e.g. 32M (default 16M)
  --stall-timeout SECS  re-fetch a part after this long without data (default 30)
  --limit-rate RATE     cap the whole transfer, bytes per second: 500K, 10M (like curl)
  --retries N           retries per request or part after a failure (default 6)
  --platform OS/ARCH    platform to pick from an image index (default this machine)
  --json                print Ollama's /api/pull NDJSON progress on stdout
  --quiet, -q           print nothing but errors
  -h, --help            this help

Examples:
  haul pull llama3.2
  haul pull --insecure --models /tmp/models 127.0.0.1:5000/library/tiny:latest
  haul pull --json qwen2.5:0.5b | jq .status`;

export const pullCommand: Command = async (args, signal) => {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      models: { type: "string" },
      insecure: { type: "boolean" },
      "ca-file": { type: "string" },
      concurrency: { type: "string" },
      "part-size": { type: "string" },
      "stall-timeout": { type: "string" },
      retries: { type: "string" },
      "limit-rate": { type: "string" },
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
  const caCerts = await readCaFile(values["ca-file"]);
  if (values.insecure && !values.quiet) {
    process.stderr.write(
      "haul: --insecure: plain http allowed; nothing sent or received is encrypted\n",
    );
  }
  const progress = startProgress(values);
  try {
    await pull(positionals, {
      modelsDir: values.models,
      insecure: values.insecure,
      caCerts,
      concurrency: parseNumber(values.concurrency, "--concurrency", 1),
      partSize: values["part-size"] === undefined
        ? undefined
        : parseSize(values["part-size"], "--part-size"),
      stallTimeout: parseNumber(values["stall-timeout"], "--stall-timeout", 0.05),
      platform: parsePlatform(values.platform),
      limitRate: values["limit-rate"] === undefined
        ? undefined
        : parseSize(values["limit-rate"], "--limit-rate"),
      retry: values.retries === undefined
        ? undefined
        : { maxRetries: parseNumber(values.retries, "--retries", 0) },
      onEvent: (e: ProgressEvent) => progress.renderer.handle(e),
      signal,
    });
  } finally {
    progress.stop();
  }
};

/**
 * The certificates to trust for `--ca-file`: the file's, on top of the runtime's own.
 * Deno adds `caCerts` to its roots; Bun's fetch `tls.ca` replaces them, so under Bun the
 * defaults (bundled, system with --use-system-ca, NODE_EXTRA_CA_CERTS) are passed along.
 */
export async function readCaFile(file: string | undefined): Promise<string[] | undefined> {
  if (file === undefined) return undefined;
  let pem: string;
  try {
    pem = await readFile(file, "utf8");
  } catch (err) {
    throw new UsageError(`--ca-file: cannot read ${file}: ${(err as Error).message}`);
  }
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
    throw new UsageError(`--ca-file: no PEM certificate in ${file}`);
  }
  if (!("Bun" in globalThis)) return [pem];
  const nodeTls = tls as typeof tls & { getCACertificates?: (type: string) => string[] };
  return [...(nodeTls.getCACertificates?.("default") ?? tls.rootCertificates), pem];
}
