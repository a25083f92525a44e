/**
 * Per-thread CPU of one blob pull, for the per-stage breakdown in bench/ANALYSIS.md.
 *
 *   deno run -A scripts/bench/cpu_stages.ts [--size 1G] [--runs 3] [--bin dist/haul]
 *     [--main main.ts] [--tools deno,bin,curl,NAME=deno:FILE,NAME=bin:FILE] [--settle 2] [--perf] [-- extra haul pull flags]
 *
 * Starts Debian's docker-registry with one image of one layer of `--size` bytes, then
 * runs the tools in turn, rotating the order each round: `deno run -A main.ts pull`,
 * the binary's `pull`, and `curl -o file && openssl dgst -sha256 file`. Before each run
 * the page cache is dropped (root) and the registry's blob read back in, as P7 does.
 * Each run goes under /usr/bin/time (user, system, peak RSS), and every 10 ms this
 * script reads /proc/<pid>/task/<tid>/stat of the puller: the last value seen of each
 * thread is its CPU (a thread that exits loses at most 10 ms). Threads are grouped by
 * name (the main thread, the Worker threads, the runtime's I/O pool, GC helpers).
 * `--perf`: also `perf record` the first run of each haul, and print its top symbols.
 * `--serve`: only start the registry, print the reference, blob URL and source file, and
 * wait for SIGTERM (for probes); `--use FILE` (what it printed) runs against that registry.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { parseArgs } from "node:util";
import {
  makeOciImage,
  pushFixture,
  REPO_ROOT,
  startRegistry,
  tmpDir,
} from "../../tests/support/harness.ts";
import { coldExceptSource, loadAverage, median } from "./measure.ts";

const { values: opt, positionals: extra } = parseArgs({
  options: {
    size: { type: "string", default: "1G" },
    runs: { type: "string", default: "3" },
    bin: { type: "string", default: path.join(REPO_ROOT, "dist/haul") },
    main: { type: "string", default: path.join(REPO_ROOT, "main.ts") },
    tools: { type: "string", default: "deno,bin,curl" },
    settle: { type: "string", default: "2" },
    perf: { type: "boolean", default: false },
    serve: { type: "boolean", default: false },
    use: { type: "string" },
  },
  allowPositionals: true,
});
const UNITS: Record<string, number> = { K: 1 << 10, M: 1 << 20, G: 1 << 30 };
const m = /^(\d+)([KMG]?)$/.exec(opt.size!)!;
const SIZE = Number(m[1]) * (UNITS[m[2]] ?? 1);
const HZ = 100;

interface Sample {
  /** tid → [name, utime+stime ticks, utime ticks]. */
  threads: Map<number, [string, number, number]>;
}

function readThreads(pid: number, into: Sample): void {
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return;
  }
  for (const t of tids) {
    try {
      const s = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
      const close = s.lastIndexOf(")");
      const name = s.slice(s.indexOf("(") + 1, close);
      const f = s.slice(close + 2).split(" ");
      const ut = Number(f[11]);
      const st = Number(f[12]);
      into.threads.set(Number(t), [name, ut + st, ut]);
    } catch { /* gone */ }
  }
}

/** The puller: the child of /usr/bin/time (or of sh). */
function childOf(pid: number): number | undefined {
  try {
    const c = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(" ")[0];
    return c ? Number(c) : undefined;
  } catch {
    return undefined;
  }
}

interface Run {
  tool: string;
  wall: number;
  user: number;
  sys: number;
  rss: number;
  /** group name → CPU seconds (user+sys), and user seconds. */
  groups: Map<string, [number, number]>;
}

function group(name: string): string {
  if (/worker/i.test(name)) return name.toLowerCase();
  if (/tokio|blocking|deno-io|fs|pool/i.test(name)) return `io:${name}`;
  if (/gc|heap|v8|jit|dfg|ftl|helper/i.test(name)) return `gc/jit:${name}`;
  return name;
}

async function runOne(tool: string, cmd: string[], perfOut?: string): Promise<Run> {
  const argv = ["-f", "%e %U %S %M", ...cmd];
  const t0 = performance.now();
  const child = spawn("/usr/bin/time", argv, { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr!.on("data", (d) => err += d);
  const sample: Sample = { threads: new Map() };
  let target: number | undefined;
  let perf: ReturnType<typeof spawn> | undefined;
  const timer = setInterval(() => {
    target ??= childOf(child.pid!);
    if (target === undefined) return;
    if (perfOut && !perf) {
      perf = spawn("perf", [
        "record",
        "-q",
        "-F",
        "1999",
        "-g",
        "-p",
        String(target),
        "-o",
        perfOut,
      ], {
        stdio: "ignore",
      });
    }
    readThreads(target, sample);
  }, 10);
  const code = await new Promise<number>((r) => child.on("exit", (c) => r(c ?? 1)));
  clearInterval(timer);
  if (perf) await new Promise((r) => perf!.on("exit", r));
  const wall = (performance.now() - t0) / 1000;
  const last = err.trim().split("\n").at(-1)!.split(" ").map(Number);
  if (code !== 0) throw new Error(`${tool}: exit ${code}: ${err}`);
  const groups = new Map<string, [number, number]>();
  // Worker threads of one name (Bun's "Worker") are told apart by start order (by tid).
  const seen = new Map<string, number>();
  for (const [tid, [name, ticks, ut]] of [...sample.threads].sort((a, b) => a[0] - b[0])) {
    let g = tid === target ? "main" : group(name);
    if (/worker/i.test(name) && !/^gc/.test(g)) {
      const k = (seen.get(g) ?? 0) + 1;
      seen.set(g, k);
      if (k > 1 || [...sample.threads.values()].filter((t) => t[0] === name).length > 1) {
        g += `#${k}`;
      }
    }
    const [a, b] = groups.get(g) ?? [0, 0];
    groups.set(g, [a + ticks / HZ, b + ut / HZ]);
  }
  return { tool, wall, user: last[1], sys: last[2], rss: last[3] / 1000, groups };
}

/** The registry and its blob: started here, or the one a `--serve` run printed (`--use FILE`). */
async function source(work: string) {
  if (opt.use) {
    const [ref, url, file] = fs.readFileSync(opt.use, "utf8").trim().split("\n");
    return { ref, url, file, stop: async () => {} };
  }
  const reg = await startRegistry();
  await fsp.mkdir(path.join(work, "fx"));
  const fx = makeOciImage({ layerSizes: [SIZE], seed: 17, dir: path.join(work, "fx") });
  await pushFixture(reg, "bench/cpu", "latest", fx);
  await fx.cleanup?.();
  const { digest } = fx.blobs[1];
  const hex = digest.slice(7);
  return {
    ref: `${reg.host}/bench/cpu:latest`,
    url: `${reg.url}/v2/bench/cpu/blobs/${digest}`,
    file: path.join(reg.storage, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data"),
    stop: () => reg.stop(),
  };
}

async function main() {
  const work = await tmpDir("haul-cpu-stages");
  const src = await source(work);
  try {
    const { ref, url } = src;
    const out = path.join(work, "out");
    const pull = (argv0: string[]) => [
      ...argv0,
      "pull",
      "--insecure",
      "--quiet",
      "--models",
      path.join(out, "models"),
      ...extra,
      ref,
    ];
    const cmds: Record<string, string[]> = {
      deno: pull(["deno", "run", "-A", opt.main!]),
      bin: pull([opt.bin!]),
      curl: [
        "sh",
        "-c",
        'curl -sS -f -o "$1" "$2" && openssl dgst -sha256 "$1" > "$1.sha256"',
        "sh",
        path.join(out, "blob"),
        url,
      ],
    };
    if (opt.serve) {
      console.log(`${ref}\n${url}\n${src.file}`);
      await new Promise<void>((res) => Deno.addSignalListener("SIGTERM", res));
      return;
    }
    // Variants: NAME=deno:FILE (deno run -A FILE) or NAME=bin:FILE, beside the defaults.
    for (const spec of opt.tools!.split(",")) {
      const v = /^([^=]+)=(deno|bin):(.+)$/.exec(spec);
      if (v) cmds[v[1]] = pull(v[2] === "deno" ? ["deno", "run", "-A", v[3]] : [v[3]]);
    }
    const tools = opt.tools!.split(",").map((t) => t.split("=")[0]);
    const runs: Run[] = [];
    const rounds = Number(opt.runs);
    for (let r = 0; r < rounds; r++) {
      const order = [...tools.slice(r % tools.length), ...tools.slice(0, r % tools.length)];
      for (const t of order) {
        await fsp.rm(out, { recursive: true, force: true });
        await fsp.mkdir(out, { recursive: true });
        await coldExceptSource([src.file]);
        await new Promise((res) => setTimeout(res, Number(opt.settle) * 1000));
        const perfOut = opt.perf && r === 0 && t !== "curl"
          ? path.join(work, `perf-${t}.data`)
          : undefined;
        const load = loadAverage()[0];
        const run = await runOne(t, cmds[t], perfOut);
        runs.push(run);
        const gs = [...run.groups].sort((a, b) => b[1][0] - a[1][0])
          .map(([g, [c, u]]) => `${g} ${c.toFixed(2)} (u ${u.toFixed(2)})`).join(", ");
        console.log(
          `${t} r${r + 1}: wall ${run.wall.toFixed(2)} s, user ${run.user.toFixed(2)}, sys ${
            run.sys.toFixed(2)
          }, RSS ${run.rss.toFixed(0)} MB (load ${load}) | ${gs}`,
        );
        if (perfOut) {
          const rep = spawn("sh", [
            "-c",
            `perf report -i ${perfOut} --no-children --sort comm,dso,sym --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -40`,
          ], { stdio: ["ignore", "pipe", "ignore"] });
          let txt = "";
          rep.stdout!.on("data", (d) => txt += d);
          await new Promise((res) => rep.on("exit", res));
          console.log(txt);
        }
      }
    }
    console.log("\nmedians:");
    for (const t of tools) {
      const rs = runs.filter((r) => r.tool === t);
      const med = (f: (r: Run) => number) => median(rs.map(f)).toFixed(2);
      const names = new Set(rs.flatMap((r) => [...r.groups.keys()]));
      // Per thread group: median CPU (user + system), and median user, skipping idle ones.
      const gs = [...names]
        .map((
          g,
        ) => [g, med((r) => r.groups.get(g)?.[0] ?? 0), med((r) => r.groups.get(g)?.[1] ?? 0)])
        .filter(([, c]) => Number(c) >= 0.01)
        .sort((a, b) => Number(b[1]) - Number(a[1]))
        .map(([g, c, u]) => `${g} ${c} (u ${u})`).join(", ");
      console.log(
        `${t}: wall ${med((r) => r.wall)} s, user ${med((r) => r.user)}, sys ${
          med((r) => r.sys)
        }, RSS ${med((r) => r.rss)} MB | ${gs}`,
      );
    }
  } finally {
    await src.stop();
    await fsp.rm(work, { recursive: true, force: true });
  }
}

await main();
