/**
 * haul pull and haul push against the Ollama-registry emulation (tests/support/ollama_registry.ts,
 * checked with stock Ollama in ollama_registry_test.ts), with a key made by ssh-keygen.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import {
  makeOllamaModel,
  pushFixture,
  runCli,
  sha256hex,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { startOllamaRegistry } from "../support/ollama_registry.ts";
import { AuthError, InterruptedError, pull, push } from "../../lib/mod.ts";

function keygen(dir: string): { file: string; pub: string } {
  const file = path.join(dir, "id_ed25519");
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "t", "-f", file]);
  return { file, pub: execFileSync("cat", [`${file}.pub`]).toString().trim() };
}

async function manifestDigest(registry: string, repo: string): Promise<string> {
  const r = await fetch(`${registry}/v2/${repo}/manifests/latest`, {
    headers: { accept: "application/vnd.docker.distribution.manifest.v2+json" },
  });
  assert.equal(r.status, 200, repo);
  return `sha256:${sha256hex(new Uint8Array(await r.arrayBuffer()))}`;
}

for (const runtime of ["deno", "bun"] as const) {
  Deno.test(`haul pull and push through the Ollama-registry emulation with an ssh-keygen key (${runtime})`, async () => {
    const registry = await startRegistry();
    // A layer larger than one Ollama part (100 MB) would make this slow; 3 blobs, one of 3 MB.
    const fx = makeOllamaModel({ layerSizes: [3_000_000, 40_000], seed: 15 });
    await pushFixture(registry, "library/tiny", "latest", fx);
    const dir = await tmpDir("haul-ollama-reg");
    const key = keygen(dir);
    const emu = await startOllamaRegistry(registry.url, {
      keys: { [key.pub]: ["alice"] },
      challengePulls: true,
    });
    const models = path.join(dir, "models");
    const env = { HOME: dir, HAUL_OLLAMA_KEY: "" };
    try {
      // Pull: challenged, the token request signed with the key; blobs 307 to storage.
      const pull = await runCli(
        ["pull", "--insecure", "--key", key.file, "--models", models, `${emu.host}/library/tiny`],
        { env, runtime },
      );
      assert.equal(pull.code, 0, pull.stderr);
      assert(emu.tokens.some((t) => t.key === key.pub.split(" ")[1] && t.status === 200));
      assert(
        emu.requests.some((r) => r.host === "storage" && r.method === "GET" && r.status < 300),
      );
      assert(emu.requests.filter((r) => r.host === "storage").every((r) => !r.authorization));

      // The same model under the real registry's own name (its blobs are in the store: only the
      // manifest is fetched), so the push below has no repository on its registry to mount from.
      const direct = registry.url.replace("http://", "");
      const local = await runCli(
        ["pull", "--insecure", "--models", models, `${direct}/library/tiny`],
        { env, runtime },
      );
      assert.equal(local.code, 0, local.stderr);

      // Push under a namespace the key owns: parts announced, PUT to storage, etag commit.
      const push = await runCli([
        "push",
        "--insecure",
        "--json",
        "--key",
        key.file,
        "--models",
        models,
        `${direct}/library/tiny`,
        `${emu.host}/alice/tiny`,
      ], { env, runtime });
      assert.equal(push.code, 0, push.stderr);
      const puts = emu.requests.filter((r) => r.host === "storage" && r.method === "PUT");
      assert(puts.length >= 3, JSON.stringify(puts));
      assert(puts.every((r) => r.status === 200 && !r.authorization), JSON.stringify(puts));
      const announced = emu.requests.filter((r) => r.method === "PATCH" && r.status === 307);
      assert.equal(announced.length, puts.length);
      assert(
        emu.requests.some((r) => r.method === "PUT" && /etag=/.test(r.url) && r.status === 201),
      );
      // The same manifest bytes landed: the digest a pull of alice/tiny gives is the source's.
      assert.equal(await manifestDigest(registry.url, "alice/tiny"), fx.manifestDigest);

      // --json: Ollama's /api/push statuses, in Ollama's order.
      const lines = push.stdout.trim().split("\n").map((l) => JSON.parse(l));
      const statuses = lines.map((l) => l.status);
      assert.equal(statuses[0], "retrieving manifest");
      assert.equal(statuses.at(-2), "pushing manifest");
      assert.equal(statuses.at(-1), "success");
      for (const b of fx.blobs) {
        const mine = lines.filter((l) => l.digest === b.digest);
        assert(mine.length > 0, b.digest);
        assert(mine.every((l) => l.status === `pushing ${b.digest.slice(7, 19)}`));
        assert.equal(mine.at(-1).completed, b.size);
        assert.equal(mine.at(-1).total, b.size);
      }

      // A second push has every blob there already: nothing goes to storage.
      const before = emu.requests.filter((r) => r.host === "storage").length;
      const again = await runCli([
        "push",
        "--insecure",
        "--key",
        key.file,
        "--models",
        models,
        `${direct}/library/tiny`,
        `${emu.host}/alice/tiny`,
      ], { env, runtime });
      assert.equal(again.code, 0, again.stderr);
      assert.equal(emu.requests.filter((r) => r.host === "storage").length, before);

      // A namespace the key does not own: one line naming the key and its public half, exit 4.
      const denied = await runCli([
        "push",
        "--insecure",
        "--key",
        key.file,
        "--models",
        models,
        `${direct}/library/tiny`,
        `${emu.host}/bob/tiny`,
      ], { env, runtime });
      assert.equal(denied.code, 4, denied.stderr);
      const msg = denied.stderr.trim().split("\n").filter((l) => l.startsWith("haul:"));
      assert.equal(msg.length, 1, denied.stderr);
      assert.match(msg[0], /Not allowed to push to 127\.0\.0\.1:\d+\/bob\/tiny/);
      assert(msg[0].includes(key.file), msg[0]);
      assert(msg[0].includes(key.pub.split(" ")[1]), msg[0]);
      const bob = await fetch(`${registry.url}/v2/bob/tiny/manifests/latest`);
      assert.equal(bob.status, 404);
      await bob.body?.cancel();
    } finally {
      await emu.stop();
      await registry.stop();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
}

/**
 * A fetch that sends what haul addresses to https://registry.ollama.ai to the emulation and
 * names the emulation registry.ollama.ai in what comes back (challenge realm, Location headers),
 * so haul's own rules for Ollama's registry apply: the key found unasked, redirected parts.
 */
function asOllamaCom(emuUrl: string): (req: Request) => Promise<Response> {
  const real = "https://registry.ollama.ai";
  return async (req) => {
    const url = req.url.startsWith(real) ? emuUrl + req.url.slice(real.length) : req.url;
    const res = await fetch(url, {
      method: req.method,
      headers: req.headers,
      body: req.body,
      redirect: "manual",
      signal: req.signal,
      // deno-lint-ignore no-explicit-any
      ...(req.body ? { duplex: "half" } as any : {}),
    });
    const headers = new Headers(res.headers);
    for (const k of ["www-authenticate", "location", "docker-upload-location"]) {
      const v = headers.get(k);
      if (v) headers.set(k, v.replaceAll(emuUrl, real));
    }
    return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
  };
}

Deno.test("push to registry.ollama.ai finds ~/.ollama/id_ed25519 unasked, resumes a killed push by its parts, and says how to make a key when there is none", async () => {
  const registry = await startRegistry();
  // 210 MB: Ollama's plan cuts it into parts of 100, 100 and 10 MB.
  const fx = makeOllamaModel({ layerSizes: [210_000_000, 1_000], seed: 16 });
  await pushFixture(registry, "library/big", "latest", fx);
  const dir = await tmpDir("haul-ollama-com");
  await fsp.mkdir(path.join(dir, ".ollama"));
  const key = keygen(path.join(dir, ".ollama"));
  const emu = await startOllamaRegistry(registry.url, {
    keys: { [key.pub]: ["alice"] },
    publicUrl: "https://registry.ollama.ai",
  });
  const models = path.join(dir, "models");
  const direct = `${registry.url.replace("http://", "")}/library/big`;
  const big = fx.blobs.find((b) => b.size === 210_000_000)!;
  try {
    await pull(direct, { modelsDir: models, insecure: true });
    const common = {
      modelsDir: models,
      insecure: true,
      fetch: asOllamaCom(emu.url),
      env: { HOME: dir },
    };
    // Stopped once the first part is in storage (a Ctrl-C; kill -9 leaves the same state file).
    const ac = new AbortController();
    await assert.rejects(
      push(direct, "https://registry.ollama.ai/alice/big", {
        ...common,
        signal: ac.signal,
        onEvent: (e) => {
          if (e.type === "blob-progress" && e.digest === big.digest && e.completed >= 100e6) {
            ac.abort();
          }
        },
      }),
      InterruptedError,
    );
    // Parts go up in parallel and finish in any order: the one that crossed 100 MB is saved.
    const offsetOf = (url: string) => Number(/\/part\/[^/]+\/(\d+)\?/.exec(url)?.[1]);
    const stored = (from: number) =>
      emu.requests.slice(from).filter((r) =>
        r.host === "storage" && r.method === "PUT" && r.status === 200
      ).map((r) => offsetOf(r.url));
    const firstDone = new Set(stored(0));
    assert(firstDone.has(0) || firstDone.has(100_000_000), `stored first: ${[...firstDone]}`);
    assert(emu.tokens.some((t) => t.key === key.pub.split(" ")[1] && t.push.includes("alice")));

    const mark = emu.requests.length;
    const res = await push(direct, "https://registry.ollama.ai/alice/big", common);
    assert.equal(res.resumed, 1);
    const later = new Set(stored(mark));
    // Every part the first run did not finish goes now; a 100 MB part it did is not sent again.
    for (const o of [0, 100_000_000, 200_000_000]) {
      if (!firstDone.has(o)) assert(later.has(o), `part ${o} missing: ${[...later]}`);
    }
    assert(res.transferred <= 110_001_000, `sent ${res.transferred} bytes on resume`);
    assert.equal(await manifestDigest(registry.url, "alice/big"), fx.manifestDigest);
    const blob = await fetch(`${registry.url}/v2/alice/big/blobs/${big.digest}`, {
      method: "HEAD",
    });
    assert.equal(blob.status, 200);
    assert.equal(blob.headers.get("content-length"), String(big.size));

    // No key anywhere: the push says where it looked and how to make one.
    const empty = await tmpDir("haul-no-key");
    try {
      await assert.rejects(
        push(direct, "https://registry.ollama.ai/alice/big2", { ...common, env: { HOME: empty } }),
        (e: Error) => {
          assert(e instanceof AuthError, String(e));
          assert.match(e.message, /No Ollama key found/);
          assert(e.message.includes(path.join(empty, ".ollama", "id_ed25519")), e.message);
          assert.match(e.message, /ssh-keygen -t ed25519/);
          return true;
        },
      );
    } finally {
      await fsp.rm(empty, { recursive: true, force: true });
    }
  } finally {
    await emu.stop();
    await registry.stop();
    await fx.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
