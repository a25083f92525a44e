/** haul pull */
import process from "node:process";
import { readFile } from "node:fs/promises";
import * as tls from "node:tls";
import { parseArgs } from "node:util";
import { loadMirrors, pull } from "../lib/mod.ts";
import { UsageError } from "../lib/errors.ts";
import {
  type Command,
  parseNumber,
  parsePlatform,
  parseSize,
  progressHandler,
  startProgress,
} from "./common.ts";
import { commandSpec, formatFlags, parseOptions } from "./commands.ts";

const PULL = commandSpec("pull");

export const PULL_HELP = `Usage: haul ${PULL.usage}

Fetches each REF's manifest and every blob it references, in parallel, into
Ollama's model store, so that "ollama run NAME" uses it at once, or with
--oci DIR into an OCI image layout (as skopeo and oras write it; REF's tag
names the image in DIR/index.json, other images there are kept). Large blobs
are split into HTTP Range parts; SHA-256 is verified as data streams; an
interrupted pull resumes where it stopped.

From an image index (multi-platform image), the manifest for --platform is
taken (default this machine's); --all-platforms with --oci keeps them all.

Mirrors (pull-through caches) are tried in order before the registry itself
for the manifest and every blob, which are fetched by the digest the registry
names; a mirror that is down or lacks something is skipped. They come from
--mirror URL, else $HAUL_MIRRORS ("host=url,url;*=url"), else the "mirrors"
object of $HAUL_CONFIG or ~/.config/haul/config.json.

Options:
${formatFlags(PULL)}

Examples:
  haul pull llama3.2
  haul pull --insecure --models /tmp/models 127.0.0.1:5000/library/tiny:latest
  haul pull --json qwen2.5:0.5b | jq .status
  haul pull --oci ./layout --platform linux/arm64 registry.example.com/team/app:1.2
  haul pull --mirror http://cache.lan:5000 llama3.2`;

export const pullCommand: Command = async (args, signal) => {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...parseOptions(PULL), mirror: { type: "string", multiple: true } },
  });
  const all: Record<string, unknown> = values;
  const str = (name: string) => typeof all[name] === "string" ? all[name] as string : undefined;
  const flag = (name: string) => all[name] === true;
  if (flag("help")) {
    console.log(PULL_HELP);
    return;
  }
  if (!positionals.length) throw new UsageError("pull: missing REF (see haul pull --help)");
  if (str("oci") !== undefined && str("models") !== undefined) {
    throw new UsageError(
      "pull: --oci and --models are exclusive (an OCI layout or Ollama's store)",
    );
  }
  const caCerts = await readCaFile(str("ca-file"));
  if (flag("insecure") && !flag("quiet")) {
    // The one way to weaken transport security, and it says so.
    process.stderr.write(
      "Bun" in globalThis
        ? "haul: --insecure: plain http allowed and https certificates not checked\n"
        : "haul: --insecure: plain http allowed; nothing sent or received is encrypted\n",
    );
  }
  const { mirrors } = await loadMirrors({ flags: values.mirror });
  const progress = startProgress({ json: flag("json"), quiet: flag("quiet") });
  try {
    await pull(positionals, {
      modelsDir: str("models"),
      ociLayout: str("oci"),
      allPlatforms: flag("all-platforms"),
      mirrors,
      insecure: flag("insecure"),
      insecureTls: flag("insecure"),
      caCerts,
      keyFile: str("key"),
      concurrency: parseNumber(str("concurrency"), "--concurrency", 1),
      partSize: str("part-size") === undefined
        ? undefined
        : parseSize(str("part-size")!, "--part-size"),
      stallTimeout: parseNumber(str("stall-timeout"), "--stall-timeout", 0.05),
      platform: parsePlatform(str("platform")),
      limitRate: str("limit-rate") === undefined
        ? undefined
        : parseSize(str("limit-rate")!, "--limit-rate"),
      retry: str("retries") === undefined
        ? undefined
        : { maxRetries: parseNumber(str("retries"), "--retries", 0) },
      onEvent: progressHandler(progress.renderer, { json: flag("json"), quiet: flag("quiet") }),
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
