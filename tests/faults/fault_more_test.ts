/**
 * Faults outside the per-request matrix: kill -9 at seeded points with resume, two pulls of
 * one model at once, disk full mid-blob, malicious manifests and references, and a blob
 * damaged on disk (verify, repair). Each test writes its section of docs/FAULTS.md.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { Buffer } from "node:buffer";
import * as crypto from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import {
  type Fixture,
  makeOllamaModel,
  MEDIA,
  pushFixture,
  type Registry,
  runCli,
  sleep,
  spawnCli,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";
import { type FaultProxy, startFaultProxy } from "../support/fault_proxy.ts";
import {
  between,
  cell,
  errorLine,
  MiB,
  missingOrWrong,
  rng,
  SEED,
  storeProblems,
  today,
  totalSize,
  writeDocSection,
} from "./fault_support.ts";

const BLOBS = /\/blobs\//;
const SMALL_MAX = 16 * MiB; // blobs up to this size are one GET into a temp file (lib default)
const BUFFER = MiB; // the per-stream write batch (lib default)

const pullArgs = (models: string, ref: string, extra: string[] = []) => [
  "pull",
  "--insecure",
  "--quiet",
  "--models",
  models,
  ...extra,
  ref,
];

async function manifestIs(models: string, host: string, repo: string, bytes: Uint8Array) {
  const got = await fsp.readFile(path.join(models, "manifests", host, ...repo.split("/"), "latest"))
    .catch(() => undefined);
  return !!got && Buffer.compare(got, Buffer.from(bytes)) === 0;
}

/** Bytes a later run will not fetch again: complete blobs, and parts recorded in state files. */
async function recorded(models: string, fx: Fixture): Promise<number> {
  let n = 0;
  for (const b of fx.blobs) {
    const file = path.join(models, "blobs", b.digest.replace(":", "-"));
    const st = await fsp.stat(file).catch(() => undefined);
    if (st?.size === b.size) {
      n += b.size;
      continue;
    }
    const state = path.join(
      models,
      ".haul",
      "partial",
      `${b.digest.replace(":", "-")}-partial.json`,
    );
    try {
      const s = JSON.parse(await fsp.readFile(state, "utf8"));
      if (s.digest === b.digest && s.size === b.size) {
        n += (s.parts as { done: number }[]).reduce((a, p) => a + p.done, 0);
      }
    } catch {
      // no state
    }
  }
  return n;
}

async function smallIncomplete(models: string, fx: Fixture): Promise<number> {
  let n = 0;
  for (const b of fx.blobs) {
    if (b.size > SMALL_MAX) continue;
    const st = await fsp.stat(path.join(models, "blobs", b.digest.replace(":", "-"))).catch(() =>
      undefined
    );
    if (st?.size !== b.size) n += b.size;
  }
  return n;
}

/** Requests for one blob's bytes (not its `chunksums`, whose URL holds the digest too). */
const blobUrl = (digest: string) => new RegExp(`/blobs/${digest}`);

const fmtMiB = (n: number) => `${(n / MiB).toFixed(2)} MiB`;

Deno.test({
  name:
    "haul pull survives kill -9 at 20 seeded points; the waste stays within the bytes in flight",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const r = rng(SEED ^ 0x6b696c6c);
    const fx = makeOllamaModel({
      layerSizes: [40 * MiB + 3, 40 * MiB + 7, 2 * MiB + 1, 64 * 1024 + 5, 1025],
      seed: (SEED % 100_000) + 1,
    });
    const RATE = 700_000; // bytes per second per request
    const CONC = 4;
    const reg = await startRegistry();
    const models = await tmpDir("haul-kill-models");
    let proxy: FaultProxy | undefined;
    try {
      await pushFixture(reg, "library/killme", "latest", fx);
      proxy = await startFaultProxy(reg.url, {
        rule: (q) =>
          q.method === "GET" && BLOBS.test(q.url) ? { rateBytesPerSec: RATE } : undefined,
      });
      const args = pullArgs(models, `${proxy.host}/library/killme:latest`, [
        "--concurrency",
        String(CONC),
        "--part-size",
        "8M",
      ]);
      // Per stream: at most one unflushed batch (full, or a second's worth when slow) and one
      // flushed batch the state file has not recorded yet, plus what sits in socket buffers.
      const perStream = 2 * Math.min(BUFFER, RATE + 16 * 1024) + 64 * 1024;
      const rows: string[] = [];
      let bound = 0;
      let kills = 0;
      let wasteSmall = 0;
      let wasteLarge = 0;
      let maxWaste = 0;
      const smallBlobs = fx.blobs.filter((x) => x.size <= SMALL_MAX);
      const smallBytes = () =>
        smallBlobs.reduce((a, x) => a + proxy!.bytesOut(blobUrl(x.digest)), 0);
      const smallKept = async () => {
        let n = 0;
        for (const x of smallBlobs) {
          const st = await fsp.stat(path.join(models, "blobs", x.digest.replace(":", "-")))
            .catch(() => undefined);
          if (st?.size === x.size) n += x.size;
        }
        return n;
      };
      for (let i = 0; i < 20; i++) {
        const delay = between(r, 700, 2500);
        const sentBefore = proxy.bytesOut(BLOBS);
        const keptBefore = await recorded(models, fx);
        const smallOpen = await smallIncomplete(models, fx);
        const smallSentBefore = smallBytes();
        const smallKeptBefore = await smallKept();
        const child = spawnCli(args, { timeoutMs: 60_000 });
        const done = await Promise.race([
          child.result.then(() => true),
          sleep(delay).then(() => false),
        ]);
        if (done) {
          const res = await child.result;
          assert.equal(res.code, 0, `run ${i + 1} ended before its kill: ${res.stderr}`);
          rows.push(`| ${i + 1} | ${delay} | finished before the kill | | | | | |`);
          break;
        }
        child.kill("SIGKILL");
        const res = await child.result;
        assert.equal(res.signal, "SIGKILL");
        kills++;
        const sent = proxy.bytesOut(BLOBS) - sentBefore;
        const kept = (await recorded(models, fx)) - keptBefore;
        const smallWaste = smallBytes() - smallSentBefore - ((await smallKept()) - smallKeptBefore);
        wasteSmall += smallWaste;
        wasteLarge += sent - kept - smallWaste;
        maxWaste = Math.max(maxWaste, sent - kept);
        const b = smallOpen + CONC * perStream;
        bound += b;
        rows.push(
          `| ${i + 1} | ${delay} | ${fmtMiB(sent)} | ${fmtMiB(kept)} | ${fmtMiB(sent - kept)} | ${
            fmtMiB(smallWaste)
          } | ${fmtMiB(sent - kept - smallWaste)} | ${fmtMiB(b)} |`,
        );
        const problems = await storeProblems(models, fx.blobs);
        assert.deepEqual(problems, [], `store after kill ${i + 1}`);
      }
      // The last run needs no throttle: nothing kills it.
      proxy.setRule(undefined);
      const sentBefore = proxy.bytesOut(BLOBS);
      const last = await runCli(args, { timeoutMs: 120_000 });
      assert.equal(last.code, 0, last.stderr);
      assert.deepEqual(await missingOrWrong(models, fx.blobs), []);
      assert.ok(await manifestIs(models, proxy.host, "library/killme", fx.manifest));
      assert.deepEqual(await storeProblems(models, fx.blobs), []);
      // blobs/ and haul's partial folder: everything but complete blobs is a leftover.
      const leftovers: string[] = [];
      for (const dir of [path.join(models, "blobs"), path.join(models, ".haul", "partial")]) {
        for (const n of await fsp.readdir(dir).catch(() => [] as string[])) {
          if (!/^sha256-[0-9a-f]{64}$/.test(n)) leftovers.push(path.join(dir, n));
        }
      }
      // A killed process cannot remove its small-blob temp file (`-partial.<pid>-<rand>.tmp`);
      // nothing else may stay: no partial file, state file or lock of a large blob.
      const orphans = leftovers.filter((n) => /-partial\.\d+-[0-9a-f]+\.tmp$/.test(n));
      assert.deepEqual(
        leftovers.filter((n) => !orphans.includes(n)),
        [],
        "no partial, state or lock file left",
      );
      let orphanBytes = 0;
      for (const n of orphans) orphanBytes += (await fsp.stat(n)).size;
      const total = proxy.bytesOut(BLOBS);
      const size = totalSize(fx.blobs);
      const waste = total - size;
      await writeDocSection(
        "kill",
        [
          "## kill -9 and resume",
          "",
          `Run ${today()}, seed ${SEED}. A model of ${fx.blobs.length} blobs (${size} bytes: two ` +
          "of 40 MiB in 8 MiB Range parts, 2 MiB, 64 KiB, 1 KiB and the config), " +
          `\`--concurrency ${CONC}\`, every blob request throttled to ${RATE} B/s by the proxy. ` +
          `Each run is killed with SIGKILL after a seeded delay (ms), then the same command runs ` +
          `again. ${kills} kills; the last run completed, every blob verified, no partial, ` +
          "state or lock file left.",
          "",
          `Bound per kill: the small blobs not yet complete (fetched whole, lost when killed) + ` +
          `${CONC} streams × ${fmtMiB(perStream)} (one unflushed write batch of at most ` +
          "min(1 MiB, a second of data), one flushed batch not yet in the state file, 64 KiB " +
          "of socket buffers).",
          "",
          "| run | kill after ms | sent by the proxy | recorded for resume | wasted | of which small blobs restarted | of which large-blob parts | bound |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |",
          ...rows,
          `| final (not throttled) | — | ${fmtMiB(total - sentBefore)} | — | — | — | — | — |`,
          "",
          `Small-blob temp files of killed processes left in \`blobs/\`: ${orphans.length} ` +
          `(${fmtMiB(orphanBytes)}; \`haul prune\` removes them).`,
          "",
          `Total blob bytes sent over all runs: ${total} (${fmtMiB(total)}); model: ${size} ` +
          `(${fmtMiB(size)}); waste ${waste} bytes (${fmtMiB(waste)}, ${
            (100 * waste / size).toFixed(1)
          }% of the model): ${fmtMiB(wasteSmall)} from small blobs fetched again from zero, ` +
          `${fmtMiB(wasteLarge)} from large-blob parts (unflushed batches and state lag: ` +
          `${fmtMiB(wasteLarge / Math.max(1, kills))} per kill, ` +
          `${fmtMiB(wasteLarge / Math.max(1, kills) / CONC)} per stream). Largest waste of one ` +
          `kill: ${fmtMiB(maxWaste)}. Asserted: total waste ≤ the sum of the per-kill bounds, ` +
          `${fmtMiB(bound)}; for reference, ${kills} kills × ${CONC} streams × 1 MiB = ${
            fmtMiB(kills * CONC * MiB)
          }.`,
        ].join("\n"),
      );
      assert.ok(waste >= 0, "at least the model was fetched");
      assert.ok(
        waste <= bound,
        `waste ${waste} bytes is over the bound of ${bound} bytes in flight`,
      );
    } finally {
      await proxy?.stop();
      await reg.stop();
      await fx.cleanup?.();
      await fsp.rm(models, { recursive: true, force: true });
    }
  },
});

Deno.test({
  name: "two haul pull processes of one model at once both succeed with one verified copy",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const fx = makeOllamaModel({
      layerSizes: [30 * MiB + 1, 20 * MiB + 3, 300 * 1024 + 7, 100],
      seed: (SEED % 100_000) + 2,
    });
    const reg = await startRegistry();
    const models = await tmpDir("haul-twice-models");
    const proxy = await startFaultProxy(reg.url, {
      rule: (q) => q.method === "GET" && BLOBS.test(q.url) ? { rateBytesPerSec: 6e6 } : undefined,
    });
    try {
      await pushFixture(reg, "library/twice", "latest", fx);
      const args = pullArgs(models, `${proxy.host}/library/twice:latest`, ["--part-size", "8M"]);
      const t0 = Date.now();
      const [a, b] = await Promise.all([
        runCli(args, { timeoutMs: 120_000 }),
        sleep(150).then(() => runCli(args, { timeoutMs: 120_000 })),
      ]);
      const secs = (Date.now() - t0) / 1000;
      assert.equal(a.code, 0, a.stderr);
      assert.equal(b.code, 0, b.stderr);
      assert.deepEqual(await missingOrWrong(models, fx.blobs), []);
      assert.deepEqual(await storeProblems(models, fx.blobs), []);
      assert.ok(await manifestIs(models, proxy.host, "library/twice", fx.manifest));
      const names = await fsp.readdir(path.join(models, "blobs"));
      assert.deepEqual(
        names.sort(),
        fx.blobs.map((x) => x.digest.replace(":", "-")).sort(),
        "exactly one file per blob, nothing else",
      );
      const size = totalSize(fx.blobs);
      const small = fx.blobs.filter((x) => x.size <= SMALL_MAX).reduce((s, x) => s + x.size, 0);
      const sent = proxy.bytesOut(BLOBS);
      const large = fx.blobs.filter((x) => x.size > SMALL_MAX);
      const largeSent = large.map((x) => proxy.bytesOut(blobUrl(x.digest)));
      await writeDocSection(
        "concurrent",
        [
          "## Two pulls of one model at once",
          "",
          `Run ${today()}, seed ${SEED}: two \`haul pull\` processes of the same model into one ` +
          `store, the second 150 ms after the first, blob requests throttled to 6 MB/s each. ` +
          `Both exited 0 in ${secs.toFixed(1)} s; one verified file per blob and nothing else ` +
          `in \`blobs/\`. Blob bytes sent: ${sent} for a model of ${size} (large blobs: ${
            large.map((x, i) => `${largeSent[i]} of ${x.size}`).join(", ")
          }; the lock file makes the second process wait for a large blob the first is ` +
          "fetching; small blobs may be fetched by both).",
        ].join("\n"),
      );
      for (const [i, x] of large.entries()) {
        assert.equal(largeSent[i], x.size, `large blob ${x.digest} fetched once`);
      }
      assert.ok(sent <= size + small, `${sent} bytes sent; at most ${size + small} expected`);
    } finally {
      await proxy.stop();
      await reg.stop();
      await fx.cleanup?.();
      await fsp.rm(models, { recursive: true, force: true });
    }
  },
});

function sh(cmd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, (err, stdout, stderr) => resolve({ ok: !err, out: `${stdout}${stderr}` }));
  });
}

Deno.test({
  name:
    "haul pull on a full disk: exit 8 naming the path, nothing corrupt, resumes once there is room",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    // RLIMIT_FSIZE is no substitute: Deno does not ignore SIGXFSZ, so `prlimit --fsize` kills
    // the process (exit 153) instead of failing the write with EFBIG. A small tmpfs is a real
    // ENOSPC, and needs root.
    const base = await tmpDir("haul-diskfull");
    const mnt = path.join(base, "models");
    await fsp.mkdir(mnt);
    const mounted = process.getuid?.() === 0 &&
      (await sh("mount", ["-t", "tmpfs", "-o", "size=30m", "tmpfs", mnt])).ok;
    if (!mounted) {
      await writeDocSection(
        "diskfull",
        "## Disk full\n\nNot run: mounting a tmpfs needs root (`mount -t tmpfs`).",
      );
      await fsp.rm(base, { recursive: true, force: true });
      console.log("skipped: mounting a tmpfs needs root");
      await t.step({ name: "skipped: not root", ignore: true, fn: () => {} });
      return;
    }
    const fx = makeOllamaModel({ layerSizes: [47 * MiB + 5, 1000], seed: (SEED % 100_000) + 3 });
    const big = fx.blobs[1];
    const reg = await startRegistry();
    const proxy = await startFaultProxy(reg.url);
    try {
      await pushFixture(reg, "library/full", "latest", fx);
      const args = pullArgs(mnt, `${proxy.host}/library/full:latest`, ["--part-size", "8M"]);
      const full = await runCli(args, { timeoutMs: 60_000 });
      const { line, single } = errorLine(full.stderr);
      assert.equal(full.code, 8, full.stderr);
      assert.ok(single, `one line: ${full.stderr}`);
      assert.match(line, /no space left on device/);
      assert.ok(line.includes(mnt), `the message names the path: ${line}`);
      assert.deepEqual(await storeProblems(mnt, fx.blobs), []);
      await assert.rejects(fsp.stat(path.join(mnt, "blobs", big.digest.replace(":", "-"))));
      const keptAfterFull = await recorded(mnt, fx);
      // What the partial file holds (tmpfs allocates only written pages).
      const partialInfo = await fsp.stat(
        path.join(mnt, ".haul", "partial", big.digest.replace(":", "-") + "-partial"),
      ).catch(() => undefined);
      const written = partialInfo ? partialInfo.blocks * 512 : 0;

      assert.ok((await sh("mount", ["-o", "remount,size=200m", mnt])).ok, "remount");
      const before = proxy.bytesOut(blobUrl(big.digest));
      const again = await runCli(args, { timeoutMs: 60_000 });
      assert.equal(again.code, 0, again.stderr);
      assert.deepEqual(await missingOrWrong(mnt, fx.blobs), []);
      assert.deepEqual(await storeProblems(mnt, fx.blobs), []);
      const refetched = proxy.bytesOut(blobUrl(big.digest)) - before;
      await writeDocSection(
        "diskfull",
        [
          "## Disk full",
          "",
          `Run ${today()}, seed ${SEED}: the store on a 30 MiB tmpfs, a ${big.size}-byte blob in ` +
          `8 MiB parts. The pull exited ${full.code}: \`${
            line.replace(base, "<tmp>")
          }\`. No blob under a final name with wrong content; the partial file held ` +
          `${written} bytes of data when the disk filled, the state file recorded ${keptAfterFull} bytes as done. After growing the tmpfs to 200 MiB the same command exited ` +
          `${again.code} verified, fetching ${refetched} bytes of the blob again (${
            (100 * refetched / big.size).toFixed(0)
          }% of it).`,
          "",
          "`prlimit --fsize` is not used: Deno does not ignore SIGXFSZ, so a process over " +
          "RLIMIT_FSIZE dies by the signal (exit 153) instead of seeing EFBIG.",
        ].join("\n"),
      );
      assert.ok(refetched < big.size, `resumed: ${refetched} of ${big.size} bytes fetched again`);
      // How much of what fit survives depends on when the last state save landed: the save
      // after ENOSPC itself fails (it needs a new file), so on a fast link most is fetched
      // again. Reported in docs/FAULTS.md; only the brief's bound is asserted.
    } finally {
      await proxy.stop();
      await reg.stop();
      await sh("umount", [mnt]);
      await fx.cleanup?.();
      await fsp.rm(base, { recursive: true, force: true });
    }
  },
});

// ------------------------------------------------------------------ malicious manifests

interface ManifestCase {
  name: string;
  /** The manifest body to serve; undefined: REF case (no registry involved). */
  body?: Uint8Array | string;
  /** Serve with `Docker-Content-Digest` (matching) and without: both must behave the same. */
  digestHeader?: "both" | "wrong";
  chunked?: boolean;
  ref?: (host: string) => string;
  code: number;
  re: RegExp;
}

const hex64 = (c: string) => c.repeat(64);

Deno.test({
  name:
    "haul pull refuses malicious or broken manifests and references before writing anything outside the store",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const fx = makeOllamaModel({
      layerSizes: [1500, 18 * MiB + 5],
      seed: (SEED % 100_000) + 4,
    });
    const [config, small, large] = fx.blobs;
    const reg = await startRegistry();
    const proxy = await startFaultProxy(reg.url);
    try {
      await pushFixture(reg, "library/evil", "latest", fx);
      const base = JSON.parse(new TextDecoder().decode(fx.manifest));
      const desc = (b: typeof small, over: Record<string, unknown> = {}) => ({
        mediaType: b.mediaType,
        digest: b.digest,
        size: b.size,
        ...over,
      });
      const doc = (layers: unknown[], cfg: unknown = desc(config), extra = {}) =>
        JSON.stringify({ ...base, config: cfg, layers, ...extra });
      const bad = (over: Record<string, unknown>) => doc([desc(small, over)]);
      const big = "{" + `"pad":"${"x".repeat(4 * MiB + 100)}",` + doc([desc(small)]).slice(1);
      const cases: ManifestCase[] = [
        {
          name: "layer digest with path components `sha256:../../../../escaped`",
          body: bad({ digest: "sha256:../../../../escaped" }),
          code: 9,
          re: /digest/i,
        },
        {
          name: "config digest with path components `sha256:/etc/passwd`",
          body: doc([desc(small)], desc(config, { digest: "sha256:/etc/passwd" })),
          code: 9,
          re: /digest/i,
        },
        {
          name: "digest of the wrong length (`sha256:` + 12 hex)",
          body: bad({ digest: "sha256:0123456789ab" }),
          code: 9,
          re: /64 hex/,
        },
        {
          name: "digest not hex",
          body: bad({ digest: `sha256:${hex64("g")}` }),
          code: 9,
          re: /hex/,
        },
        {
          name: "digest in upper-case hex",
          body: bad({ digest: `sha256:${hex64("A")}` }),
          code: 9,
          re: /hex/,
        },
        {
          name: "unknown algorithm `sha512:`",
          body: bad({ digest: `sha512:${hex64("ab")}` }),
          code: 9,
          re: /algorithm/,
        },
        {
          name: "unknown algorithm `md5:`",
          body: bad({ digest: "md5:d41d8cd98f00b204e9800998ecf8427e" }),
          code: 9,
          re: /algorithm/,
        },
        { name: "digest missing", body: bad({ digest: undefined }), code: 9, re: /digest/i },
        { name: "negative size", body: bad({ size: -1 }), code: 9, re: /size/ },
        { name: "absurd size (2^60)", body: bad({ size: 2 ** 60 }), code: 9, re: /size/ },
        { name: "fractional size", body: bad({ size: 1.5 }), code: 9, re: /size/ },
        { name: "size as a string", body: bad({ size: "1500" }), code: 9, re: /size/ },
        {
          name: "size 1000 for a blob of 1500 bytes",
          body: bad({ size: 1000 }),
          code: 5,
          re: /1500|1000|size/,
        },
        {
          name: "size 2000 for a blob of 1500 bytes",
          body: bad({ size: 2000 }),
          code: 5,
          re: /1500|2000|size/,
        },
        {
          name: `size ${large.size - 3 * MiB} for a Range-fetched blob of ${large.size}`,
          body: doc([desc(small), desc(large, { size: large.size - 3 * MiB })]),
          code: 5,
          re: /size|bytes|Content-Range|digest/i,
        },
        {
          name: `size ${large.size + 3 * MiB} for a Range-fetched blob of ${large.size}`,
          body: doc([desc(small), desc(large, { size: large.size + 3 * MiB })]),
          code: 5,
          re: /size|bytes|Content-Range|digest/i,
        },
        {
          name: "the same layer twice, same size (allowed: one copy)",
          body: doc([desc(small), desc(small)]),
          code: 0,
          re: /^$/,
        },
        {
          name: "the same layer twice with different sizes",
          body: doc([desc(small), desc(small, { size: 1499 })]),
          code: 9,
          re: /twice/,
        },
        { name: "invalid JSON", body: doc([desc(small)]).slice(0, -7), code: 9, re: /JSON/ },
        {
          name: "not UTF-8",
          body: new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]),
          code: 9,
          re: /JSON|UTF/i,
        },
        {
          name: "schemaVersion 1",
          body: doc([desc(small)], desc(config), { schemaVersion: 1 }),
          code: 9,
          re: /schemaVersion/,
        },
        {
          name: "layers not an array",
          body: JSON.stringify({ ...base, layers: { 0: desc(small) } }),
          code: 9,
          re: /layers/,
        },
        {
          name: "index whose entry has a path digest",
          body: JSON.stringify({
            schemaVersion: 2,
            mediaType: "application/vnd.oci.image.index.v1+json",
            manifests: [{
              mediaType: MEDIA.ociManifest,
              digest: "sha256:../../x",
              size: 10,
              platform: { os: "linux", architecture: "amd64" },
            }],
          }),
          code: 9,
          re: /digest/i,
        },
        {
          name: "oversized document (4 MiB + 100 B, with Content-Length)",
          body: big,
          code: 9,
          re: /limit|bytes/,
        },
        {
          name: "oversized document (4 MiB + 100 B, chunked)",
          body: big,
          chunked: true,
          code: 9,
          re: /limit|bytes/,
        },
        {
          name: "Docker-Content-Digest that does not match the body",
          body: doc([desc(small)]),
          digestHeader: "wrong",
          code: 5,
          re: /hashes to|digest/i,
        },
        { name: "REF `HOST/../x`", ref: (h) => `${h}/../x`, code: 2, re: /reference|store/i },
        {
          name: "REF `HOST/a/../../b`",
          ref: (h) => `${h}/a/../../b`,
          code: 2,
          re: /reference|store/i,
        },
        {
          name: "REF `HOST/%2e%2e/x`",
          ref: (h) => `${h}/%2e%2e/x`,
          code: 2,
          re: /reference|store/i,
        },
        {
          name: "REF `HOST/library/..:latest`",
          ref: (h) => `${h}/library/..:latest`,
          code: 2,
          re: /reference|store/i,
        },
        { name: "REF `../x`", ref: () => "../x", code: 2, re: /reference|store/i },
        { name: "REF `HOST/./x`", ref: (h) => `${h}/./x`, code: 2, re: /reference|store/i },
      ];
      const rows: string[] = [];
      const failures: string[] = [];
      for (const c of cases) {
        const variants: ("match" | "none" | "wrong")[] = c.ref
          ? ["none"]
          : c.digestHeader === "wrong"
          ? ["wrong"]
          : ["match", "none"];
        const outcomes: string[] = [];
        for (const v of variants) {
          const sentinel = await tmpDir("haul-sentinel");
          const models = path.join(sentinel, "store");
          await fsp.mkdir(models);
          const body = c.body === undefined
            ? undefined
            : typeof c.body === "string"
            ? new TextEncoder().encode(c.body)
            : c.body;
          if (body) {
            const headers: Record<string, string> = { "content-type": MEDIA.dockerManifest };
            if (v === "match") {
              headers["docker-content-digest"] = `sha256:${
                crypto.createHash("sha256").update(body).digest("hex")
              }`;
            }
            if (v === "wrong") headers["docker-content-digest"] = `sha256:${hex64("0")}`;
            proxy.setRule((q) =>
              /\/manifests\/latest$/.test(q.url)
                ? { respond: { status: 200, headers, body, chunked: c.chunked } }
                : undefined
            );
          } else {
            proxy.setRule(undefined);
          }
          const before = proxy.bytesOut(BLOBS);
          const ref = c.ref ? c.ref(proxy.host) : `${proxy.host}/library/evil:latest`;
          const res = await runCli(pullArgs(models, ref, ["--retries", "1"]), {
            timeoutMs: 60_000,
          });
          const { line, single } = errorLine(res.stderr);
          const problems: string[] = [];
          if (res.code !== c.code) problems.push(`exit ${res.code}, expected ${c.code}`);
          if (c.code !== 0 && !single) {
            problems.push(`stderr not one line: ${res.stderr.slice(-300)}`);
          }
          if (c.code !== 0 && !c.re.test(line)) problems.push(`message does not match ${c.re}`);
          // Nothing beside the store: the sentinel directory around it holds only "store".
          const around = await fsp.readdir(sentinel);
          if (around.length !== 1) problems.push(`written beside the store: ${around.join(", ")}`);
          problems.push(...await storeProblems(models, fx.blobs));
          const blobDir = await fsp.readdir(path.join(models, "blobs")).catch(() => [] as string[]);
          const strange = blobDir.filter((n) => !/^sha256-[0-9a-f]{64}/.test(n));
          if (strange.length) problems.push(`odd files in blobs/: ${strange.join(", ")}`);
          if (c.code === 9 || c.code === 2) {
            if (proxy.bytesOut(BLOBS) !== before) problems.push("blob bytes were fetched");
            if (blobDir.length) problems.push(`blobs written: ${blobDir.join(", ")}`);
          }
          if (c.code === 5 && c.body) {
            const named = blobDir.filter((n) => /^sha256-[0-9a-f]{64}$/.test(n));
            for (const n of named) {
              if (![config, small, large].some((b) => b.digest.replace(":", "-") === n)) {
                problems.push(`unexpected blob ${n}`);
              }
            }
          }
          const label = v === "match"
            ? "with matching Docker-Content-Digest"
            : v === "wrong"
            ? "with a wrong Docker-Content-Digest"
            : c.ref
            ? ""
            : "without Docker-Content-Digest";
          const shown = res.code === 0
            ? "ok (verified)"
            : `exit ${res.code}: ${
              line.replace(/^haul: /, "").replace(/127\.0\.0\.1:\d+/g, "HOST")
            }`;
          outcomes.push(
            `${label ? label + ": " : ""}${
              problems.length ? `FAIL: ${problems.join("; ")} (got ${shown})` : shown
            }`,
          );
          if (problems.length) failures.push(`${c.name} ${label}: ${problems.join("; ")}`);
          await fsp.rm(sentinel, { recursive: true, force: true });
        }
        rows.push(`| ${cell(c.name)} | ${c.code} | ${cell(outcomes.join("<br>"))} |`);
      }
      await writeDocSection(
        "manifests",
        [
          "## Malicious or broken manifests and references",
          "",
          `Run ${today()}, seed ${SEED}. Each manifest is served by the proxy in place of the ` +
          "registry's (with a matching `Docker-Content-Digest` header and without); the store " +
          "sits alone in a sentinel directory, which must hold nothing else afterwards; for " +
          "exit 9 and 2 no blob byte may be fetched and nothing written under `blobs/`.",
          "",
          "| input | expected exit | outcome |",
          "| --- | --- | --- |",
          ...rows,
        ].join("\n"),
      );
      assert.deepEqual(failures, []);
    } finally {
      await proxy.stop();
      await reg.stop();
      await fx.cleanup?.();
    }
  },
});

// ------------------------------------------------------------------ damaged blob on disk

Deno.test({
  name: "haul verify finds a blob damaged on disk and verify --fix then pull repairs it",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const fx = makeOllamaModel({ layerSizes: [20 * MiB + 1, 4000], seed: (SEED % 100_000) + 5 });
    const [, big, small] = fx.blobs;
    let reg: Registry | undefined;
    let proxy: FaultProxy | undefined;
    const models = await tmpDir("haul-verify-models");
    try {
      reg = await startRegistry();
      await pushFixture(reg, "library/rot", "latest", fx);
      proxy = await startFaultProxy(reg.url);
      const ref = `${proxy.host}/library/rot:latest`;
      const blobFile = (b: typeof big) => path.join(models, "blobs", b.digest.replace(":", "-"));
      const verify = (extra: string[] = []) =>
        runCli(["verify", "--quiet", "--models", models, ...extra], { timeoutMs: 60_000 });
      const steps: string[] = [];
      const step = (what: string, r: { code: number; stdout: string; stderr: string }) =>
        steps.push(
          `| ${cell(what)} | ${r.code} | ${
            cell(
              (r.stdout.trim() + " " + r.stderr.trim()).trim().replace(
                /sha256:([0-9a-f]{12})[0-9a-f]{52}/g,
                "sha256:$1…",
              ).replace(/\/tmp\/[^\s]+\/blobs\//g, "<store>/blobs/").replace(
                /127\.0\.0\.1:\d+/g,
                "HOST",
              ),
            )
          } |`,
        );

      const first = await runCli(pullArgs(models, ref), { timeoutMs: 60_000 });
      assert.equal(first.code, 0, first.stderr);
      const clean = await verify();
      step("verify a fresh pull", clean);
      assert.equal(clean.code, 0, clean.stderr);

      // One byte flipped in place: the size stays right, so only re-hashing sees it.
      const fh = await fsp.open(blobFile(big), "r+");
      const one = new Uint8Array(1);
      await fh.read(one, 0, 1, 12345);
      one[0] ^= 0x01;
      await fh.write(one, 0, 1, 12345);
      await fh.close();
      const found = await verify();
      step("verify after flipping one byte of the 20 MiB blob", found);
      assert.equal(found.code, 5, found.stderr);
      assert.ok(found.stdout.includes(big.digest), found.stdout);

      const fixed = await verify(["--fix"]);
      step("verify --fix", fixed);
      assert.equal(fixed.code, 5, "still incomplete until pulled");
      await assert.rejects(fsp.stat(blobFile(big)), "the damaged blob was removed");

      const before = proxy.bytesOut(BLOBS);
      const repair = await runCli(pullArgs(models, ref), { timeoutMs: 60_000 });
      step("pull", repair);
      assert.equal(repair.code, 0, repair.stderr);
      assert.equal(proxy.bytesOut(BLOBS) - before, big.size, "only the removed blob is fetched");
      const after = await verify();
      step("verify", after);
      assert.equal(after.code, 0, after.stdout);

      // A truncated blob (wrong size) and a missing one: pull alone repairs them.
      await fsp.truncate(blobFile(small), 100);
      await fsp.rm(blobFile(big));
      const broken = await verify();
      step("verify after truncating the small blob and deleting the large one", broken);
      assert.equal(broken.code, 5, broken.stdout);
      const repair2 = await runCli(pullArgs(models, ref), { timeoutMs: 60_000 });
      step("pull", repair2);
      assert.equal(repair2.code, 0, repair2.stderr);
      const final = await verify();
      step("verify", final);
      assert.equal(final.code, 0, final.stdout);
      assert.deepEqual(await missingOrWrong(models, fx.blobs), []);
      await writeDocSection(
        "verify",
        [
          "## A blob damaged on disk",
          "",
          `Run ${today()}, seed ${SEED}: \`haul verify\`, \`verify --fix\` and \`pull\` on a ` +
          "store whose blobs are changed behind haul's back.",
          "",
          "| step | exit | output |",
          "| --- | --- | --- |",
          ...steps,
        ].join("\n"),
      );
    } finally {
      await proxy?.stop();
      await reg?.stop();
      await fx.cleanup?.();
      await fsp.rm(models, { recursive: true, force: true });
    }
  },
});
