/**
 * The code type-checks, lints and is formatted: `deno test` checks only what tests import, and
 * the CLI runs under `deno run` without a type check, so main.ts is checked here.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import process from "node:process";
import { REPO_ROOT } from "./support/util.ts";

function deno(args: string[]): { code: number; out: string } {
  const r = spawnSync(process.execPath, args, { cwd: REPO_ROOT, encoding: "utf8" });
  return { code: r.status ?? 1, out: `${r.stdout}\n${r.stderr}`.slice(-4000) };
}

Deno.test("deno check main.ts lib/mod.ts passes", () => {
  const r = deno(["check", "main.ts", "lib/mod.ts"]);
  assert.equal(r.code, 0, r.out);
});

Deno.test("deno lint passes (layer rules included)", () => {
  const r = deno(["lint"]);
  assert.equal(r.code, 0, r.out);
});

Deno.test("deno fmt --check passes", () => {
  const r = deno(["fmt", "--check"]);
  assert.equal(r.code, 0, r.out);
});
