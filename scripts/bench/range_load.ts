/**
 * The clients of scripts/serve_load.ts: N concurrent loops of Range GETs of one blob (plus a
 * share of manifest GETs and blob HEADs), with per-request latencies and checks; and
 * half-open connections (TCP connect, half a request head, never finished) with the time
 * the server drops each. Talks plain HTTP/1.1 on loopback; imports nothing from lib/.
 */
import { createHash } from "node:crypto";
import * as net from "node:net";

/** One server under load: where its blob, manifest and HEAD go. */
export interface Target {
  /** Label in the tables, e.g. "haul serve (deno)". */
  name: string;
  /** Blob URL (GET with Range, HEAD). */
  blobUrl: string;
  /** A small document GET (the manifest, or a small file for nginx). */
  manifestUrl: string;
  manifestHeaders?: Record<string, string>;
}

/** What the clients check a range against: the SHA-256 of every aligned range of the blob. */
export interface BlobTruth {
  size: number;
  rangeSize: number;
  /** hex SHA-256 of range i (bytes i*rangeSize .. +rangeSize). */
  rangeHashes: string[];
  /** The manifest's byte length (the small document). */
  manifestSize: number;
}

export interface LoadOptions {
  clients: number;
  /** How long the clients run, ms. */
  durationMs: number;
  /** Share of requests that are a manifest GET, and a blob HEAD (default 0.05 each). */
  manifestShare?: number;
  headShare?: number;
  /** Hash every Nth range body against BlobTruth (default 8; the rest: length and header). */
  verifyEvery?: number;
  /** PRNG seed (default 1). */
  seed?: number;
}

export type Kind = "range" | "manifest" | "head";

export interface LoadResult {
  seconds: number;
  requests: number;
  bytes: number;
  errors: number;
  /** First few error messages. */
  errorSamples: string[];
  verified: number;
  /** Latencies in ms, per kind and all together, sorted. */
  latency: Record<Kind | "all", number[]>;
}

/** The q-quantile (0..1) of sorted values, nearest rank; NaN when empty. */
export function quantile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

async function readAll(res: Response, hash?: ReturnType<typeof createHash>): Promise<number> {
  let n = 0;
  if (!res.body) return 0;
  for await (const chunk of res.body) {
    n += chunk.byteLength;
    hash?.update(chunk);
  }
  return n;
}

/** One request of `kind`; throws on a wrong status, length, header or hash. */
async function one(
  t: Target,
  truth: BlobTruth,
  kind: Kind,
  index: number,
  verify: boolean,
): Promise<{ bytes: number; verified: boolean }> {
  if (kind === "manifest") {
    const res = await fetch(t.manifestUrl, { headers: t.manifestHeaders });
    const n = await readAll(res);
    if (res.status !== 200 || n !== truth.manifestSize) {
      throw new Error(`manifest: HTTP ${res.status}, ${n} bytes`);
    }
    return { bytes: n, verified: false };
  }
  if (kind === "head") {
    const res = await fetch(t.blobUrl, { method: "HEAD" });
    await res.body?.cancel();
    const len = res.headers.get("content-length");
    if (res.status !== 200 || Number(len) !== truth.size) {
      throw new Error(`HEAD: HTTP ${res.status}, Content-Length ${len}`);
    }
    return { bytes: 0, verified: false };
  }
  const start = index * truth.rangeSize;
  const end = Math.min(truth.size, start + truth.rangeSize) - 1;
  const res = await fetch(t.blobUrl, { headers: { range: `bytes=${start}-${end}` } });
  const hash = verify ? createHash("sha256") : undefined;
  const n = await readAll(res, hash);
  const cr = res.headers.get("content-range");
  if (res.status !== 206 || n !== end - start + 1 || cr !== `bytes ${start}-${end}/${truth.size}`) {
    throw new Error(`range ${start}-${end}: HTTP ${res.status}, ${n} bytes, Content-Range ${cr}`);
  }
  if (hash && hash.digest("hex") !== truth.rangeHashes[index]) {
    throw new Error(`range ${start}-${end}: wrong bytes`);
  }
  return { bytes: n, verified: !!hash };
}

/** Runs `clients` loops against `t` for `durationMs`; every request is checked. */
export async function runLoad(t: Target, truth: BlobTruth, o: LoadOptions): Promise<LoadResult> {
  const manifestShare = o.manifestShare ?? 0.05;
  const headShare = o.headShare ?? 0.05;
  const verifyEvery = o.verifyEvery ?? 8;
  const ranges = truth.rangeHashes.length;
  const r: LoadResult = {
    seconds: 0,
    requests: 0,
    bytes: 0,
    errors: 0,
    errorSamples: [],
    verified: 0,
    latency: { range: [], manifest: [], head: [], all: [] },
  };
  const t0 = performance.now();
  const stopAt = t0 + o.durationMs;
  const loop = async (c: number) => {
    const rand = prng((o.seed ?? 1) * 7919 + c);
    for (let i = 0; performance.now() < stopAt; i++) {
      const x = rand();
      const kind: Kind = x < manifestShare
        ? "manifest"
        : x < manifestShare + headShare
        ? "head"
        : "range";
      const idx = Math.floor(rand() * ranges);
      const s = performance.now();
      try {
        const got = await one(t, truth, kind, idx, kind === "range" && i % verifyEvery === 0);
        const ms = performance.now() - s;
        r.latency[kind].push(ms);
        r.latency.all.push(ms);
        r.requests++;
        r.bytes += got.bytes;
        if (got.verified) r.verified++;
      } catch (e) {
        r.errors++;
        if (r.errorSamples.length < 5) r.errorSamples.push(String((e as Error).message ?? e));
        await new Promise((res) => setTimeout(res, 10));
      }
    }
  };
  await Promise.all(Array.from({ length: o.clients }, (_, c) => loop(c)));
  r.seconds = (performance.now() - t0) / 1000;
  for (const k of Object.keys(r.latency) as (Kind | "all")[]) r.latency[k].sort((a, b) => a - b);
  return r;
}

/** Half-open connections: how many connected, and when the server dropped each. */
export interface HalfOpen {
  /** Connections established so far. */
  connected(): number;
  /** Seconds from sending half a head to the server's close, per dropped connection. */
  dropTimes(): number[];
  /** Connections that failed to connect (refused, reset before the head was sent). */
  failed(): number;
  /** Closes every connection still open. */
  close(): void;
}

/**
 * Opens `count` TCP connections to host:port, each sending the first half of a request head
 * (`GET /v2/ HTTP/1.1`, `Host`, half a header line) and nothing more.
 */
export function openHalfOpen(host: string, port: number, count: number): Promise<HalfOpen> {
  const sockets: net.Socket[] = [];
  const ours = new WeakSet<net.Socket>(); // closed by close(), not dropped by the server
  const drops: number[] = [];
  let connected = 0;
  let failed = 0;
  const head = `GET /v2/ HTTP/1.1\r\nHost: ${host}:${port}\r\nUser-Agent: half-op`;
  const opened = Array.from({ length: count }, () =>
    new Promise<void>((resolve) => {
      const s = net.connect({ host, port });
      sockets.push(s);
      let sentAt = 0;
      s.on("connect", () => {
        connected++;
        sentAt = performance.now();
        s.write(head);
        resolve();
      });
      s.on("data", () => {}); // a 408 or anything else: wait for the close
      s.on("error", () => {});
      s.on("close", () => {
        if (sentAt && !ours.has(s)) drops.push((performance.now() - sentAt) / 1000);
        else if (!sentAt) failed++;
        resolve();
      });
    }));
  return Promise.all(opened).then(() => ({
    connected: () => connected,
    dropTimes: () => [...drops].sort((a, b) => a - b),
    failed: () => failed,
    close() {
      for (const s of sockets) {
        ours.add(s);
        s.destroy();
      }
    },
  }));
}
