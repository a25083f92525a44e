/**
 * End-to-end: list, rm, prune, verify, login, logout and completion through the CLI, against
 * Debian's docker-registry on loopback (tests/harness.ts).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import { Buffer } from "node:buffer";
import {
  type CliResult,
  type Fixture,
  type FixtureBlob,
  makeOllamaModel,
  MEDIA,
  pushFixture,
  REPO_ROOT,
  runCli,
  sha256hex,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { COMMAND_SPECS } from "../../cli/commands.ts";

const PASSWORD = "wonderland";
const PASSWORD_B64 = Buffer.from(`alice:${PASSWORD}`).toString("base64");

function compose(config: FixtureBlob, layers: FixtureBlob[]): Fixture {
  const desc = (b: FixtureBlob) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
  const manifest = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA.dockerManifest,
    config: desc(config),
    layers: layers.map(desc),
  }));
  return {
    manifest,
    manifestDigest: `sha256:${sha256hex(manifest)}`,
    mediaType: MEDIA.dockerManifest,
    blobs: [config, ...layers],
  };
}

const exists = (p: string) => fsp.stat(p).then(() => true, () => false);
const blobPath = (models: string, digest: string) =>
  path.join(models, "blobs", digest.replace(":", "-"));

function ok(r: CliResult, what: string): void {
  assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stderr}\n${r.stdout}`);
}

/** Fails when any output of the CLI carries the password or its Basic encoding. */
function assertNoSecret(r: CliResult): void {
  for (const s of [PASSWORD, PASSWORD_B64]) {
    assert.ok(!r.stdout.includes(s), `secret in stdout: ${r.stdout}`);
    assert.ok(!r.stderr.includes(s), `secret in stderr: ${r.stderr}`);
  }
}

Deno.test("haul list, rm, prune and verify on a store pulled from a registry", async () => {
  const a = makeOllamaModel({ layerSizes: [40_000, 3_000], seed: 21 });
  const b = makeOllamaModel({ layerSizes: [2_500_000], seed: 22 });
  const shared = a.blobs[1];
  const onlyA = a.blobs[2];
  const onlyB = b.blobs[1];
  const alpha = compose(a.blobs[0], [shared, onlyA]);
  const beta = compose(b.blobs[0], [shared, onlyB]);
  const reg = await startRegistry();
  const models = await tmpDir("haul-models");
  const haul = (...args: string[]) => runCli([...args, "--models", models]);
  try {
    await pushFixture(reg, "library/alpha", "latest", alpha);
    await pushFixture(reg, "team/sub/beta", "v1", beta);
    const alphaRef = `${reg.host}/library/alpha:latest`;
    const betaRef = `${reg.host}/team/sub/beta:v1`;
    ok(await haul("pull", "--insecure", "--quiet", alphaRef, betaRef), "pull");

    // list: text like `ollama list`, JSON with exact numbers.
    const list = await haul("list");
    ok(list, "list");
    const lines = list.stdout.trim().split("\n");
    assert.match(lines[0], /^NAME\s+ID\s+SIZE\s+MODIFIED$/);
    const rows = lines.slice(1).map((l) => l.split(/\s{3,}/));
    const row = (name: string) => rows.find((r) => r[0] === name);
    const alphaRow = row(alphaRef);
    assert.ok(alphaRow, list.stdout);
    assert.equal(alphaRow[1], alpha.manifestDigest.slice(7, 19));
    assert.equal(alphaRow[2], "43 KB");
    assert.match(alphaRow[3], /^(Less than a second|\d+ seconds) ago$/);
    assert.equal(row(betaRef)?.[2], "2.5 MB");

    const json = await haul("list", "--json");
    ok(json, "list --json");
    const listed = JSON.parse(json.stdout) as {
      name: string;
      digest: string;
      size: number;
      modified: string;
    }[];
    const sizeOf = (fx: Fixture) => fx.blobs.reduce((n, x) => n + x.size, 0);
    assert.deepEqual(
      listed.map((m) => [m.name, m.digest, m.size]).sort(),
      [[alphaRef, alpha.manifestDigest, sizeOf(alpha)], [
        betaRef,
        beta.manifestDigest,
        sizeOf(beta),
      ]]
        .sort(),
    );
    const underBun = await runCli(["list", "--json", "--models", models], { runtime: "bun" });
    ok(underBun, "list --json under bun");
    assert.deepEqual(JSON.parse(underBun.stdout), listed);
    for (const m of listed) {
      assert.equal(new Date(m.modified).toISOString(), m.modified);
      assert.ok(Date.now() - Date.parse(m.modified) < 120_000);
    }

    // rm: a missing REF removes nothing (exit 6); then alpha goes, the shared blob stays.
    const missing = await haul("rm", alphaRef, `${reg.host}/library/nope:1`);
    assert.equal(missing.code, 6, missing.stderr);
    assert.match(missing.stderr, /nope:1.*is not in/);
    const rm = await haul("rm", alphaRef);
    ok(rm, "rm");
    assert.match(rm.stdout, new RegExp(`deleted '${alphaRef}'`));
    assert.match(rm.stdout, /removed 2 unused blobs/);
    assert.equal(await exists(blobPath(models, shared.digest)), true, "shared blob stays");
    assert.equal(await exists(blobPath(models, onlyA.digest)), false);
    assert.equal(await exists(blobPath(models, alpha.blobs[0].digest)), false);
    assert.equal(await exists(path.join(models, "manifests", reg.host, "library")), false);
    const after = JSON.parse((await haul("list", "--json")).stdout) as { name: string }[];
    assert.deepEqual(after.map((m) => m.name), [betaRef]);

    // prune: an old orphan and a stale partial go; a fresh partial (a running pull) stays.
    const old = new Date(Date.now() - 3600_000);
    const orphan = blobPath(models, `sha256:${"a".repeat(64)}`);
    const stale = blobPath(models, `sha256:${"b".repeat(64)}`) + "-partial";
    const fresh = blobPath(models, `sha256:${"c".repeat(64)}`) + "-partial";
    await fsp.writeFile(orphan, "orphan!");
    await fsp.writeFile(stale, "12345");
    await fsp.writeFile(stale + ".json", "{}");
    for (const f of [orphan, stale, stale + ".json"]) await fsp.utimes(f, old, old);
    await fsp.writeFile(fresh, "xyz");

    const dry = await haul("prune", "--dry-run");
    ok(dry, "prune --dry-run");
    assert.match(dry.stdout, /would remove partial download/);
    assert.match(dry.stderr, /kept \d+ files?/);
    for (const f of [orphan, stale, fresh]) assert.equal(await exists(f), true, "dry run");
    // While the fresh partial says a pull is running, the orphan stays.
    assert.ok(!dry.stdout.includes(orphan), dry.stdout);

    await fsp.rm(fresh);
    const dry2 = JSON.parse((await haul("prune", "--dry-run", "--json")).stdout);
    assert.equal(dry2.dryRun, true);
    assert.deepEqual(
      dry2.removed.map((f: { path: string }) => f.path).sort(),
      [orphan, stale, stale + ".json"].sort(),
    );
    assert.equal(dry2.bytesFreed, 7 + 5 + 2);
    const real = await haul("prune");
    ok(real, "prune");
    assert.match(real.stdout, /removed unused blob sha256:a{64}/);
    assert.match(real.stdout, /freed 14 B \(3 files\)/);
    for (const f of [orphan, stale, stale + ".json"]) assert.equal(await exists(f), false);
    assert.equal(await exists(blobPath(models, shared.digest)), true);
    assert.equal(await exists(blobPath(models, onlyB.digest)), true);

    // verify: all good, then a corrupt blob (same size) → exit 5 naming digest and path.
    const good = await haul("verify");
    ok(good, "verify");
    assert.match(good.stdout, /^ok: 1 model, 3 blobs/m);
    const bytes = new Uint8Array(await fsp.readFile(blobPath(models, onlyB.digest)));
    bytes[1234] ^= 0x55;
    await fsp.writeFile(blobPath(models, onlyB.digest), bytes);
    const bad = await haul("verify", betaRef);
    assert.equal(bad.code, 5, bad.stderr);
    assert.ok(bad.stdout.includes(`${onlyB.digest} ${blobPath(models, onlyB.digest)}`), bad.stdout);
    assert.match(bad.stdout, /content hash differs/);
    assert.match(bad.stderr, /1 damaged blob; run "haul verify --fix" then "haul pull/);
    const badJson = JSON.parse((await haul("verify", "--json")).stdout);
    assert.equal(badJson.ok, false);
    assert.equal(badJson.problems[0].problem, "digest");
    assert.equal(badJson.problems[0].digest, onlyB.digest);

    const fix = await haul("verify", "--fix");
    assert.equal(fix.code, 5);
    assert.match(fix.stdout, /\(removed\)/);
    assert.match(fix.stderr, new RegExp(`run "haul pull ${betaRef.replace(/\./g, "\\.")}"`));
    assert.equal(await exists(blobPath(models, onlyB.digest)), false);
    const gone = await haul("verify");
    assert.equal(gone.code, 6, "only missing blobs: not found");
    assert.match(gone.stdout, /: missing/);

    ok(await haul("pull", "--insecure", "--quiet", betaRef), "pull repairs");
    ok(await haul("verify"), "verify after repair");
    ok(await runCli(["verify", "--models", models], { runtime: "bun" }), "verify under bun");
    assert.equal(
      `sha256:${sha256hex(new Uint8Array(await fsp.readFile(blobPath(models, onlyB.digest))))}`,
      onlyB.digest,
    );
  } finally {
    await reg.stop();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul login --password-stdin saves Docker credentials; pull uses them; logout removes them", async () => {
  const fx = makeOllamaModel({ layerSizes: [1000], seed: 31 });
  const reg = await startRegistry({ auth: "basic" });
  const root = await tmpDir("haul-login");
  const dockerConfig = path.join(root, "docker");
  const models = path.join(root, "models");
  const env = { DOCKER_CONFIG: dockerConfig };
  const ref = `${reg.host}/private/model:latest`;
  const results: CliResult[] = [];
  const haul = async (args: string[], stdin?: string) => {
    const r = await runCli(args, { env, stdin });
    results.push(r);
    return r;
  };
  try {
    await pushFixture(reg, "private/model", "latest", fx, { user: "alice", pass: PASSWORD });
    await fsp.mkdir(dockerConfig, { recursive: true });
    const other = { auths: { "other.io": { auth: "Ym9iOnB3" } }, detachKeys: "ctrl-e,e" };
    await fsp.writeFile(path.join(dockerConfig, "config.json"), JSON.stringify(other));

    const anonymous = await haul(["pull", "--insecure", "--quiet", "--models", models, ref]);
    assert.equal(anonymous.code, 4, anonymous.stderr);
    assert.match(anonymous.stderr, /haul login/);

    const wrong = await haul(
      ["login", "--insecure", "-u", "alice", "--password-stdin", reg.host],
      "not-the-password\n",
    );
    assert.equal(wrong.code, 4, wrong.stderr);
    assert.match(wrong.stderr, /login.*failed/i);
    assert.ok(!wrong.stderr.includes("not-the-password"));
    assert.deepEqual(
      JSON.parse(await fsp.readFile(path.join(dockerConfig, "config.json"), "utf8")),
      other,
    );

    const noTty = await haul(["login", "--insecure", "-u", "alice", reg.host], "");
    assert.equal(noTty.code, 2);
    assert.match(noTty.stderr, /--password-stdin/);

    const login = await haul(
      ["login", "--insecure", "-u", "alice", "--password-stdin", "--json", reg.host],
      `${PASSWORD}\n`,
    );
    ok(login, "login");
    assert.deepEqual(JSON.parse(login.stdout), {
      registry: reg.host,
      serverAddress: reg.host,
      username: "alice",
      storedIn: { kind: "config", path: path.join(dockerConfig, "config.json") },
    });
    const config = JSON.parse(await fsp.readFile(path.join(dockerConfig, "config.json"), "utf8"));
    assert.deepEqual(config, {
      ...other,
      auths: { ...other.auths, [reg.host]: { auth: PASSWORD_B64 } },
    });
    const mode = (await fsp.stat(path.join(dockerConfig, "config.json"))).mode & 0o777;
    assert.equal(mode, 0o600);

    ok(await haul(["pull", "--insecure", "--quiet", "--models", models, ref]), "private pull");
    ok(await haul(["verify", "--models", models]), "verify private model");

    const logout = await haul(["logout", reg.host]);
    ok(logout, "logout");
    assert.match(logout.stdout, /Removing login credentials/);
    assert.deepEqual(
      JSON.parse(await fsp.readFile(path.join(dockerConfig, "config.json"), "utf8")),
      { ...other, auths: other.auths },
    );
    const again = await haul(["logout", reg.host]);
    assert.match(again.stdout, /Not logged in/);
    const denied = await haul(["pull", "--insecure", "--quiet", "--models", models, ref]);
    assert.equal(denied.code, 4, denied.stderr);
  } finally {
    for (const r of results) assertNoSecret(r);
    await reg.stop();
    await fsp.rm(root, { recursive: true, force: true });
  }
});

Deno.test("haul login --ca-file checks an https registry signed by a private CA", async () => {
  const reg = await startRegistry({ auth: "basic", tls: true });
  const root = await tmpDir("haul-login-tls");
  try {
    const args = ["login", "-u", "alice", "--password-stdin", reg.host];
    const env = { DOCKER_CONFIG: root, SSL_CERT_FILE: "", NODE_EXTRA_CA_CERTS: "" };
    const untrusted = await runCli(args, { env, stdin: PASSWORD });
    assert.notEqual(untrusted.code, 0, "unknown CA refused");
    assertNoSecret(untrusted);
    const trusted = await runCli(["login", "--ca-file", reg.caFile!, ...args.slice(1)], {
      env,
      stdin: PASSWORD,
    });
    ok(trusted, "login --ca-file");
    assertNoSecret(trusted);
    const config = JSON.parse(await fsp.readFile(path.join(root, "config.json"), "utf8"));
    assert.equal(config.auths[reg.host].auth, PASSWORD_B64);
  } finally {
    await reg.stop();
    await fsp.rm(root, { recursive: true, force: true });
  }
});

/** A credential helper speaking the docker-credential-helpers protocol, storing files. */
const HELPER = `#!/bin/sh
dir="$HAUL_TEST_HELPER_DIR"
in=$(cat)
case "$1" in
  store)
    url=$(printf '%s' "$in" | sed -n 's/.*"ServerURL":"\\([^"]*\\)".*/\\1/p')
    printf '%s' "$in" > "$dir/$(printf '%s' "$url" | tr ':/' '__').json" ;;
  get)
    f="$dir/$(printf '%s' "$in" | tr ':/' '__').json"
    if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  erase)
    f="$dir/$(printf '%s' "$in" | tr ':/' '__').json"
    if [ -f "$f" ]; then rm "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
`;

Deno.test("haul login and logout through a credsStore helper; pull gets the secret from it", async () => {
  const fx = makeOllamaModel({ layerSizes: [800], seed: 32 });
  const reg = await startRegistry({ auth: "basic" });
  const root = await tmpDir("haul-helper");
  const bin = path.join(root, "bin");
  const store = path.join(root, "helper-store");
  const dockerConfig = path.join(root, "docker");
  const models = path.join(root, "models");
  await fsp.mkdir(bin);
  await fsp.mkdir(store);
  await fsp.mkdir(dockerConfig);
  await fsp.writeFile(path.join(bin, "docker-credential-haultest"), HELPER, { mode: 0o755 });
  await fsp.writeFile(
    path.join(dockerConfig, "config.json"),
    JSON.stringify({ credsStore: "haultest" }),
  );
  const env = {
    DOCKER_CONFIG: dockerConfig,
    HAUL_TEST_HELPER_DIR: store,
    PATH: `${bin}:${process.env.PATH}`,
  };
  const ref = `${reg.host}/private/helped:latest`;
  const results: CliResult[] = [];
  const haul = async (args: string[], stdin?: string) => {
    const r = await runCli(args, { env, stdin });
    results.push(r);
    return r;
  };
  try {
    await pushFixture(reg, "private/helped", "latest", fx, { user: "alice", pass: PASSWORD });
    const login = await haul(
      ["login", "--insecure", "-u", "alice", "--password-stdin", reg.host],
      PASSWORD,
    );
    ok(login, "login");
    assert.match(login.stdout, /docker-credential-haultest/);
    const saved = path.join(store, `${reg.host.replace(/:/g, "_")}.json`);
    assert.deepEqual(JSON.parse(await fsp.readFile(saved, "utf8")), {
      ServerURL: reg.host,
      Username: "alice",
      Secret: PASSWORD,
    });
    const configText = await fsp.readFile(path.join(dockerConfig, "config.json"), "utf8");
    assert.deepEqual(JSON.parse(configText), { credsStore: "haultest", auths: { [reg.host]: {} } });
    assert.ok(!configText.includes(PASSWORD_B64));

    ok(await haul(["pull", "--insecure", "--quiet", "--models", models, ref]), "pull via helper");

    ok(await haul(["logout", reg.host]), "logout");
    assert.equal(await exists(saved), false, "helper erased the secret");
    const denied = await haul(["pull", "--insecure", "--quiet", "--models", models, ref]);
    assert.equal(denied.code, 4, denied.stderr);
  } finally {
    for (const r of results) assertNoSecret(r);
    await reg.stop();
    await fsp.rm(root, { recursive: true, force: true });
  }
});

/** Runs `script` so that the CLI gets a terminal; types `input` once `waitFor` appears. */
function runInPty(
  argv: string[],
  env: Record<string, string>,
  waitFor: RegExp,
  input: string,
): Promise<{ code: number | null; output: string }> {
  const cmd = [process.execPath, "run", "-A", path.join(REPO_ROOT, "main.ts"), ...argv]
    .map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(" ");
  const child = spawn("script", ["-qfec", cmd, "/dev/null"], {
    env: { ...process.env, NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let output = "";
  let typed = false;
  const onData = (b: Buffer) => {
    output += b.toString("utf8");
    if (!typed && waitFor.test(output)) {
      typed = true;
      // Give readline a moment to switch the terminal to raw mode after the prompt.
      setTimeout(() => child.stdin.write(input), 300);
    }
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  return new Promise((resolve) => {
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

Deno.test({
  name: "haul login prompts for the password on a terminal without echoing it",
  ignore: await fsp.access("/usr/bin/script").then(() => false, () => true),
  fn: async () => {
    const reg = await startRegistry({ auth: "basic" });
    const root = await tmpDir("haul-pty");
    try {
      const r = await runInPty(
        ["login", "--insecure", "-u", "alice", reg.host],
        { DOCKER_CONFIG: root },
        /Password: /,
        `${PASSWORD}\r`,
      );
      assert.equal(r.code, 0, r.output);
      assert.match(r.output, /Login Succeeded/);
      assert.ok(!r.output.includes(PASSWORD), `password echoed: ${JSON.stringify(r.output)}`);
      const config = JSON.parse(await fsp.readFile(path.join(root, "config.json"), "utf8"));
      assert.equal(config.auths[reg.host].auth, PASSWORD_B64);
    } finally {
      await reg.stop();
      await fsp.rm(root, { recursive: true, force: true });
    }
  },
});

// ------------------------------------------------------------------------------------ help

/** The long flags a `--help` text lists in its Options section. */
function helpFlags(help: string): string[] {
  const section = help.split(/\nOptions:\n/)[1]?.split(/\n\n/)[0] ?? "";
  return [...section.matchAll(/^ {2}(?:-\w, )?--([\w-]+)/gm)].map((m) => m[1]).sort();
}

Deno.test("every command's --help lists exactly the flags of cli/commands.ts, with examples", async () => {
  const top = await runCli(["--help"]);
  ok(top, "--help");
  const listed = [...top.stdout.matchAll(/^ {2}haul ([a-z]+) /gm)].map((m) => m[1]);
  assert.deepEqual(
    listed.filter((c) => !COMMAND_SPECS.some((s) => s.name === c)),
    [],
    "commands in haul --help missing from cli/commands.ts",
  );
  await Promise.all(COMMAND_SPECS.map(async (spec) => {
    const r = await runCli([spec.name, "--help"]);
    ok(r, `${spec.name} --help`);
    assert.match(r.stdout, /Examples:\n {2}/, `${spec.name} --help has examples`);
    assert.deepEqual(
      helpFlags(r.stdout),
      spec.flags.map((f) => f.name).sort(),
      `${spec.name}: flags in --help vs cli/commands.ts`,
    );
  }));
});

Deno.test("haul completion prints bash, zsh and fish scripts that parse", async () => {
  const which = (name: string) =>
    Promise.any(
      (process.env.PATH ?? "").split(":").map((d) =>
        fsp.access(path.join(d, name)).then(() => true)
      ),
    ).catch(() => false);
  for (const shell of ["bash", "zsh", "fish"]) {
    const r = await runCli(["completion", shell]);
    ok(r, `completion ${shell}`);
    for (const spec of COMMAND_SPECS) {
      assert.ok(r.stdout.includes(spec.name), `${shell} script names ${spec.name}`);
      for (const f of spec.flags) assert.ok(r.stdout.includes(`--${f.name}`) || shell === "fish");
    }
    if (!(await which(shell))) continue; // no checker installed: content checks only
    const dir = await tmpDir("haul-completion");
    try {
      const file = path.join(dir, `haul.${shell}`);
      await fsp.writeFile(file, r.stdout);
      const check = await new Promise<{ code: number | null; err: string }>((resolve) => {
        const c = spawn(shell, ["-n", file], { stdio: ["ignore", "ignore", "pipe"] });
        let err = "";
        c.stderr.on("data", (b: Buffer) => err += b.toString());
        c.on("close", (code) => resolve({ code, err }));
      });
      assert.equal(check.code, 0, `${shell} -n: ${check.err}`);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }
  const bad = await runCli(["completion", "tcsh"]);
  assert.equal(bad.code, 2);
});

Deno.test("bash completion completes commands, flags and local model names", async () => {
  const models = await tmpDir("haul-complete");
  try {
    const fx = makeOllamaModel({ layerSizes: [10], seed: 41 });
    const dir = path.join(models, "manifests", "registry.ollama.ai", "library", "tiny");
    await fsp.mkdir(dir, { recursive: true });
    await fsp.writeFile(path.join(dir, "latest"), fx.manifest);
    const script = (await runCli(["completion", "bash"])).stdout;
    // `haul` inside the script must run this checkout.
    const shim = path.join(models, "haul");
    await fsp.writeFile(
      shim,
      `#!/bin/sh\nexec '${process.execPath}' run -A '${path.join(REPO_ROOT, "main.ts")}' "$@"\n`,
      { mode: 0o755 },
    );
    const complete = (words: string[]) =>
      new Promise<string>((resolve) => {
        const line = `${script}
COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}
_haul; printf '%s\\n' "\${COMPREPLY[@]}"`;
        const c = spawn("bash", ["-c", line], {
          env: { ...process.env, PATH: `${models}:${process.env.PATH}`, OLLAMA_MODELS: models },
          stdio: ["ignore", "pipe", "pipe"],
        });
        let out = "";
        c.stdout.on("data", (b: Buffer) => out += b.toString());
        c.on("close", () => resolve(out.trim()));
      });
    assert.deepEqual((await complete(["haul", "pr"])).split("\n"), ["prune"]);
    assert.deepEqual((await complete(["haul", "prune", "--dr"])).split("\n"), ["--dry-run"]);
    assert.deepEqual((await complete(["haul", "completion", "z"])).split("\n"), ["zsh"]);
    assert.deepEqual((await complete(["haul", "rm", "ti"])).split("\n"), ["tiny:latest"]);
  } finally {
    await fsp.rm(models, { recursive: true, force: true });
  }
});
