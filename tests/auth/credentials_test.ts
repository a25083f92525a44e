import assert from "node:assert/strict";
import { AuthError } from "../../lib/errors.ts";
import { type Credential, loadCredential } from "../../lib/auth/credentials.ts";

const SECRET = "s3cr3t-Pa55";
const SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin";

function b64(s: string): string {
  return btoa(String.fromCharCode(...new TextEncoder().encode(s)));
}

/** A temp dir with config.json (when given) and an optional bin/ dir for helpers. */
async function setup(config?: unknown | string) {
  const dir = await Deno.makeTempDir({ prefix: "haul-cred-" });
  const bin = `${dir}/bin`;
  await Deno.mkdir(bin);
  if (config !== undefined) {
    await Deno.writeTextFile(
      `${dir}/config.json`,
      typeof config === "string" ? config : JSON.stringify(config),
    );
  }
  const env = { PATH: `${bin}:${SYSTEM_PATH}`, HOME: dir };
  return {
    dir,
    bin,
    env,
    load: (host: string, extra: Partial<Parameters<typeof loadCredential>[1]> = {}) =>
      loadCredential(host, { configDir: dir, env, ...extra }),
    /** Writes docker-credential-<name> as a shell script with the given body. */
    helper: async (name: string, body: string) => {
      const path = `${bin}/docker-credential-${name}`;
      await Deno.writeTextFile(path, `#!/bin/sh\n${body}\n`);
      await Deno.chmod(path, 0o755);
    },
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** A helper that records its argument and stdin, then answers with a credential. */
const RECORDING_HELPER = `
echo "$1" > "$(dirname "$0")/../args"
cat > "$(dirname "$0")/../stdin"
printf '{"ServerURL":"x","Username":"helper-user","Secret":"${SECRET}"}'
`;

async function assertAuthError(p: Promise<unknown>, pattern: RegExp): Promise<AuthError> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof AuthError, `expected AuthError, got ${caught}`);
  assert.match(caught.message, pattern);
  assert.ok(!caught.message.includes(SECRET), `secret leaked: ${caught.message}`);
  assert.ok(!caught.message.includes(b64(`user:${SECRET}`)), `secret leaked: ${caught.message}`);
  return caught;
}

Deno.test("loadCredential() returns undefined without a config file", async () => {
  await using t = await setup();
  assert.equal(await t.load("example.com"), undefined);
  assert.equal(
    await loadCredential("example.com", { configDir: `${t.dir}/nope`, env: t.env }),
    undefined,
  );
});

Deno.test("loadCredential() decodes auth, splitting at the first ':'", async () => {
  await using t = await setup({ auths: { "example.com": { auth: b64(`user:${SECRET}:x`) } } });
  assert.deepEqual(await t.load("example.com"), { username: "user", password: `${SECRET}:x` });
  assert.deepEqual(await t.load("EXAMPLE.com"), { username: "user", password: `${SECRET}:x` });
  assert.equal(await t.load("other.com"), undefined);
});

Deno.test("loadCredential() decodes UTF-8 in auth", async () => {
  await using t = await setup({ auths: { "example.com": { auth: b64("üser:pässword") } } });
  assert.deepEqual(await t.load("example.com"), { username: "üser", password: "pässword" });
});

Deno.test("loadCredential() accepts username and password fields", async () => {
  await using t = await setup({
    auths: { "https://example.com": { username: "u", password: SECRET } },
  });
  assert.deepEqual(await t.load("example.com"), { username: "u", password: SECRET });
});

Deno.test("loadCredential() returns an identity token as Docker does", async () => {
  await using t = await setup({
    auths: { "example.com": { auth: b64("u:"), identitytoken: SECRET } },
  });
  const want: Credential = { username: "<token>", password: SECRET };
  assert.deepEqual(await t.load("example.com"), want);
});

Deno.test("loadCredential() matches Docker's key forms", async () => {
  for (
    const key of [
      "example.com:5000",
      "https://example.com:5000",
      "http://example.com:5000",
      "https://example.com:5000/v1/",
      "https://example.com:5000/v2/",
      "https://example.com:5000/some/path",
    ]
  ) {
    await using t = await setup({ auths: { [key]: { auth: b64(`k:${SECRET}`) } } });
    assert.deepEqual(await t.load("example.com:5000"), { username: "k", password: SECRET }, key);
    assert.equal(await t.load("example.com"), undefined, key);
  }
});

Deno.test("loadCredential() prefers the exact key", async () => {
  await using t = await setup({
    auths: {
      "https://example.com/other": { auth: b64("b:2") },
      "example.com": { auth: b64("a:1") },
    },
  });
  assert.deepEqual(await t.load("example.com"), { username: "a", password: "1" });
});

Deno.test("loadCredential() maps Docker Hub names to index.docker.io/v1/", async () => {
  await using t = await setup({
    auths: { "https://index.docker.io/v1/": { auth: b64(`hub:${SECRET}`) } },
  });
  for (const host of ["docker.io", "registry-1.docker.io", "index.docker.io"]) {
    assert.deepEqual(await t.load(host), { username: "hub", password: SECRET }, host);
  }
});

Deno.test("loadCredential() finds config.json through DOCKER_CONFIG and HOME", async () => {
  await using t = await setup({ auths: { "a.io": { auth: b64("d:1") } } });
  assert.deepEqual(
    await loadCredential("a.io", { env: { DOCKER_CONFIG: t.dir } }),
    { username: "d", password: "1" },
  );
  await Deno.mkdir(`${t.dir}/.docker`);
  await Deno.writeTextFile(
    `${t.dir}/.docker/config.json`,
    JSON.stringify({ auths: { "a.io": { auth: b64("h:2") } } }),
  );
  assert.deepEqual(await loadCredential("a.io", { env: { HOME: t.dir } }), {
    username: "h",
    password: "2",
  });
});

Deno.test("loadCredential() names the file when config.json is not valid JSON", async () => {
  await using t = await setup(`{"auths": {"a.io": {"auth": "${b64(`user:${SECRET}`)}"`);
  const err = await assertAuthError(t.load("a.io"), /not valid JSON/);
  assert.ok(err.message.includes(`${t.dir}/config.json`));
  assert.equal(err.cause, undefined);
  await using u = await setup("[1,2]");
  await assertAuthError(u.load("a.io"), /not a JSON object/);
});

Deno.test("loadCredential() rejects an undecodable auth without showing it", async () => {
  await using t = await setup({ auths: { "a.io": { auth: `!!${SECRET}!!` } } });
  await assertAuthError(t.load("a.io"), /"auth" value for a\.io .*not valid base64/);
  await using u = await setup({ auths: { "a.io": { auth: b64(SECRET) } } });
  await assertAuthError(u.load("a.io"), /not "user:password"/);
});

Deno.test("loadCredential() ignores empty placeholder entries", async () => {
  await using t = await setup({ auths: { "a.io": {} } });
  assert.equal(await t.load("a.io"), undefined);
});

Deno.test("loadCredential() runs credHelpers[host] with the server URL on stdin", async () => {
  await using t = await setup({
    auths: { "a.io": { auth: b64("inline:1") } },
    credHelpers: { "a.io": "fake" },
  });
  await t.helper("fake", RECORDING_HELPER);
  assert.deepEqual(await t.load("a.io"), { username: "helper-user", password: SECRET });
  assert.equal(await Deno.readTextFile(`${t.dir}/args`), "get\n");
  assert.equal(await Deno.readTextFile(`${t.dir}/stdin`), "a.io");
});

Deno.test("loadCredential() runs credsStore, with Docker Hub's server URL", async () => {
  await using t = await setup({ auths: { "https://index.docker.io/v1/": {} }, credsStore: "st" });
  await t.helper("st", RECORDING_HELPER);
  assert.deepEqual(await t.load("docker.io"), { username: "helper-user", password: SECRET });
  assert.equal(await Deno.readTextFile(`${t.dir}/stdin`), "https://index.docker.io/v1/");
});

Deno.test("loadCredential() falls back to auths when the helper is missing", async () => {
  await using t = await setup({
    auths: { "a.io": { auth: b64("inline:1") } },
    credsStore: "absent",
  });
  assert.deepEqual(await t.load("a.io"), { username: "inline", password: "1" });
  assert.equal(await t.load("b.io"), undefined);
});

Deno.test("loadCredential() treats 'credentials not found' as no credential", async () => {
  await using t = await setup({ credHelpers: { "a.io": "nf" } });
  await t.helper("nf", 'cat > /dev/null; echo "credentials not found in native keychain"; exit 1');
  assert.equal(await t.load("a.io"), undefined);
  await t.helper("nf", 'cat > /dev/null; echo "credentials not found" >&2; exit 1');
  assert.equal(await t.load("a.io"), undefined);
});

Deno.test("loadCredential() reports a failing helper without its secrets", async () => {
  await using t = await setup({ credHelpers: { "a.io": "bad" } });
  await t.helper("bad", 'cat > /dev/null; echo "keychain is locked"; exit 3');
  const err = await assertAuthError(t.load("a.io"), /docker-credential-bad failed/);
  assert.match(err.message, /exit code 3/);
  assert.match(err.message, /keychain is locked/);
  await t.helper("bad", `cat > /dev/null; echo "bad secret ${SECRET}"; exit 3`);
  await assertAuthError(t.load("a.io"), /docker-credential-bad failed/);
  await t.helper("bad", `cat > /dev/null; echo '{"Secret":"${SECRET}"'`);
  await assertAuthError(t.load("a.io"), /docker-credential-bad returned invalid JSON/);
  await t.helper("bad", `cat > /dev/null; echo '{"Username":"u"}'`);
  await assertAuthError(t.load("a.io"), /returned no Secret/);
});

Deno.test("loadCredential() ignores a helper's stderr chatter on success", async () => {
  await using t = await setup({ credHelpers: { "a.io": "noisy" } });
  await t.helper(
    "noisy",
    `cat > /dev/null; echo warning >&2; echo '{"Username":"u","Secret":"p"}'`,
  );
  assert.deepEqual(await t.load("a.io"), { username: "u", password: "p" });
});

Deno.test("loadCredential() does not wait for a helper that ignores stdin", async () => {
  await using t = await setup({ credHelpers: { "a.io": "quick" } });
  await t.helper("quick", `echo '{"Username":"u","Secret":"p"}'`);
  assert.deepEqual(await t.load("a.io"), { username: "u", password: "p" });
});

Deno.test("loadCredential() times out a hung helper", async () => {
  await using t = await setup({ credHelpers: { "a.io": "slow" } });
  await t.helper("slow", "exec sleep 30");
  const start = Date.now();
  await assertAuthError(t.load("a.io", { helperTimeout: 200 }), /docker-credential-slow timed out/);
  assert.ok(Date.now() - start < 5000);
});

Deno.test("loadCredential() aborts a running helper", async () => {
  await using t = await setup({ credHelpers: { "a.io": "slow" } });
  await t.helper("slow", "exec sleep 30");
  const controller = new AbortController();
  const p = t.load("a.io", { signal: controller.signal });
  setTimeout(() => controller.abort(new Error("stop")), 100);
  await assert.rejects(p, /stop/);
  await assert.rejects(
    t.load("a.io", { signal: AbortSignal.abort(new Error("early")) }),
    /early/,
  );
});

Deno.test("loadCredential() refuses helper names that are paths", async () => {
  await using t = await setup({ credHelpers: { "a.io": "../../bin/sh" } });
  await assertAuthError(t.load("a.io"), /Invalid credential helper name/);
});

Deno.test("loadCredential() validates its arguments", async () => {
  await assert.rejects(loadCredential(""), RangeError);
  await assert.rejects(loadCredential("a.io/x"), RangeError);
  await assert.rejects(loadCredential("a.io", { helperTimeout: 0 }), RangeError);
});
