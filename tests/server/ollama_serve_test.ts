/**
 * Stock Ollama (the pinned v0.32.15 build, tests/support/ollama.ts) pulls from `haul serve`:
 * a LAN share that `ollama pull --insecure` can use as it is. Ollama asks for a blob's direct
 * URL first and accepts only a 307 or a 200 with `Location` (server/download.go,
 * blobDownload.run), then fetches Range parts from it.
 */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { makeOllamaModel, MiB, sha256File, sleep, tmpDir } from "../support/harness.ts";
import type { Fixture } from "../support/fixtures.ts";
import { type OllamaServer, ollamaTags, runOllama, startOllama } from "../support/ollama.ts";
import { runCli } from "../support/cli.ts";
import { startServe, storeFixture } from "./serve_fixtures.ts";

/** Asserts that `server`'s store holds `fx` under `host/repository:tag` exactly as served. */
async function assertPulled(server: OllamaServer, name: string, fx: Fixture): Promise<void> {
  const [host, ...rest] = name.split("/");
  const [repo, tag] = rest.join("/").split(":");
  const manifest = await fsp.readFile(path.join(server.models, "manifests", host, repo, tag));
  assert.deepEqual(new Uint8Array(manifest), fx.manifest, "manifest bytes as served");
  for (const b of fx.blobs) {
    const file = path.join(server.models, "blobs", b.digest.replace(":", "-"));
    assert.equal((await fsp.stat(file)).size, b.size, `${b.digest} size`);
    assert.equal(`sha256:${await sha256File(file)}`, b.digest, `${b.digest} content`);
  }
  const leftovers = (await fsp.readdir(path.join(server.models, "blobs")))
    .filter((f) => f.includes("partial"));
  assert.deepEqual(leftovers, [], "no partial files after the pull");
  // The daemon's model list is cached and refreshed in the background (server/model_list_cache.go).
  let tags = await ollamaTags(server);
  for (let i = 0; i < 100 && !tags.some((t) => t.name === name); i++) {
    await sleep(100);
    tags = await ollamaTags(server);
  }
  assert.ok(tags.some((t) => t.name === name), `ollama lists ${name}: ${JSON.stringify(tags)}`);
}

Deno.test("stock ollama pull from haul serve: multi-part blob and small layers, byte for byte", async () => {
  const store = await tmpDir("haul-serve-ollama");
  // 150 MB: Ollama splits it into 100 MB parts (minDownloadPartSize), so its Range path runs.
  // Layers are model, template, license: the template's bytes must parse for `ollama list`.
  const fx = makeOllamaModel({ layerSizes: [150 * 1_000_000 + 7, 300, 1200], seed: 151 });
  const serve = await (async () => {
    await storeFixture(store, { repository: "library/tiny" }, fx, { move: true });
    return await startServe(store);
  })();
  const ollama = await startOllama();
  try {
    const name = `${serve.host}/library/tiny:latest`;
    const r = await runOllama(ollama, ["pull", "--insecure", name]);
    assert.equal(r.code, 0, `ollama pull: ${r.stderr}\n${await ollama.log()}`);
    await assertPulled(ollama, name, fx);
    const list = await runOllama(ollama, ["list"]);
    assert.match(list.stdout, new RegExp(`${serve.host}/library/tiny:latest`));
  } finally {
    await ollama.stop();
    await serve.stop();
    await fx.cleanup?.();
    await fsp.rm(store, { recursive: true, force: true });
  }
});

Deno.test("8 stock ollama daemons pull one model from haul serve at once, all verified", async () => {
  const store = await tmpDir("haul-serve-ollama8");
  const fx = makeOllamaModel({ layerSizes: [12 * MiB + 5], seed: 152 });
  await storeFixture(store, { repository: "library/fleet" }, fx);
  const serve = await startServe(store);
  const daemons: OllamaServer[] = [];
  try {
    for (let i = 0; i < 8; i++) daemons.push(await startOllama());
    const name = `${serve.host}/library/fleet:latest`;
    const runs = await Promise.all(daemons.map((d) => runOllama(d, ["pull", "--insecure", name])));
    for (const [i, r] of runs.entries()) assert.equal(r.code, 0, `daemon ${i}: ${r.stderr}`);
    for (const d of daemons) await assertPulled(d, name, fx);
  } finally {
    await Promise.all(daemons.map((d) => d.stop()));
    await serve.stop();
    await fx.cleanup?.();
    await fsp.rm(store, { recursive: true, force: true });
  }
});

Deno.test("stock ollama pulls an other-registry 3-component model from haul serve by its alias", async () => {
  const store = await tmpDir("haul-serve-ollama-alias");
  const fx = makeOllamaModel({ layerSizes: [2 * MiB + 3, 300], seed: 153 });
  // As a haul pull from ghcr.io/org/team/model leaves it: Ollama cannot name 3 components.
  await storeFixture(store, { host: "ghcr.io", repository: "org/team/model" }, fx);
  const serve = await startServe(store);
  const ollama = await startOllama();
  try {
    const catalog = await (await fetch(`${serve.url}/v2/_catalog`)).json();
    assert.ok(catalog.repositories.includes("ghcr.io/org/team/model"), JSON.stringify(catalog));
    assert.ok(catalog.repositories.includes("ghcr-io_org_team/model"), JSON.stringify(catalog));
    const text = await runCli(["list", "--models", store]);
    assert.match(
      text.stdout,
      /ghcr\.io\/org\/team\/model:latest\s+->\s+ghcr-io_org_team\/model:latest/,
    );
    const listed = await runCli(["list", "--json", "--models", store]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(
      JSON.parse(listed.stdout).map((m: { ollamaName: string }) => m.ollamaName),
      ["ghcr-io_org_team/model"],
      "haul list --json names the alias",
    );
    const name = `${serve.host}/ghcr-io_org_team/model:latest`;
    const r = await runOllama(ollama, ["pull", "--insecure", name]);
    assert.equal(r.code, 0, `ollama pull: ${r.stderr}\n${await ollama.log()}`);
    await assertPulled(ollama, name, fx);
    // A one-component name is library/<name>, as in Ollama (stock `ollama pull host/solo` itself
    // refuses the name: types/model/name.go reads `host` as the namespace).
    await storeFixture(store, { repository: "library/solo" }, fx);
    const solo = await fetch(`${serve.url}/v2/solo/manifests/latest`);
    assert.deepEqual(new Uint8Array(await solo.arrayBuffer()), fx.manifest);
  } finally {
    await ollama.stop();
    await serve.stop();
    await fx.cleanup?.();
    await fsp.rm(store, { recursive: true, force: true });
  }
});
