/**
 * The picture in docs/ARCHITECTURE.md stays true: every import goes down the layers,
 * no function is longer than 100 lines, no folder is a heap, no file-level import
 * cycle, and the document's layer table is the one scripts/lint_plugin.ts enforces.
 */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import plugin, {
  layerOf,
  LAYERS,
  MAX_FUNCTION_LINES,
  resolveSpecifier,
} from "../scripts/lint_plugin.ts";
import { REPO_ROOT } from "./support/util.ts";

/** Source files of the face and the library, as repository-relative posix paths. */
async function sourceFiles(): Promise<string[]> {
  const out = ["main.ts"];
  for (const top of ["cli", "lib"]) {
    for (const f of await fsp.readdir(path.join(REPO_ROOT, top), { recursive: true })) {
      if (f.endsWith(".ts")) out.push(`${top}/${f.split(path.sep).join("/")}`);
    }
  }
  return out.sort();
}

function lint(file: string, source: string): Deno.lint.Diagnostic[] {
  return Deno.lint.runPlugin(plugin, path.join(REPO_ROOT, file), source);
}

const SPEC_RE = /(?:from|import)\s*\(?\s*["'](\.{1,2}\/[^"']+\.ts)["']/g;

Deno.test("every import in lib/, cli/ and main.ts goes down the layers; no function over 100 lines", async () => {
  const problems: string[] = [];
  for (const file of await sourceFiles()) {
    const source = await fsp.readFile(path.join(REPO_ROOT, file), "utf8");
    for (const d of lint(file, source)) {
      const line = source.slice(0, d.range[0]).split("\n").length;
      problems.push(`${file}:${line}: ${d.id}: ${d.message}`);
    }
  }
  assert.deepEqual(problems, [], `\n${problems.join("\n")}`);
});

Deno.test("every source file belongs to a layer of the picture", async () => {
  const orphans = (await sourceFiles()).filter((f) => !layerOf(f));
  assert.deepEqual(orphans, [], "add the folder to LAYERS and docs/ARCHITECTURE.md");
});

Deno.test("lib/ has at most 12 files at its root and 15 in any folder", async () => {
  const counts = new Map<string, number>();
  for (const f of await sourceFiles()) {
    if (!f.startsWith("lib/")) continue;
    const dir = path.posix.dirname(f);
    counts.set(dir, (counts.get(dir) ?? 0) + 1);
  }
  for (const [dir, n] of counts) {
    assert.ok(n <= (dir === "lib" ? 12 : 15), `${dir}/ holds ${n} files`);
  }
});

Deno.test("no import cycle between files of lib/", async () => {
  const graph = new Map<string, string[]>();
  for (const file of (await sourceFiles()).filter((f) => f.startsWith("lib/"))) {
    const source = await fsp.readFile(path.join(REPO_ROOT, file), "utf8");
    const deps = [...source.matchAll(SPEC_RE)].map((m) => resolveSpecifier(file, m[1])!);
    // Type-only imports create no runtime cycle but still tangle the picture: count them.
    graph.set(file, deps.filter((d) => d.startsWith("lib/")));
  }
  const state = new Map<string, "open" | "done">();
  const cycles: string[] = [];
  const visit = (f: string, trail: string[]) => {
    if (state.get(f) === "done") return;
    if (state.get(f) === "open") {
      cycles.push([...trail.slice(trail.indexOf(f)), f].join(" -> "));
      return;
    }
    state.set(f, "open");
    for (const d of graph.get(f) ?? []) visit(d, [...trail, f]);
    state.set(f, "done");
  };
  for (const f of graph.keys()) visit(f, []);
  assert.deepEqual(cycles, []);
});

Deno.test("docs/ARCHITECTURE.md's layer table is the one the lint rule enforces", async () => {
  const doc = await fsp.readFile(path.join(REPO_ROOT, "docs/ARCHITECTURE.md"), "utf8");
  const rows = doc.split("\n").filter((l) => /^\| \*\*[a-z]+\*\* \|/.test(l));
  const fromDoc = rows.map((row) => {
    const cells = row.split("|").slice(1, -1).map((c) => c.trim());
    const names = (cell: string) => [...cell.matchAll(/[a-z]+/g)].map((m) => m[0]);
    return {
      name: cells[0].replaceAll("*", ""),
      owns: [...cells[1].matchAll(/`([^`]+)`/g)].map((m) => m[1]),
      imports: cells[3] === "nothing" ? [] : names(cells[3]),
    };
  });
  assert.deepEqual(fromDoc, LAYERS.map((l) => ({ ...l })));
});

Deno.test("the layer rule reports a deliberate bad import and the length rule a long function", () => {
  const bad = lint(
    "lib/disk/bad.ts",
    'import { pull } from "../ops/pull.ts";\nexport const x = pull;\n',
  );
  assert.equal(bad.length, 1);
  assert.equal(bad[0].id, "haul/layers");
  assert.match(
    bad[0].message,
    /lib\/disk\/bad\.ts \(disk\) may not import lib\/ops\/pull\.ts \(ops\)/,
  );
  // The face reaches lib/ only through lib/mod.ts.
  assert.equal(
    lint("cli/x.ts", 'import { x } from "../lib/store/ollama.ts";\n')[0]?.id,
    "haul/layers",
  );
  assert.deepEqual(lint("cli/x.ts", 'import { pull } from "../lib/mod.ts";\n'), []);
  // Down is fine; sideways within a layer is fine.
  assert.deepEqual(lint("lib/ops/x.ts", 'import "../store/ollama.ts";\nimport "./pull.ts";\n'), []);

  const fn = (lines: number) =>
    `export function f(): number {\n${"  let a = 1;\n".repeat(lines - 3)}  return 1;\n}\n`;
  assert.deepEqual(lint("lib/disk/ok.ts", fn(MAX_FUNCTION_LINES)), []);
  const long = lint("lib/disk/long.ts", fn(MAX_FUNCTION_LINES + 1));
  assert.equal(long.length, 1);
  assert.equal(long[0].id, "haul/function-length");
  // A nested function counts in its parent, once.
  const nested = `export function f() {\n  const g = () => {\n${
    "    let a = 1;\n".repeat(99)
  }  };\n  return g;\n}\n`;
  assert.equal(lint("lib/disk/nested.ts", nested).length, 1);
  // Methods are measured as well.
  const method = `export class A {\n  m(): void {\n${"    let a = 1;\n".repeat(99)}  }\n}\n`;
  assert.equal(lint("lib/disk/method.ts", method)[0]?.id, "haul/function-length");
});
