/**
 * `haul serve` against clients that misbehave, as a process under Deno and under Bun: a flood
 * of half-open requests, a kept-alive connection that stops mid head, a client that stops
 * reading, more connections than the cap, SIGTERM with downloads in flight, and the JSON
 * access log.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { rm } from "node:fs/promises";
import * as net from "node:net";
import { join } from "node:path";
import process from "node:process";
import { type Fixture, makeOllamaModel, tmpDir } from "../support/harness.ts";
import { fetchAndHash, type ServeProcess, startServe, storeFixture } from "./serve_fixtures.ts";

const MiB = 1 << 20;
const hasBun = await new Promise<boolean>((resolve) =>
  execFile("bun", ["--version"], (err) => resolve(!err))
);
const RUNTIMES = hasBun ? (["deno", "bun"] as const) : (["deno"] as const);

interface World {
  dir: string;
  store: string;
  model: Fixture;
}

let shared: Promise<World> | undefined;
function getWorld(): Promise<World> {
  return shared ??= (async () => {
    const dir = await tmpDir("haul-serve-limits");
    const store = join(dir, "store");
    const model = makeOllamaModel({ layerSizes: [64 * MiB, 300], seed: 61, dir });
    await storeFixture(store, { repository: "library/x" }, model, { move: true });
    return { dir, store, model };
  })();
}

const bigUrl = (s: ServeProcess, w: World) =>
  `${s.url}/v2/library/x/blobs/${w.model.blobs[1].digest}`;

/** Opens a socket, sends `head` (a partial request, or nothing) and resolves once sent. */
function halfOpen(port: number, head: string): Promise<{ closed: Promise<number> }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1");
    const closed = new Promise<number>((r) => s.once("close", () => r(performance.now())));
    s.on("error", () => {});
    s.resume();
    s.once("connect", () => {
      if (head) s.write(head);
      resolve({ closed });
    });
    s.once("error", reject);
  });
}

/** SIGTERM (process.kill: Deno's child.kill reports the exit at once) and the exit's result. */
async function terminate(s: ServeProcess) {
  process.kill(s.child.pid!, "SIGTERM");
  return await s.child.result;
}

/** Waits until `re` shows up in the server's stderr. */
async function logged(s: ServeProcess, re: RegExp, ms = 10_000): Promise<string> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const m = re.exec(s.child.output().stderr);
    if (m) return m[0];
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`not logged: ${re}\n${s.child.output().stderr.slice(-3000)}`);
}

for (const runtime of RUNTIMES) {
  Deno.test(`haul serve (${runtime}) drops 600 half-open requests within --header-timeout and answers others meanwhile`, async () => {
    const w = await getWorld();
    // Default cap (1024): the flood must not crowd out the others.
    const server = await startServe(w.store, { runtime, extra: ["--header-timeout", "3"] });
    try {
      const heads = ["", "GET /v2/ HT", "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaa"];
      const t0 = performance.now();
      const flood = await Promise.all(
        Array.from({ length: 600 }, (_, i) => halfOpen(server.port, heads[i % 3])),
      );
      const opened = performance.now() - t0;
      // A normal client during the flood.
      const g0 = performance.now();
      const res = await fetch(`${server.url}/v2/library/x/manifests/latest`, {
        signal: AbortSignal.timeout(5000),
      });
      assert.equal(res.status, 200);
      assert.deepEqual(new Uint8Array(await res.arrayBuffer()), w.model.manifest);
      const answered = performance.now() - g0;
      assert.ok(answered < 2000, `a normal GET during the flood took ${answered.toFixed(0)} ms`);
      const closedAt = await Promise.race([
        Promise.all(flood.map((f) => f.closed)),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error("half-open connections still open at 40 s")), 40_000)
        ),
      ]);
      const first = Math.min(...closedAt) - t0;
      const last = Math.max(...closedAt) - t0;
      console.log(
        `${runtime}: 600 half-open opened in ${opened.toFixed(0)} ms, a GET meanwhile ` +
          `${answered.toFixed(0)} ms, dropped between ${(first / 1000).toFixed(2)} s and ` +
          `${(last / 1000).toFixed(2)} s (--header-timeout 3)`,
      );
      assert.ok(first > 2500, `dropped too early: ${first.toFixed(0)} ms`);
      assert.ok(last < 3000 + opened + 1500, `last dropped at ${last.toFixed(0)} ms`);
      const after = await fetchAndHash(bigUrl(server, w), AbortSignal.timeout(20_000));
      assert.equal(after.digest, w.model.blobs[1].digest);
      assert.ok(!/warning/.test(server.child.output().stderr), server.child.output().stderr);
    } finally {
      await server.stop();
    }
  });

  Deno.test(`haul serve (${runtime}) closes a kept-alive connection that stops mid head, and cuts a client that stops reading`, async () => {
    const w = await getWorld();
    const server = await startServe(w.store, {
      runtime,
      extra: ["--header-timeout", "2", "--idle-timeout", "1.5", "--log-format", "json"],
    });
    try {
      // One request answered, then half a head on the same connection.
      const s = net.connect(server.port, "127.0.0.1");
      s.on("error", () => {});
      let text = "";
      s.on("data", (d) => (text += d));
      const closed = new Promise<number>((r) => s.once("close", () => r(performance.now())));
      await new Promise((r) => s.once("connect", r));
      s.write("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
      while (!text.includes("\r\n\r\n{}")) await new Promise((r) => setTimeout(r, 10));
      assert.match(text, /keep-alive: timeout=1/i);
      const t0 = performance.now();
      s.write("GET /v2/ HTTP/1.1\r\nHost: 127.");
      const keptAlive = (await closed) - t0;
      assert.ok(keptAlive > 1000 && keptAlive < 3500, `closed after ${keptAlive.toFixed(0)} ms`);

      // A download whose client reads once, then nothing: cut after --idle-timeout.
      const ac = new AbortController();
      const res = await fetch(bigUrl(server, w), { signal: ac.signal });
      const reader = res.body!.getReader();
      await reader.read();
      const line = await logged(server, /\{[^\n]*"msg":"request"[^\n]*"complete":false\}/);
      const entry = JSON.parse(line);
      assert.equal(entry.status, 200);
      assert.equal(entry.digest, w.model.blobs[1].digest);
      assert.ok(entry.bytes < w.model.blobs[1].size, `${entry.bytes} bytes`);
      assert.ok(entry.durationMs > 1400 && entry.durationMs < 5000, `${entry.durationMs} ms`);
      ac.abort();
      await reader.cancel().catch(() => {});
    } finally {
      await server.stop();
    }
  });

  Deno.test(`haul serve (${runtime}) refuses connections beyond --max-connections, says so once, and recovers`, async () => {
    const w = await getWorld();
    const server = await startServe(w.store, {
      runtime,
      extra: ["--max-connections", "20", "--header-timeout", "4"],
    });
    try {
      const held = await Promise.all(Array.from({ length: 20 }, () => halfOpen(server.port, "")));
      // Give the server the 20 before the extra ones arrive.
      await logged(server, /serving/);
      await new Promise((r) => setTimeout(r, 300));
      const t0 = performance.now();
      const extra = await Promise.all(Array.from({ length: 10 }, () => halfOpen(server.port, "")));
      // Refused as soon as the server sees them: at once, or ~1 s later under Bun, which is
      // told about a connection when its first bytes arrive or a second has passed.
      const refused = Math.max(...await Promise.all(extra.map((e) => e.closed))) - t0;
      assert.ok(refused < 2500, `refused after ${refused.toFixed(0)} ms, not at once`);
      const reached = server.child.output().stderr.match(/--max-connections cap: new/g) ?? [];
      assert.equal(reached.length, 1, server.child.output().stderr);
      await Promise.all(held.map((h) => h.closed)); // the header timeout frees them
      await logged(server, /under the --max-connections cap \(20\) again; 10 were refused/);
      const res = await fetch(`${server.url}/v2/`, { signal: AbortSignal.timeout(5000) });
      assert.equal(res.status, 200);
      await res.body?.cancel();
    } finally {
      await server.stop();
    }
  });

  Deno.test(`haul serve (${runtime}) on SIGTERM finishes downloads in flight, refuses new connections`, async () => {
    const w = await getWorld();
    const server = await startServe(w.store, {
      runtime,
      extra: ["--shutdown-timeout", "20", "--log-format", "json"],
    });
    // Bun installs its signal handlers a moment after the listener is up.
    if (runtime === "bun") await new Promise((r) => setTimeout(r, 2000));
    try {
      // A client that reads slowly: about 20 MB/s, so the 64 MiB blob takes ~3 s.
      const res = await fetch(bigUrl(server, w));
      const reader = res.body!.getReader();
      const first = await reader.read();
      let bytes = first.value?.byteLength ?? 0;
      const reading = (async () => {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return bytes;
          bytes += value.byteLength;
          await new Promise((r) => setTimeout(r, value.byteLength / 20_000));
        }
      })();
      // An idle kept-alive connection: closed at once on SIGTERM.
      const idle = await halfOpen(server.port, "");
      const t0 = performance.now();
      const exited = terminate(server);
      await logged(server, /stopping: \d+ connection\(s\) open/);
      const idleClosed = (await idle.closed) - t0;
      assert.ok(idleClosed < 1000, `idle connection closed after ${idleClosed.toFixed(0)} ms`);
      await assert.rejects(
        fetch(`${server.url}/v2/`, { signal: AbortSignal.timeout(3000) }).then((r) => r.text()),
        "no new connection while shutting down",
      );
      assert.equal(await reading, w.model.blobs[1].size, "the download in flight finished");
      const result = await exited;
      assert.equal(result.code, 0, result.stderr);
      const took = performance.now() - t0;
      assert.ok(took < 15_000, `exit took ${took.toFixed(0)} ms`);
      const lines = result.stderr.trim().split("\n").map((l) => JSON.parse(l));
      const blob = lines.find((l) => l.msg === "request" && l.digest === w.model.blobs[1].digest);
      assert.equal(blob.complete, true);
      assert.equal(blob.bytes, w.model.blobs[1].size);
      assert.equal(blob.client, "127.0.0.1");
      assert.equal(blob.name, "library/x");
      assert.equal(lines.at(-1).msg, "stopped");
    } finally {
      await server.stop();
    }
  });
}

Deno.test("haul serve limits cleanup", async () => {
  if (!shared) return;
  await rm((await shared).dir, { recursive: true, force: true });
});
