/**
 * The benchmark's data model and its rendering to Markdown (bench/RESULTS.md) and
 * to the ratio chart (bench/ratios.svg). Pure functions of the results.
 */
import { median } from "./measure.ts";
import { type Bar, ratioChart } from "./svg.ts";

export interface RunRecord {
  tool: string;
  /** Round number, from 1. */
  round: number;
  ok: boolean;
  error?: string;
  wall: number;
  user: number;
  sys: number;
  rssMB: number;
  /** Bytes moved over HTTP for this run, null when not counted. */
  bytes: number | null;
  /** Average cores busy with unrelated work during the run. */
  others: number;
  steal: number;
  /** CPU seconds of the scenario's servers (registry, nginx) during the run. */
  serverCpu?: number;
  /** What the run traced (HAUL_TRACE), e.g. the Range-part levels its ramp tried. */
  trace?: string;
}

export interface ToolInfo {
  id: string;
  label: string;
  /** Run in the first round only. */
  once?: boolean;
}

export interface Check {
  label: string;
  /** The target in words, e.g. "haul ≤ 0.9× curl (wall)". */
  target: string;
  /** The measured quantities in words, e.g. "3.1 s vs 3.6 s". */
  measured: string;
  /** The ratio compared with the limit (lower is better); NaN when not measured. */
  value: number;
  limit: number;
  /** null when it could not be evaluated. */
  pass: boolean | null;
  /** Draw in the chart. */
  chart: boolean;
}

export interface ScenarioResult {
  id: string;
  title: string;
  date: string;
  /** Load average (1, 5, 15 min) when the scenario started. */
  load: number[];
  rounds: number;
  /** Lines describing fixtures, commands and how bytes were counted. */
  about: string[];
  tools: ToolInfo[];
  records: RunRecord[];
  checks: Check[];
  notes: string[];
  /** Wall seconds the whole scenario took, preparation included. */
  elapsed: number;
}

export interface Machine {
  cpu: string;
  cores: number;
  memTotal: string;
  kernel: string;
  deno: string;
  haul?: string;
  tools: Record<string, string>;
}

export interface Results {
  quick: boolean;
  /** Seconds of rest after each cache drop. */
  settle?: number;
  machine: Machine;
  scenarios: Record<string, ScenarioResult>;
}

export interface Summary {
  tool: ToolInfo;
  n: number;
  failed: number;
  wall: number;
  wallMin: number;
  wallMax: number;
  cpu: number;
  rssMB: number;
  bytes: number;
  others: number;
  serverCpu: number;
}

/** Medians per tool over the successful runs. */
export function summarize(s: ScenarioResult): Summary[] {
  return s.tools.map((tool) => {
    const rs = s.records.filter((r) => r.tool === tool.id);
    const ok = rs.filter((r) => r.ok);
    const walls = ok.map((r) => r.wall);
    return {
      tool,
      n: ok.length,
      failed: rs.length - ok.length,
      wall: median(walls),
      wallMin: walls.length ? Math.min(...walls) : NaN,
      wallMax: walls.length ? Math.max(...walls) : NaN,
      cpu: median(ok.map((r) => r.user + r.sys)),
      rssMB: median(ok.map((r) => r.rssMB)),
      bytes: median(ok.map((r) => r.bytes ?? NaN)),
      others: median(rs.map((r) => r.others)),
      serverCpu: median(ok.map((r) => r.serverCpu ?? NaN)),
    };
  });
}

export const fmtS = (x: number) => (Number.isFinite(x) ? x.toFixed(x < 10 ? 2 : 1) : "—");
export const fmtMB = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : "—");
export const fmtRatio = (x: number) =>
  Number.isFinite(x) ? (x >= 10 ? x.toFixed(1) : x.toFixed(x < 0.1 ? 3 : 2)) : "—";

export function fmtBytes(x: number): string {
  if (!Number.isFinite(x)) return "—";
  if (x < 1e4) return `${x.toFixed(0)} B`;
  if (x < 1e7) return `${(x / 1e3).toFixed(1)} kB`;
  if (x < 1e10) return `${(x / 1e6).toFixed(1)} MB`;
  return `${(x / 1e9).toFixed(2)} GB`;
}

const NOISY = 0.25;

function scenarioMd(s: ScenarioResult): string {
  const out: string[] = [];
  const sums = summarize(s);
  const noisy = sums.some((x) => x.others > NOISY);
  out.push(`## ${s.id}: ${s.title}`, "");
  out.push(
    `Run ${s.date}; load average at start ${s.load.map((l) => l.toFixed(2)).join(" / ")}` +
      ` (1/5/15 min); ${s.rounds} round${s.rounds === 1 ? "" : "s"}, tools alternating;` +
      ` scenario took ${fmtS(s.elapsed)} s.` +
      (noisy ? ` **Noisy**: other work used more than ${NOISY} core during some runs.` : ""),
    "",
  );
  for (const a of s.about) out.push(`- ${a}`);
  if (s.about.length) out.push("");
  out.push(
    "| Tool | runs | wall s (median) | wall min–max | CPU s (user+sys) | peak RSS MB | bytes over HTTP | server CPU s | other load (cores) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  );
  for (const x of sums) {
    const runs = `${x.n}${x.failed ? ` (+${x.failed} failed)` : ""}${x.tool.once ? " (once)" : ""}`;
    out.push(
      `| ${x.tool.label} | ${runs} | ${fmtS(x.wall)} | ${fmtS(x.wallMin)}–${fmtS(x.wallMax)} | ${
        fmtS(x.cpu)
      } | ${fmtMB(x.rssMB)} | ${fmtBytes(x.bytes)} | ${fmtS(x.serverCpu)} | ${
        Number.isFinite(x.others) ? x.others.toFixed(2) : "—"
      } |`,
    );
  }
  out.push("");
  if (s.checks.length) {
    out.push("| Target | measured | ratio | limit | result |", "|---|---|---:|---:|---|");
    for (const c of s.checks) {
      out.push(
        `| ${c.target} | ${c.measured} | ${fmtRatio(c.value)} | ${fmtRatio(c.limit)} | ${
          c.pass === null ? "n/a" : c.pass ? "PASS" : "**FAIL**"
        } |`,
      );
    }
    out.push("");
  }
  const failures = s.records.filter((r) => !r.ok);
  for (const f of failures) {
    out.push(`- Failed run: ${f.tool} round ${f.round}: ${(f.error ?? "").split("\n")[0]}`);
  }
  for (const n of s.notes) out.push(`- ${n}`);
  if (failures.length || s.notes.length) out.push("");
  return out.join("\n");
}

const ORDER = ["P1", "P2", "P2S", "P3", "P4", "P5", "P6"];

function ordered(r: Results): ScenarioResult[] {
  return Object.values(r.scenarios).sort((a, b) =>
    ORDER.indexOf(a.id) - ORDER.indexOf(b.id) || a.id.localeCompare(b.id)
  );
}

/**
 * `analysis`: hand-written Markdown (bench/ANALYSIS.md) on what bounds the
 * targets not met, placed after the targets table.
 */
export function renderMarkdown(r: Results, analysis?: string): string {
  const m = r.machine;
  const out: string[] = [];
  out.push(
    `# haul benchmark results${r.quick ? " (quick mode: small blobs, few runs)" : ""}`,
    "",
    "Written by `deno task bench` (scripts/bench.ts). Everything runs on loopback on this",
    "machine; tables show medians per tool, ratios are of medians from the same run.",
    "",
    `- Machine: ${m.cpu}, ${m.cores} cores, ${m.memTotal} memory (MemTotal), kernel ${m.kernel}`,
    `- haul: ${m.haul ?? "?"}`,
    `- Runtime: ${m.deno}; peers: ${
      Object.entries(m.tools).map(([k, v]) => `${k} ${v}`).join(", ")
    }`,
    `- Generated ${new Date().toISOString()}`,
    "- Before every run: outputs deleted, `sync`, `echo 1 > /proc/sys/vm/drop_caches`, then the",
    `  registry's blob file read once so the source is warm, then ${r.settle ?? 0} s of rest (see`,
    '  "Page cache and guest memory" below).',
    "- wall: spawn to exit, monotonic clock of the harness. CPU: user + sys of the child from",
    "  `/usr/bin/time` (wait4 rusage, descendants included). peak RSS: `/usr/bin/time` %M.",
    "- server CPU: CPU seconds of the scenario's registry (and nginx) during the run.",
    "- other load: average cores busy during the run with anything but the measured child, the",
    "  servers of the scenario (registry, nginx) and the harness (from /proc/stat); other",
    "  engineers' tests share this machine, so a high value marks a disturbed run. It also",
    "  counts kernel threads working for the child (page-cache writeback, reclaim), so",
    "  write-heavy runs show ~0.1-0.5 even on a quiet machine.",
    "",
    "## Targets",
    "",
    "| Scenario | Target | measured | ratio | limit | result |",
    "|---|---|---|---:|---:|---|",
  );
  for (const s of ordered(r)) {
    for (const c of s.checks) {
      out.push(
        `| ${s.id} | ${c.target} | ${c.measured} | ${fmtRatio(c.value)} | ${fmtRatio(c.limit)} | ${
          c.pass === null ? "n/a" : c.pass ? "PASS" : "**FAIL**"
        } |`,
      );
    }
  }
  out.push("", "![haul/peer ratios](ratios" + (r.quick ? "-quick" : "") + ".svg)", "");
  if (analysis?.trim()) out.push(analysis.trim(), "");
  out.push(
    "## Page cache and guest memory",
    "",
    "This machine is a Firecracker VM whose balloon reports freed guest pages to the host",
    "(`/sys/module/page_reporting`); touching reported memory again is slow. Measured here:",
    "writing 2 GiB into the page cache after a cache drop costs 0.4 s of sys time with",
    "`write()` calls of 128-384 KiB but 3-5.7 s with calls of 1-8 MiB (`dd bs=…`, and the",
    "file shows up as FileHugePages: large writes get huge folios), and whether the cost is",
    "paid depends on whether the reporting pass ran before the run. The harness therefore",
    "rests a few seconds after each drop so every run starts from the same (reported) state.",
    "curl writes 8 KiB at a time and never pays it.",
    "",
  );
  for (const s of ordered(r)) out.push(scenarioMd(s));
  return out.join("\n") + "\n";
}

export function renderChart(r: Results): string {
  const bars: Bar[] = [];
  for (const s of ordered(r)) {
    for (const c of s.checks) {
      if (!c.chart) continue;
      bars.push({
        label: `${s.id} ${c.label}`,
        value: c.value,
        limit: c.limit,
        pass: c.pass === true,
      });
    }
  }
  const m = r.machine;
  return ratioChart(
    `haul / peer${r.quick ? " (quick mode)" : ""}`,
    bars,
    `${m.cores} cores, ${m.memTotal}, kernel ${m.kernel}; medians; lower is better`,
  );
}
