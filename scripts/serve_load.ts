#!/usr/bin/env -S deno run -A
/**
 * Load test for `haul serve` (issue 18), side by side with Debian's docker-registry and nginx
 * serving the same blob. A model with one large layer (default 256 MiB) goes into a store that
 * `haul serve` shares (under Deno, and as the Bun binary dist/haul when built), is pushed to
 * docker-registry, and is hard-linked into a directory nginx serves. Then, one server at a time:
 *
 * 1. load: --clients loops (default 64), each request a Range GET of one aligned --range
 *    (default 1 MiB) at random (90%), a manifest GET (5%) or a blob HEAD (5%), for --seconds;
 *    every response checked (status, length, Content-Range; every 8th range hashed against the
 *    blob). Reported: requests/s, MB/s, p50/p99 latency, server CPU, ratios to docker-registry.
 * 2. half-open: --half-open connections (default 600) send half a request head and never
 *    finish, while the same load runs for --half-open-seconds (default 35); reported: when the
 *    server drops them and the other clients' latency meanwhile.
 *
 *   deno task bench:serve [--clients 64] [--size 256M] [--range 1M] [--seconds 15]
 *     [--half-open 600] [--half-open-seconds 35] [--rounds 1] [--no-bin] [--no-write]
 *
 * Writes bench/SERVE_LOAD.md and its section "serve_load" in bench/RESULTS.md (unless
 * --no-write). Exits 1 when a haul request failed a check or haul did not drop every
 * half-open connection. Everything stays on 127.0.0.1.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import {
  makeOllamaModel,
  MEDIA,
  pushFixture,
  REPO_ROOT,
  startRegistry,
  tmpDir,
} from "../tests/support/harness.ts";
import { sampleRss, startServe, storeFixture } from "../tests/server/serve_fixtures.ts";
import { findPids, lockBench, median, processCpu } from "./bench/measure.ts";
import { haveNginx, startStaticNginx } from "./bench/nginx_static.ts";
import {
  type BlobTruth,
  type LoadResult,
  openHalfOpen,
  quantile,
  runLoad,
  type Target,
} from "./bench/range_load.ts";

const MiB = 1 << 20;

function size(s: string): number {
  const m = /^(\d+)([KMG]?)$/i.exec(s);
  if (!m) throw new RangeError(`Invalid size ${s} (e.g. 256M)`);
  return Number(m[1]) * ({ "": 1, K: 1 << 10, M: MiB, G: 1 << 30 } as Record<string, number>)[
    m[2].toUpperCase()
  ];
}

const { values: opt } = parseArgs({
  args: process.argv.slice(2),
  options: {
    clients: { type: "string", default: "64" },
    size: { type: "string", default: "256M" },
    range: { type: "string", default: "1M" },
    seconds: { type: "string", default: "15" },
    "half-open": { type: "string", default: "600" },
    "half-open-seconds": { type: "string", default: "35" },
    rounds: { type: "string", default: "1" },
    "no-bin": { type: "boolean" },
    "no-write": { type: "boolean" },
  },
});
const CLIENTS = Number(opt.clients);
const SIZE = size(opt.size);
const RANGE = size(opt.range);
const SECONDS = Number(opt.seconds);
const HALF_OPEN = Number(opt["half-open"]);
const HALF_SECONDS = Number(opt["half-open-seconds"]);
const ROUNDS = Number(opt.rounds);
const BIN = path.join(REPO_ROOT, "dist", "haul");
const REPO = "library/load";

/** A server under test. */
interface Server {
  target: Target;
  /** Its processes, for CPU and memory. */
  pids(): number[];
  /** haul: whether its checks make the run fail. */
  strict: boolean;
  stop(): Promise<void>;
}

interface Measured {
  load: LoadResult;
  cpu: number;
  peakRss: number;
  /** Cores busy on average with anything but the server and these clients (other work). */
  others: number;
}

interface HalfOpenResult extends Measured {
  connected: number;
  failed: number;
  drops: number[];
}

const log = (s: string) => process.stderr.write(s + "\n");

function text(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    execFile(cmd, args, (err, stdout, stderr) => resolve(err ? "" : `${stdout}${stderr}`));
  });
}

/** SHA-256 of every aligned range of the file. */
async function rangeHashes(file: string, rangeSize: number): Promise<string[]> {
  const out: string[] = [];
  const fh = await fsp.open(file, "r");
  try {
    const buf = new Uint8Array(rangeSize);
    for (let off = 0;; off += rangeSize) {
      const { bytesRead } = await fh.read(buf, 0, rangeSize, off);
      if (!bytesRead) break;
      out.push(createHash("sha256").update(buf.subarray(0, bytesRead)).digest("hex"));
    }
  } finally {
    await fh.close();
  }
  return out;
}

/** CPU seconds the whole machine has been busy (/proc/stat, steal excluded). */
function machineBusy(): number {
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).map(Number);
  return (f[1] + f[2] + f[3] + f[6] + f[7]) / 100; // user nice system irq softirq, USER_HZ
}

const selfCpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

/** Runs `body` while sampling the servers' CPU (all pids), peak RSS (summed) and other load. */
async function measured<T>(s: Server, body: () => Promise<T>): Promise<T & Measured> {
  const pids = s.pids();
  const cpu0 = pids.reduce((a, p) => a + processCpu(p), 0);
  const [busy0, self0, t0] = [machineBusy(), selfCpu(), performance.now()];
  const samplers = pids.map((p) => sampleRss(p, 100));
  try {
    const r = await body();
    const cpu = pids.reduce((a, p) => a + processCpu(p), 0) - cpu0;
    const wall = (performance.now() - t0) / 1000;
    const others = (machineBusy() - busy0 - cpu - (selfCpu() - self0)) / wall;
    return {
      ...r,
      cpu,
      others: Math.max(0, others),
      peakRss: samplers.reduce((a, x) => a + x.max(), 0),
    } as T & Measured;
  } finally {
    for (const x of samplers) x.stop();
  }
}

async function loadPhase(s: Server, truth: BlobTruth, round: number): Promise<Measured> {
  await runLoad(s.target, truth, { clients: CLIENTS, durationMs: 2000, seed: 99 }); // warm-up
  return await measured(s, async () => ({
    load: await runLoad(s.target, truth, {
      clients: CLIENTS,
      durationMs: SECONDS * 1000,
      seed: round + 1,
    }),
  }));
}

async function halfOpenPhase(s: Server, truth: BlobTruth): Promise<HalfOpenResult> {
  const u = new URL(s.target.blobUrl);
  return await measured(s, async () => {
    const h = await openHalfOpen(u.hostname, Number(u.port), HALF_OPEN);
    const load = await runLoad(s.target, truth, {
      clients: CLIENTS,
      durationMs: HALF_SECONDS * 1000,
      seed: 77,
    });
    const r = { load, connected: h.connected(), failed: h.failed(), drops: h.dropTimes() };
    h.close();
    return r;
  });
}

/** The servers: haul (deno), haul (binary), docker-registry, nginx. */
async function startServers(dir: string, truthFile: string): Promise<Server[]> {
  const fx = makeOllamaModel({ layerSizes: [SIZE, 2000], seed: 64, dir });
  const layer = fx.blobs[1];
  const store = path.join(dir, "store");
  await storeFixture(store, { repository: REPO }, fx);
  const storeBlob = path.join(store, "blobs", layer.digest.replace(":", "-"));
  await fsp.copyFile(storeBlob, truthFile);
  const servers: Server[] = [];
  const haulTarget = (name: string, url: string): Target => ({
    name,
    blobUrl: `${url}/v2/${REPO}/blobs/${layer.digest}`,
    manifestUrl: `${url}/v2/${REPO}/manifests/latest`,
    manifestHeaders: { accept: `${MEDIA.dockerManifest}, ${MEDIA.ociManifest}` },
  });
  const addHaul = async (name: string, bin?: string) => {
    const h = await startServe(store, bin ? { bin } : {});
    servers.push({
      target: haulTarget(name, h.url),
      pids: () => [h.child.pid!],
      strict: true,
      stop: h.stop,
    });
  };
  await addHaul("haul serve (deno)");
  if (!opt["no-bin"] && fs.existsSync(BIN)) await addHaul("haul serve (dist/haul, Bun)", BIN);
  else log(`no ${BIN} (bash scripts/compile.sh builds it): the binary is not measured`);

  const reg = await startRegistry();
  await pushFixture(reg, REPO, "latest", fx);
  servers.push({
    target: haulTarget("docker-registry 2.8 (Debian)", reg.url),
    pids: () => findPids(reg.configFile),
    strict: false,
    stop: reg.stop,
  });

  if (haveNginx()) {
    const www = path.join(dir, "www");
    await fsp.mkdir(www, { recursive: true });
    await fsp.link(storeBlob, path.join(www, "blob"));
    await fsp.writeFile(path.join(www, "manifest.json"), fx.manifest);
    const ng = await startStaticNginx(path.join(dir, "nginx"), www);
    servers.push({
      target: {
        name: "nginx (static file, 1 worker)",
        blobUrl: `${ng.url}/blob`,
        manifestUrl: `${ng.url}/manifest.json`,
      },
      pids: () => ng.pids(),
      strict: false,
      stop: ng.stop,
    });
  } else log("nginx is not installed: not measured");
  await fx.cleanup?.();
  return servers;
}

const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : "–");
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : "–");
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "–");
const rps = (m: Measured) => m.load.requests / m.load.seconds;
const p = (m: Measured, q: number, k: "all" | "range" | "manifest" | "head" = "all") =>
  quantile(m.load.latency[k], q);

/** The median round by requests/s. */
function mid(ms: Measured[]): Measured {
  const sorted = [...ms].sort((a, b) => rps(a) - rps(b));
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

async function machineLines(): Promise<string[]> {
  const mem = /MemTotal:\s+(\d+) kB/.exec(fs.readFileSync("/proc/meminfo", "utf8"));
  const head = (await text("git", ["-C", REPO_ROOT, "rev-parse", "--short", "HEAD"])).trim();
  const dirty = (await text("git", ["-C", REPO_ROOT, "status", "--porcelain", "lib", "cli"]))
    .split("\n").filter(Boolean).length;
  const reg = /v?\d+\.\d+\.\d+/.exec(await text("docker-registry", ["--version"]))?.[0] ?? "?";
  const ng = /nginx\/(\S+)/.exec(await text("sh", ["-c", "nginx -v 2>&1"]))?.[1] ?? "absent";
  const bin = fs.existsSync(BIN)
    ? `; dist/haul built ${fs.statSync(BIN).mtime.toISOString().replace(/\.\d+Z$/, "Z")}`
    : "; no dist/haul";
  return [
    `- Machine: ${os.cpus()[0]?.model ?? "?"}, ${os.cpus().length} cores, ${
      (Number(mem?.[1]) / 1024 / 1024).toFixed(1)
    } GiB memory (MemTotal), kernel ${os.release()}`,
    `- haul: checkout ${head}${dirty ? ` + ${dirty} changed files in lib/ cli/` : ""}${bin}`,
    `- Runtime: deno ${Deno.version.deno}; peers: docker-registry ${reg}, nginx ${ng}`,
    `- Generated ${new Date().toISOString()}; load average at start ${
      os.loadavg().map((x) => x.toFixed(2)).join(" / ")
    }`,
  ];
}

function loadTable(servers: Server[], rounds: Measured[][]): string[] {
  const base = mid(rounds[servers.findIndex((s) => s.target.name.startsWith("docker-registry"))]);
  const rows = servers.map((s, i) => {
    const m = mid(rounds[i]);
    const small = [...m.load.latency.manifest, ...m.load.latency.head].sort((a, b) => a - b);
    return `| ${s.target.name} | ${f0(rps(m))} | ${f0(m.load.bytes / m.load.seconds / 1e6)} | ${
      f1(p(m, 0.5))
    } | ${f1(p(m, 0.99))} | ${f1(quantile(small, 0.99))} | ${
      f2((m.cpu / m.load.requests) * 1000)
    } | ${f0(m.peakRss / MiB)} | ${m.load.errors} | ${f2(m.others)} | ${f2(rps(m) / rps(base))} | ${
      f2(p(m, 0.99) / p(base, 0.99))
    } |`;
  });
  return [
    "| server | req/s | MB/s | p50 ms | p99 ms | p99 ms manifest+HEAD | server CPU ms/req | server peak RSS MiB | errors | other load (cores) | req/s ÷ registry | p99 ÷ registry |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...rows,
  ];
}

function halfOpenTable(
  servers: Server[],
  results: HalfOpenResult[],
  plain: Measured[][],
): string[] {
  const rows = servers.map((s, i) => {
    const h = results[i];
    const d = h.drops;
    const dropped = d.length
      ? `${d.length} (at ${f1(d[0])}-${f1(d[d.length - 1])} s, median ${f1(median(d))} s)`
      : "0";
    return `| ${s.target.name} | ${h.connected}/${HALF_OPEN} | ${dropped} | ${
      h.connected - d.length
    } | ${f0(rps(h))} | ${f1(p(h, 0.5))} | ${f1(p(h, 0.99))} | ${
      f1(p(mid(plain[i]), 0.99))
    } | ${h.load.errors} | ${f2(h.others)} |`;
  });
  return [
    `| server | half-open connected | dropped by the server within ${HALF_SECONDS} s | still open at ${HALF_SECONDS} s | req/s meanwhile | p50 ms | p99 ms | p99 ms without them | errors | other load (cores) |`,
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ...rows,
  ];
}

async function headerTimeout(): Promise<string> {
  const help = await text(Deno.execPath(), [
    "run",
    "-A",
    path.join(REPO_ROOT, "main.ts"),
    "serve",
    "--help",
  ]);
  return /--header-timeout.*\(default (\d+)\)/.exec(help)?.[1] ?? "?";
}

function render(
  lines: string[],
  servers: Server[],
  plain: Measured[][],
  half: HalfOpenResult[],
  ht: string,
): string {
  return [
    "## serve_load",
    "",
    "Written by `deno task bench:serve` (scripts/serve_load.ts); loopback, this machine.",
    "",
    ...lines,
    "",
    `One ${
      (SIZE / MiB).toFixed(0)
    } MiB blob (an Ollama model's layer) served by each server in turn. ` +
    `${CLIENTS} concurrent clients (one Deno process, fetch with keep-alive) for ${SECONDS} s ` +
    `after 2 s of warm-up; each request is a Range GET of one aligned ${
      (RANGE / MiB).toFixed(0)
    } MiB range at random (90%), a manifest GET (5%) or a blob HEAD (5%). Every response is ` +
    "checked (status, length, Content-Range), every 8th range hashed against the blob. " +
    `Median of ${ROUNDS} round(s) by req/s. haul serve and docker-registry serve the same ` +
    "model (docker-registry from its own filesystem storage, pushed there); nginx serves the " +
    "blob file as a static file (sendfile). The clients share the 2 cores with the server, " +
    "so req/s is bounded by the client too: server CPU per request is the fairer comparison. " +
    "Other load: cores busy on average with anything but the server and the clients (other " +
    "engineers' tests share this machine; a high value marks a disturbed run).",
    "",
    ...loadTable(servers, plain),
    "",
    `Half-open connections: ${HALF_OPEN} TCP connections each send \`GET /v2/ HTTP/1.1\`, ` +
    "`Host` and half a header line and never finish, while the same load runs for " +
    `${HALF_SECONDS} s. haul serve runs with its default \`--header-timeout\` (${ht} s). ` +
    "Drop times are from sending the half head to the server's close.",
    "",
    ...halfOpenTable(servers, half, plain),
    "",
  ].join("\n");
}

async function writeResults(md: string): Promise<void> {
  const bench = path.join(REPO_ROOT, "bench");
  await fsp.writeFile(path.join(bench, "SERVE_LOAD.md"), md);
  const file = path.join(bench, "RESULTS.md");
  const old = await fsp.readFile(file, "utf8").catch(() => "# haul benchmark results\n");
  const start = old.indexOf("\n## serve_load\n");
  let next = start < 0 ? -1 : old.indexOf("\n## ", start + 1);
  if (next < 0) next = old.length;
  const updated = start < 0
    ? `${old.trimEnd()}\n\n${md}`
    : `${old.slice(0, start)}\n${md}${old.slice(next)}`;
  await fsp.writeFile(file, updated.endsWith("\n") ? updated : updated + "\n");
}

async function main(): Promise<number> {
  const unlock = await lockBench(log);
  const dir = await tmpDir("haul-serve-load");
  let servers: Server[] = [];
  try {
    log(`generating a ${(SIZE / MiB).toFixed(0)} MiB layer in ${dir}…`);
    const truthFile = path.join(dir, "truth.bin");
    servers = await startServers(dir, truthFile);
    const truth: BlobTruth = {
      size: SIZE,
      rangeSize: RANGE,
      rangeHashes: await rangeHashes(truthFile, RANGE),
      manifestSize: 0,
    };
    const probe = await fetch(servers[0].target.manifestUrl, {
      headers: servers[0].target.manifestHeaders,
    });
    truth.manifestSize = (await probe.arrayBuffer()).byteLength;
    const plain: Measured[][] = servers.map(() => []);
    for (let r = 0; r < ROUNDS; r++) {
      for (const [i, s] of servers.entries()) {
        log(`round ${r + 1}: ${s.target.name}, ${CLIENTS} clients, ${SECONDS} s`);
        plain[i].push(await loadPhase(s, truth, r));
        const m = plain[i][r];
        log(
          `  ${f0(rps(m))} req/s, p50 ${f1(p(m, 0.5))} ms, p99 ${f1(p(m, 0.99))} ms, ` +
            `${m.load.errors} errors ${m.load.errorSamples.join("; ")}`,
        );
      }
    }
    const half: HalfOpenResult[] = [];
    for (const s of servers) {
      log(`half-open: ${s.target.name}, ${HALF_OPEN} connections, ${HALF_SECONDS} s`);
      const h = await halfOpenPhase(s, truth);
      half.push(h);
      log(
        `  ${h.connected} connected, ${h.drops.length} dropped (last at ${
          f1(h.drops[h.drops.length - 1] ?? NaN)
        } s), p99 ${f1(p(h, 0.99))} ms, ${h.load.errors} errors`,
      );
      await new Promise((r) => setTimeout(r, 1000)); // the closes reach the server
    }
    const md = render(await machineLines(), servers, plain, half, await headerTimeout());
    console.log(md);
    if (!opt["no-write"]) await writeResults(md);
    let failed = false;
    for (const [i, s] of servers.entries()) {
      if (!s.strict) continue;
      const errors = plain[i].reduce((a, m) => a + m.load.errors, 0) + half[i].load.errors;
      if (errors) log(`FAILED: ${s.target.name}: ${errors} request(s) failed a check`);
      if (half[i].drops.length !== half[i].connected || half[i].connected !== HALF_OPEN) {
        log(`FAILED: ${s.target.name} did not drop every half-open connection`);
        failed = true;
      }
      if (errors) failed = true;
    }
    return failed ? 1 : 0;
  } finally {
    for (const s of servers) await s.stop().catch(() => {});
    await fsp.rm(dir, { recursive: true, force: true });
    unlock();
  }
}

process.exit(await main());
