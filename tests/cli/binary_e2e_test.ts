/**
 * End-to-end: the compiled binary (`bun build --compile`, scripts/compile.sh) pulls from
 * Debian's docker-registry like `deno run main.ts` does, hashing in its embedded Worker.
 * dist/haul is built first when missing or older than the sources (compile.sh --if-stale).
 * The `deno compile` build (scripts/compile_deno.sh) is tried when denort is available.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
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
import { startFaultProxy } from "../support/fault_proxy.ts";

const MiB = 1024 * 1024;
const BIN = path.join(REPO_ROOT, "dist", "haul");

function sh(cmd: string, args: string[], timeoutMs = 300_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: REPO_ROOT, timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(" ")}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

let built: Promise<string> | undefined;
/** dist/haul, built once per run when stale (compile.sh serialises concurrent builds). */
function binary(): Promise<string> {
  built ??= sh("bash", ["scripts/compile.sh", "--if-stale"]).then(() => BIN);
  return built;
}

/** Asserts the store holds exactly the fixture: blobs byte for byte, manifest bytes as served. */
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
  const leftovers = (await fsp.readdir(path.join(models, "blobs"))).filter((n) =>
    !/^sha256-[0-9a-f]{64}$/.test(n)
  );
  assert.deepEqual(leftovers, [], "no partial or temp files left");
}

/**
 * Samples the threads of `pid` until stopped and returns how many bytes the threads Bun
 * names "Worker" read (rchar in /proc/PID/task/TID/io, per thread). The hash worker reads
 * each large blob back from the page cache, so this is the proof it did the hashing.
 */
function watchWorkerReads(pid: number): { stop(): number } {
  const rchar = new Map<string, number>();
  const sample = () => {
    try {
      for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
        const dir = `/proc/${pid}/task/${tid}`;
        if (fs.readFileSync(`${dir}/comm`, "utf8").trim() !== "Worker") continue;
        const m = /^rchar: (\d+)$/m.exec(fs.readFileSync(`${dir}/io`, "utf8"));
        if (m) rchar.set(tid, Math.max(rchar.get(tid) ?? 0, Number(m[1])));
      }
    } catch { /* the thread or the process ended between two reads */ }
  };
  const timer = setInterval(sample, 5);
  return {
    stop() {
      clearInterval(timer);
      return [...rchar.values()].reduce((a, b) => a + b, 0);
    },
  };
}

const version = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, "deno.json"), "utf8")).version;

Deno.test("haul binary --version prints the version and the commit it was built from", async () => {
  const bin = await binary();
  const r = await runCli(["--version"], { bin, timeoutMs: 30_000 });
  assert.equal(r.code, 0, r.stderr);
  const m = /^haul (\S+) \((\S+)\)\n$/.exec(r.stdout);
  assert.ok(m, r.stdout);
  assert.equal(m[1], version);
  const head = (await sh("git", ["rev-parse", "--short=12", "HEAD"]).catch(() => "unknown"))
    .trim();
  assert.match(m[2], new RegExp(`^${head}(-dirty)?$`), "the commit stamped at build time");
  const help = await runCli(["--help"], { bin, timeoutMs: 30_000 });
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /haul pull/);
});

Deno.test("haul binary pulls a 70 MB+ layer byte for byte, hashing in its Worker; a second pull moves no blob bytes", async () => {
  const bin = await binary();
  const model = makeOllamaModel({ layerSizes: [1024, 3 * MiB + 17, 72 * MiB + 5], seed: 61 });
  const big = model.blobs.reduce((a, b) => (b.size > a.size ? b : a));
  const models = await tmpDir("haul-models");
  const reg = await startRegistry();
  const proxy = await startFaultProxy(reg.url).catch(async (e) => {
    await reg.stop();
    throw e;
  });
  try {
    await pushFixture(reg, "library/tiny", "latest", model);
    const ref = `${proxy.host}/library/tiny`;
    const child = spawnCli(["pull", "--insecure", "--models", models, ref], { bin });
    const reads = watchWorkerReads(child.pid!);
    const r = await child.result;
    const workerRead = reads.stop();
    assert.equal(r.code, 0, r.stderr);
    await assertStored(models, proxy.host, "library/tiny", "latest", model);
    const total = model.blobs.reduce((a, b) => a + b.size, 0);
    assert.equal(proxy.bytesOut(/\/blobs\//), total, "every blob byte fetched exactly once");
    assert.ok(
      workerRead >= big.size / 2,
      `the Worker thread read ${workerRead} bytes of a ${big.size}-byte blob`,
    );

    const before = proxy.bytesOut(/\/blobs\//);
    const again = await runCli(["pull", "--insecure", "--json", "--models", models, ref], { bin });
    assert.equal(again.code, 0, again.stderr);
    assert.equal(proxy.bytesOut(/\/blobs\//), before, "second pull transfers no blob bytes");
    const lines = again.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines[0], { status: "pulling manifest" });
    assert.deepEqual(lines.at(-1), { status: "success" });
  } finally {
    await proxy.stop();
    await reg.stop();
    await model.cleanup?.();
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul binary built without its Worker file falls back to hashing on the main thread", async () => {
  // `new Worker` succeeds and the load fails later, asynchronously: the pull must not hang.
  const dir = await tmpDir("haul-noworker");
  const bin = path.join(dir, "haul");
  const model = makeOllamaModel({ layerSizes: [300, 72 * MiB + 3], seed: 62 });
  const models = path.join(dir, "models");
  const reg = await startRegistry();
  try {
    await sh("bash", ["scripts/compile.sh", "--no-worker", "--outfile", bin]);
    await pushFixture(reg, "library/inline", "latest", model);
    const child = spawnCli(
      ["pull", "--insecure", "--models", models, `${reg.host}/library/inline`],
      { bin, timeoutMs: 60_000 },
    );
    const reads = watchWorkerReads(child.pid!);
    const r = await child.result;
    const workerRead = reads.stop();
    assert.equal(r.timedOut, false, "the pull hung");
    assert.equal(r.code, 0, r.stderr);
    await assertStored(models, reg.host, "library/inline", "latest", model);
    assert.ok(workerRead < model.blobs[2].size / 4, `no Worker hashed (${workerRead} bytes)`);
  } finally {
    await reg.stop();
    await model.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("haul binary push → pull round trip between two registries, byte for byte", async () => {
  const bin = await binary();
  const model = makeOllamaModel({ layerSizes: [800, 72 * MiB + 11], seed: 64 });
  const dir = await tmpDir("haul-roundtrip");
  const first = path.join(dir, "first");
  const second = path.join(dir, "second");
  const a = await startRegistry();
  const b = await startRegistry().catch(async (e) => {
    await a.stop();
    throw e;
  });
  try {
    await pushFixture(a, "library/trip", "v1", model);
    const from = `${a.host}/library/trip:v1`;
    const to = `${b.host}/team/trip:v1`;
    const pulled = await runCli(["pull", "--insecure", "--models", first, from], { bin });
    assert.equal(pulled.code, 0, pulled.stderr);
    const pushed = await runCli(
      ["push", "--insecure", "--chunk-size", "8M", "--models", first, from, to],
      { bin },
    );
    assert.equal(pushed.code, 0, pushed.stderr);
    const back = await runCli(["pull", "--insecure", "--models", second, to], { bin });
    assert.equal(back.code, 0, back.stderr);
    // The manifest bytes survive the trip, so its digest is the same on both registries.
    await assertStored(second, b.host, "team/trip", "v1", model);
  } finally {
    await b.stop();
    await a.stop();
    await model.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("haul binary usage errors: one line, exit 2", async () => {
  const bin = await binary();
  const models = await tmpDir("haul-models");
  try {
    const cases: [string[], RegExp][] = [
      [["pull", "--models", models, "Bad//Ref"], /Invalid reference/],
      [["pull", "--models", models, "x@sha256:1234"], /digest/i],
      [["pull", "--models", models], /missing REF/],
      [["pull", "--bogus-flag", "x"], /bogus/],
      [["frobnicate"], /Unknown command/],
    ];
    for (const [args, re] of cases) {
      const r = await runCli(args, { bin, timeoutMs: 30_000 });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.equal(r.stderr.trim().split("\n").length, 1, `one line: ${r.stderr}`);
    }
  } finally {
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul binary serve --htpasswd: the embedded bcryptjs checks htpasswd -B users", async () => {
  const bin = await binary();
  const dir = await tmpDir("haul-bin-auth");
  const file = path.join(dir, "htpasswd");
  await sh("htpasswd", ["-B", "-b", "-c", file, "alice", "s3cret"]);
  await fsp.mkdir(path.join(dir, "models"));
  const child = spawnCli(
    ["serve", "--addr", "127.0.0.1:0", "--models", path.join(dir, "models"), "--htpasswd", file],
    { bin, timeoutMs: 60_000 },
  );
  try {
    const port = await servePort(child, 20_000);
    assert.ok(port, `serve did not start: ${child.output().stderr}`);
    const status = async (creds?: string) => {
      const res = await fetch(`http://127.0.0.1:${port}/v2/`, {
        headers: creds ? { authorization: `Basic ${btoa(creds)}` } : {},
      });
      await res.body?.cancel();
      return [res.status, res.headers.get("www-authenticate")];
    };
    assert.deepEqual(await status(), [401, 'Basic realm="haul"']);
    assert.deepEqual(await status("alice:wrong"), [401, 'Basic realm="haul"']);
    assert.deepEqual(await status("alice:s3cret"), [200, null]);
  } finally {
    if (child.exitCode === null) process.kill(child.pid!, "SIGTERM");
    await child.result;
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

// deno compile downloads denort from dl.deno.land; with no network it needs a local one.
const denort = process.env.DENORT_BIN;
const denoCompileSkip = denort && fs.existsSync(denort) ? undefined : process.env
    .HAUL_TEST_DENO_COMPILE === "1"
  ? undefined
  : "denort is not available here (set DENORT_BIN to a denort binary of this Deno version, " +
    "or HAUL_TEST_DENO_COMPILE=1 where dl.deno.land is reachable)";
if (denoCompileSkip) console.warn(`binary_e2e_test: deno compile test skipped: ${denoCompileSkip}`);

Deno.test({
  name: denoCompileSkip
    ? `haul built with deno compile pulls (skipped: ${denoCompileSkip})`
    : "haul built with deno compile pulls a 70 MB+ layer byte for byte",
  ignore: denoCompileSkip !== undefined,
  async fn() {
    const dir = await tmpDir("haul-deno-compile");
    const bin = path.join(dir, "haul");
    const model = makeOllamaModel({ layerSizes: [200, 72 * MiB + 9], seed: 63 });
    const models = path.join(dir, "models");
    const reg = await startRegistry();
    try {
      await sh("bash", ["scripts/compile_deno.sh", "--outfile", bin], 600_000);
      const v = await runCli(["--version"], { bin, timeoutMs: 30_000 });
      assert.match(v.stdout, new RegExp(`^haul ${version.replaceAll(".", "\\.")} \\(\\S+\\)\\n$`));
      assert.doesNotMatch(v.stdout, /\(dev\)/);
      await pushFixture(reg, "library/denoc", "latest", model);
      const r = await runCli(
        ["pull", "--insecure", "--models", models, `${reg.host}/library/denoc`],
        { bin },
      );
      assert.equal(r.code, 0, r.stderr);
      await assertStored(models, reg.host, "library/denoc", "latest", model);
    } finally {
      await reg.stop();
      await model.cleanup?.();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  },
});
