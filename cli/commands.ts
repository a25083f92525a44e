/**
 * The one table of commands and their flags. Command modules build their `parseArgs`
 * options and the "Options:" part of their help from it, `haul completion` builds the shell
 * scripts from it, and tests check that every command's `--help` lists exactly these flags.
 * A new command adds one entry here.
 */
import type { ParseArgsConfig } from "node:util";

/** One flag of a command. */
export interface FlagSpec {
  /** Long name without dashes. */
  name: string;
  /** One-letter alias. */
  short?: string;
  /** Placeholder of the value ("DIR", "N"); absent for a boolean flag. */
  arg?: string;
  /** One line of help (the default goes in here). */
  help: string;
  /** What a shell should complete the value with. */
  complete?: "dir" | "file" | readonly string[];
}

/**
 * What a command's positional arguments are, for completion: `model` completes the names
 * in the local store, `ref` (a remote reference) and `registry` complete nothing.
 */
export type ArgKind = "model" | "ref" | "registry" | "shell" | "none";

/** One command. */
export interface CommandSpec {
  name: string;
  /** Synopsis after "haul ": "pull [options] REF...". */
  usage: string;
  /** One line for `haul --help` and the completion menus. */
  summary: string;
  args: ArgKind;
  flags: FlagSpec[];
}

const models: FlagSpec = {
  name: "models",
  arg: "DIR",
  help: "store root (default $OLLAMA_MODELS or ~/.ollama/models)",
  complete: "dir",
};
const json = (help: string): FlagSpec => ({ name: "json", help });
const help: FlagSpec = { name: "help", short: "h", help: "this help" };

/** Every command, in the order `haul --help` shows them. */
export const COMMAND_SPECS: readonly CommandSpec[] = [
  {
    name: "pull",
    usage: "pull [options] REF...",
    summary: "fetch models or images into Ollama's store or an OCI layout",
    args: "ref",
    flags: [
      models,
      { name: "insecure", help: "allow plain http (and an http:// REF)" },
      {
        name: "ca-file",
        arg: "FILE",
        help: "also trust the CA certificates in FILE (PEM)",
        complete: "file",
      },
      {
        name: "key",
        arg: "FILE",
        help:
          "Ollama key to sign token requests with (default $HAUL_OLLAMA_KEY, ~/.ollama/id_ed25519)",
        complete: "file",
      },
      {
        name: "concurrency",
        arg: "N",
        help: "simultaneous transfers, blobs and parts (default 24)",
      },
      { name: "part-size", arg: "SIZE", help: "Range part size, e.g. 32M (default 16M)" },
      {
        name: "stall-timeout",
        arg: "SECS",
        help: "re-fetch a part after this long without data (default 30)",
      },
      {
        name: "retries",
        arg: "N",
        help: "retries per request or part after a failure (default 6)",
      },
      {
        name: "limit-rate",
        arg: "RATE",
        help: "cap the whole transfer, bytes per second: 500K, 10M (like curl)",
      },
      {
        name: "platform",
        arg: "OS/ARCH",
        help: "platform to pick from an image index, OS/ARCH[/VARIANT] (default this machine)",
      },
      {
        name: "oci",
        arg: "DIR",
        help: "write an OCI image layout in DIR instead of Ollama's store",
        complete: "dir",
      },
      { name: "all-platforms", help: "with --oci: keep every platform of an image index" },
      {
        name: "mirror",
        arg: "URL",
        help: "try this registry mirror first, for every REF (repeatable)",
      },
      json("print Ollama's /api/pull NDJSON progress on stdout"),
      { name: "quiet", short: "q", help: "print nothing but errors" },
      help,
    ],
  },
  {
    name: "push",
    usage: "push [options] REF [DEST]",
    summary: "upload a model from Ollama's store",
    args: "model",
    flags: [
      models,
      {
        name: "oci",
        arg: "DIR",
        help: "push from the OCI image layout in DIR instead",
        complete: "dir",
      },
      { name: "insecure", help: "allow plain http (and http:// references)" },
      { name: "from", arg: "REPO", help: "repository on DEST's registry to mount blobs from" },
      {
        name: "key",
        arg: "FILE",
        help:
          "Ollama key to sign token requests with (default $HAUL_OLLAMA_KEY, ~/.ollama/id_ed25519)",
        complete: "file",
      },
      { name: "concurrency", arg: "N", help: "blobs uploading at once (default 8)" },
      {
        name: "chunk-size",
        arg: "SIZE",
        help: "bytes per upload request (default 256M streamed; blobs up to 16M in one)",
      },
      { name: "retries", arg: "N", help: "retries per request after a failure (default 6)" },
      json("print Ollama's /api/push NDJSON progress on stdout"),
      { name: "quiet", short: "q", help: "print nothing but errors" },
      help,
    ],
  },
  {
    name: "copy",
    usage: "copy [options] SRC DEST",
    summary: "copy registry to registry, no local store",
    args: "ref",
    flags: [
      { name: "insecure", help: "allow plain http (and http:// references)" },
      { name: "concurrency", arg: "N", help: "blobs copying at once (default 8)" },
      { name: "chunk-size", arg: "SIZE", help: "bytes per upload request (default 16M)" },
      {
        name: "stall-timeout",
        arg: "SECS",
        help: "re-request the source after this long without data",
      },
      { name: "retries", arg: "N", help: "retries per request after a failure (default 6)" },
      json("print Ollama's /api/push NDJSON progress on stdout"),
      { name: "quiet", short: "q", help: "print nothing but errors" },
      help,
    ],
  },
  {
    name: "list",
    usage: "list [options]",
    summary: "list the models in the store",
    args: "none",
    flags: [models, json("print a JSON array with exact sizes and ISO dates"), help],
  },
  {
    name: "rm",
    usage: "rm [options] REF...",
    summary: "remove models and the blobs no other model uses",
    args: "model",
    flags: [
      models,
      {
        name: "force",
        help: "remove unused blobs even if files changed in the last 10 minutes",
      },
      json("print what was removed as JSON"),
      help,
    ],
  },
  {
    name: "prune",
    usage: "prune [options]",
    summary: "remove unused blobs and stale partial downloads",
    args: "none",
    flags: [
      models,
      { name: "dry-run", short: "n", help: "print what would be removed; remove nothing" },
      {
        name: "force",
        help: "also remove files modified in the last 10 minutes (no pull may be running)",
      },
      json("print the result as JSON"),
      help,
    ],
  },
  {
    name: "verify",
    usage: "verify [options] [REF...]",
    summary: "re-hash blobs and report damaged or missing ones",
    args: "model",
    flags: [
      models,
      { name: "fix", help: "remove damaged blobs so the next pull fetches them again" },
      json("print the result as JSON"),
      { name: "quiet", short: "q", help: "no progress on stderr" },
      help,
    ],
  },
  {
    name: "login",
    usage: "login [options] REGISTRY",
    summary: "save credentials for a registry (Docker's config.json)",
    args: "registry",
    flags: [
      { name: "username", short: "u", arg: "USER", help: "user name (prompted on a terminal)" },
      { name: "password-stdin", help: "read the password from stdin" },
      { name: "insecure", help: "check the login over plain http" },
      {
        name: "ca-file",
        arg: "FILE",
        help: "also trust the CA certificates in FILE (PEM)",
        complete: "file",
      },
      json("print the result as JSON (never the password)"),
      help,
    ],
  },
  {
    name: "logout",
    usage: "logout [options] REGISTRY",
    summary: "remove saved credentials for a registry",
    args: "registry",
    flags: [json("print the result as JSON"), help],
  },
  {
    name: "serve",
    usage: "serve [options]",
    summary: "share a model store as a read-only registry",
    args: "none",
    flags: [
      { name: "addr", arg: "HOST:PORT", help: "listen address (default 127.0.0.1:11435)" },
      models,
      { name: "chunk-size", arg: "SIZE", help: "chunksums chunk size, e.g. 64M (default 64M)" },
      {
        name: "upstream",
        arg: "URL",
        help: "pull-through cache of this registry, http(s)://HOST[:PORT] (repeatable)",
      },
      {
        name: "tag-ttl",
        arg: "DURATION",
        help: "with --upstream, re-resolve a tag upstream after DURATION, e.g. 30s (default 5m)",
      },
      {
        name: "tls-cert",
        arg: "FILE",
        help: "serve HTTPS with this PEM certificate chain (reread on SIGHUP)",
        complete: "file",
      },
      {
        name: "tls-key",
        arg: "FILE",
        help: "the PEM private key of --tls-cert (reread on SIGHUP)",
        complete: "file",
      },
      {
        name: "htpasswd",
        arg: "FILE",
        help: "require Basic auth by the bcrypt users of FILE (htpasswd -B; reread on SIGHUP)",
        complete: "file",
      },
      {
        name: "allow-insecure-auth",
        help: "allow --htpasswd on a non-loopback address without TLS (passwords in clear)",
      },
      {
        name: "header-timeout",
        arg: "SECS",
        help: "close a connection that has not sent a request head in SECS (default 20)",
      },
      {
        name: "idle-timeout",
        arg: "SECS",
        help: "cut a response whose client reads nothing for SECS (default 60)",
      },
      {
        name: "max-connections",
        arg: "N",
        help: "connections open at once; more are refused (default 1024, 0: no cap)",
      },
      {
        name: "shutdown-timeout",
        arg: "SECS",
        help: "on SIGTERM, time for responses in flight to finish (default 10)",
      },
      {
        name: "log-format",
        arg: "FORMAT",
        help: "text, or json: a JSON object per line, one per request (default text)",
        complete: ["text", "json"],
      },
      { name: "verbose", short: "v", help: "log every request to stderr (text)" },
      help,
    ],
  },
  {
    name: "completion",
    usage: "completion bash|zsh|fish",
    summary: "print a shell completion script",
    args: "shell",
    flags: [help],
  },
];

/** The entry for `name`; throws for a command missing from the table (a bug). */
export function commandSpec(name: string): CommandSpec {
  const spec = COMMAND_SPECS.find((c) => c.name === name);
  if (!spec) throw new Error(`Command ${name} is missing from cli/commands.ts`);
  return spec;
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** `parseArgs` options for a command, from the table. */
export function parseOptions(spec: CommandSpec): Options {
  const out: Options = {};
  for (const f of spec.flags) {
    out[f.name] = f.short
      ? { type: f.arg ? "string" : "boolean", short: f.short }
      : { type: f.arg ? "string" : "boolean" };
  }
  return out;
}

/** The "Options:" lines of a command's help, aligned. */
export function formatFlags(spec: CommandSpec): string {
  const left = spec.flags.map((f) =>
    `--${f.name}${f.arg ? ` ${f.arg}` : ""}${f.short ? `, -${f.short}` : ""}`
  );
  const width = Math.max(...left.map((l) => l.length)) + 2;
  return spec.flags.map((f, i) => `  ${left[i].padEnd(width)}${f.help}`).join("\n");
}

/** The "Usage:" lines of `haul --help`, aligned. */
export function formatCommandList(): string {
  const width = Math.max(...COMMAND_SPECS.map((c) => c.usage.length)) + 7;
  return COMMAND_SPECS.map((c) => `  ${`haul ${c.usage}`.padEnd(width)}${c.summary}`).join("\n");
}
