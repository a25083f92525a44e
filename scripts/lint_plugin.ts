/**
 * haul's own lint rules (deno.json "lint.plugins"; docs/ARCHITECTURE.md):
 *
 * - `haul/layers`: an import may only go down the picture in docs/ARCHITECTURE.md.
 *   {@link LAYERS} is that picture as data; tests/architecture_test.ts checks that the
 *   document's table says the same, so the picture and the check cannot drift apart.
 * - `haul/function-length`: no function in lib/, cli/ or main.ts is longer than
 *   {@link MAX_FUNCTION_LINES} lines; a nested function counts in its parent, so only
 *   outermost functions (and class methods) are measured.
 *
 * `deno lint` runs them on every file; the test run applies them through
 * `Deno.lint.runPlugin` (tests/architecture_test.ts), so a bad import fails the tests.
 */

/** One layer: the folder (or files) it owns and the layers it may import. */
export interface Layer {
  name: string;
  /** Paths relative to the repository root: a folder ending in `/`, or a file. */
  owns: string[];
  /** Layers this one may import (besides itself). */
  imports: string[];
}

/** The picture, top to bottom. */
export const LAYERS: Layer[] = [
  { name: "face", owns: ["main.ts", "cli/"], imports: ["api", "base"] },
  {
    name: "api",
    owns: ["lib/mod.ts"],
    imports: [
      "ops",
      "server",
      "download",
      "upload",
      "store",
      "registry",
      "auth",
      "transport",
      "disk",
      "base",
    ],
  },
  {
    name: "ops",
    owns: ["lib/ops/"],
    imports: ["download", "upload", "store", "registry", "auth", "transport", "disk", "base"],
  },
  { name: "server", owns: ["lib/server/"], imports: ["store", "registry", "base"] },
  { name: "download", owns: ["lib/download/"], imports: ["registry", "transport", "disk", "base"] },
  { name: "upload", owns: ["lib/upload/"], imports: ["registry", "transport", "disk", "base"] },
  { name: "store", owns: ["lib/store/"], imports: ["registry", "disk", "base"] },
  { name: "registry", owns: ["lib/registry/"], imports: ["auth", "transport", "base"] },
  { name: "auth", owns: ["lib/auth/"], imports: ["transport", "base"] },
  { name: "transport", owns: ["lib/transport/"], imports: ["base"] },
  { name: "disk", owns: ["lib/disk/"], imports: ["base"] },
  { name: "base", owns: ["lib/*.ts"], imports: [] },
];

/** Longest function allowed, in lines from its first line to its closing brace. */
export const MAX_FUNCTION_LINES = 100;

/** Posix path relative to the repository root, or undefined when outside it. */
function relative(file: string, root: string): string | undefined {
  const f = file.replaceAll("\\", "/");
  const r = root.replaceAll("\\", "/").replace(/\/?$/, "/");
  return f.startsWith(r) ? f.slice(r.length) : undefined;
}

/** The layer a repository path belongs to (the most specific claim wins). */
export function layerOf(path: string): Layer | undefined {
  for (const layer of LAYERS) {
    for (const own of layer.owns) {
      if (own === path) return layer;
      if (own.endsWith("/") && path.startsWith(own)) return layer;
    }
  }
  // `lib/*.ts`: a file directly in lib/ (mod.ts is claimed above).
  if (/^lib\/[^/]+\.ts$/.test(path)) return LAYERS.find((l) => l.name === "base");
  return undefined;
}

/** Why importing `to` from `from` breaks the picture, or undefined when it may. */
export function layerViolation(from: string, to: string): string | undefined {
  const a = layerOf(from);
  const b = layerOf(to);
  if (!a || !b || a === b) return undefined;
  if (a.imports.includes(b.name)) return undefined;
  return `${from} (${a.name}) may not import ${to} (${b.name}): ${a.name} may import ` +
    `${a.imports.length ? a.imports.join(", ") : "nothing outside itself"} ` +
    "(docs/ARCHITECTURE.md)";
}

/** Joins a relative specifier onto the importing file's folder (posix, normalised). */
export function resolveSpecifier(from: string, spec: string): string | undefined {
  if (!spec.startsWith("./") && !spec.startsWith("../")) return undefined;
  const parts = from.split("/").slice(0, -1);
  for (const p of spec.split("/")) {
    if (p === "..") {
      if (parts.length === 0) return undefined;
      parts.pop();
    } else if (p !== ".") parts.push(p);
  }
  return parts.join("/");
}

/** Where the plugin thinks the repository root is: the folder holding this script's parent. */
const ROOT = new URL("../", import.meta.url).pathname;

type Ctx = Deno.lint.RuleContext;
type FnNode =
  | Deno.lint.FunctionDeclaration
  | Deno.lint.FunctionExpression
  | Deno.lint.ArrowFunctionExpression;

function isFunction(node: Deno.lint.Node | undefined): boolean {
  return node?.type === "FunctionDeclaration" || node?.type === "FunctionExpression" ||
    node?.type === "ArrowFunctionExpression";
}

function lineOf(text: string, offset: number): number {
  let n = 1;
  for (let i = text.indexOf("\n"); i !== -1 && i < offset; i = text.indexOf("\n", i + 1)) n++;
  return n;
}

const plugin: Deno.lint.Plugin = {
  name: "haul",
  rules: {
    layers: {
      create(ctx: Ctx) {
        const from = relative(ctx.filename, ROOT);
        if (!from || !layerOf(from)) return {};
        const check = (node: Deno.lint.Node, source: Deno.lint.Node | null | undefined) => {
          if (source?.type !== "Literal" || typeof source.value !== "string") return;
          const to = resolveSpecifier(from, source.value);
          const why = to && layerViolation(from, to);
          if (why) ctx.report({ node, message: why });
        };
        return {
          ImportDeclaration: (n) => check(n, n.source),
          ExportNamedDeclaration: (n) => check(n, n.source),
          ExportAllDeclaration: (n) => check(n, n.source),
          ImportExpression: (n) => check(n, n.source),
        };
      },
    },
    "function-length": {
      create(ctx: Ctx) {
        const path = relative(ctx.filename, ROOT);
        if (!path || !layerOf(path)) return {};
        const check = (node: FnNode) => {
          for (
            let p = node.parent as Deno.lint.Node | undefined;
            p;
            p = (p as { parent?: Deno.lint.Node }).parent
          ) {
            if (isFunction(p)) return; // counted in its parent
          }
          // A method's first line is its key's (decorators and modifiers included).
          const start = node.parent?.type === "MethodDefinition"
            ? node.parent.range[0]
            : node.range[0];
          const text = ctx.sourceCode.text;
          const lines = lineOf(text, node.range[1]) - lineOf(text, start) + 1;
          if (lines > MAX_FUNCTION_LINES) {
            ctx.report({
              node,
              message:
                `function is ${lines} lines (at most ${MAX_FUNCTION_LINES}): split it into named steps`,
            });
          }
        };
        return {
          FunctionDeclaration: check,
          FunctionExpression: check,
          ArrowFunctionExpression: check,
        };
      },
    },
  },
};

export default plugin;
