/**
 * `haul serve --upstream`: the status and headers of a blob still landing reach the client
 * before its first body byte. node:http (under Deno and Bun as under Node) sends a response's
 * head with the first body write; a body waiting for an upstream would hold it back.
 *
 * The range asked for is the blob's last byte, which haul serve holds until the blob is
 * verified and has its final name: a client that has the headers while the blob is not yet in
 * the store got them before its first body byte, whatever the timing.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  makeOllamaModel,
  pushFixture,
  REPO_ROOT,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { always, startFaultProxy } from "../support/fault_proxy.ts";
import { startServe } from "./serve_fixtures.ts";

const MiB = 1 << 20;

let built: Promise<string> | undefined;
/** dist/haul (the Bun binary), built when stale as tests/cli/binary_e2e_test.ts does. */
function binary(): Promise<string> {
  built ??= new Promise((resolve, reject) => {
    execFile("bash", ["scripts/compile.sh", "--if-stale"], {
      cwd: REPO_ROOT,
      timeout: 600_000,
    }, (err, _out, stderr) => {
      if (err) reject(new Error(`compile.sh: ${err.message}\n${stderr}`));
      else resolve(join(REPO_ROOT, "dist", "haul"));
    });
  });
  return built;
}

for (const runtime of ["deno", "bun", "binary"] as const) {
  Deno.test(`upstream headers (${runtime}): a Range of a blob still landing gets its status and headers before its first byte`, async () => {
    const dir = await tmpDir("haul-upstream-headers");
    const reg = await startRegistry();
    // A trickle: the 24 MiB blob's 16 MiB parts take ~8 s to land, past the 5 s header wait.
    const proxy = await startFaultProxy(reg.url, {
      rule: always((r) => r.method === "GET" && r.url.includes("/blobs/"), {
        rateBytesPerSec: 2 * MiB,
      }),
    });
    const store = join(dir, "cache");
    await mkdir(store);
    const server = await startServe(store, {
      extra: ["--upstream", proxy.url],
      ...(runtime === "binary" ? { bin: await binary() } : { runtime }),
    });
    const fx = makeOllamaModel({ layerSizes: [24 * MiB + 11], seed: 215 });
    const big = fx.blobs[1];
    const inStore = () =>
      readdir(join(store, "blobs")).then(
        (n) => n.includes(big.digest.replace(":", "-")),
        () => false,
      );
    try {
      await pushFixture(reg, "library/trickle", "latest", fx);
      const last = big.size - 1;
      const t0 = performance.now();
      const res = await fetch(`${server.url}/v2/library/trickle/blobs/${big.digest}`, {
        headers: { range: `bytes=${last}-${last}` },
      });
      const headersMs = performance.now() - t0;
      const landedAtHeaders = await inStore();
      assert.equal(res.status, 206);
      assert.equal(res.headers.get("content-range"), `bytes ${last}-${last}/${big.size}`);
      assert.equal(res.headers.get("docker-content-digest"), big.digest);
      assert.equal(
        landedAtHeaders,
        false,
        "the headers came while the blob was still landing (before the held last byte)",
      );
      const body = new Uint8Array(await res.arrayBuffer());
      assert.deepEqual(body, big.data!.subarray(last));
      console.log(
        `${runtime}: headers at ${headersMs.toFixed(0)} ms, the byte at ${
          (performance.now() - t0).toFixed(0)
        } ms`,
      );
      assert.equal(await inStore(), true, "the last byte came once the blob was verified");
      const whole = await fetch(`${server.url}/v2/library/trickle/blobs/${big.digest}`);
      const digest = `sha256:${
        createHash("sha256").update(new Uint8Array(await whole.arrayBuffer())).digest("hex")
      }`;
      assert.equal(digest, big.digest);
    } finally {
      await server.stop();
      await proxy.stop();
      await reg.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
}
