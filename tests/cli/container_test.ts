/**
 * The container image without Docker: scripts/rootfs.sh assembles what the Dockerfile's
 * final stage (FROM scratch) copies; this checks the two lists agree, then runs /haul in
 * a chroot of that directory (with /proc, which every container runtime mounts) against
 * an https registry whose CA is trusted only through the image's CA bundle.
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
  sha256File,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";

const MiB = 1024 * 1024;
const CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt";

function sh(cmd: string, args: string[], timeoutMs = 300_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: REPO_ROOT, timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(" ")}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** The final stage of the Dockerfile: its COPY --from=build destinations and its ENV. */
function finalStage(): { copies: string[]; env: Record<string, string>; entrypoint: string[] } {
  const text = fs.readFileSync(path.join(REPO_ROOT, "Dockerfile"), "utf8");
  const stages = text.split(/^FROM /m);
  const last = stages.at(-1)!;
  assert.match(last, /^scratch\n/, "the final stage is FROM scratch");
  const copies: string[] = [];
  const env: Record<string, string> = {};
  let entrypoint: string[] = [];
  for (const line of last.split("\n")) {
    const copy = /^COPY --from=build (\S+) (\S+)$/.exec(line);
    if (copy) {
      // The binary comes from the build; everything else from the same path in the build stage.
      assert.equal(copy[1], copy[2] === "/haul" ? "/src/dist/haul" : copy[2], line);
      copies.push(copy[2]);
    } else if (/^COPY /.test(line)) assert.fail(`unexpected COPY form: ${line}`);
    if (line.startsWith("ENV ")) {
      for (const kv of line.slice(4).trim().split(/\s+/)) {
        const [k, v] = kv.split("=");
        env[k] = v;
      }
    }
    if (line.startsWith("ENTRYPOINT ")) entrypoint = JSON.parse(line.slice(11));
  }
  return { copies: copies.sort(), env, entrypoint };
}

function chrootPath(): string | undefined {
  for (const p of ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"]) {
    if (fs.existsSync(p)) return p;
  }
  return undefined;
}

Deno.test("Dockerfile's final stage copies exactly the files scripts/rootfs.sh assembles", async () => {
  const dir = await tmpDir("haul-rootfs");
  try {
    const listed = (await sh("bash", ["scripts/rootfs.sh", dir])).trim().split("\n").sort();
    const stage = finalStage();
    assert.deepEqual(stage.copies, listed);
    assert.deepEqual(stage.entrypoint, ["/haul"]);
    assert.ok(stage.env.OLLAMA_MODELS && stage.env.HOME, "OLLAMA_MODELS and HOME defaults");
    // Nothing else in the tree: the image is these files.
    const files: string[] = [];
    const walk = async (rel: string) => {
      for (const e of await fsp.readdir(path.join(dir, rel), { withFileTypes: true })) {
        const r = `${rel}/${e.name}`;
        if (e.isDirectory()) await walk(r);
        else files.push(r);
      }
    };
    await walk("");
    assert.deepEqual(files.sort(), listed);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

const isRoot = process.getuid?.() === 0;
const chroot = chrootPath();
const skip = !isRoot
  ? "needs root for chroot and mounting /proc"
  : !chroot
  ? "no chroot command"
  : undefined;
if (skip) console.warn(`container_test: chroot test skipped: ${skip}`);

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

Deno.test({
  name: skip
    ? `container rootfs: chroot /haul pull over TLS (skipped: ${skip})`
    : "container rootfs: chroot /haul pull over TLS, trusting the CA through the image's bundle",
  ignore: skip !== undefined,
  async fn() {
    const dir = await tmpDir("haul-rootfs");
    const model = makeOllamaModel({ layerSizes: [400, 24 * MiB + 1], seed: 81 });
    // https on 127.0.0.1 with a server certificate (SAN IP:127.0.0.1) from a fresh CA.
    const reg = await startRegistry({ tls: true });
    let mounted = false;
    try {
      await sh("bash", ["scripts/rootfs.sh", dir]);
      const { env } = finalStage();
      const caPem = await fsp.readFile(reg.caFile!, "utf8");
      const client = Deno.createHttpClient({ caCerts: [caPem] });
      const tlsFetch = ((input: RequestInfo | URL, init?: RequestInit) =>
        fetch(input, { ...init, client })) as typeof fetch;
      try {
        await pushFixture(reg, "library/boxed", "latest", model, undefined, { fetch: tlsFetch });
      } finally {
        client.close();
      }

      await fsp.mkdir(path.join(dir, "proc"));
      await sh("mount", ["-t", "proc", "proc", path.join(dir, "proc")]);
      mounted = true;
      // The image's environment only (env -i): no SSL_CERT_FILE or NODE_EXTRA_CA_CERTS.
      const inImage = (args: string[]) =>
        runCli([
          "-i",
          ...Object.entries(env).map(([k, v]) =>
            `${k}=${v}`
          ),
          "NO_COLOR=1",
          chroot!,
          dir,
          "/haul",
          ...args,
        ], { bin: "/usr/bin/env", timeoutMs: 90_000 });
      const ref = `${reg.host}/library/boxed`;

      const v = await inImage(["--version"]);
      assert.equal(v.code, 0, v.stderr);
      assert.match(v.stdout, /^haul \S+ \(\S+\)\n$/);

      // The stock bundle does not know the test CA: refused.
      const refused = await inImage(["pull", "--retries", "0", ref]);
      assert.notEqual(refused.code, 0, "pull must fail before the CA is in the bundle");
      assert.match(refused.stderr, /certificate|verify/i);

      // Append the CA to the image's bundle, as a derived image would.
      await fsp.appendFile(path.join(dir, CA_BUNDLE), "\n" + caPem);
      const r = await inImage(["pull", ref]);
      assert.equal(r.code, 0, r.stderr);
      const models = path.join(dir, env.OLLAMA_MODELS);
      await assertStored(models, reg.host, "library/boxed", "latest", model);

      // By name, with the /etc/hosts a container runtime provides: glibc's resolver works
      // from the image's libc alone (no NSS modules or nsswitch.conf in the image).
      await fsp.writeFile(path.join(dir, "etc", "hosts"), "127.0.0.1 localhost\n");
      const byName = await inImage([
        "pull",
        "--models",
        "/by-name",
        `localhost:${reg.port}/library/boxed`,
      ]);
      assert.equal(byName.code, 0, byName.stderr);
      await assertStored(
        path.join(dir, "by-name"),
        `localhost:${reg.port}`,
        "library/boxed",
        "latest",
        model,
      );
    } finally {
      if (mounted) {
        await sh("umount", [path.join(dir, "proc")]).catch(() =>
          sh("umount", ["-l", path.join(dir, "proc")])
        );
      }
      await reg.stop();
      await model.cleanup?.();
      // Never follow a mount: only remove the tree once /proc is unmounted.
      if (!mounted || !(await isMountPoint(path.join(dir, "proc")))) {
        await fsp.rm(dir, { recursive: true, force: true });
      }
    }
  },
});

async function isMountPoint(p: string): Promise<boolean> {
  const mounts = await fsp.readFile("/proc/self/mounts", "utf8");
  return mounts.split("\n").some((l) => l.split(" ")[1] === p);
}
