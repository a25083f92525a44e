/** Stock Ollama against the Ollama-registry emulation (tests/support/ollama_registry.ts). */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { makeOllamaModel, pushFixture, startRegistry } from "../support/harness.ts";
import { ollamaTags, runOllama, startOllama } from "../support/ollama.ts";
import { startOllamaRegistry } from "../support/ollama_registry.ts";

Deno.test("stock ollama pulls and pushes through the Ollama-registry emulation", async () => {
  const registry = await startRegistry();
  const fx = makeOllamaModel({ layerSizes: [300_000, 2_000], seed: 7 });
  await pushFixture(registry, "library/tiny", "latest", fx);
  const ollama = await startOllama();
  const pub = (await fsp.readFile(path.join(ollama.home, ".ollama", "id_ed25519.pub"), "utf8"))
    .trim();
  const emu = await startOllamaRegistry(registry.url, { keys: { [pub]: ["alice"] } });
  try {
    const pull = await runOllama(ollama, ["pull", "--insecure", `${emu.host}/library/tiny`]);
    assert.equal(pull.code, 0, pull.stderr);
    // The blob GETs went to the registry host and were answered 307 to storage.
    assert(emu.requests.some((r) => r.host === "registry" && r.status === 307));
    assert(emu.requests.some((r) => r.host === "storage" && r.method === "GET"));
    const tags = await ollamaTags(ollama);
    assert(tags.some((t) => t.name.startsWith(`${emu.host}/library/tiny`)), JSON.stringify(tags));

    const cp = await runOllama(ollama, [
      "cp",
      `${emu.host}/library/tiny`,
      `${emu.host}/alice/tiny`,
    ]);
    assert.equal(cp.code, 0, cp.stderr);
    const push = await runOllama(ollama, ["push", "--insecure", `${emu.host}/alice/tiny`]);
    assert.equal(push.code, 0, push.stderr + push.stdout);
    // The parts went to storage by PUT without Authorization; the commit carried an etag.
    assert(
      emu.requests.some((r) => r.host === "storage" && r.method === "PUT" && r.status === 200),
    );
    assert(emu.requests.some((r) => r.method === "PUT" && /etag=/.test(r.url) && r.status === 201));
    // Signed token request verified, and the manifest landed in the real registry.
    assert(emu.tokens.some((t) => t.key !== undefined && t.push.includes("alice")));
    const m = await fetch(`${registry.url}/v2/alice/tiny/manifests/latest`, {
      headers: { accept: "application/vnd.docker.distribution.manifest.v2+json" },
    });
    assert.equal(m.status, 200);
    await m.body?.cancel();

    // A namespace the key does not own is refused.
    await runOllama(ollama, ["cp", `${emu.host}/library/tiny`, `${emu.host}/bob/tiny`]);
    const denied = await runOllama(ollama, ["push", "--insecure", `${emu.host}/bob/tiny`]);
    assert(denied.code !== 0, denied.stdout);
    assert.match(denied.stderr, /not authorized to push to this namespace/);
  } finally {
    await emu.stop();
    await ollama.stop();
    await registry.stop();
  }
});
