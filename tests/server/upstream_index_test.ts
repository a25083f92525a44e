/**
 * `haul serve --upstream` as a registry mirror for a multi-platform image: the index is
 * answered as soon as it is fetched, a platform's manifest when a client asks for it by digest,
 * its blobs as they are asked for, and the platforms no client asked for are never fetched.
 * The upstream is the real registry behind a counting proxy; the clients are fetch(), skopeo
 * (`--override-arch`) and `haul pull --platform`.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { runCli, sha256File, startRegistry, tmpDir } from "../support/harness.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";
import { IMAGE_MEDIA, makeImage, makeIndex, pushIndex } from "../support/oci_fixtures.ts";
import { startServe } from "./serve_fixtures.ts";

const MiB = 1 << 20;

function exec(cmd: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 120_000, maxBuffer: 16 * MiB }, (err, _stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, stderr: String(stderr) });
    });
  });
}

Deno.test("upstream index: the index is answered at once, one platform's manifest and blobs fetched as asked, the others never", async () => {
  const dir = await tmpDir("haul-upstream-index");
  const reg = await startRegistry();
  const proxy = await startFaultProxy(reg.url);
  const store = join(dir, "cache");
  await mkdir(store);
  const server = await startServe(store, { extra: ["--upstream", proxy.url] });
  const platforms = [
    { os: "linux", architecture: "amd64" },
    { os: "linux", architecture: "arm64", variant: "v8" },
    { os: "linux", architecture: "arm", variant: "v7" },
  ];
  const children = platforms.map((platform, i) => ({
    platform,
    fx: makeImage({ layerSizes: [3 * MiB + i, 4000 + i], seed: 300 + i, platform }),
  }));
  const index = makeIndex(children);
  const [amd64, arm64, arm] = children;
  const upstreamGets = (kind: "blobs" | "manifests") =>
    proxy.requests.filter((r) => r.method === "GET" && r.url.includes(`/${kind}/`))
      .map((r) => r.url.split("/").at(-1)!);
  try {
    await pushIndex(reg, "library/multi", "latest", index);
    proxy.requests.length = 0;

    // 1. The index, answered as it came, before any platform's manifest or blob is fetched.
    const accept = [IMAGE_MEDIA.ociIndex, IMAGE_MEDIA.ociManifest].join(", ");
    const res = await fetch(`${server.url}/v2/library/multi/manifests/latest`, {
      headers: { accept },
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), IMAGE_MEDIA.ociIndex);
    assert.equal(res.headers.get("docker-content-digest"), index.digest);
    assert.deepEqual(new Uint8Array(await res.arrayBuffer()), index.bytes);
    assert.deepEqual(upstreamGets("blobs"), [], "no blob fetched for the index");
    assert.deepEqual(upstreamGets("manifests"), ["latest"], "only the index fetched");
    // By digest too (containerd resolves the tag, then fetches the index by digest).
    const byDigest = await fetch(`${server.url}/v2/library/multi/manifests/${index.digest}`, {
      headers: { accept },
    });
    assert.equal(byDigest.status, 200);
    assert.deepEqual(new Uint8Array(await byDigest.arrayBuffer()), index.bytes);

    // 2. skopeo picks linux/arm64 from the index: only that platform's manifest and blobs.
    const out = join(dir, "arm64");
    const s = await exec("skopeo", [
      "copy",
      "--override-os",
      "linux",
      "--override-arch",
      "arm64",
      "--override-variant",
      "v8",
      "--src-tls-verify=false",
      `docker://${server.host}/library/multi:latest`,
      `dir:${out}`,
    ]);
    assert.equal(s.code, 0, s.stderr + server.child.output().stderr);
    assert.deepEqual(
      new Uint8Array(await readFile(join(out, "manifest.json"))),
      arm64.fx.manifest,
      "skopeo got the arm64 manifest",
    );
    for (const b of arm64.fx.blobs) {
      assert.equal(`sha256:${await sha256File(join(out, b.digest.slice(7)))}`, b.digest);
    }
    const wanted = new Set(arm64.fx.blobs.map((b) => b.digest));
    assert.deepEqual(new Set(upstreamGets("blobs")), wanted, "upstream: arm64's blobs only");
    assert.equal(upstreamGets("blobs").length, wanted.size, "each blob fetched once");
    assert.deepEqual(
      new Set(upstreamGets("manifests").filter((m) => m.startsWith("sha256:"))),
      new Set([arm64.fx.manifestDigest]),
      "upstream: arm64's manifest only",
    );

    // 3. haul pull --platform linux/arm/v7 through the same server: arm's blobs, never amd64's.
    const dest = join(dir, "client");
    const r = await runCli([
      "pull",
      "--insecure",
      "--quiet",
      "--platform",
      "linux/arm/v7",
      "--models",
      dest,
      `${server.host}/library/multi:latest`,
    ], { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr + server.child.output().stderr);
    for (const b of arm.fx.blobs) {
      const file = join(dest, "blobs", b.digest.replace(":", "-"));
      assert.equal(`sha256:${await sha256File(file)}`, b.digest);
    }
    const fetched = upstreamGets("blobs");
    for (const b of amd64.fx.blobs) {
      assert.ok(!fetched.includes(b.digest), `amd64's ${b.digest} was never fetched`);
    }
    assert.equal(fetched.length, arm64.fx.blobs.length + arm.fx.blobs.length);
    const cached = await readdir(join(store, "blobs"));
    for (const b of amd64.fx.blobs) assert.ok(!cached.includes(b.digest.replace(":", "-")));
    const sent = proxy.bytesOut(/\/blobs\//);
    const asked = [...arm64.fx.blobs, ...arm.fx.blobs].reduce((a, b) => a + b.size, 0);
    console.log(
      `index of 3 platforms: upstream sent ${sent} blob bytes for the 2 asked for (${asked}); ` +
        `${proxy.requests.length} upstream requests`,
    );
    assert.equal(sent, asked);
  } finally {
    await server.stop();
    await proxy.stop();
    await reg.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

Deno.test("upstream index: a Docker manifest list, asked for as containerd does (HEAD the tag, then by digest, ?ns=)", async () => {
  const dir = await tmpDir("haul-upstream-index");
  const reg = await startRegistry();
  const proxy = await startFaultProxy(reg.url);
  const store = join(dir, "cache");
  await mkdir(store);
  const server = await startServe(store, { extra: ["--upstream", proxy.url] });
  const children = [
    { os: "linux", architecture: "amd64" },
    { os: "linux", architecture: "arm64", variant: "v8" },
  ].map((platform, i) => ({
    platform,
    fx: makeImage({ layerSizes: [MiB + i, 500], seed: 310 + i, platform, docker: true }),
  }));
  const list = makeIndex(children, { docker: true });
  const [amd64, arm64] = children;
  const ns = `?ns=${proxy.host}`;
  const base = `${server.url}/v2/library/list/manifests`;
  const accept = [IMAGE_MEDIA.dockerList, IMAGE_MEDIA.dockerManifest].join(", ");
  try {
    await pushIndex(reg, "library/list", "v1", list);
    proxy.requests.length = 0;
    const head = await fetch(`${base}/v1${ns}`, { method: "HEAD", headers: { accept } });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get("content-type"), IMAGE_MEDIA.dockerList);
    assert.equal(head.headers.get("docker-content-digest"), list.digest);
    const got = await fetch(`${base}/${list.digest}${ns}`, { headers: { accept } });
    assert.equal(got.status, 200);
    assert.deepEqual(new Uint8Array(await got.arrayBuffer()), list.bytes);
    const child = await fetch(`${base}/${arm64.fx.manifestDigest}${ns}`, { headers: { accept } });
    assert.equal(child.status, 200);
    assert.equal(child.headers.get("content-type"), IMAGE_MEDIA.dockerManifest);
    assert.deepEqual(new Uint8Array(await child.arrayBuffer()), arm64.fx.manifest);
    for (const b of arm64.fx.blobs) {
      const res = await fetch(`${server.url}/v2/library/list/blobs/${b.digest}${ns}`);
      assert.equal(res.status, 200);
      const bytes = new Uint8Array(await res.arrayBuffer());
      assert.equal(
        `sha256:${createHash("sha256").update(bytes).digest("hex")}`,
        b.digest,
      );
    }
    const gets = proxy.requests.filter((r) => r.method === "GET").map((r) =>
      r.url.split("/").at(-1)!
    );
    for (const b of amd64.fx.blobs) assert.ok(!gets.includes(b.digest), "amd64 never fetched");
    assert.ok(!gets.includes(amd64.fx.manifestDigest));
    assert.equal(gets.filter((g) => g === list.digest).length, 0, "the list fetched by tag only");
    assert.equal(proxy.bytesOut(/\/blobs\//), arm64.fx.blobs.reduce((a, b) => a + b.size, 0));
  } finally {
    await server.stop();
    await proxy.stop();
    await reg.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
