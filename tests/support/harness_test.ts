/**
 * Proves the harness itself: registries in every auth mode, the token server, the proxy mode,
 * the fixtures and the pusher. If these fail, no end-to-end result can be trusted.
 */
import assert from "node:assert/strict";
import * as crypto from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { Buffer } from "node:buffer";
import {
  deterministicBytes,
  type Fixture,
  makeOciImage,
  makeOllamaModel,
  MEDIA,
  parseChallenge,
  pushFixture,
  readTree,
  type Registry,
  runCli,
  sha256hex,
  spawnCli,
  startRegistry,
  tmpDir,
  TOKEN_SERVICE,
  writeDeterministicFile,
} from "./harness.ts";

const MiB = 1024 * 1024;

/** Checks a blob's bytes as served; large ones by hash so they never sit in memory. */
async function assertBlob(
  reg: { url: string },
  repo: string,
  blob: Fixture["blobs"][number],
  headers: Record<string, string> = {},
): Promise<void> {
  const res = await fetch(`${reg.url}/v2/${repo}/blobs/${blob.digest}`, { headers });
  assert.equal(res.status, 200, `GET ${blob.digest}`);
  const hash = crypto.createHash("sha256");
  let size = 0;
  for await (const chunk of res.body!) {
    hash.update(chunk);
    size += chunk.length;
  }
  assert.equal(size, blob.size);
  assert.equal(`sha256:${hash.digest("hex")}`, blob.digest);
}

async function getText(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** Fetches a token from a Bearer challenge, optionally with Basic credentials. */
async function tokenFor(
  challenge: string,
  creds?: string,
): Promise<{ status: number; token?: string }> {
  const { params } = parseChallenge(challenge);
  const u = new URL(params.realm);
  u.searchParams.set("service", params.service);
  u.searchParams.set("scope", params.scope);
  const headers: Record<string, string> = {};
  if (creds) headers.authorization = `Basic ${Buffer.from(creds).toString("base64")}`;
  const r = await getText(u.href, headers);
  if (r.status !== 200) return { status: r.status };
  return { status: 200, token: (JSON.parse(r.text) as { token: string }).token };
}

async function stopAll(...things: ({ stop(): Promise<void> } | undefined)[]) {
  for (const t of things) await t?.stop();
}

Deno.test("deterministicBytes() is seeded and matches writeDeterministicFile()", async () => {
  // Speed is a benchmark matter, not a test's: no timing asserted here.
  const big = deterministicBytes(256 * MiB, 7);
  assert.equal(big.length, 256 * MiB);
  assert.notDeepEqual(deterministicBytes(64, 1), deterministicBytes(64, 2));
  assert.deepEqual(deterministicBytes(64, 3), deterministicBytes(64, 3));

  // Spans a piece boundary and ends off a word boundary: the stream must equal the buffer.
  const size = 8 * MiB * 2 + 3;
  const dir = await tmpDir("haul-harness");
  try {
    const file = path.join(dir, "f.bin");
    const got = await writeDeterministicFile(file, size, 11);
    const want = deterministicBytes(size, 11);
    assert.deepEqual(got, { digest: `sha256:${sha256hex(want)}`, size });
    assert.deepEqual(new Uint8Array(await fsp.readFile(file)), want);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("startRegistry() without auth accepts a pushed Ollama model and serves its blobs", async () => {
  const fx = makeOllamaModel({ layerSizes: [70 * MiB, 3 * MiB, 1024], seed: 1 });
  let reg: Registry | undefined;
  try {
    assert.equal(fx.mediaType, MEDIA.dockerManifest);
    assert.equal(fx.blobs[0].mediaType, MEDIA.dockerConfig);
    assert.equal(fx.blobs[1].mediaType, "application/vnd.ollama.image.model");
    assert.ok(fx.blobs[1].path && !fx.blobs[1].data, "70 MiB layer is file-backed");
    assert.ok(fx.blobs[2].data, "3 MiB layer is in memory");

    reg = await startRegistry();
    assert.match(reg.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(reg.host, `127.0.0.1:${reg.port}`);
    await pushFixture(reg, "library/tiny", "latest", fx);

    const m = await fetch(`${reg.url}/v2/library/tiny/manifests/latest`, {
      headers: { accept: MEDIA.dockerManifest },
    });
    assert.equal(m.status, 200);
    assert.equal(m.headers.get("docker-content-digest"), fx.manifestDigest);
    assert.deepEqual(new Uint8Array(await m.arrayBuffer()), fx.manifest);
    for (const b of fx.blobs) await assertBlob(reg, "library/tiny", b);

    // Pushing again skips existing blobs (HEAD 200) and still succeeds.
    await pushFixture(reg, "library/tiny", "v2", fx);
  } finally {
    await stopAll(reg);
    await fx.cleanup?.();
  }
});

Deno.test("startRegistry() with basic auth rejects anonymous clients and accepts alice", async () => {
  const fx = makeOciImage({ layerSizes: [2048, 100], seed: 2 });
  const reg = await startRegistry({ auth: "basic" });
  try {
    const anon = await getText(`${reg.url}/v2/`);
    assert.equal(anon.status, 401);
    assert.match(anon.headers.get("www-authenticate") ?? "", /^Basic /);
    const bad = await getText(`${reg.url}/v2/`, {
      authorization: `Basic ${Buffer.from("alice:nope").toString("base64")}`,
    });
    assert.equal(bad.status, 401);

    await assert.rejects(pushFixture(reg, "oci/img", "1", fx), /no credentials/);
    await pushFixture(reg, "oci/img", "1", fx, { user: "alice", pass: "wonderland" });
    const alice = { authorization: `Basic ${Buffer.from("alice:wonderland").toString("base64")}` };
    const m = await fetch(`${reg.url}/v2/oci/img/manifests/1`, {
      headers: { ...alice, accept: MEDIA.ociManifest },
    });
    assert.equal(m.status, 200);
    assert.equal(m.headers.get("content-type"), MEDIA.ociManifest);
    assert.deepEqual(new Uint8Array(await m.arrayBuffer()), fx.manifest);
    for (const b of fx.blobs) await assertBlob(reg, "oci/img", b, alice);
  } finally {
    await reg.stop();
  }
});

Deno.test("startRegistry() with token auth serves an authorized push", async () => {
  const fx = makeOllamaModel({ layerSizes: [3 * MiB, 500, 80], seed: 3 });
  const reg = await startRegistry({ auth: "token" });
  try {
    const ts = reg.token!;
    assert.ok(ts);
    await pushFixture(reg, "library/secret", "latest", fx, { user: "alice", pass: "wonderland" });
    assert.ok(
      // The registry's challenge names the actions in either order from run to run.
      ts.requests.some((r) =>
        r.user === "alice" && r.scope.some((s) => {
          const [kind, name, actions] = s.split(":");
          const set = new Set(actions?.split(","));
          return kind === "repository" && name === "library/secret" && set.has("pull") &&
            set.has("push");
        })
      ),
      `token requests: ${JSON.stringify(ts.requests)}`,
    );

    // Anonymous pull: 401 with a Bearer challenge, anonymous token, then 200.
    const url = `${reg.url}/v2/library/secret/manifests/latest`;
    const accept = { accept: MEDIA.dockerManifest };
    const first = await getText(url, accept);
    assert.equal(first.status, 401);
    const challenge = first.headers.get("www-authenticate") ?? "";
    const { scheme, params } = parseChallenge(challenge);
    assert.equal(scheme, "bearer");
    assert.equal(params.realm, ts.url);
    assert.equal(params.service, TOKEN_SERVICE);
    assert.equal(params.scope, "repository:library/secret:pull");
    const anon = await tokenFor(challenge);
    assert.equal(anon.status, 200);
    const got = await fetch(url, { headers: { ...accept, authorization: `Bearer ${anon.token}` } });
    assert.equal(got.status, 200);
    assert.deepEqual(new Uint8Array(await got.arrayBuffer()), fx.manifest);
    for (const b of fx.blobs) {
      await assertBlob(reg, "library/secret", b, { authorization: `Bearer ${anon.token}` });
    }

    // The token is a real ES256 JWT carrying the certificate in x5c.
    const [h, c, s] = anon.token!.split(".");
    const header = JSON.parse(Buffer.from(h, "base64url").toString()) as Record<string, unknown>;
    const claims = JSON.parse(Buffer.from(c, "base64url").toString()) as Record<string, unknown>;
    assert.equal(header.alg, "ES256");
    assert.ok(Array.isArray(header.x5c) && header.x5c.length === 1);
    assert.equal(Buffer.from(s, "base64url").length, 64);
    assert.equal(claims.aud, TOKEN_SERVICE);
    assert.deepEqual(claims.access, [{
      type: "repository",
      name: "library/secret",
      actions: ["pull"],
    }]);

    // An anonymous token does not allow a push.
    const post = await fetch(`${reg.url}/v2/library/secret/blobs/uploads/`, {
      method: "POST",
      headers: { authorization: `Bearer ${anon.token}` },
    });
    await post.body?.cancel();
    assert.equal(post.status, 401);

    // A forged token (signature of other bytes) is refused by the registry.
    const forged = `${h}.${c}.${Buffer.alloc(64, 1).toString("base64url")}`;
    const bad = await fetch(url, { headers: { ...accept, authorization: `Bearer ${forged}` } });
    await bad.body?.cancel();
    assert.equal(bad.status, 401);

    // Wrong credentials → 401 from the token server; failNext injects failures.
    assert.equal((await tokenFor(challenge, "alice:nope")).status, 401);
    ts.failNext(2, 503);
    assert.equal((await tokenFor(challenge, "alice:wonderland")).status, 503);
    assert.equal((await tokenFor(challenge, "alice:wonderland")).status, 503);
    assert.equal((await tokenFor(challenge, "alice:wonderland")).status, 200);

    // OAuth2 POST variant.
    const form = new URLSearchParams({
      grant_type: "password",
      username: "alice",
      password: "wonderland",
      service: TOKEN_SERVICE,
      scope: "repository:library/secret:pull",
      client_id: "haul",
    });
    const oauth = await fetch(ts.url, { method: "POST", body: form });
    const body = await oauth.json() as { access_token: string; refresh_token?: string };
    assert.equal(oauth.status, 200);
    assert.ok(body.refresh_token);
    const viaOauth = await fetch(url, {
      headers: { ...accept, authorization: `Bearer ${body.access_token}` },
    });
    await viaOauth.body?.cancel();
    assert.equal(viaOauth.status, 200);
  } finally {
    await reg.stop();
  }
});

Deno.test("startRegistry() with token auth and anonymousPull false refuses anonymous pulls", async () => {
  const reg = await startRegistry({ auth: "token", anonymousPull: false });
  try {
    const first = await getText(`${reg.url}/v2/x/y/manifests/latest`);
    assert.equal(first.status, 401);
    const anon = await tokenFor(first.headers.get("www-authenticate") ?? "");
    assert.equal(anon.status, 200);
    const again = await getText(`${reg.url}/v2/x/y/manifests/latest`, {
      authorization: `Bearer ${anon.token}`,
    });
    assert.equal(again.status, 401);
  } finally {
    await reg.stop();
  }
});

Deno.test("startRegistry() in proxy mode serves blobs pushed to its remote", async () => {
  const fx = makeOllamaModel({ layerSizes: [2 * MiB, 300], seed: 4 });
  let origin: Registry | undefined;
  let proxy: Registry | undefined;
  try {
    origin = await startRegistry();
    await pushFixture(origin, "library/cached", "latest", fx);
    proxy = await startRegistry({ proxyRemote: origin.url });
    const m = await fetch(`${proxy.url}/v2/library/cached/manifests/latest`, {
      headers: { accept: MEDIA.dockerManifest },
    });
    assert.equal(m.status, 200);
    assert.deepEqual(new Uint8Array(await m.arrayBuffer()), fx.manifest);
    for (const b of fx.blobs) await assertBlob(proxy, "library/cached", b);
  } finally {
    await stopAll(proxy, origin);
  }
});

Deno.test("startRegistry() with tls serves https with a CA-signed certificate", async () => {
  const reg = await startRegistry({ tls: true });
  const trusting = Deno.createHttpClient({ caCerts: [await fsp.readFile(reg.caFile!, "utf8")] });
  const fx = makeOciImage({ layerSizes: [1000], seed: 5 });
  try {
    assert.match(reg.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    // Without the CA the certificate is refused: the registry really serves TLS.
    await assert.rejects(fetch(`${reg.url}/v2/`));
    const fetchTls: typeof fetch = (input, init) => fetch(input, { ...init, client: trusting });
    await pushFixture(reg, "tls/img", "1", fx, undefined, { fetch: fetchTls });
    const res = await fetchTls(`${reg.url}/v2/tls/img/blobs/${fx.blobs[1].digest}`);
    assert.equal(res.status, 200);
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), fx.blobs[1].data);
  } finally {
    trusting.close();
    await reg.stop();
  }
});

Deno.test("runCli() collects output and exit codes, and kills on timeout", async () => {
  const ok = await runCli(["-c", "echo out; echo err >&2; exit 3"], { bin: "sh" });
  assert.deepEqual([ok.code, ok.stdout, ok.stderr, ok.timedOut], [3, "out\n", "err\n", false]);

  const piped = await runCli(["-c", "cat"], { bin: "sh", stdin: "hello" });
  assert.equal(piped.stdout, "hello");

  const env = await runCli(["-c", 'printf %s "$HAUL_X"'], { bin: "sh", env: { HAUL_X: "y" } });
  assert.equal(env.stdout, "y");

  // The grandchild `sleep` is killed too (process group), so this ends in well under 30 s.
  const t0 = Date.now();
  const slow = await runCli(["-c", "sleep 30; echo never"], { bin: "sh", timeoutMs: 200 });
  assert.equal(slow.timedOut, true);
  assert.equal(slow.signal, "SIGKILL");
  assert.ok(Date.now() - t0 < 5000);

  const child = spawnCli(["-c", "echo started; exec sleep 30"], { bin: "sh" });
  while (!child.output().stdout.includes("started")) await new Promise((r) => setTimeout(r, 10));
  child.kill("SIGKILL");
  const killed = await child.result;
  assert.equal(killed.code, 137);
});

Deno.test("readTree() maps small files to bytes and large ones to size and hash", async () => {
  const dir = await tmpDir("haul-tree");
  try {
    await fsp.mkdir(path.join(dir, "a/b"), { recursive: true });
    await fsp.writeFile(path.join(dir, "a/b/small"), "hi");
    const big = await writeDeterministicFile(path.join(dir, "big"), 2 * MiB, 9);
    const tree = await readTree(dir);
    assert.deepEqual([...tree.keys()], ["a/b/small", "big"]);
    assert.deepEqual(tree.get("a/b/small"), new TextEncoder().encode("hi"));
    assert.deepEqual(tree.get("big"), { size: big.size, sha256: big.digest.slice(7) });
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
