/** haul list | rm | prune | verify: the model store. */
import process from "node:process";
import { parseArgs } from "node:util";
import { IntegrityError, NotFoundError, UsageError } from "../lib/errors.ts";
import { formatBytes } from "./progress.ts";
import {
  formatAge,
  listModels,
  ollamaAlias,
  prune,
  type PrunedFile,
  removeModels,
  verify,
  type VerifyProgress,
} from "../lib/mod.ts";
import { shortDigest } from "../lib/digest.ts";
import type { Command } from "./common.ts";
import { commandSpec, formatFlags, parseOptions } from "./commands.ts";

const LIST = commandSpec("list");
const RM = commandSpec("rm");
const PRUNE = commandSpec("prune");
const VERIFY = commandSpec("verify");

export const LIST_HELP = `Usage: haul ${LIST.usage}

Lists the models in Ollama's store as "ollama list" does: NAME as you would
type it (models from other registries keep their host), ID (first 12 hex
digits of the manifest digest), SIZE (config and layers), MODIFIED.
Models whose names Ollama cannot type (a host, or more than two components)
are listed after the table with the two-component namespace/model name
"haul serve" answers for them (ghcr.io/org/team/model as
ghcr-io_org_team/model); --json gives it as ollamaName.

Options:
${formatFlags(LIST)}

Examples:
  haul list
  haul list --models /srv/models
  haul list --json | jq -r '.[] | select(.size > 4e9) | .name'`;

export const RM_HELP = `Usage: haul ${RM.usage}

Removes each model's manifest, then every blob no other model uses, and empty
directories. All REFs are checked first: if one is not in the store, nothing
is removed (exit 6).

While a pull seems to be running (a partial download or temp file changed in
the last 10 minutes) the unused blobs are kept, since that pull may use them:
run "haul prune" later, or pass --force when no pull is running.

Options:
${formatFlags(RM)}

Examples:
  haul rm llama3.2
  haul rm 127.0.0.1:5000/library/tiny:latest qwen2.5:0.5b`;

export const PRUNE_HELP = `Usage: haul ${PRUNE.usage}

Frees disk space: removes blobs no manifest references, partial downloads
(sha256-<hex>-partial, -partial.json, -partial-<pid>-<rand>, Ollama's
-partial-<n>) and leftover .tmp files. Files it does not recognise stay.

Safe next to a running pull: files modified in the last 10 minutes are taken
to be in use (a running pull keeps its partial files fresh), and while any
transfer looks active no unused blob is removed, because a pull writes its
manifest only after all of its blobs. --force drops the 10-minute rule: use it
only when no pull (haul or Ollama) is running on this store. A download whose
lock or temp file names a running haul process is never removed.

Options:
${formatFlags(PRUNE)}

Examples:
  haul prune --dry-run
  haul prune
  haul prune --json | jq .bytesFreed`;

export const VERIFY_HELP = `Usage: haul ${VERIFY.usage}

Re-hashes every blob of the given models (default: every model in the store)
and reports each missing or damaged blob: its digest, its path, and what is
wrong (missing, size differs, content hash differs). Exit 5 when a blob is
damaged or a manifest is invalid, 6 when blobs are only missing, 0 when all is
well.

A pull trusts a blob file that has the right size, so a blob whose content is
damaged is fetched again only once it is gone: --fix removes damaged blobs,
then "haul pull REF" fetches them again. Missing blobs and blobs of the wrong
size are fetched again by "haul pull REF" without --fix.

Options:
${formatFlags(VERIFY)}

Examples:
  haul verify
  haul verify llama3.2
  haul verify --fix llama3.2 && haul pull llama3.2`;

function parse(spec: typeof LIST, args: string[]) {
  return parseArgs({ args, allowPositionals: true, options: parseOptions(spec) });
}

function out(s: string): void {
  process.stdout.write(s.endsWith("\n") ? s : s + "\n");
}

function note(s: string): void {
  process.stderr.write(`haul: ${s}\n`);
}

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

/** Left-aligned columns separated by at least three spaces, like Ollama's tables. */
export function formatTable(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) =>
    r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] + 3))).join("").trimEnd()
  ).join("\n");
}

export const listCommand: Command = async (args, signal) => {
  const { values, positionals } = parse(LIST, args);
  if (values.help) return out(LIST_HELP);
  if (positionals.length) throw new UsageError("list: takes no arguments (see haul list --help)");
  const models = await listModels({ modelsDir: str(values.models), signal });
  if (values.json) {
    out(JSON.stringify(
      models.map((m) => ({
        name: m.name,
        reference: m.reference,
        // The two-component name `haul serve` answers for it (Ollama's namespace/model).
        ollamaName: ollamaAlias(m.host, m.repository.split("/")) ?? m.repository,
        id: shortDigest(m.digest),
        digest: m.digest,
        size: m.size,
        modified: m.modified.toISOString(),
        blobs: m.blobs.length,
        path: m.manifestPath,
        ...(m.invalid !== undefined ? { invalid: m.invalid } : {}),
      })),
      null,
      2,
    ));
    return;
  }
  const now = Date.now();
  const rows = [["NAME", "ID", "SIZE", "MODIFIED"]];
  for (const m of models) {
    rows.push([
      m.name,
      shortDigest(m.digest),
      m.invalid === undefined ? formatBytes(m.size) : "invalid",
      formatAge(m.modified, now),
    ]);
  }
  out(formatTable(rows));
  const aliases = models.flatMap((m) => {
    const alias = ollamaAlias(m.host, m.repository.split("/"));
    if (!alias) return [];
    return [[
      `  ${m.name}`,
      "->",
      m.tag ? `${alias}:${m.tag}` : m.pinned ? `${alias}@${m.pinned}` : alias,
    ]];
  });
  if (aliases.length) {
    out(`\nhaul serve also answers these as namespace/model (for ollama pull):`);
    out(formatTable(aliases));
  }
  for (const m of models) {
    if (m.invalid !== undefined) note(`warning: ${m.name}: ${m.invalid}`);
  }
};

export const rmCommand: Command = async (args, signal) => {
  const { values, positionals } = parse(RM, args);
  if (values.help) return out(RM_HELP);
  if (!positionals.length) throw new UsageError("rm: missing REF (see haul rm --help)");
  const r = await removeModels(positionals, {
    modelsDir: str(values.models),
    force: values.force === true,
    signal,
  });
  if (values.json) {
    out(JSON.stringify(
      {
        removed: r.models.map((m) => ({ name: m.name, digest: m.digest, path: m.manifestPath })),
        blobsRemoved: r.blobsRemoved,
        blobsKept: r.blobsKept,
        bytesFreed: r.bytesFreed,
      },
      null,
      2,
    ));
    return;
  }
  for (const m of r.models) out(`deleted '${m.name}'`);
  out(
    `removed ${plural(r.blobsRemoved.length, "unused blob")}, freed ${formatBytes(r.bytesFreed)}`,
  );
  if (r.blobsKept.length) {
    note(
      `kept ${plural(r.blobsKept.length, "unused blob")} (${
        formatBytes(r.blobsKept.reduce((a, b) => a + b.size, 0))
      }): a pull seems to be running; run "haul prune" when it is done`,
    );
  }
};

export const pruneCommand: Command = async (args, signal) => {
  const { values, positionals } = parse(PRUNE, args);
  if (values.help) return out(PRUNE_HELP);
  if (positionals.length) throw new UsageError("prune: takes no arguments (see haul prune --help)");
  const dryRun = values["dry-run"] === true;
  const r = await prune({
    modelsDir: str(values.models),
    dryRun,
    force: values.force === true,
    signal,
  });
  if (values.json) {
    out(JSON.stringify(r, null, 2));
    return;
  }
  const verb = dryRun ? "would remove" : "removed";
  for (const f of r.removed) out(`${verb} ${describe(f)}`);
  out(
    `${dryRun ? "would free" : "freed"} ${formatBytes(r.bytesFreed)} (${
      plural(r.removed.length, "file")
    })`,
  );
  if (r.kept.length) {
    note(
      `kept ${plural(r.kept.length, "file")} (${
        formatBytes(r.kept.reduce((a, b) => a + b.size, 0))
      }) that a running pull may use (see --json for why); --force removes them when no pull is running`,
    );
  }
};

function describe(f: PrunedFile): string {
  const what = f.kind === "blob"
    ? `unused blob ${f.digest}`
    : f.kind === "partial"
    ? "partial download"
    : "temp file";
  return `${what} ${f.path} (${formatBytes(f.size)})`;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** Progress on stderr: a rewritten line on a terminal, a line every 5 s otherwise. */
function verifyProgress(enabled: boolean): { on: (p: VerifyProgress) => void; end: () => void } {
  if (!enabled) return { on: () => {}, end: () => {} };
  const tty = process.stderr.isTTY === true;
  let last = 0;
  let shown = false;
  const line = (p: VerifyProgress) =>
    `verifying ${p.blobsDone}/${p.blobsTotal} blobs, ${formatBytes(p.bytesDone)}/${
      formatBytes(p.bytesTotal)
    }`;
  return {
    on: (p) => {
      const now = Date.now();
      if (now - last < (tty ? 200 : 5000)) return;
      // Small stores finish before anyone looks: start showing after a second.
      if (last === 0) {
        last = now - (tty ? 200 : 5000) + 1000;
        return;
      }
      last = now;
      shown = true;
      process.stderr.write(tty ? `\r\x1b[K${line(p)}` : `${line(p)}\n`);
    },
    end: () => {
      if (shown && tty) process.stderr.write("\r\x1b[K");
    },
  };
}

export const verifyCommand: Command = async (args, signal) => {
  const { values, positionals } = parse(VERIFY, args);
  if (values.help) return out(VERIFY_HELP);
  const progress = verifyProgress(!values.quiet);
  let r;
  try {
    r = await verify(positionals, {
      modelsDir: str(values.models),
      fix: values.fix === true,
      onProgress: progress.on,
      signal,
    });
  } finally {
    progress.end();
  }
  if (values.json) {
    out(JSON.stringify(
      {
        ok: r.ok,
        models: r.models.map((m) => m.name),
        blobs: r.blobs,
        bytes: r.bytes,
        problems: r.problems,
        manifestProblems: r.manifestProblems,
      },
      null,
      2,
    ));
  } else {
    for (const p of r.manifestProblems) out(`invalid manifest ${p.path} (${p.name}): ${p.detail}`);
    for (const p of r.problems) {
      out(`${p.digest} ${p.path}: ${p.detail}${p.removed ? " (removed)" : ""}`);
    }
    if (r.ok) {
      out(
        `ok: ${plural(r.models.length, "model")}, ${plural(r.blobs, "blob")}, ${
          formatBytes(r.bytes)
        } verified`,
      );
    }
  }
  if (r.ok) return;
  const affected = [...new Set(r.problems.flatMap((p) => p.models))].sort();
  const needsFix = r.problems.some((p) => p.problem === "digest" && !p.removed);
  const hint = affected.length === 0
    ? ""
    : needsFix
    ? `; run "haul verify --fix" then "haul pull ${affected.join(" ")}" to repair`
    : `; run "haul pull ${affected.join(" ")}" to repair`;
  const damaged = r.problems.filter((p) => p.problem !== "missing").length;
  const missing = r.problems.length - damaged;
  const parts = [
    damaged ? plural(damaged, "damaged blob") : "",
    missing ? plural(missing, "missing blob") : "",
    r.manifestProblems.length ? plural(r.manifestProblems.length, "invalid manifest") : "",
  ].filter(Boolean).join(", ");
  if (damaged || r.manifestProblems.length) throw new IntegrityError(`verify: ${parts}${hint}`);
  throw new NotFoundError(`verify: ${parts}${hint}`);
};
