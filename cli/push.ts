/** haul push, haul copy */
import { parseArgs } from "node:util";
import { copy, push } from "../lib/mod.ts";
import { UsageError } from "../lib/errors.ts";
import { type Command, parseNumber, parseSize, progressHandler, startProgress } from "./common.ts";

export const PUSH_HELP = `Usage: haul push [options] REF [DEST]

Uploads a model from Ollama's store to a registry: every blob the destination
lacks, then the manifest bytes exactly as stored, so that a pull of DEST gives
the same manifest digest. DEST defaults to REF. Blobs already in the
destination are skipped; blobs another repository of the same registry holds
are mounted without sending a byte; large blobs go up in chunks, and an
interrupted push continues the registry's upload session where it stopped.

Options:
  --models DIR        store root (default $OLLAMA_MODELS or ~/.ollama/models)
  --oci DIR           push from the OCI image layout in DIR instead: REF's tag
                      selects the image in DIR/index.json
  --insecure          allow plain http (and http:// references)
  --from REPO         repository on DEST's registry to mount blobs from
                      (default REF's repository when REF and DEST share a registry)
  --key FILE          Ollama key to sign token requests with (default
                      $HAUL_OLLAMA_KEY, ~/.ollama/id_ed25519); naming one also
                      sends parts as Ollama's registry takes them (redirected)
  --concurrency N     blobs uploading at once (default 8)
  --chunk-size SIZE   bytes per upload request, e.g. 64M (default: blobs up to
                      16M in one request, larger ones streamed in 256M requests)
  --retries N         retries per request after a failure (default 6)
  --json              print Ollama's /api/push NDJSON progress on stdout
  --quiet, -q         print nothing but errors
  -h, --help          this help

Pushing to Ollama's registry (ollama.com) signs the token request with the
Ollama key, as ollama push does; add its public half (~/.ollama/id_ed25519.pub)
on ollama.com, and push under a namespace it owns (USER/MODEL).

Examples:
  haul push --insecure 127.0.0.1:5000/library/tiny
  haul push myuser/mymodel:q4
  haul push --insecure llama3.2 127.0.0.1:5000/library/llama3.2:latest
  haul push --json myuser/mymodel:q4 | jq .status
  haul push --oci ./layout 127.0.0.1:5000/team/app:1.2`;

export const COPY_HELP = `Usage: haul copy [options] SRC DEST

Copies a model or image (a manifest, or an index with every manifest it lists)
from one registry to another without the local store. Each blob streams from
SRC into the upload one chunk at a time, its SHA-256 checked on the way; blobs
DEST already has are skipped, and on the same registry they are mounted.

Options:
  --insecure            allow plain http (and http:// references)
  --concurrency N       blobs copying at once (default 8)
  --chunk-size SIZE     bytes per upload request, e.g. 16M (default 16M)
  --stall-timeout SECS  re-request the source after this long without data (default 30)
  --retries N           retries per request after a failure (default 6)
  --json                print Ollama's /api/push NDJSON progress on stdout
  --quiet, -q           print nothing but errors
  -h, --help            this help

Examples:
  haul copy --insecure 127.0.0.1:5000/library/tiny 127.0.0.1:5001/library/tiny
  haul copy registry.ollama.ai/library/qwen2.5:0.5b registry.example.com/mirror/qwen2.5:0.5b`;

const TRANSFER_OPTIONS = {
  insecure: { type: "boolean" },
  concurrency: { type: "string" },
  "chunk-size": { type: "string" },
  retries: { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

function transferOptions(values: {
  insecure?: boolean;
  concurrency?: string;
  "chunk-size"?: string;
  retries?: string;
}) {
  return {
    insecure: values.insecure,
    concurrency: parseNumber(values.concurrency, "--concurrency", 1),
    chunkSize: values["chunk-size"] === undefined
      ? undefined
      : parseSize(values["chunk-size"], "--chunk-size"),
    retry: values.retries === undefined
      ? undefined
      : { maxRetries: parseNumber(values.retries, "--retries", 0) },
  };
}

export const pushCommand: Command = async (args, signal) => {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...TRANSFER_OPTIONS,
      models: { type: "string" },
      oci: { type: "string" },
      from: { type: "string" },
      key: { type: "string" },
    },
  });
  if (values.help) {
    console.log(PUSH_HELP);
    return;
  }
  if (!positionals.length) throw new UsageError("push: missing REF (see haul push --help)");
  if (positionals.length > 2) {
    throw new UsageError("push: expected REF [DEST] (see haul push --help)");
  }
  if (values.oci !== undefined && values.models !== undefined) {
    throw new UsageError(
      "push: --oci and --models are exclusive (an OCI layout or Ollama's store)",
    );
  }
  const options = transferOptions(values);
  const progress = startProgress(values);
  try {
    await push(positionals[0], positionals[1], {
      ...options,
      modelsDir: values.models,
      ociLayout: values.oci,
      from: values.from,
      keyFile: values.key,
      onEvent: progressHandler(progress.renderer, values),
      signal,
    });
  } finally {
    progress.stop();
  }
};

export const copyCommand: Command = async (args, signal) => {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...TRANSFER_OPTIONS, "stall-timeout": { type: "string" } },
  });
  if (values.help) {
    console.log(COPY_HELP);
    return;
  }
  if (positionals.length !== 2) {
    throw new UsageError("copy: expected SRC and DEST (see haul copy --help)");
  }
  const options = transferOptions(values);
  const progress = startProgress(values);
  try {
    await copy(positionals[0], positionals[1], {
      ...options,
      stallTimeout: parseNumber(values["stall-timeout"], "--stall-timeout", 0.05),
      onEvent: progressHandler(progress.renderer, values),
      signal,
    });
  } finally {
    progress.stop();
  }
};
