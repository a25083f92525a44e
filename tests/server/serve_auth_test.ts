/**
 * `haul serve --htpasswd` over TLS: users as the real `htpasswd -B` writes them, the 401
 * challenge without or with wrong credentials, `haul pull --ca-file` with the credentials in
 * Docker's config.json, skopeo with --creds, and the refusal to take passwords in clear.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { promisify } from "node:util";
import process from "node:process";
import {
  type CliChild,
  makeOllamaModel,
  makeTlsCert,
  runCli,
  sha256File,
  spawnCli,
  tmpDir,
} from "../support/harness.ts";
import { startServe, storeFixture } from "./serve_fixtures.ts";

const exec = promisify(execFile);

async function setup() {
  const dir = await tmpDir("haul-serve-auth");
  const store = path.join(dir, "store");
  const fx = makeOllamaModel({ layerSizes: [3 * 1024 * 1024 + 5, 200], seed: 181 });
  await storeFixture(store, { repository: "library/tiny" }, fx);
  const htpasswd = path.join(dir, "htpasswd");
  // The real tool, bcrypt (-B), as an operator would write the file.
  await exec("htpasswd", ["-B", "-b", "-c", htpasswd, "alice", "s3cret"]);
  await exec("htpasswd", ["-B", "-b", htpasswd, "bob", "hunter2"]);
  const tls = await makeTlsCert(dir);
  return { dir, store, fx, htpasswd, tls };
}

/** GET over TLS trusting `ca`, with optional Basic credentials (curl: an independent client). */
async function curl(url: string, ca: string, creds?: string) {
  const args = ["-sS", "-o", "/dev/null", "-D", "-", "--cacert", ca, url];
  if (creds) args.unshift("-u", creds);
  const { stdout } = await exec("curl", args);
  const status = Number(/^HTTP\/[\d.]+ (\d+)/m.exec(stdout)?.[1]);
  const challenge = /^www-authenticate: (.*?)\r?$/im.exec(stdout)?.[1];
  return { status, challenge };
}

Deno.test("serve --htpasswd over TLS: 401 without or with wrong credentials; haul pull --ca-file with config.json credentials verifies", async () => {
  const { dir, store, fx, htpasswd, tls } = await setup();
  const serve = await startServe(store, {
    extra: [
      "--htpasswd",
      htpasswd,
      "--tls-cert",
      tls.certFile,
      "--tls-key",
      tls.keyFile,
      "--log-format",
      "json",
    ],
  });
  try {
    const base = `https://127.0.0.1:${serve.port}`;
    const blob = `${base}/v2/library/tiny/blobs/${fx.blobs[0].digest}`;
    for (const url of [`${base}/v2/`, `${base}/v2/library/tiny/manifests/latest`, blob]) {
      const none = await curl(url, tls.caFile);
      assert.equal(none.status, 401, `no credentials: ${url}`);
      assert.equal(none.challenge, 'Basic realm="haul"');
      assert.equal((await curl(url, tls.caFile, "alice:wrong")).status, 401, "wrong password");
      assert.equal((await curl(url, tls.caFile, "mallory:s3cret")).status, 401, "unknown user");
    }
    assert.equal((await curl(blob, tls.caFile, "bob:hunter2")).status, 200, "bob's password");

    // Without credentials haul pull fails with the auth exit code and a one-line error.
    const models = path.join(dir, "client");
    const ref = `127.0.0.1:${serve.port}/library/tiny`;
    const denied = await runCli([
      "pull",
      "--quiet",
      "--ca-file",
      tls.caFile,
      "--models",
      models,
      ref,
    ], {
      env: { DOCKER_CONFIG: path.join(dir, "nobody") },
    });
    assert.notEqual(denied.code, 0, "pull without credentials must fail");
    assert.match(denied.stderr, /login|auth|401/i);

    const docker = path.join(dir, "docker");
    await fsp.mkdir(docker, { recursive: true });
    await fsp.writeFile(
      path.join(docker, "config.json"),
      JSON.stringify({ auths: { [`127.0.0.1:${serve.port}`]: { auth: btoa("alice:s3cret") } } }),
    );
    const r = await runCli(["pull", "--quiet", "--ca-file", tls.caFile, "--models", models, ref], {
      env: { DOCKER_CONFIG: docker },
    });
    assert.equal(r.code, 0, r.stderr);
    for (const b of fx.blobs) {
      const file = path.join(models, "blobs", b.digest.replace(":", "-"));
      assert.equal(`sha256:${await sha256File(file)}`, b.digest, `${b.digest} verified`);
    }
    const manifest = await fsp.readFile(
      path.join(models, "manifests", `127.0.0.1:${serve.port}`, "library", "tiny", "latest"),
    );
    assert.deepEqual(new Uint8Array(manifest), fx.manifest);

    // skopeo, another client of the same challenge.
    const src = `docker://127.0.0.1:${serve.port}/library/tiny:latest`;
    const ok = await exec("skopeo", [
      "inspect",
      "--raw",
      "--cert-dir",
      await certDir(dir, tls.caFile),
      "--creds",
      "alice:s3cret",
      src,
    ]);
    assert.equal(ok.stdout, new TextDecoder().decode(fx.manifest));
    await assert.rejects(
      exec("skopeo", ["inspect", "--raw", "--cert-dir", path.join(dir, "certs"), src]),
      /401|unauthorized|authentication required/i,
    );

    // The access log names the user of each authenticated request, no one for a 401.
    const records = serve.child.output().stderr.split("\n").filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l)).filter((r) => r.msg === "request");
    const blobGets = records.filter((r) => r.status === 200 && r.path.includes("/blobs/"));
    assert.ok(blobGets.length >= 2, "blob GETs logged");
    assert.ok(blobGets.every((r) => r.user === "alice" || r.user === "bob"), "users logged");
    const denials = records.filter((r) => r.status === 401);
    assert.ok(denials.length >= 9 && denials.every((r) => r.user === undefined), "401s: no user");
  } finally {
    await serve.stop();
    await fx.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

/** Waits (up to 20 s) for a line of the child's stderr to match `re`. */
async function waitFor(child: CliChild, re: RegExp): Promise<RegExpExecArray> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const m = re.exec(child.output().stderr);
    if (m) return m;
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`no ${re} in haul serve's output:\n${child.output().stderr}`);
}

/** A containers-style certs dir holding the CA (skopeo --cert-dir reads *.crt as CAs). */
async function certDir(dir: string, ca: string): Promise<string> {
  const d = path.join(dir, "certs");
  await fsp.mkdir(d, { recursive: true });
  await fsp.copyFile(ca, path.join(d, "ca.crt"));
  return d;
}

Deno.test("serve --htpasswd refuses a non-loopback address without TLS, and non-bcrypt entries", async () => {
  const { dir, store, fx, htpasswd } = await setup();
  try {
    const clear = await runCli(
      ["serve", "--addr", "0.0.0.0:0", "--models", store, "--htpasswd", htpasswd],
      { timeoutMs: 30_000 },
    );
    assert.equal(clear.code, 2, `usage exit code: ${clear.stderr}`);
    assert.match(clear.stderr, /not loopback, needs --tls-cert.*--allow-insecure-auth/);
    assert.equal(clear.stderr.trim().split("\n").length, 1, "one line");

    const md5 = path.join(dir, "md5");
    await exec("htpasswd", ["-m", "-b", "-c", md5, "carol", "pw"]);
    const weak = await runCli(
      ["serve", "--addr", "127.0.0.1:0", "--models", store, "--htpasswd", md5],
      { timeoutMs: 30_000 },
    );
    assert.equal(weak.code, 2, weak.stderr);
    assert.match(weak.stderr, /line 1: user "carol" has no bcrypt hash/);

    // --allow-insecure-auth off loopback: it starts, warns, and still asks for credentials.
    const child = spawnCli([
      "serve",
      "--addr",
      "0.0.0.0:0",
      "--models",
      store,
      "--htpasswd",
      htpasswd,
      "--allow-insecure-auth",
    ], { timeoutMs: 120_000 });
    try {
      const port = Number((await waitFor(child, /on http:\/\/0\.0\.0\.0:(\d+)\/v2\//))[1]);
      assert.match(child.output().stderr, /with --htpasswd but without TLS.*in clear/);
      const url = `http://127.0.0.1:${port}/v2/`;
      const get = async (creds?: string) => {
        const headers: Record<string, string> = creds
          ? { authorization: `Basic ${btoa(creds)}` }
          : {};
        const res = await fetch(url, { headers });
        await res.body?.cancel();
        return res.status;
      };
      assert.equal(await get(), 401);
      assert.equal(await get("alice:s3cret"), 200);

      // SIGHUP rereads the users: alice's old password (verified and cached) stops working.
      await exec("htpasswd", ["-B", "-b", htpasswd, "alice", "changed"]);
      process.kill(child.pid!, "SIGHUP");
      await waitFor(child, /SIGHUP: 2 user\(s\) from/);
      assert.equal(await get("alice:s3cret"), 401, "old password after SIGHUP");
      assert.equal(await get("alice:changed"), 200, "new password after SIGHUP");
      assert.equal(await get("bob:hunter2"), 200);
    } finally {
      process.kill(child.pid!, "SIGTERM");
      await child.result;
    }
  } finally {
    await fx.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("BasicAuth: a verified user:password costs one bcrypt check, a changed password none", async () => {
  const { BasicAuth, parseHtpasswd } = await import("../../lib/mod.ts");
  const dir = await tmpDir("haul-basic-auth");
  try {
    const file = path.join(dir, "htpasswd");
    await exec("htpasswd", ["-B", "-b", "-c", file, "alice", "s3cret"]);
    const auth = new BasicAuth(parseHtpasswd(await fsp.readFile(file, "utf8"), file));
    const good = `Basic ${btoa("alice:s3cret")}`;
    for (let i = 0; i < 50; i++) assert.equal(await auth.verify(good), "alice");
    assert.equal(auth.checks, 1, "one bcrypt check for 50 requests");
    assert.equal(await auth.verify(`Basic ${btoa("alice:nope")}`), undefined);
    assert.equal(await auth.verify("Bearer x"), undefined);
    assert.equal(await auth.verify(null), undefined);
    // SIGHUP with a new password: the old one no longer passes, even though it was cached.
    await exec("htpasswd", ["-B", "-b", file, "alice", "changed"]);
    auth.setUsers(parseHtpasswd(await fsp.readFile(file, "utf8"), file));
    assert.equal(await auth.verify(good), undefined);
    assert.equal(await auth.verify(`Basic ${btoa("alice:changed")}`), "alice");
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
