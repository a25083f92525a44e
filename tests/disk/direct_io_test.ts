/**
 * Direct I/O (`HAUL_DIRECT_IO=1`, lib/disk/direct_io.ts): the aligned buffers, the
 * write worker's aligned middles and the hash worker's O_DIRECT reads, and a
 * real pull (and a resume after kill -9) with it on.
 *
 * The variable is process-wide and `deno test --parallel` runs test modules as
 * threads of one process, where other modules spawn CLIs (which inherit it) and
 * hash big files: so only the synchronous alignedBuffers() check sets it here,
 * and the block-writer cases run in a child (this file, `deno run … --child`).
 * O_DIRECT is seen from outside through /proc/<pid>/fdinfo (the `flags:` line).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { acquireBlockWriter } from "../../lib/disk/block_writer.ts";
import { alignedBuffers, directIoWanted } from "../../lib/disk/direct_io.ts";
import { createFileHasher } from "../../lib/disk/hasher.ts";
import {
  deterministicBytes,
  makeOllamaModel,
  pushFixture,
  REPO_ROOT,
  sha256File,
  spawnCli,
  startRegistry,
} from "../support/harness.ts";
import { startFaultProxy } from "../support/fault_proxy.ts";

const MiB = 1024 * 1024;
const ENV = "HAUL_DIRECT_IO";
const O_DIRECT: number | undefined = (fs.constants as Record<string, number>).O_DIRECT;
const O_ACCMODE = 3;
const CHILD_FLAG = "--direct-io-child";
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

/**
 * Where the files go: the usual temp dir if it is on a disk file system, else the
 * repo's git-ignored tmp/; undefined (the tests are skipped) when neither is or
 * the platform has no O_DIRECT.
 */
function diskBase(): string | undefined {
  if (!O_DIRECT) return undefined;
  for (const dir of [os.tmpdir(), path.join(REPO_ROOT, "tmp")]) {
    try {
      fs.mkdirSync(dir, { recursive: true });
      const type = Number(fs.statfsSync(dir).type);
      if (type !== TMPFS_MAGIC && type !== RAMFS_MAGIC) return fs.realpathSync(dir);
    } catch {
      // not usable: try the next
    }
  }
  return undefined;
}

const BASE = diskBase();
const SKIP = BASE === undefined;
if (SKIP && !Deno.args.includes(CHILD_FLAG)) {
  console.warn(
    "direct_io_test: skipped, no O_DIRECT on this platform or no disk file system for " +
      `${os.tmpdir()} or ${path.join(REPO_ROOT, "tmp")} (tmpfs/ramfs)`,
  );
}

function scratchDir(prefix: string): string {
  return fs.mkdtempSync(path.join(BASE!, `${prefix}-`));
}

interface Descriptor {
  fd: number;
  /** From /proc/<pid>/fdinfo, octal there. */
  flags: number;
}

/** The open descriptors of `pid` on `file` (an absolute, symlink-free path). */
function descriptorsOf(pid: number | "self", file: string): Descriptor[] {
  const out: Descriptor[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out; // gone
  }
  for (const name of names) {
    try {
      const target = fs.readlinkSync(`/proc/${pid}/fd/${name}`);
      if (target !== file && target !== `${file} (deleted)`) continue;
      const info = fs.readFileSync(`/proc/${pid}/fdinfo/${name}`, "utf8");
      const m = /^flags:\s*([0-7]+)/m.exec(info);
      if (m) out.push({ fd: Number(name), flags: parseInt(m[1], 8) });
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

const isDirect = (d: Descriptor) => (d.flags & O_DIRECT!) !== 0;
const isReadOnly = (d: Descriptor) => (d.flags & O_ACCMODE) === fs.constants.O_RDONLY;

/** A small deterministic PRNG (xorshift32) for the block plan. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const FILE_SIZE = 80 * MiB + 12345;

interface Block {
  offset: number;
  len: number;
  /** How the buffer is handed over: exact, with junk after `len`, or as a view into a larger buffer. */
  shape: "exact" | "junk-tail" | "view";
}

/**
 * Blocks covering [0, size) exactly once, in an awkward shuffled order, plus one
 * overlapping rewrite (same bytes) placed in the middle of the order.
 */
function blockPlan(size: number): Block[] {
  const spans: [number, number][] = [
    [0, 100], // tiny: no whole page, all through the page cache
    [100, 4003], // head up to 4103: still no whole page
    [4103, 3 * MiB - 4102], // unaligned head, 3 MiB of pages (several staging rounds), 1-byte tail
    [3 * MiB + 1, MiB - 1], // unaligned head, ends on a page boundary
    [4 * MiB, MiB], // 1 MiB aligned blocks: all direct
    [5 * MiB, MiB],
    [6 * MiB, 5000], // aligned start, one page, 904-byte tail
    [6 * MiB + 5000, 8191], // exactly one whole page in the middle
    [6 * MiB + 13191, 9 * MiB + 3], // many staging buffers' worth
  ];
  let off = spans.at(-1)![0] + spans.at(-1)![1];
  const rand = prng(0x5eed);
  const sizes = [MiB, 2 * MiB + 1, 4095, 4097, 1.5 * MiB + 7, 777, 3 * MiB - 5, 8192, MiB + 4096];
  while (off < size) {
    // Realign now and then so that some later 1 MiB blocks start on a page.
    let len = sizes[Math.floor(rand() * sizes.length)];
    if (rand() < 0.2 && off % 4096 !== 0) len = 4096 - (off % 4096);
    len = Math.min(len, size - off);
    spans.push([off, len]);
    off += len;
  }
  const blocks: Block[] = spans.map(([offset, len], i) => ({
    offset,
    len,
    shape: i % 7 === 3 ? "junk-tail" : i % 7 === 5 ? "view" : "exact",
  }));
  for (let i = blocks.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [blocks[i], blocks[j]] = [blocks[j], blocks[i]];
  }
  const rewrite: Block = { offset: 2 * MiB - 777, len: 5 * MiB + 1234, shape: "exact" };
  blocks.splice(Math.floor(blocks.length / 2), 0, rewrite);
  return blocks;
}

function bufferFor(expected: Uint8Array, b: Block): Uint8Array<ArrayBuffer> {
  const bytes = expected.subarray(b.offset, b.offset + b.len);
  if (b.shape === "exact") return bytes.slice();
  if (b.shape === "junk-tail") {
    const buf = new Uint8Array(b.len + 5000).fill(0xa5);
    buf.set(bytes);
    return buf;
  }
  const big = new Uint8Array(b.len + 123).fill(0x5a);
  big.set(bytes, 61);
  return big.subarray(61, 61 + b.len);
}

/** Report of one child run (see childMain). */
interface ChildReport {
  env: string | null;
  wanted: boolean;
  blocks: number;
  /** Descriptors on the file while the writer still held it. */
  writeFds: Descriptor[];
  /** Descriptors on the file while the after-the-fact hasher held it. */
  readFds: Descriptor[];
  /** Descriptors left once the writer and the hashers were done. */
  fdsAfter: Descriptor[];
  concurrentDigest: string;
  digest: string;
  bytes: number;
  expectedDigest: string;
  /** First offset where the file differs from the expected bytes, or -1. */
  firstDiff: number;
  size: number;
  /** Directory entries after everything (the scratch files of alignedBuffers must be gone). */
  entries: string[];
  ms: number;
}

/**
 * Child mode: writes FILE_SIZE bytes in `dir` through acquireBlockWriter() in an
 * awkward order, hashing the contiguous prefix meanwhile (as a pull does), then
 * hashes the file again in steps, and prints a ChildReport as JSON.
 */
async function childMain(dir: string): Promise<void> {
  const t0 = performance.now();
  const file = path.join(fs.realpathSync(dir), "blob-partial");
  fs.writeFileSync(file, "");
  fs.truncateSync(file, FILE_SIZE);
  const expected = deterministicBytes(FILE_SIZE, 77);
  const expectedDigest = "sha256:" + crypto.createHash("sha256").update(expected).digest("hex");
  const blocks = blockPlan(FILE_SIZE);

  // Writes, all queued at once in the plan's order; the contiguous prefix is hashed meanwhile.
  const live = createFileHasher(file);
  const writer = acquireBlockWriter();
  const done: [number, number][] = [];
  let prefix = 0;
  await Promise.all(blocks.map(async (b) => {
    const back = await writer.write(file, b.offset, bufferFor(expected, b), b.len);
    assert.ok(back.byteLength >= b.len);
    done.push([b.offset, b.offset + b.len]);
    done.sort((x, y) => x[0] - y[0]);
    for (const [s, e] of done) if (s <= prefix && e > prefix) prefix = e;
    live.advance(prefix);
  }));
  assert.equal(prefix, FILE_SIZE, "the plan covers the file");
  const writeFds = descriptorsOf("self", file);
  writer.close(file);
  writer.release();
  const concurrent = await live.finish(FILE_SIZE);

  // Hashed again from scratch in steps, the descriptors looked at while it is open.
  const hasher = createFileHasher(file);
  hasher.advance(1);
  const readFds = new Map<number, Descriptor>();
  const deadline = Date.now() + 10_000;
  let seenAt = 0;
  while (Date.now() < deadline && (seenAt === 0 || Date.now() - seenAt < 300)) {
    for (const d of descriptorsOf("self", file)) {
      if (!isReadOnly(d)) continue;
      readFds.set(d.fd, d);
      if (!seenAt) seenAt = Date.now();
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  for (let to = 7 * MiB + 4097; to < FILE_SIZE; to += 7 * MiB + 4097) {
    hasher.advance(to);
    hasher.advance(to - 10); // going back is ignored
  }
  const { digest, bytes } = await hasher.finish(FILE_SIZE);

  const got = fs.readFileSync(file);
  let firstDiff = -1;
  const want = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (!want.equals(got)) {
    const n = Math.min(got.byteLength, expected.byteLength);
    firstDiff = n; // unless a byte differs before: the lengths do
    for (let i = 0; i < n; i++) {
      if (got[i] !== expected[i]) {
        firstDiff = i;
        break;
      }
    }
  }
  // Workers are stopped asynchronously; give their descriptors a moment to go.
  let fdsAfter = descriptorsOf("self", file);
  for (let i = 0; i < 50 && fdsAfter.length; i++) {
    await new Promise((r) => setTimeout(r, 20));
    fdsAfter = descriptorsOf("self", file);
  }
  const report: ChildReport = {
    env: Deno.env.get(ENV) ?? null,
    wanted: directIoWanted(),
    blocks: blocks.length,
    writeFds,
    readFds: [...readFds.values()],
    fdsAfter,
    concurrentDigest: concurrent.digest,
    digest,
    bytes,
    expectedDigest,
    firstDiff,
    size: fs.statSync(file).size,
    entries: fs.readdirSync(dir).sort(),
    ms: Math.round(performance.now() - t0),
  };
  console.log(JSON.stringify(report));
}

async function runChild(direct: boolean): Promise<ChildReport> {
  const dir = scratchDir(direct ? "haul-dio-on" : "haul-dio-off");
  try {
    const env = Deno.env.toObject();
    delete env[ENV];
    if (direct) env[ENV] = "1";
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", fileURLToPath(import.meta.url), CHILD_FLAG, dir],
      env: { ...env, NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(180_000),
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `child (${ENV}=${direct ? 1 : "unset"}) failed:\n${stderr}`);
    return JSON.parse(stdout.trim().split("\n").at(-1)!) as ChildReport;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.main && Deno.args[0] === CHILD_FLAG) {
  await childMain(Deno.args[1]);
}

Deno.test({
  name: "alignedBuffers(): views of the asked size that O_DIRECT accepts, no scratch file left",
  ignore: SKIP,
  fn() {
    const dir = scratchDir("haul-dio-buf");
    try {
      const target = path.join(dir, "sha256-x-partial");
      fs.writeFileSync(target, "");
      const asks: [number, number][] = [[2, 4 * MiB], [1, MiB], [3, 8192], [1, 10_000]];
      const prev = Deno.env.get(ENV);
      let wanted: boolean;
      let got: (Uint8Array<ArrayBuffer>[] | undefined)[];
      // Set and restored with nothing awaited between: see the top of this file.
      Deno.env.set(ENV, "1");
      try {
        wanted = directIoWanted();
        got = asks.map(([count, size]) => alignedBuffers(target, count, size));
      } finally {
        if (prev === undefined) Deno.env.delete(ENV);
        else Deno.env.set(ENV, prev);
      }
      assert.equal(Deno.env.get(ENV), prev, "environment restored");
      assert.equal(wanted, true, `${ENV}=1 asks for direct I/O`);
      assert.deepEqual(fs.readdirSync(dir), ["sha256-x-partial"], "scratch files removed");
      if (prev !== "1" && prev !== "true") {
        assert.equal(alignedBuffers(target, 1, MiB), undefined, `nothing without ${ENV}`);
      }

      const fd = fs.openSync(target, fs.constants.O_RDWR | O_DIRECT!);
      try {
        for (const [i, [count, size]] of asks.entries()) {
          const views = got[i];
          assert.ok(views, `alignedBuffers(${count}, ${size}) on ${BASE}`);
          assert.equal(views.length, count);
          for (const v of views) assert.equal(v.length, size);
          assert.equal(new Set(views.map((v) => v.buffer)).size, count, "separate memory");
          // The point of them: whole pages go to and from the device straight from these.
          const pages = size - (size % 4096);
          for (const [k, v] of views.entries()) {
            for (let j = 0; j < pages; j++) v[j] = (j * 31 + k + i) & 0xff;
            const want = v.slice(0, pages);
            assert.equal(fs.writeSync(fd, v, 0, pages, 4096 * k), pages);
            v.fill(0);
            assert.equal(fs.readSync(fd, v, 0, pages, 4096 * k), pages);
            assert.ok(Buffer.from(want).equals(Buffer.from(v.buffer, v.byteOffset, pages)));
          }
        }
      } finally {
        fs.closeSync(fd);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
});

Deno.test({
  name:
    "block writer and hasher with HAUL_DIRECT_IO=1 and without: same bytes, same digest, O_DIRECT only when asked",
  ignore: SKIP,
  async fn() {
    const direct = await runChild(true);
    const plain = await runChild(false);
    for (const r of [direct, plain]) {
      const what = `${ENV}=${r.env ?? "unset"}`;
      assert.equal(r.size, FILE_SIZE, what);
      assert.equal(
        r.firstDiff,
        -1,
        `${what}: file differs from the expected bytes at ${r.firstDiff}`,
      );
      assert.equal(r.digest, r.expectedDigest, `${what}: hasher digest`);
      assert.equal(r.bytes, FILE_SIZE, `${what}: bytes hashed`);
      assert.equal(r.concurrentDigest, r.expectedDigest, `${what}: digest hashed while writing`);
      assert.deepEqual(r.entries, ["blob-partial"], `${what}: no scratch files left`);
      assert.deepEqual(r.fdsAfter, [], `${what}: no descriptor left open on the file`);
      assert.ok(r.writeFds.length > 0, `${what}: the writer held the file open`);
      assert.ok(r.readFds.length > 0, `${what}: the hasher held the file open`);
      assert.ok(r.blocks > 40, `${what}: ${r.blocks} blocks`);
    }
    assert.equal(direct.wanted, true);
    assert.equal(plain.wanted, false);
    assert.equal(direct.digest, plain.digest, "both paths agree");
    const fmt = (ds: Descriptor[]) => ds.map((d) => `fd ${d.fd} flags 0${d.flags.toString(8)}`);
    assert.ok(
      direct.writeFds.some((d) => isDirect(d) && !isReadOnly(d)),
      `writer has a writable O_DIRECT descriptor: ${fmt(direct.writeFds)}`,
    );
    assert.ok(
      direct.readFds.some((d) => isDirect(d)),
      `hasher has a read-only O_DIRECT descriptor: ${fmt(direct.readFds)}`,
    );
    assert.ok(!plain.writeFds.some(isDirect), `no O_DIRECT by default: ${fmt(plain.writeFds)}`);
    assert.ok(!plain.readFds.some(isDirect), `no O_DIRECT by default: ${fmt(plain.readFds)}`);
    console.log(`child runs: direct ${direct.ms} ms, default ${plain.ms} ms`);
  },
});

Deno.test({
  name: "haul pull with HAUL_DIRECT_IO=1: many parts verify; kill -9 midway, then resume verifies",
  ignore: SKIP,
  async fn() {
    const size = 100 * MiB + 12347;
    const fixtures = scratchDir("haul-dio-fx");
    const model = makeOllamaModel({ layerSizes: [size], seed: 41, dir: fixtures });
    const blob = model.blobs[1];
    const blobName = blob.digest.replace(":", "-");
    const modelsA = scratchDir("haul-dio-models");
    const modelsB = scratchDir("haul-dio-models");
    const env = { [ENV]: "1" };
    const reg = await startRegistry();
    try {
      await pushFixture(reg, "library/dio", "latest", model);
      const verify = async (models: string, what: string) => {
        const file = path.join(models, "blobs", blobName);
        assert.equal((await fsp.stat(file)).size, size, `${what}: size`);
        assert.equal(`sha256:${await sha256File(file)}`, blob.digest, `${what}: digest`);
        const left = (await fsp.readdir(path.join(models, "blobs"))).filter((n) =>
          !/^sha256-[0-9a-f]{64}$/.test(n)
        );
        assert.deepEqual(left, [], `${what}: no partial, state or scratch files left`);
      };

      const first = await spawnCli([
        "pull",
        "--insecure",
        "--part-size",
        "4M",
        "--models",
        modelsA,
        `${reg.host}/library/dio`,
      ], { env }).result;
      assert.equal(first.code, 0, first.stderr);
      await verify(modelsA, "first pull");

      // Slow enough (4 parts at 8 MB/s each) to look at the descriptors and kill midway.
      const slow = await startFaultProxy(reg.url, {
        rule: (req) => req.url.includes("/blobs/") ? { rateBytesPerSec: 8e6 } : undefined,
      });
      const partial = path.join(
        fs.realpathSync(modelsB),
        ".haul",
        "partial",
        `${blobName}-partial`,
      );
      let doneAtKill = 0;
      const seen: Descriptor[] = [];
      try {
        const child = spawnCli([
          "pull",
          "--insecure",
          "--concurrency",
          "4",
          "--part-size",
          "4M",
          "--models",
          modelsB,
          `${slow.host}/library/dio`,
        ], { env });
        const deadline = Date.now() + 60_000;
        const doneNow = async () => {
          const st = JSON.parse(await fsp.readFile(`${partial}.json`, "utf8"));
          return st.parts.reduce((a: number, p: { done: number }) => a + p.done, 0) as number;
        };
        for (;;) {
          assert.ok(Date.now() < deadline, "pull never got a third of the way");
          assert.equal(child.exitCode, null, `pull ended early: ${child.output().stderr}`);
          await new Promise((r) => setTimeout(r, 25));
          seen.push(...descriptorsOf(child.pid!, partial));
          try {
            if (await doneNow() > size / 3) break;
          } catch { /* not there yet, or being replaced */ }
        }
        child.kill("SIGKILL");
        const killed = await child.result;
        assert.equal(killed.signal, "SIGKILL");
        doneAtKill = await doneNow();
        assert.ok(doneAtKill > 0 && doneAtKill < size, `done at kill: ${doneAtKill}`);
        await assert.rejects(fsp.stat(path.join(modelsB, "blobs", blobName)));
      } finally {
        await slow.stop();
      }
      const fmt = seen.map((d) => `0${d.flags.toString(8)}`).join(" ");
      assert.ok(seen.some((d) => isDirect(d) && !isReadOnly(d)), `O_DIRECT write fd: ${fmt}`);
      assert.ok(seen.some((d) => isDirect(d) && isReadOnly(d)), `O_DIRECT read fd: ${fmt}`);

      const counting = await startFaultProxy(reg.url);
      try {
        const again = await spawnCli([
          "pull",
          "--insecure",
          "--part-size",
          "4M",
          "--models",
          modelsB,
          `${counting.host}/library/dio`,
        ], { env }).result;
        assert.equal(again.code, 0, again.stderr);
        const fetched = counting.bytesOut(new RegExp(`/blobs/${blob.digest}`));
        assert.ok(
          fetched <= size - doneAtKill,
          `resume fetched ${fetched} bytes; ${size - doneAtKill} were missing`,
        );
        await verify(modelsB, "resumed pull");
      } finally {
        await counting.stop();
      }
    } finally {
      await reg.stop();
      await model.cleanup?.();
      for (const d of [fixtures, modelsA, modelsB]) {
        await fsp.rm(d, { recursive: true, force: true });
      }
    }
  },
});
