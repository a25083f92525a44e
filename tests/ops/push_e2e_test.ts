/**
 * End-to-end: `haul push` and `haul copy` against Debian's real docker-registry
 * on loopback. A small request-side proxy in front of a registry counts the
 * request-body bytes each upload sends, and can throttle them, cut them off, or
 * hold a whole body before forwarding it (as nginx's default request buffering
 * does), for what a registry cannot do on demand.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import * as path from "node:path";
import {
  type Fixture,
  makeOciImage,
  makeOllamaModel,
  pushFixture,
  type Registry,
  runCli,
  sha256hex,
  spawnCli,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";

const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------
// Request-side proxy

interface Upload {
  method: string;
  url: string;
  /** Request body bytes received from the client. */
  bytesIn: number;
  /** The whole body arrived (the client did not die or get cut off mid-body). */
  complete: boolean;
  status?: number;
}

interface UploadFault {
  /** Read the request body at most this fast (bytes per second). */
  rate?: number;
  /** Receive the whole body before forwarding any of it (nginx's proxy_request_buffering). */
  buffer?: boolean;
  /** Cut the client's connection once this many body bytes arrived. */
  resetAfter?: number;
}

interface UploadProxy {
  host: string;
  requests: Upload[];
  /** Body bytes received for requests whose URL matches. */
  bytesIn(match?: RegExp): number;
  stop(): Promise<void>;
}

async function startUploadProxy(
  upstream: string,
  rule?: (req: Upload) => UploadFault | undefined,
): Promise<UploadProxy> {
  const up = new URL(upstream);
  const requests: Upload[] = [];
  const sockets = new Set<Socket>();
  const server = http.createServer(async (req, res) => {
    const rec: Upload = {
      method: req.method ?? "GET",
      url: req.url ?? "/",
      bytesIn: 0,
      complete: false,
    };
    requests.push(rec);
    const fault = rule?.(rec) ?? {};
    // Keep Host: the registry builds Location URLs from it, so clients stay on the proxy.
    const forward = () => {
      const preq = http.request(
        {
          host: up.hostname,
          port: up.port,
          method: req.method,
          path: req.url,
          headers: req.headers,
        },
        (pres) => {
          rec.status = pres.statusCode;
          res.writeHead(pres.statusCode ?? 502, pres.headers);
          pres.pipe(res);
        },
      );
      preq.on("error", () => {
        if (!res.headersSent) res.writeHead(502);
        res.end();
      });
      return preq;
    };
    const direct = fault.buffer ? undefined : forward();
    const held: Buffer[] = [];
    const started = Date.now();
    try {
      for await (const chunk of req) {
        const buf = chunk as Buffer;
        if (fault.resetAfter !== undefined && rec.bytesIn + buf.length > fault.resetAfter) {
          const head = buf.subarray(0, fault.resetAfter - rec.bytesIn);
          rec.bytesIn += head.length;
          if (direct) await new Promise((r) => direct.write(head, r));
          req.socket.destroy();
          // Give the registry the partial body before the connection goes.
          setTimeout(() => direct?.destroy(), 50);
          return;
        }
        rec.bytesIn += buf.length;
        if (direct) {
          if (!direct.write(buf)) await new Promise((r) => direct.once("drain", r));
        } else {
          held.push(buf);
        }
        if (fault.rate) {
          const wait = started + (rec.bytesIn / fault.rate) * 1000 - Date.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        }
      }
    } catch {
      direct?.destroy(); // the client died mid-body
      return;
    }
    if (!req.complete) {
      direct?.destroy();
      return;
    }
    rec.complete = true;
    const out = direct ?? forward();
    for (const b of held) out.write(b);
    out.end();
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    requests,
    bytesIn: (match) =>
      requests.filter((r) => !match || match.test(r.url)).reduce((a, r) => a + r.bytesIn, 0),
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------------------
// Helpers

async function withRegistries(
  opts: Parameters<typeof startRegistry>[0][],
  fn: (...regs: Registry[]) => Promise<void>,
): Promise<void> {
  const regs: Registry[] = [];
  try {
    for (const o of opts) regs.push(await startRegistry(o));
    await fn(...regs);
  } finally {
    for (const r of regs) await r.stop();
  }
}

/** GETs a manifest the way a client would, returning its bytes' digest. */
async function manifestDigest(
  base: string,
  repo: string,
  tag: string,
  auth?: string,
): Promise<string> {
  const res = await fetch(`${base}/v2/${repo}/manifests/${tag}`, {
    headers: {
      accept: "application/vnd.docker.distribution.manifest.v2+json, " +
        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
      ...(auth ? { authorization: auth } : {}),
    },
  });
  assert.equal(res.status, 200, `GET manifest ${repo}:${tag}`);
  return `sha256:${sha256hex(new Uint8Array(await res.arrayBuffer()))}`;
}

async function pullInto(models: string, ref: string, env?: Record<string, string>) {
  const r = await runCli(["pull", "--insecure", "--quiet", "--models", models, ref], { env });
  assert.equal(r.code, 0, `pull ${ref}: ${r.stderr}`);
}

/** The manifest file a pull wrote, as bytes. */
function storedManifest(models: string, host: string, repo: string, tag: string) {
  return fsp.readFile(path.join(models, "manifests", host, ...repo.split("/"), tag));
}

const UPLOADS = /\/blobs\/uploads\//;

async function cleanup(fx: Fixture[], dirs: string[]) {
  for (const f of fx) await f.cleanup?.();
  for (const d of dirs) await fsp.rm(d, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------
// Tests

for (const runtime of ["deno", "bun"] as const) {
  Deno.test(`haul push (${runtime}): mounts within a registry, chunks to another, pulls back the same digest`, async () => {
    const model = makeOllamaModel({ layerSizes: [1000, 3 * MiB, 40 * MiB + 7], seed: 31 });
    const models = await tmpDir("haul-push-models");
    const back = await tmpDir("haul-push-back");
    try {
      await withRegistries([{}, {}], async (one, two) => {
        await pushFixture(one, "library/tiny", "latest", model);
        const p1 = await startUploadProxy(one.url);
        const p2 = await startUploadProxy(two.url);
        try {
          await pullInto(models, `${p1.host}/library/tiny`);

          // Same registry, other repository: every blob is mounted, no blob byte sent.
          const mount = await runCli([
            "push",
            "--insecure",
            "--json",
            "--models",
            models,
            `${p1.host}/library/tiny`,
            `${p1.host}/team/tiny:v1`,
          ], { runtime });
          assert.equal(mount.code, 0, mount.stderr);
          assert.equal(p1.bytesIn(UPLOADS), 0, "no blob bytes for a mount");
          const mounts = p1.requests.filter((r) => r.method === "POST" && /mount=/.test(r.url));
          assert.equal(mounts.length, model.blobs.length);
          assert.ok(mounts.every((r) => r.status === 201), "201 Created: mounted");
          const lines = mount.stdout.trim().split("\n").map((l) => JSON.parse(l));
          for (const b of model.blobs) {
            const hex = b.digest.slice(7, 19);
            assert.ok(
              lines.some((l) =>
                l.status === `pushing ${hex}` && l.digest === b.digest && l.total === b.size &&
                l.completed === b.size
              ),
              `a line for ${hex}`,
            );
          }
          assert.deepEqual(lines.slice(-2), [{ status: "pushing manifest" }, {
            status: "success",
          }]);
          assert.equal(
            await manifestDigest(one.url, "team/tiny", "v1"),
            model.manifestDigest,
          );

          // Another, empty registry: uploads, the big blob in 8 MiB PATCH chunks.
          const up = await runCli([
            "push",
            "--insecure",
            "--chunk-size",
            "8M",
            "--models",
            models,
            `${p1.host}/library/tiny`,
            `${p2.host}/library/tiny`,
          ], { runtime });
          assert.equal(up.code, 0, up.stderr);
          const big = model.blobs[3];
          const patches = p2.requests.filter((r) => r.method === "PATCH");
          assert.equal(patches.length, Math.ceil(big.size / (8 * MiB)));
          assert.ok(patches.every((r) => r.status === 202));
          const total = model.blobs.reduce((a, b) => a + b.size, 0);
          assert.equal(p2.bytesIn(UPLOADS), total, "each blob byte sent once");
          assert.equal(
            p2.requests.filter((r) => r.method === "PUT" && UPLOADS.test(r.url)).length,
            model.blobs.length,
          );
          // The manifest went last, once every blob was in place.
          assert.match(p2.requests.at(-1)!.url, /\/manifests\/latest$/);

          // A pull of the destination gives the same manifest, byte for byte.
          await pullInto(back, `${p2.host}/library/tiny`);
          assert.deepEqual(
            new Uint8Array(await storedManifest(back, p2.host, "library/tiny", "latest")),
            model.manifest,
          );
          assert.equal(
            await manifestDigest(two.url, "library/tiny", "latest"),
            model.manifestDigest,
          );

          // Again: everything is there, nothing is sent.
          const again = await runCli([
            "push",
            "--insecure",
            "--models",
            models,
            `${p1.host}/library/tiny`,
            `${p2.host}/library/tiny`,
          ], { runtime });
          assert.equal(again.code, 0, again.stderr);
          assert.equal(p2.bytesIn(UPLOADS), total);
          assert.match(again.stderr, /already present/);

          // A re-push to another repository of that registry mounts from where the
          // first push put the blobs (remembered in the store): no blob byte sent.
          const repush = await runCli([
            "push",
            "--insecure",
            "--models",
            models,
            `${p1.host}/library/tiny`,
            `${p2.host}/other/tiny`,
          ], { runtime });
          assert.equal(repush.code, 0, repush.stderr);
          assert.equal(p2.bytesIn(UPLOADS), total, "no blob bytes for the re-push");
          assert.ok(
            p2.requests.some((r) =>
              r.method === "POST" && /mount=.*from=library%2Ftiny|from=library\/tiny/.test(r.url)
            ),
            "mounted from the first push's repository",
          );
          assert.equal(await manifestDigest(two.url, "other/tiny", "latest"), model.manifestDigest);
        } finally {
          await p1.stop();
          await p2.stop();
        }
      });
    } finally {
      await cleanup([model], [models, back]);
    }
  });
}

Deno.test("haul push resumes the upload session after kill -9 mid-blob", async () => {
  const size = 200 * MiB + 11;
  const model = makeOllamaModel({ layerSizes: [512, size], seed: 32 });
  const big = model.blobs[2];
  const chunk = 16 * MiB;
  const models = await tmpDir("haul-push-models");
  try {
    await withRegistries([{}, {}], async (one, two) => {
      await pushFixture(one, "library/big", "latest", model);
      await pullInto(models, `${one.host}/library/big`);
      // 32 MB/s, so the kill lands mid-blob; a buffering proxy, so the cut-off chunk never
      // reaches the registry (distribution 2.8 poisons a session that got part of a chunk).
      // The second run goes through the same proxy (DEST must not change), unthrottled.
      let slow = true;
      const proxy = await startUploadProxy(
        two.url,
        (r) => slow && r.method === "PATCH" ? { rate: 32e6, buffer: true } : undefined,
      );
      const dest = `${proxy.host}/library/big`;
      const push = ["push", "--insecure", "--chunk-size", "16M", "--models", models];
      try {
        const child = spawnCli([...push, `${one.host}/library/big`, dest]);
        const deadline = Date.now() + 60_000;
        for (;;) {
          assert.ok(Date.now() < deadline, "push never got three chunks up");
          await new Promise((r) => setTimeout(r, 20));
          const patches = proxy.requests.filter((r) => r.method === "PATCH");
          const last = patches.at(-1);
          if (
            patches.filter((r) => r.status === 202).length >= 3 && last && !last.complete &&
            last.bytesIn > 0
          ) break;
        }
        child.kill("SIGKILL");
        const killed = await child.result;
        assert.equal(killed.signal, "SIGKILL");
        const acked = proxy.requests.filter((r) =>
          r.method === "PATCH" && r.status === 202
        ).length *
          chunk;
        const state = (await fsp.readdir(path.join(models, ".haul", "push"))).filter((n) =>
          n.startsWith(big.digest.replace(":", "-") + "-upload-")
        );
        assert.equal(state.length, 1, "the session was saved in the store's .haul/push/");
        assert.deepEqual(
          (await fsp.readdir(path.join(models, "blobs"))).filter((n) => n.includes("-upload-")),
          [],
          "nothing in blobs/ for Ollama's prune to take",
        );

        slow = false;
        const mark = proxy.requests.length;
        const r = await runCli([...push, `${one.host}/library/big`, dest]);
        assert.equal(r.code, 0, r.stderr);
        const second = proxy.requests.slice(mark);
        const sent = second.filter((q) => UPLOADS.test(q.url)).reduce((a, q) => a + q.bytesIn, 0);
        assert.equal(sent, size - acked, "only the bytes the registry did not have");
        assert.ok(sent < size * 0.9, `sent ${sent} of ${size}`);
        const status = second.find((q) => q.method === "GET" && UPLOADS.test(q.url));
        assert.equal(status?.status, 204, "asked the registry where the session stands");
        assert.equal(second.filter((q) => q.method === "POST").length, 0, "no new session");
        const left = (await fsp.readdir(path.join(models, ".haul", "push"))).filter((n) =>
          n.includes("-upload-")
        );
        assert.deepEqual(left, [], "state file removed");
      } finally {
        await proxy.stop();
      }
      assert.equal(await manifestDigest(two.url, "library/big", "latest"), model.manifestDigest);
    });
  } finally {
    await cleanup([model], [models]);
  }
});

Deno.test("haul push after a chunk is cut off: continues the session, or starts over when the registry dropped it", async () => {
  const model = makeOllamaModel({ layerSizes: [300, 48 * MiB + 3], seed: 33 });
  const big = model.blobs[2];
  const models = await tmpDir("haul-push-models");
  try {
    await withRegistries([{}, {}], async (one, two) => {
      await pushFixture(one, "library/cut", "latest", model);
      await pullInto(models, `${one.host}/library/cut`);
      for (const buffer of [true, false]) {
        let patches = 0;
        const proxy = await startUploadProxy(two.url, (r) => {
          if (r.method !== "PATCH" || ++patches !== 2) return undefined;
          return { resetAfter: 3 * MiB, buffer };
        });
        const repo = buffer ? "buffered/cut" : "direct/cut";
        try {
          const r = await runCli([
            "push",
            "--insecure",
            "--chunk-size",
            "8M",
            "--models",
            models,
            `${one.host}/library/cut`,
            `${proxy.host}/${repo}`,
          ]);
          assert.equal(r.code, 0, r.stderr);
          assert.match(r.stderr, /retrying/);
          const posts = proxy.requests.filter((q) => q.method === "POST" && UPLOADS.test(q.url));
          const statuses = proxy.requests.filter((q) => q.method === "GET" && UPLOADS.test(q.url))
            .map((q) => q.status);
          const sent = proxy.bytesIn(new RegExp(`uploads/`));
          const small = model.blobs[0].size + model.blobs[1].size;
          if (buffer) {
            // The registry never saw the cut-off chunk: the session goes on from 8 MiB.
            assert.deepEqual(statuses, [204]);
            assert.equal(posts.length, model.blobs.length, "one session per blob");
            assert.equal(sent, small + big.size + 3 * MiB);
          } else {
            // distribution kept 3 MiB of the chunk and now refuses the session: start over.
            assert.deepEqual(statuses, [404]);
            assert.equal(posts.length, model.blobs.length + 1);
            assert.equal(sent, small + big.size + 8 * MiB + 3 * MiB);
          }
        } finally {
          await proxy.stop();
        }
        assert.equal(await manifestDigest(two.url, repo, "latest"), model.manifestDigest);
      }
    });
  } finally {
    await cleanup([model], [models]);
  }
});

Deno.test("haul copy streams registry to registry, verified, in bounded memory; mounts on the same registry", async () => {
  const model = makeOllamaModel({ layerSizes: [700, 5 * MiB, 256 * MiB + 1], seed: 34 });
  const image = makeOciImage({ layerSizes: [2048, 9 * MiB], seed: 35 });
  try {
    await withRegistries([{}, {}], async (one, two) => {
      await pushFixture(one, "library/model", "latest", model);
      await pushFixture(one, "acme/app", "v1", image);
      const src = await startFaultProxy(one.url);
      const dst = await startUploadProxy(two.url);
      try {
        const child = spawnCli([
          "copy",
          "--insecure",
          "--chunk-size",
          "4M",
          `${src.host}/library/model`,
          `${dst.host}/mirror/model:v2`,
        ]);
        // Peak resident memory while the 256 MiB blob streams through: about 160 MiB measured
        // under Deno with 4 MiB chunks (and flat as the blob grows); holding the blob would not fit.
        let peak = 0;
        const poll = setInterval(async () => {
          try {
            const status = await fsp.readFile(`/proc/${child.pid}/status`, "utf8");
            const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
            peak = Math.max(peak, kb * 1024);
          } catch { /* exited */ }
        }, 25);
        const r = await child.result;
        clearInterval(poll);
        assert.equal(r.code, 0, r.stderr);
        const big = model.blobs[3];
        assert.ok(peak > 0 && peak < big.size, `peak RSS ${peak} below the blob's ${big.size}`);
        for (const b of model.blobs) {
          assert.equal(src.bytesOut(new RegExp(b.digest)), b.size, `${b.digest} read once`);
        }
        const total = model.blobs.reduce((a, b) => a + b.size, 0);
        assert.equal(dst.bytesIn(UPLOADS), total);
        assert.equal(
          dst.requests.filter((q) => q.method === "PATCH").length,
          model.blobs.filter((b) => b.size > 4 * MiB)
            .reduce((a, b) => a + Math.ceil(b.size / (4 * MiB)), 0),
        );
        assert.equal(
          await manifestDigest(two.url, "mirror/model", "v2"),
          model.manifestDigest,
        );

        // An OCI image, and on the same registry: mounted.
        const img = await runCli([
          "copy",
          "--insecure",
          `${one.host}/acme/app:v1`,
          `${dst.host}/acme/app:v1`,
        ]);
        assert.equal(img.code, 0, img.stderr);
        assert.equal(await manifestDigest(two.url, "acme/app", "v1"), image.manifestDigest);
        const before = dst.bytesIn(UPLOADS);
        const same = await runCli([
          "copy",
          "--insecure",
          "--json",
          `${dst.host}/mirror/model:v2`,
          `${dst.host}/other/model:v2`,
        ]);
        assert.equal(same.code, 0, same.stderr);
        assert.equal(dst.bytesIn(UPLOADS), before, "mounted, no bytes");
        assert.ok(
          dst.requests.filter((q) =>
            q.method === "POST" && /mount=/.test(q.url) && q.status === 201
          )
            .length === model.blobs.length,
        );
        assert.equal(await manifestDigest(two.url, "other/model", "v2"), model.manifestDigest);
      } finally {
        await src.stop();
        await dst.stop();
      }
    });
  } finally {
    await cleanup([model, image], []);
  }
});

Deno.test("haul copy refuses a source blob that does not match its digest", async () => {
  const model = makeOllamaModel({ layerSizes: [400, 2 * MiB], seed: 36 });
  try {
    await withRegistries([{}, {}], async (one, two) => {
      await pushFixture(one, "library/bad", "latest", model);
      const big = model.blobs[2];
      const src = await startFaultProxy(one.url, {
        rule: (req) =>
          req.url.includes(big.digest) && req.method === "GET" ? { flipByteAt: 12345 } : undefined,
      });
      try {
        const r = await runCli([
          "copy",
          "--insecure",
          `${src.host}/library/bad`,
          `${two.host}/library/bad`,
        ]);
        assert.equal(r.code, 5, r.stderr);
        assert.match(r.stderr, /haul: Source blob sha256:[0-9a-f]{64} .* hashes to sha256:/);
        const res = await fetch(`${two.url}/v2/library/bad/blobs/${big.digest}`, {
          method: "HEAD",
        });
        assert.equal(res.status, 404, "nothing committed");
        const m = await fetch(`${two.url}/v2/library/bad/manifests/latest`, { method: "HEAD" });
        assert.equal(m.status, 404);
      } finally {
        await src.stop();
      }
    });
  } finally {
    await cleanup([model], []);
  }
});

Deno.test("haul push with Basic auth and with a Bearer token destination", async () => {
  const model = makeOllamaModel({ layerSizes: [900, 20 * MiB], seed: 37 });
  const models = await tmpDir("haul-push-models");
  const docker = await tmpDir("haul-docker");
  try {
    await withRegistries([{}, { auth: "basic" }, { auth: "token" }], async (open, basic, token) => {
      await pushFixture(open, "library/auth", "latest", model);
      await pullInto(models, `${open.host}/library/auth`);
      const push = (dest: string) =>
        runCli(
          [
            "push",
            "--insecure",
            "--chunk-size",
            "4M",
            "--models",
            models,
            `${open.host}/library/auth`,
            dest,
          ],
          { env: { DOCKER_CONFIG: docker } },
        );
      const config = (auths: Record<string, string>) =>
        fsp.writeFile(
          path.join(docker, "config.json"),
          JSON.stringify({
            auths: Object.fromEntries(
              Object.entries(auths).map(([h, a]) => [h, { auth: btoa(a) }]),
            ),
          }),
        );

      // No credentials: one clear line, exit 4.
      await config({});
      const refused = await push(`${basic.host}/team/auth`);
      assert.equal(refused.code, 4, refused.stderr);
      assert.match(refused.stderr.trim().split("\n").at(-1)!, /^haul: .*(login|credentials)/i);

      await config({ [basic.host]: "alice:wonderland", [token.host]: "alice:wonderland" });
      const viaBasic = await push(`${basic.host}/team/auth`);
      assert.equal(viaBasic.code, 0, viaBasic.stderr);
      const basicAuth = "Basic " + btoa("alice:wonderland");
      assert.equal(
        await manifestDigest(basic.url, "team/auth", "latest", basicAuth),
        model.manifestDigest,
      );

      const viaToken = await push(`${token.host}/team/auth`);
      assert.equal(viaToken.code, 0, viaToken.stderr);
      const scopes = token.token!.requests.flatMap((q) => q.granted ?? []);
      assert.ok(scopes.includes("repository:team/auth:pull,push"), scopes.join(" "));

      // Within the token registry: mounted, with pull on the source repository in the token.
      const mounted = await runCli([
        "push",
        "--insecure",
        "--models",
        models,
        "--from",
        "team/auth",
        `${open.host}/library/auth`,
        `${token.host}/other/auth`,
      ], { env: { DOCKER_CONFIG: docker } });
      assert.equal(mounted.code, 0, mounted.stderr);
      assert.match(mounted.stderr, /mounted/);
      const last = token.token!.requests.at(-1)!;
      assert.ok(last.granted?.includes("repository:team/auth:pull"), last.granted?.join(" "));
    });
  } finally {
    await cleanup([model], [models, docker]);
  }
});

Deno.test("haul push errors: missing model (6), missing blob (6), refused manifest (3), usage (2)", async () => {
  const models = await tmpDir("haul-push-models");
  try {
    await withRegistries([{}], async (reg) => {
      const missing = await runCli([
        "push",
        "--insecure",
        "--models",
        models,
        `${reg.host}/library/nope`,
      ]);
      assert.equal(missing.code, 6, missing.stderr);
      assert.match(missing.stderr, /^haul: Model .*library\/nope:latest is not in /m);

      // A model whose manifest the registry cannot read (an unknown media type) and whose second
      // layer is missing from the store.
      const layer = new TextEncoder().encode("hello");
      const config = new TextEncoder().encode("{}");
      const d = (b: Uint8Array) => `sha256:${sha256hex(b)}`;
      await fsp.mkdir(path.join(models, "blobs"), { recursive: true });
      for (const b of [layer, config]) {
        await fsp.writeFile(path.join(models, "blobs", d(b).replace(":", "-")), b);
      }
      // Store layout: manifests/<host>/library/<model>/<tag>
      const put = async (model: string, layers: Uint8Array[], mediaType: string) => {
        const dir = path.join(models, "manifests", reg.host, "library", model);
        await fsp.mkdir(dir, { recursive: true });
        await fsp.writeFile(
          path.join(dir, "latest"),
          JSON.stringify({
            schemaVersion: 2,
            mediaType,
            config: {
              mediaType: "application/vnd.docker.container.image.v1+json",
              digest: d(config),
              size: config.length,
            },
            layers: layers.map((l) => ({
              mediaType: "application/vnd.ollama.image.model",
              digest: d(l),
              size: l.length,
            })),
          }),
        );
      };
      const gone = new TextEncoder().encode("not in the store");
      await put("holes", [layer, gone], "application/vnd.docker.distribution.manifest.v2+json");
      const holes = await runCli([
        "push",
        "--insecure",
        "--models",
        models,
        `${reg.host}/library/holes`,
      ]);
      assert.equal(holes.code, 6, holes.stderr);
      const blobPath = path.join(models, "blobs", d(gone).replace(":", "-"));
      assert.ok(holes.stderr.includes(blobPath), holes.stderr);

      await put("odd", [layer], "application/vnd.haul.test.unknown+json");
      const odd = await runCli([
        "push",
        "--insecure",
        "--models",
        models,
        `${reg.host}/library/odd`,
      ]);
      assert.equal(odd.code, 3, odd.stderr);
      assert.match(
        odd.stderr,
        /^haul: .*refused the manifest for library\/odd:latest .*MANIFEST_INVALID/m,
      );
      for (const r of [missing, holes, odd]) {
        assert.equal(r.stderr.trim().split("\n").filter((l) => l.startsWith("haul:")).length, 1);
      }

      const usage = await runCli(["push"]);
      assert.equal(usage.code, 2, usage.stderr);
      const help = await runCli(["push", "--help"]);
      assert.equal(help.code, 0);
      assert.match(help.stdout, /Usage: haul push \[options\] REF \[DEST\][\s\S]*Examples:/);
      const copyHelp = await runCli(["copy", "--help"]);
      assert.match(copyHelp.stdout, /Usage: haul copy \[options\] SRC DEST/);
      const copyUsage = await runCli(["copy", "only-one"]);
      assert.equal(copyUsage.code, 2);
    });
  } finally {
    await fsp.rm(models, { recursive: true, force: true });
  }
});

Deno.test("haul copy copies an index with every manifest it lists, digests unchanged", async () => {
  const amd = makeOciImage({ layerSizes: [1000, 2 * MiB], seed: 40 });
  const arm = makeOciImage({ layerSizes: [1500], seed: 41 });
  try {
    await withRegistries([{}, {}], async (one, two) => {
      const desc = (fx: Fixture, architecture: string) => ({
        mediaType: fx.mediaType,
        digest: fx.manifestDigest,
        size: fx.manifest.length,
        platform: { os: "linux", architecture },
      });
      const index = new TextEncoder().encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [desc(amd, "amd64"), desc(arm, "arm64")],
      }));
      await pushFixture(one, "acme/multi", amd.manifestDigest, amd);
      await pushFixture(one, "acme/multi", arm.manifestDigest, arm);
      await pushFixture(one, "acme/multi", "v1", {
        manifest: index,
        manifestDigest: `sha256:${sha256hex(index)}`,
        mediaType: "application/vnd.oci.image.index.v1+json",
        blobs: [],
      });
      const r = await runCli([
        "copy",
        "--insecure",
        `${one.host}/acme/multi:v1`,
        `${two.host}/acme/multi:v1`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await manifestDigest(two.url, "acme/multi", "v1"), `sha256:${sha256hex(index)}`);
      for (const fx of [amd, arm]) {
        assert.equal(
          await manifestDigest(two.url, "acme/multi", fx.manifestDigest),
          fx.manifestDigest,
        );
        for (const b of fx.blobs) {
          const head = await fetch(`${two.url}/v2/acme/multi/blobs/${b.digest}`, {
            method: "HEAD",
          });
          assert.equal(head.status, 200, b.digest);
        }
      }
    });
  } finally {
    await cleanup([amd, arm], []);
  }
});
