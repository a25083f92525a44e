/**
 * `deno run` from a URL: the module graph (main.ts, cli/, lib/, the hash Worker) loads over
 * HTTP and reads nothing of its own from disk, whatever the current directory is. The
 * repository is served by a small static server on loopback; the CLI runs in a temp dir.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import process from "node:process";
import {
  type Fixture,
  makeOllamaModel,
  pushFixture,
  REPO_ROOT,
  runCli,
  servePort,
  sha256File,
  spawnCli,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";

const MiB = 1024 * 1024;

/** Serves main.ts and the .ts files under cli/ and lib/ as TypeScript; records every request. */
async function serveSources(): Promise<{
  url: string;
  requests: { path: string; status: number }[];
  stop(): Promise<void>;
}> {
  const requests: { path: string; status: number }[] = [];
  const server = http.createServer(async (req, res) => {
    const p = new URL(req.url ?? "/", "http://x").pathname;
    let status = 404;
    if (req.method === "GET" && /^\/(main\.ts|(cli|lib)\/([a-z0-9_]+\/)*[a-z0-9_]+\.ts)$/.test(p)) {
      try {
        const body = await fsp.readFile(path.join(REPO_ROOT, p));
        status = 200;
        res.writeHead(200, {
          "content-type": "application/typescript; charset=utf-8",
          "content-length": body.length,
        });
        res.end(body);
      } catch { /* 404 below */ }
    }
    if (status === 404) {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found\n");
    }
    requests.push({ path: p, status });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    stop: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function assertStored(models: string, host: string, repo: string, tag: string, fx: Fixture) {
  const manifest = await fsp.readFile(
    path.join(models, "manifests", host, ...repo.split("/"), tag),
  );
  assert.deepEqual(new Uint8Array(manifest), fx.manifest, "manifest bytes as served");
  for (const b of fx.blobs) {
    const file = path.join(models, "blobs", b.digest.replace(":", "-"));
    assert.equal((await fsp.stat(file)).size, b.size, `size of ${b.digest}`);
    if (b.data) assert.deepEqual(new Uint8Array(await fsp.readFile(file)), b.data);
    else assert.equal(`sha256:${await sha256File(file)}`, b.digest);
  }
}

Deno.test("deno run http://…/main.ts pulls from another directory, loading every module over HTTP", async () => {
  // A layer above the single-stream limit, so the range downloader starts the hash Worker.
  const model = makeOllamaModel({ layerSizes: [500, 24 * MiB + 7], seed: 71 });
  const cwd = await tmpDir("haul-url-run");
  const src = await serveSources();
  const reg = await startRegistry();
  // Deno's cache of remote modules: private to this run, so nothing stale is used.
  const env = { DENO_DIR: path.join(cwd, ".deno"), DENO_NO_UPDATE_CHECK: "1" };
  // Remote imports need --allow-import (in -A); plain http is allowed for loopback hosts.
  const run = (args: string[]) =>
    runCli(["run", "-A", `${src.url}/main.ts`, ...args], {
      bin: Deno.execPath(),
      cwd,
      env,
    });
  try {
    const v = await run(["--version"]);
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /^haul \S+ \(dev\)\n$/, "no commit stamp when run from source");

    await pushFixture(reg, "library/remote", "latest", model);
    // --models relative to the current directory, like any path argument.
    const r = await run(["pull", "--insecure", "--models", "models", `${reg.host}/library/remote`]);
    assert.equal(r.code, 0, r.stderr);
    await assertStored(path.join(cwd, "models"), reg.host, "library/remote", "latest", model);

    const served = new Set(src.requests.filter((q) => q.status === 200).map((q) => q.path));
    assert.deepEqual(src.requests.filter((q) => q.status !== 200), [], "every import resolved");
    assert.ok(served.has("/main.ts") && served.has("/cli/pull.ts"));
    assert.ok(served.has("/lib/disk/hash_worker.ts"), "the hash Worker was loaded from the URL");
  } finally {
    await reg.stop();
    await src.stop();
    await model.cleanup?.();
    await fsp.rm(cwd, { recursive: true, force: true });
  }
});

Deno.test("deno run http://…/main.ts serve --htpasswd: npm:bcryptjs resolves from a remote module", async () => {
  const cwd = await tmpDir("haul-url-auth");
  const src = await serveSources();
  const env = { DENO_DIR: path.join(cwd, ".deno"), DENO_NO_UPDATE_CHECK: "1" };
  await new Promise<void>((resolve, reject) =>
    execFile(
      "htpasswd",
      ["-B", "-b", "-c", path.join(cwd, "pw"), "alice", "s3cret"],
      (err) => err ? reject(err) : resolve(),
    )
  );
  await fsp.mkdir(path.join(cwd, "models"));
  const args = ["serve", "--addr", "127.0.0.1:0", "--models", "models", "--htpasswd", "pw"];
  const child = spawnCli(["run", "-A", `${src.url}/main.ts`, ...args], {
    bin: Deno.execPath(),
    cwd,
    env,
    timeoutMs: 120_000,
  });
  try {
    const port = await servePort(child, 60_000);
    assert.ok(port, `serve did not start: ${child.output().stderr}`);
    const status = async (creds?: string) => {
      const res = await fetch(`http://127.0.0.1:${port}/v2/`, {
        headers: creds ? { authorization: `Basic ${btoa(creds)}` } : {},
      });
      await res.body?.cancel();
      return res.status;
    };
    assert.equal(await status(), 401);
    assert.equal(await status("alice:wrong"), 401);
    assert.equal(await status("alice:s3cret"), 200);
    assert.deepEqual(src.requests.filter((q) => q.status !== 200), [], "every import resolved");
    assert.ok(src.requests.some((q) => q.path === "/lib/server/basic_auth.ts"));
  } finally {
    if (child.exitCode === null) process.kill(child.pid!, "SIGTERM");
    await child.result;
    await src.stop();
    await fsp.rm(cwd, { recursive: true, force: true });
  }
});
