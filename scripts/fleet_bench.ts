#!/usr/bin/env -S deno run -A
/**
 * Fleet benchmark (issue 8): N haul processes pulling one model at once, straight from the
 * origin registry vs through a pull-through cache (Debian's docker-registry in proxy mode).
 *
 *   clients ──────────────────────────────▶ uplink ──▶ origin      (direct)
 *   clients ──▶ cache (docker-registry proxy) ──▶ uplink ──▶ origin (through the cache)
 *
 * `uplink` stands for the origin's internet link: one token bucket shared by every
 * connection (--origin-rate), counting the blob bytes the origin serves. The tag is always
 * resolved at the origin (through the uplink, a HEAD); with the cache, content comes by
 * digest from the cache. Scenarios: direct; cold cache (all clients at once on an empty
 * cache); warm cache (one client first, then all). Prints a Markdown table. Not part of CI.
 *
 *   deno run -A scripts/fleet_bench.ts [--clients 8] [--size 200M] [--origin-rate 100M]
 */
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import {
  type Fixture,
  makeOllamaModel,
  pushFixture,
  type Registry,
  runCli,
  sha256File,
  startRegistry,
  tmpDir,
} from "../tests/support/harness.ts";

const MiB = 1024 * 1024;

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([kmg]?)$/i.exec(s.trim());
  if (!m) throw new RangeError(`bad size ${s}`);
  return Math.round(
    Number(m[1]) * ({ "": 1, k: 1024, m: MiB, g: 1024 * MiB }[
      m[2].toLowerCase() as "" | "k" | "m" | "g"
    ]),
  );
}

interface Uplink {
  url: string;
  host: string;
  /** Blob body bytes sent so far. */
  blobBytes(): number;
  stop(): Promise<void>;
}

/** A forwarding proxy with one shared rate limit (bytes per second, 0 = none) for all responses. */
async function startUplink(upstream: string, rate: number): Promise<Uplink> {
  const up = new URL(upstream);
  let blobBytes = 0;
  let next = Date.now(); // when the bucket has room for the next slice
  const sockets = new Set<Socket>();
  const take = async (n: number) => {
    if (!rate) return;
    const now = Date.now();
    next = Math.max(next, now) + (n / rate) * 1000;
    const wait = next - now - (n / rate) * 1000;
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  };
  const server = http.createServer((req, res) => {
    const isBlob = (req.url ?? "").includes("/blobs/");
    const preq = http.request(
      { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
      async (pres) => {
        res.writeHead(pres.statusCode ?? 502, pres.headers);
        try {
          for await (const chunk of pres) {
            const buf = chunk as Uint8Array;
            for (let o = 0; o < buf.length; o += 64 * 1024) {
              const piece = buf.subarray(o, o + 64 * 1024);
              await take(piece.length);
              if (res.destroyed) {
                pres.destroy();
                return;
              }
              if (!res.write(piece)) await new Promise((r) => res.once("drain", r));
              if (isBlob) blobBytes += piece.length;
            }
          }
          res.end();
        } catch {
          res.destroy();
        }
      },
    );
    preq.on("error", () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    res.on("close", () => preq.destroy());
    req.pipe(preq);
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    blobBytes: () => blobBytes,
    stop: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

interface Row {
  scenario: string;
  clients: number;
  originBytes: number;
  seconds: number;
  slowest: number;
}

async function pullAll(
  n: number,
  ref: string,
  mirror: string | undefined,
  root: string,
  fx: Fixture,
): Promise<{ seconds: number; slowest: number }> {
  const t0 = performance.now();
  const times: number[] = [];
  const results = await Promise.all(Array.from({ length: n }, async (_, i) => {
    const models = path.join(root, `client-${i}`);
    const t = performance.now();
    const r = await runCli([
      "pull",
      "--quiet",
      "--insecure",
      "--models",
      models,
      ...(mirror ? ["--mirror", mirror] : []),
      ref,
    ], { env: { HAUL_MIRRORS: "" }, timeoutMs: 30 * 60_000 });
    times.push((performance.now() - t) / 1000);
    return { r, models };
  }));
  const seconds = (performance.now() - t0) / 1000;
  for (const { r, models } of results) {
    if (r.code !== 0) throw new Error(`a client failed (${r.code}): ${r.stderr}`);
    // Spot-check: the big layer is there with the right digest.
    const big = fx.blobs[fx.blobs.length - 1];
    const file = path.join(models, "blobs", big.digest.replace(":", "-"));
    if (`sha256:${await sha256File(file)}` !== big.digest) throw new Error(`bad blob in ${models}`);
    await fsp.rm(models, { recursive: true, force: true });
  }
  return { seconds, slowest: Math.max(...times) };
}

async function main() {
  const { values } = parseArgs({
    options: {
      clients: { type: "string", default: "8" },
      size: { type: "string", default: "200M" },
      "origin-rate": { type: "string", default: "100M" },
    },
  });
  const clients = Number(values.clients);
  const size = parseSize(values.size!);
  const rate = values["origin-rate"] === "0" ? 0 : parseSize(values["origin-rate"]!);
  const fx = makeOllamaModel({ layerSizes: [1024, 4096, size], seed: 808 });
  const total = fx.blobs.reduce((a, b) => a + b.size, 0);
  const root = await tmpDir("haul-fleet");
  let origin: Registry | undefined;
  let uplink: Uplink | undefined;
  const caches: Registry[] = [];
  const rows: Row[] = [];
  try {
    origin = await startRegistry();
    await pushFixture(origin, "library/fleet", "latest", fx);
    uplink = await startUplink(origin.url, rate);
    const ref = `${uplink.host}/library/fleet:latest`;
    const row = async (scenario: string, n: number, mirror?: string) => {
      const before = uplink!.blobBytes();
      const { seconds, slowest } = await pullAll(n, ref, mirror, root, fx);
      const r = {
        scenario,
        clients: n,
        originBytes: uplink!.blobBytes() - before,
        seconds,
        slowest,
      };
      rows.push(r);
      process.stderr.write(
        `${scenario}: ${n} clients, origin served ${(r.originBytes / 1e6).toFixed(0)} MB, ${
          seconds.toFixed(1)
        } s\n`,
      );
    };

    await row("direct from the origin, one client", 1);
    await row("direct from the origin", clients);

    const cold = await startRegistry({ proxyRemote: uplink.url });
    caches.push(cold);
    await row("through the cache, cold (all at once)", clients, cold.url);

    const warm = await startRegistry({ proxyRemote: uplink.url });
    caches.push(warm);
    await row("cache warm-up (one client)", 1, warm.url);
    // distribution commits the blob in the background: give it a moment.
    await new Promise((r) => setTimeout(r, 2000));
    await row("through the cache, warm", clients, warm.url);
  } finally {
    for (const c of caches) await c.stop();
    await uplink?.stop();
    await origin?.stop();
    await fx.cleanup?.();
    await fsp.rm(root, { recursive: true, force: true });
  }
  const mb = (n: number) => (n / 1e6).toFixed(0);
  console.log(
    `Model ${mb(total)} MB (3 blobs), ${clients} haul processes, origin uplink ${
      rate ? `${mb(rate)} MB/s shared` : "unlimited"
    }, loopback, ${navigator.hardwareConcurrency} cores.\n`,
  );
  console.log("| scenario | clients | origin served | × model | wall time | slowest client |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
  for (const r of rows) {
    console.log(
      `| ${r.scenario} | ${r.clients} | ${mb(r.originBytes)} MB | ${
        (r.originBytes / total).toFixed(2)
      } | ${r.seconds.toFixed(1)} s | ${r.slowest.toFixed(1)} s |`,
    );
  }
}

if (import.meta.main) await main();
