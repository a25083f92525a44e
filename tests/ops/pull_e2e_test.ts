/**
 * End-to-end: the CLI pulls from Debian's real docker-registry on loopback.
 * Faults a registry cannot produce on demand (slowness, 200-for-Range, a
 * redirect to another origin) come from tests/support/fault_proxy.ts in front of it.
 */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import {
  type Fixture,
  makeOciImage,
  makeOllamaModel,
  pushFixture,
  type Registry,
  runCli,
  sha256File,
  spawnCli,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";
import { pull } from "../../lib/mod.ts";

const MiB = 1024 * 1024;

/** Asserts the store holds exactly the fixture: blobs byte for byte, manifest bytes as served. */
async function assertStored(models: string, host: string, repo: string, tag: string, fx: Fixture) {
  const manifest = await fsp.readFile(
    path.join(models, "manifests", host, ...repo.split("/"), tag),
  );
  assert.deepEqual(
    new Uint8Array(manifest),
    fx.manifest,
    "manifest bytes as the registry returned them",
  );
  for (const b of fx.blobs) {
    const file = path.join(models, "blobs", b.digest.replace(":", "-"));
    const st = await fsp.stat(file);
    assert.equal(st.size, b.size, `size of ${b.digest}`);
    if (b.data) assert.deepEqual(new Uint8Array(await fsp.readFile(file)), b.data);
    else assert.equal(`sha256:${await sha256File(file)}`, b.digest);
  }
  const leftovers = (await fsp.readdir(path.join(models, "blobs"))).filter((n) =>
    !/^sha256-[0-9a-f]{64}$/.test(n)
  );
  assert.deepEqual(leftovers, [], "no partial or temp files left");
  const partials = await fsp.readdir(path.join(models, ".haul", "partial")).catch(() => []);
  assert.deepEqual(partials, [], "no partial download, state or lock left");
}

async function withRegistry(
  opts: Parameters<typeof startRegistry>[0],
  fn: (reg: Registry) => Promise<void>,
): Promise<void> {
  const reg = await startRegistry(opts);
  try {
    await fn(reg);
  } finally {
    await reg.stop();
  }
}

Deno.test("haul pull: Ollama model and OCI image, byte for byte; a second pull moves no blob bytes", async () => {
  const model = makeOllamaModel({ layerSizes: [1024, 3 * MiB + 17, 210 * MiB + 5], seed: 2 });
  const image = makeOciImage({ layerSizes: [2048, 20 * MiB + 3], seed: 3 });
  const models = await tmpDir("haul-models");
  try {
    await withRegistry({}, async (reg) => {
      await pushFixture(reg, "library/tiny", "latest", model);
      await pushFixture(reg, "acme/app", "v1", image);
      const proxy = await startFaultProxy(reg.url);
      try {
        const r = await runCli([
          "pull",
          "--insecure",
          "--models",
          models,
          `${proxy.host}/library/tiny`,
          `${proxy.host}/acme/app:v1`,
        ]);
        assert.equal(r.code, 0, r.stderr);
        await assertStored(models, proxy.host, "library/tiny", "latest", model);
        await assertStored(models, proxy.host, "acme/app", "v1", image);
        const total = [...model.blobs, ...image.blobs].reduce((a, b) => a + b.size, 0);
        assert.equal(proxy.bytesOut(/\/blobs\//), total, "every blob byte fetched exactly once");

        const before = proxy.bytesOut(/\/blobs\//);
        const again = await runCli([
          "pull",
          "--insecure",
          "--json",
          "--models",
          models,
          `${proxy.host}/library/tiny`,
        ]);
        assert.equal(again.code, 0, again.stderr);
        assert.equal(proxy.bytesOut(/\/blobs\//), before, "second pull transfers no blob bytes");
        const lines = again.stdout.trim().split("\n").map((l) => JSON.parse(l));
        assert.deepEqual(lines[0], { status: "pulling manifest" });
        assert.deepEqual(lines.at(-1), { status: "success" });
        for (const b of model.blobs) {
          const mine = lines.filter((l) => l.digest === b.digest);
          assert.ok(mine.length >= 1, `progress for ${b.digest}`);
          assert.equal(mine.at(-1).completed, b.size);
          assert.equal(mine.at(-1).total, b.size);
        }
      } finally {
        await proxy.stop();
      }
    });
  } finally {
    await model.cleanup?.();
    await image.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul pull under bun: parts, worker hashing and the store", async () => {
  const model = makeOllamaModel({ layerSizes: [100, 70 * MiB + 1], seed: 4 });
  const models = await tmpDir("haul-models");
  try {
    await withRegistry({}, async (reg) => {
      await pushFixture(reg, "library/bunny", "q4", model);
      const r = await runCli(
        [
          "pull",
          "--insecure",
          "--part-size",
          "8M",
          "--models",
          models,
          `${reg.host}/library/bunny:q4`,
        ],
        { runtime: "bun" },
      );
      assert.equal(r.code, 0, r.stderr);
      await assertStored(models, reg.host, "library/bunny", "q4", model);
    });
  } finally {
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul pull resumes after kill -9 mid-blob without fetching written bytes again", async () => {
  const size = 200 * MiB + 11;
  const model = makeOllamaModel({ layerSizes: [512, size], seed: 5 });
  const big = model.blobs[2];
  const models = await tmpDir("haul-models");
  try {
    await withRegistry({}, async (reg) => {
      await pushFixture(reg, "library/resume", "latest", model);
      // 20 MB/s per request: slow enough that the kill lands mid-blob.
      const slow = await startFaultProxy(reg.url, {
        rule: (req) => req.url.includes("/blobs/") ? { rateBytesPerSec: 20e6 } : undefined,
      });
      const state = path.join(
        models,
        ".haul",
        "partial",
        big.digest.replace(":", "-") + "-partial.json",
      );
      let doneAtKill = 0;
      try {
        const child = spawnCli([
          "pull",
          "--insecure",
          "--concurrency",
          "4",
          "--part-size",
          "16M",
          "--models",
          models,
          `${slow.host}/library/resume`,
        ]);
        const deadline = Date.now() + 60_000;
        for (;;) {
          assert.ok(Date.now() < deadline, "pull never got a third of the way");
          await new Promise((r) => setTimeout(r, 50));
          try {
            const st = JSON.parse(await fsp.readFile(state, "utf8"));
            const done = st.parts.reduce((a: number, p: { done: number }) => a + p.done, 0);
            if (done > size / 3) break;
          } catch { /* not there yet, or being replaced */ }
        }
        child.kill("SIGKILL");
        const killed = await child.result;
        assert.equal(killed.signal, "SIGKILL");
        const st = JSON.parse(await fsp.readFile(state, "utf8"));
        doneAtKill = st.parts.reduce((a: number, p: { done: number }) => a + p.done, 0);
        assert.ok(doneAtKill > 0 && doneAtKill < size);
        await assert.rejects(fsp.stat(path.join(models, "blobs", big.digest.replace(":", "-"))));
      } finally {
        await slow.stop();
      }
      const counting = await startFaultProxy(reg.url);
      try {
        const r = await runCli([
          "pull",
          "--insecure",
          "--models",
          models,
          `${counting.host}/library/resume`,
        ]);
        assert.equal(r.code, 0, r.stderr);
        const fetched = counting.bytesOut(new RegExp(`/blobs/${big.digest}`));
        assert.ok(
          fetched <= size - doneAtKill,
          `resume fetched ${fetched} bytes; ${size - doneAtKill} were missing`,
        );
        await assertStored(models, counting.host, "library/resume", "latest", {
          ...model,
          manifest: model.manifest,
        });
      } finally {
        await counting.stop();
      }
    });
  } finally {
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul pull copes with a server that answers Range requests with 200 and the whole body", async () => {
  const model = makeOllamaModel({ layerSizes: [300, 40 * MiB + 7], seed: 6 });
  const models = await tmpDir("haul-models");
  try {
    await withRegistry({}, async (reg) => {
      await pushFixture(reg, "library/norange", "latest", model);
      const proxy = await startFaultProxy(reg.url, {
        rule: (req) => req.url.includes("/blobs/") ? { ignoreRange: true } : undefined,
      });
      try {
        const r = await runCli([
          "pull",
          "--insecure",
          "--part-size",
          "4M",
          "--models",
          models,
          `${proxy.host}/library/norange`,
        ]);
        assert.equal(r.code, 0, r.stderr);
        await assertStored(models, proxy.host, "library/norange", "latest", model);
        const big = model.blobs[2];
        // One stream took over: the blob was not fetched once per part.
        assert.ok(proxy.bytesOut(new RegExp(`/blobs/${big.digest}`)) < 3 * big.size);
      } finally {
        await proxy.stop();
      }
    });
  } finally {
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul pull with Basic auth: refused without credentials, works with Docker's config.json", async () => {
  const model = makeOllamaModel({ layerSizes: [700, 30 * MiB], seed: 7 });
  const models = await tmpDir("haul-models");
  const docker = await tmpDir("haul-docker");
  try {
    await withRegistry({ auth: "basic" }, async (reg) => {
      await pushFixture(reg, "team/secret", "latest", model, { user: "alice", pass: "wonderland" });
      const empty = await runCli([
        "pull",
        "--insecure",
        "--models",
        models,
        `${reg.host}/team/secret`,
      ], {
        env: { DOCKER_CONFIG: docker },
      });
      assert.equal(empty.code, 4, empty.stderr);
      assert.match(empty.stderr, /login|credentials|auth/i);
      const errors = empty.stderr.trim().split("\n").filter((l) => /^haul: (?!--insecure)/.test(l));
      assert.equal(errors.length, 1, empty.stderr);
      assert.match(
        empty.stderr.trim().split("\n").at(-1)!,
        /^haul: /,
        "the error is the last line",
      );

      await fsp.writeFile(
        path.join(docker, "config.json"),
        JSON.stringify({ auths: { [reg.host]: { auth: btoa("alice:wonderland") } } }),
      );
      const ok = await runCli(
        ["pull", "--insecure", "--models", models, `${reg.host}/team/secret`],
        {
          env: { DOCKER_CONFIG: docker },
        },
      );
      assert.equal(ok.code, 0, ok.stderr);
      await assertStored(models, reg.host, "team/secret", "latest", model);

      await fsp.writeFile(
        path.join(docker, "config.json"),
        JSON.stringify({ auths: { [reg.host]: { auth: btoa("alice:wrong") } } }),
      );
      await fsp.rm(path.join(models, "manifests"), { recursive: true });
      const bad = await runCli([
        "pull",
        "--insecure",
        "--models",
        models,
        `${reg.host}/team/secret`,
      ], {
        env: { DOCKER_CONFIG: docker },
      });
      assert.equal(bad.code, 4, bad.stderr);
    });
  } finally {
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
    await fsp.rm(docker, { recursive: true, force: true });
  }
});

Deno.test("haul pull with Bearer tokens: anonymous and credentialed, scoped, cached", async () => {
  const model = makeOllamaModel({ layerSizes: [100, 2 * MiB, 20 * MiB], seed: 8 });
  const models = await tmpDir("haul-models");
  const docker = await tmpDir("haul-docker");
  try {
    // Anonymous pulls allowed: no credentials needed.
    await withRegistry({ auth: "token" }, async (reg) => {
      await pushFixture(reg, "library/pub", "latest", model, { user: "alice", pass: "wonderland" });
      const before = reg.token!.requests.length;
      const r = await runCli(
        ["pull", "--insecure", "--models", models, `${reg.host}/library/pub`],
        {
          env: { DOCKER_CONFIG: docker },
        },
      );
      assert.equal(r.code, 0, r.stderr);
      await assertStored(models, reg.host, "library/pub", "latest", model);
      const mine = reg.token!.requests.slice(before);
      assert.ok(mine.length >= 1 && mine.length <= 2, `token fetched ${mine.length} times, cached`);
      assert.ok(mine.every((t) => t.scope.includes("repository:library/pub:pull")));
      assert.ok(mine.every((t) => t.user === undefined), "anonymous token");
    });
    // Anonymous pulls refused: credentials from config.json are sent to the realm.
    await fsp.rm(models, { recursive: true, force: true });
    await withRegistry({ auth: "token", anonymousPull: false }, async (reg) => {
      await pushFixture(reg, "library/priv", "latest", model, {
        user: "alice",
        pass: "wonderland",
      });
      const denied = await runCli([
        "pull",
        "--insecure",
        "--models",
        models,
        `${reg.host}/library/priv`,
      ], {
        env: { DOCKER_CONFIG: docker },
      });
      assert.equal(denied.code, 4, denied.stderr);
      await fsp.writeFile(
        path.join(docker, "config.json"),
        JSON.stringify({ auths: { [`http://${reg.host}`]: { auth: btoa("alice:wonderland") } } }),
      );
      const ok = await runCli([
        "pull",
        "--insecure",
        "--models",
        models,
        `${reg.host}/library/priv`,
      ], {
        env: { DOCKER_CONFIG: docker },
      });
      assert.equal(ok.code, 0, ok.stderr);
      assert.ok(reg.token!.requests.some((t) => t.user === "alice"));
      await assertStored(models, reg.host, "library/priv", "latest", model);
    });
  } finally {
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
    await fsp.rm(docker, { recursive: true, force: true });
  }
});

Deno.test("haul pull follows a blob redirect to another origin without sending Authorization there", async () => {
  const model = makeOllamaModel({ layerSizes: [900, 24 * MiB + 1], seed: 9 });
  const models = await tmpDir("haul-models");
  const docker = await tmpDir("haul-docker");
  try {
    await withRegistry({ auth: "basic" }, async (reg) => {
      await withRegistry({}, async (cdnOrigin) => {
        await pushFixture(reg, "team/cdn", "latest", model, { user: "alice", pass: "wonderland" });
        await pushFixture(cdnOrigin, "team/cdn", "latest", model);
        const cdn = await startFaultProxy(cdnOrigin.url);
        const front = await startFaultProxy(reg.url, {
          rule: (req) =>
            req.method === "GET" && /\/blobs\/sha256:/.test(req.url)
              ? { redirectTo: `${cdn.url}${req.url}` }
              : undefined,
        });
        try {
          await fsp.writeFile(
            path.join(docker, "config.json"),
            JSON.stringify({ auths: { [front.host]: { auth: btoa("alice:wonderland") } } }),
          );
          const r = await runCli([
            "pull",
            "--insecure",
            "--models",
            models,
            `${front.host}/team/cdn`,
          ], {
            env: { DOCKER_CONFIG: docker },
          });
          assert.equal(r.code, 0, r.stderr);
          await assertStored(models, front.host, "team/cdn", "latest", model);
          assert.ok(cdn.requests.length >= 2, "blobs came from the second origin");
          assert.ok(
            cdn.requests.every((q) => q.headers.authorization === undefined),
            "no Authorization to the CDN",
          );
          assert.ok(front.requests.some((q) => q.headers.authorization?.startsWith("Basic ")));
        } finally {
          await cdn.stop();
          await front.stop();
        }
      });
    });
  } finally {
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
    await fsp.rm(docker, { recursive: true, force: true });
  }
});

Deno.test("haul pull usage and lookup errors: one line, distinct exit codes", async () => {
  const models = await tmpDir("haul-models");
  try {
    const cases: [string[], number, RegExp][] = [
      [["pull", "--models", models, "Bad//Ref"], 2, /Invalid reference/],
      [["pull", "--models", models, "../../etc/passwd"], 2, /Invalid reference/],
      [["pull", "--models", models, "x@sha256:1234"], 2, /digest/i],
      [["pull", "--models", models], 2, /missing REF/],
      [["pull", "--bogus-flag", "x"], 2, /bogus/],
      [["pull", "--models", models, "http://127.0.0.1:9/library/x"], 2, /--insecure/],
      [["pull", "--part-size", "lots", "x"], 2, /part-size/],
      [["frobnicate"], 2, /Unknown command/],
    ];
    for (const [args, code, re] of cases) {
      const r = await runCli(args, { timeoutMs: 30_000 });
      assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.equal(
        r.stderr.trim().split("\n").length,
        1,
        `one line for ${args.join(" ")}: ${r.stderr}`,
      );
    }
    await withRegistry({}, async (reg) => {
      const r = await runCli([
        "pull",
        "--insecure",
        "--models",
        models,
        `${reg.host}/library/absent:v9`,
      ]);
      assert.equal(r.code, 6, r.stderr);
      assert.match(r.stderr, /not found/);
    });
    // Nothing listening: a network error after bounded retries.
    const r = await runCli([
      "pull",
      "--insecure",
      "--retries",
      "1",
      "--models",
      models,
      "127.0.0.1:9/library/x",
    ]);
    assert.equal(r.code, 7, r.stderr);
  } finally {
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul pull a b: models sharing a blob fetch it once, in one run", async () => {
  const a = makeOllamaModel({ layerSizes: [300, 30 * MiB + 1], seed: 61 });
  const b = makeOllamaModel({ layerSizes: [300, 30 * MiB + 1, 5000], seed: 61 }); // same first layers
  const models = await tmpDir("haul-models");
  try {
    await withRegistry({}, async (reg) => {
      await pushFixture(reg, "library/a", "latest", a);
      await pushFixture(reg, "library/b", "latest", b);
      const proxy = await startFaultProxy(reg.url);
      try {
        const r = await runCli([
          "pull",
          "--insecure",
          "--models",
          models,
          `${proxy.host}/library/a`,
          `${proxy.host}/library/b`,
        ]);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stderr, /--insecure/);
        await assertStored(models, proxy.host, "library/a", "latest", a);
        await assertStored(models, proxy.host, "library/b", "latest", b);
        const shared = a.blobs[2];
        assert.equal(b.blobs[2].digest, shared.digest);
        assert.equal(
          proxy.bytesOut(new RegExp(`/blobs/${shared.digest}`)),
          shared.size,
          "shared layer fetched once",
        );
      } finally {
        await proxy.stop();
      }
    });
  } finally {
    await a.cleanup?.();
    await b.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul pull: Ctrl-C stops promptly with a message and exit 130; the next run resumes", async () => {
  const model = makeOllamaModel({ layerSizes: [100, 60 * MiB], seed: 62 });
  const models = await tmpDir("haul-models");
  try {
    await withRegistry({}, async (reg) => {
      await pushFixture(reg, "library/ctrlc", "latest", model);
      const slow = await startFaultProxy(reg.url, {
        rule: (req) => req.url.includes("/blobs/") ? { rateBytesPerSec: 2e6 } : undefined,
      });
      try {
        const child = spawnCli([
          "pull",
          "--insecure",
          "--models",
          models,
          `${slow.host}/library/ctrlc`,
        ]);
        await new Promise((r) => setTimeout(r, 2500));
        const t0 = Date.now();
        process.kill(child.pid!, "SIGINT");
        const r = await child.result;
        assert.ok(Date.now() - t0 < 3000, "prompt");
        assert.equal(r.code, 130, r.stderr);
        assert.match(r.stderr, /interrupted.*resume/);
      } finally {
        await slow.stop();
      }
      const again = await runCli([
        "pull",
        "--insecure",
        "--models",
        models,
        `${reg.host}/library/ctrlc`,
      ]);
      assert.equal(again.code, 0, again.stderr);
      await assertStored(models, reg.host, "library/ctrlc", "latest", model);
    });
  } finally {
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul pull recovers stalled parts served through a redirect (a re-wrapped body)", async () => {
  const model = makeOllamaModel({ layerSizes: [300, 40 * MiB + 1], seed: 63 });
  const models = await tmpDir("haul-models");
  try {
    await withRegistry({}, async (reg) => {
      await pushFixture(reg, "library/cdnstall", "latest", model);
      let stalled = 0;
      const cdn = await startFaultProxy(reg.url, {
        rule: (req) =>
          req.method === "GET" && req.url.includes("/blobs/") && req.headers.range && stalled++ < 6
            ? { stallAfter: 100_000 }
            : undefined,
      });
      const front = await startFaultProxy(reg.url, {
        rule: (req) =>
          req.method !== "HEAD" && /\/blobs\/sha256:/.test(req.url)
            ? { redirectTo: `${cdn.url}${req.url}` }
            : undefined,
      });
      try {
        const r = await runCli([
          "pull",
          "--insecure",
          "--stall-timeout",
          "1",
          "--part-size",
          "4M",
          "--models",
          models,
          `${front.host}/library/cdnstall`,
        ], { timeoutMs: 90_000 });
        assert.equal(r.timedOut, false, "no hang");
        assert.equal(r.code, 0, r.stderr);
        assert.ok(stalled >= 6, "the stalls happened");
        await assertStored(models, front.host, "library/cdnstall", "latest", model);
      } finally {
        await cdn.stop();
        await front.stop();
      }
    });
  } finally {
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("pull() of two repositories at once counts the bytes of both", async () => {
  const a = makeOllamaModel({ layerSizes: [300, 20 * MiB + 1], seed: 71 });
  const b = makeOllamaModel({ layerSizes: [700, 10 * MiB + 3], seed: 72 });
  const models = await tmpDir("haul-models");
  try {
    await withRegistry({}, async (reg) => {
      await pushFixture(reg, "library/a", "latest", a);
      await pushFixture(reg, "library/b", "latest", b);
      const results = await pull([`${reg.host}/library/a`, `${reg.host}/library/b`], {
        insecure: true,
        modelsDir: models,
      });
      const sum = (f: typeof a) => f.blobs.reduce((n, x) => n + x.size, 0);
      // Both groups download concurrently; neither total may overwrite the other.
      for (const r of results) assert.equal(r.transferred, sum(a) + sum(b));
    });
  } finally {
    await a.cleanup?.();
    await b.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});
