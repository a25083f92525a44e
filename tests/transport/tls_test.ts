/** https registries with a private CA: refused clearly, trusted with --ca-file, skipped only by --insecure. */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { makeOllamaModel, pushFixture, runCli, startRegistry, tmpDir } from "../support/harness.ts";

Deno.test("haul pull over TLS: untrusted certificate is a clear exit 7; --ca-file trusts it; --insecure says so", async () => {
  const reg = await startRegistry({ tls: true });
  const fx = makeOllamaModel({ layerSizes: [100, 20 << 20], seed: 71 });
  const dir = await tmpDir("haul-tls");
  try {
    const trusting = ((input: RequestInfo | URL, init?: RequestInit) =>
      fetch(input, {
        ...init,
        // deno-lint-ignore no-explicit-any
        client: (Deno as any).createHttpClient({ caCerts: [Deno.readTextFileSync(reg.caFile!)] }),
      } as RequestInit)) as typeof fetch;
    await pushFixture(reg, "library/tls", "latest", fx, undefined, { fetch: trusting });
    const ref = `https://${reg.host}/library/tls`;
    for (const runtime of ["deno", "bun"] as const) {
      const refused = await runCli(["pull", "--models", path.join(dir, `r-${runtime}`), ref], {
        runtime,
      });
      assert.equal(refused.code, 7, `${runtime}: ${refused.stderr}`);
      assert.match(refused.stderr, /TLS certificate is not trusted/);
      const lines = refused.stderr.trim().split("\n");
      assert.equal(lines.filter((l) => l.startsWith("haul:")).length, 1, refused.stderr);
      assert.match(lines.at(-1)!, /^haul: /);
      const trusted = await runCli(
        ["pull", "--ca-file", reg.caFile!, "--models", path.join(dir, `t-${runtime}`), ref],
        { runtime },
      );
      assert.equal(trusted.code, 0, `${runtime}: ${trusted.stderr}`);
    }
    const insecure = await runCli(["pull", "--insecure", "--models", path.join(dir, "i"), ref], {
      runtime: "bun",
    });
    assert.equal(insecure.code, 0, insecure.stderr);
    assert.match(insecure.stderr, /--insecure: .*certificates not checked/);
  } finally {
    await reg.stop();
    await fx.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
