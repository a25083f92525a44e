/**
 * Shared by the fault-injection suites (fault_matrix_test.ts, fault_more_test.ts): a seeded
 * random source, store invariants checked after every fault, and the writer of
 * docs/FAULTS.md, which each suite fills with its own section.
 *
 * Like tests/support/harness.ts, nothing here imports lib/: the checks are the oracle.
 */
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import { type FixtureBlob, REPO_ROOT, sha256File } from "../support/harness.ts";

export const MiB = 1024 * 1024;

/** The suite's seed: `HAUL_FAULT_SEED`, else a fixed default, so every run is the same. */
export const SEED: number = (() => {
  const v = process.env.HAUL_FAULT_SEED;
  const n = v === undefined ? NaN : Number(v);
  return Number.isSafeInteger(n) ? n : 20260514;
})();

/** mulberry32: a small seeded PRNG in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An integer in [lo, hi] from `r`. */
export function between(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

const BLOB_NAME = /^sha256-([0-9a-f]{64})$/;
const STATE_NAME = /^sha256-([0-9a-f]{64})-partial\.json$/;

/** The bytes of a fixture blob (in memory or from its file). */
async function blobBytes(b: FixtureBlob): Promise<Uint8Array> {
  if (b.data) return b.data;
  if (b.path) return new Uint8Array(await fsp.readFile(b.path));
  throw new Error(`fixture blob ${b.digest} has no data`);
}

/**
 * Store invariants after any run, failed or not:
 * - every `blobs/sha256-<hex>` hashes to its name (nothing gets a final name unverified);
 * - every `sha256-<hex>-partial.json` that a later run could trust (same digest and size, partial
 *   file of full size) records as done only bytes that equal the blob's real bytes.
 * Returns the problems found (empty when the store is sound).
 */
export async function storeProblems(models: string, blobs: FixtureBlob[]): Promise<string[]> {
  const problems: string[] = [];
  // Blobs and older state in blobs/; haul's partial downloads in .haul/partial/.
  for (const dir of [path.join(models, "blobs"), path.join(models, ".haul", "partial")]) {
    problems.push(...await dirProblems(dir, blobs));
  }
  return problems;
}

async function dirProblems(dir: string, blobs: FixtureBlob[]): Promise<string[]> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return [];
  }
  const problems: string[] = [];
  for (const name of names.sort()) {
    const m = BLOB_NAME.exec(name);
    if (m) {
      const got = await sha256File(path.join(dir, name));
      if (got !== m[1]) problems.push(`blobs/${name} holds other content (hashes to ${got})`);
      continue;
    }
    const s = STATE_NAME.exec(name);
    if (!s) continue;
    const blob = blobs.find((b) => b.digest === `sha256:${s[1]}`);
    let st: { digest?: unknown; size?: unknown; parts?: unknown };
    try {
      st = JSON.parse(await fsp.readFile(path.join(dir, name), "utf8"));
    } catch {
      continue; // unreadable: no run can trust it
    }
    if (!blob || st.digest !== blob.digest || st.size !== blob.size) continue;
    const partial = path.join(dir, name.slice(0, -".json".length));
    const info = await fsp.stat(partial).catch(() => undefined);
    if (!info || info.size !== blob.size || !Array.isArray(st.parts)) continue;
    const want = await blobBytes(blob);
    const fh = await fsp.open(partial, "r");
    try {
      for (const p of st.parts as { offset: number; done: number }[]) {
        if (!(p.done > 0)) continue;
        const buf = new Uint8Array(p.done);
        await fh.read(buf, 0, p.done, p.offset);
        const exp = want.subarray(p.offset, p.offset + p.done);
        let bad = -1;
        for (let i = 0; i < buf.length; i++) {
          if (buf[i] !== exp[i]) {
            bad = i;
            break;
          }
        }
        if (bad >= 0) {
          problems.push(
            `${name} records bytes ${p.offset}-${p.offset + p.done - 1} as done but byte ${
              p.offset + bad
            } is wrong: a resumed run would trust it`,
          );
        }
      }
    } finally {
      await fh.close();
    }
  }
  return problems;
}

/** Every blob of the fixture is in the store with the right content. Returns problems. */
export async function missingOrWrong(models: string, blobs: FixtureBlob[]): Promise<string[]> {
  const out: string[] = [];
  for (const b of blobs) {
    const file = path.join(models, "blobs", b.digest.replace(":", "-"));
    const got = await sha256File(file).catch(() => undefined);
    if (got === undefined) out.push(`${b.digest} missing`);
    else if (`sha256:${got}` !== b.digest) out.push(`${b.digest} wrong content`);
  }
  return out;
}

/** Sum of the sizes of a fixture's blobs. */
export const totalSize = (blobs: FixtureBlob[]): number => blobs.reduce((a, b) => a + b.size, 0);

/** The one "haul: …" line of a failed run's stderr, or a note that there was not exactly one. */
export function errorLine(stderr: string): { line: string; single: boolean } {
  const lines = stderr.trim().split("\n").filter((l) => l.trim() !== "");
  const last = lines.at(-1) ?? "";
  return { line: last, single: lines.length === 1 && last.startsWith("haul: ") };
}

/** docs/FAULTS.md, shared by the fault suites: each owns one marked section. */
export const FAULTS_DOC: string = path.join(REPO_ROOT, "docs", "FAULTS.md");

const DOC_HEAD = `# Fault injection results

Generated by the fault-injection suites (\`tests/faults/fault_matrix_test.ts\`,
\`tests/faults/fault_more_test.ts\`); do not edit by hand. Each section is rewritten by the test that
produces it, with the date and seed of that run. Re-run with
\`deno test -A tests/faults/fault_matrix_test.ts tests/faults/fault_more_test.ts\` (set \`HAUL_FAULT_SEED\` to
change the seed). The CLI runs against Debian's \`docker-registry\` through \`tests/support/fault_proxy.ts\`.
`;

/** Replaces (or appends) the section `name` of docs/FAULTS.md. */
export async function writeDocSection(name: string, body: string): Promise<void> {
  await fsp.mkdir(path.dirname(FAULTS_DOC), { recursive: true });
  let doc = await fsp.readFile(FAULTS_DOC, "utf8").catch(() => DOC_HEAD);
  if (!doc.startsWith("# Fault injection results")) doc = DOC_HEAD;
  const begin = `<!-- section:${name} -->`;
  const end = `<!-- /section:${name} -->`;
  const block = `${begin}\n${body.trim()}\n${end}`;
  const i = doc.indexOf(begin);
  const j = doc.indexOf(end);
  if (i >= 0 && j > i) doc = doc.slice(0, i) + block + doc.slice(j + end.length);
  else doc = doc.trimEnd() + "\n\n" + block + "\n";
  // Sections in a fixed order, whatever order the tests ran in.
  const order = ["matrix", "kill", "concurrent", "diskfull", "manifests", "verify"];
  const sections = new Map<string, string>();
  for (const m of doc.matchAll(/<!-- section:(\w+) -->[\s\S]*?<!-- \/section:\1 -->/g)) {
    sections.set(m[1], m[0]);
  }
  const names = [...sections.keys()].sort((a, b) =>
    (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99)
  );
  const text = DOC_HEAD + "\n" + names.map((n) => sections.get(n)).join("\n\n") + "\n";
  await fsp.writeFile(FAULTS_DOC, text);
}

/** A markdown table cell: no pipes or newlines. */
export function cell(s: string): string {
  return s.replace(/\|/g, "\\|").replace(/\s*\n\s*/g, " ");
}

/** Today's date, UTC, as YYYY-MM-DD. */
export function today(): string {
  return new Date().toISOString().slice(0, 10);
}
