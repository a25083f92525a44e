/**
 * One-off benchmark: push a model with one large blob (default 2 GiB) to an empty
 * docker-registry on loopback with `haul push`, next to
 * `skopeo copy oci:DIR:tag docker://…` of the same blob. Each run gets a fresh
 * registry; the page cache is dropped (when root) and the source read once, so
 * the source is warm and the registry starts cold. Prints every run and the
 * medians, then the same as JSON. haul's peak resident memory is sampled from
 * /proc while it runs.
 *
 * The layer is random bytes in a stored (level 0) gzip stream: skopeo gzips a
 * layer it finds uncompressed before pushing it to a registry, which would
 * measure gzip, not the transfer.
 *
 *   deno run -A scripts/bench_push.ts [--size 2G] [--runs 3] [--chunk-sizes default,16M,64M]
 *     [--tools haul,skopeo,haul-bun] [--storage DIR]
 *
 * `--storage` puts the registries' storage elsewhere (e.g. /dev/shm, to take the
 * disk out of the measurement).
 */
import { spawn } from "node:child_process";
import { randomFillSync } from "node:crypto";
import * as fs from "node:fs/promises";
import { gzipSync } from "node:zlib";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { parseSize } from "../cli/common.ts";
import {
  sha256File,
  sha256hex,
  spawnCli,
  startRegistry,
  tmpDir,
} from "../tests/support/harness.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    size: { type: "string", default: "2G" },
    runs: { type: "string", default: "3" },
    "chunk-sizes": { type: "string", default: "16M" },
    tools: { type: "string", default: "haul,skopeo" },
    storage: { type: "string" },
  },
});
const size = parseSize(values.size, "--size");
const runs = Number(values.runs);
const chunkSizes = values["chunk-sizes"].split(",");
const tools = values.tools.split(",");
if (values.storage) process.env.TMPDIR = values.storage;

function sh(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr.on("data", (d) => (out += d));
    c.on("error", reject);
    c.on("close", (code) => resolve({ code: code ?? 1, out }));
  });
}

async function dropCaches(warm: string): Promise<void> {
  await fs.writeFile("/proc/sys/vm/drop_caches", "1\n").catch(() => {});
  const fh = await fs.open(warm, "r");
  const buf = new Uint8Array(8 << 20);
  while ((await fh.read(buf, 0, buf.length, null)).bytesRead > 0) { /* warm */ }
  await fh.close();
}

/** Random bytes as consecutive gzip members with stored blocks (no compression). */
async function writeStoredGzip(
  file: string,
  approx: number,
): Promise<{ digest: string; size: number }> {
  const fh = await fs.open(file, "w");
  const piece = new Uint8Array(8 << 20);
  try {
    for (let n = 0; n < approx; n += piece.length) {
      randomFillSync(piece);
      const gz = gzipSync(piece.subarray(0, Math.min(piece.length, approx - n)), { level: 0 });
      await fh.write(gz);
    }
  } finally {
    await fh.close();
  }
  const st = await fs.stat(file);
  return { digest: `sha256:${await sha256File(file)}`, size: st.size };
}

/** Runs haul, sampling its peak RSS (VmHWM) while it lives. */
async function runHaul(
  args: string[],
  runtime: "deno" | "bun",
): Promise<{ code: number; stderr: string; peakRss: number }> {
  const child = spawnCli(args, { runtime, timeoutMs: 600_000 });
  let peakRss = 0;
  const poll = setInterval(async () => {
    try {
      const st = await fs.readFile(`/proc/${child.pid}/status`, "utf8");
      peakRss = Math.max(peakRss, Number(/VmHWM:\s+(\d+)/.exec(st)?.[1] ?? 0) * 1024);
    } catch { /* gone */ }
  }, 20);
  const r = await child.result;
  clearInterval(poll);
  return { code: r.code, stderr: r.stderr, peakRss };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const work = await tmpDir("haul-bench-push");
try {
  // One OCI manifest, used unchanged by both tools: config + one big layer.
  const models = path.join(work, "models");
  const oci = path.join(work, "oci");
  await fs.mkdir(path.join(models, "blobs"), { recursive: true });
  await fs.mkdir(path.join(oci, "blobs", "sha256"), { recursive: true });
  const tmpLayer = path.join(work, "layer.bin");
  console.error(`writing a ${size}-byte layer…`);
  const layer = await writeStoredGzip(tmpLayer, size);
  const config = new TextEncoder().encode(JSON.stringify({
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: [layer.digest] },
  }));
  const configDigest = `sha256:${sha256hex(config)}`;
  const manifest = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {
      mediaType: "application/vnd.oci.image.config.v1+json",
      digest: configDigest,
      size: config.length,
    },
    layers: [{
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      digest: layer.digest,
      size: layer.size,
    }],
  }));
  const manifestDigest = `sha256:${sha256hex(manifest)}`;
  const storeBlob = (d: string) => path.join(models, "blobs", d.replace(":", "-"));
  const ociBlob = (d: string) => path.join(oci, "blobs", "sha256", d.slice(7));
  await fs.rename(tmpLayer, storeBlob(layer.digest));
  await fs.link(storeBlob(layer.digest), ociBlob(layer.digest));
  await fs.writeFile(storeBlob(configDigest), config);
  await fs.writeFile(ociBlob(configDigest), config);
  await fs.writeFile(ociBlob(manifestDigest), manifest);
  const mdir = path.join(models, "manifests", "bench.local", "library", "bench");
  await fs.mkdir(mdir, { recursive: true });
  await fs.writeFile(path.join(mdir, "latest"), manifest);
  await fs.writeFile(path.join(oci, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  await fs.writeFile(
    path.join(oci, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        digest: manifestDigest,
        size: manifest.length,
        annotations: { "org.opencontainers.image.ref.name": "latest" },
      }],
    }),
  );

  const variants: { name: string; run: (host: string) => Promise<number | undefined> }[] = [];
  for (const tool of tools) {
    if (tool === "skopeo") {
      variants.push({
        name: "skopeo copy",
        run: async (host) => {
          const r = await sh("skopeo", [
            "--insecure-policy",
            "copy",
            "--quiet",
            `oci:${oci}:latest`,
            `docker://${host}/bench/model:latest`,
            "--dest-tls-verify=false",
          ]);
          if (r.code !== 0) throw new Error(`skopeo failed: ${r.out}`);
          return undefined;
        },
      });
      continue;
    }
    const runtime = tool === "haul-bun" ? "bun" : "deno";
    for (const chunk of chunkSizes) {
      variants.push({
        name: `haul push (${runtime}, ${chunk} chunks)`,
        run: async (host) => {
          const r = await runHaul([
            "push",
            "--insecure",
            "--quiet",
            // "default": no --chunk-size (haul's own choice).
            ...(chunk === "default" ? [] : ["--chunk-size", chunk]),
            "--models",
            models,
            "bench.local/library/bench:latest",
            `${host}/bench/model:latest`,
          ], runtime);
          if (r.code !== 0) throw new Error(`haul failed: ${r.stderr}`);
          return r.peakRss;
        },
      });
    }
  }

  const results: {
    name: string;
    seconds: number[];
    median: number;
    mbps: number;
    peakRssMiB?: number;
  }[] = [];
  for (const v of variants) {
    const seconds: number[] = [];
    let peak: number | undefined;
    for (let i = 0; i < runs; i++) {
      const reg = await startRegistry({});
      try {
        await dropCaches(storeBlob(layer.digest));
        const t0 = performance.now();
        const rss = await v.run(reg.host);
        const s = (performance.now() - t0) / 1000;
        if (rss !== undefined) peak = Math.max(peak ?? 0, rss);
        const res = await fetch(`${reg.url}/v2/bench/model/manifests/latest`, {
          headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
        });
        const got = `sha256:${sha256hex(new Uint8Array(await res.arrayBuffer()))}`;
        if (got !== manifestDigest) throw new Error(`${v.name}: registry has ${got}`);
        seconds.push(s);
        console.error(`${v.name} run ${i + 1}: ${s.toFixed(2)} s`);
      } finally {
        await reg.stop();
      }
    }
    const m = median(seconds);
    results.push({
      name: v.name,
      seconds,
      median: m,
      mbps: layer.size / 1e6 / m,
      ...(peak !== undefined ? { peakRssMiB: Math.round(peak / 2 ** 20) } : {}),
    });
  }
  console.log(`\n${layer.size} bytes, ${runs} runs each, median:`);
  for (const r of results) {
    console.log(
      `  ${r.name.padEnd(34)} ${r.median.toFixed(2)} s  (${r.mbps.toFixed(0)} MB/s; runs ${
        r.seconds.map((s) => s.toFixed(2)).join(", ")
      }${r.peakRssMiB !== undefined ? `; peak RSS ${r.peakRssMiB} MiB` : ""})`,
    );
  }
  console.log(
    JSON.stringify({ size: layer.size, runs, storage: values.storage ?? "tmpdir", results }),
  );
} finally {
  await fs.rm(work, { recursive: true, force: true });
}
