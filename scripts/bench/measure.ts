/**
 * Measuring one child process: wall time (monotonic clock in this process, spawn to
 * exit), CPU time and peak RSS (from `/usr/bin/time`, i.e. the child's rusage as
 * returned by wait4: user + sys of the child and of everything it waited for, and
 * its maximum resident set), plus how busy the rest of the machine was meanwhile
 * (from /proc/stat minus the child, the servers under test and this process), so
 * that runs disturbed by other work on the machine can be spotted.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";

const TIME = "/usr/bin/time";
const HZ = 100; // USER_HZ: /proc/stat and /proc/PID/stat count in 1/100 s on Linux

export interface Measured {
  /** Exit code (128+signal when killed). */
  code: number;
  /** Seconds, spawn to exit. */
  wall: number;
  /** CPU seconds in user mode (child and its waited-for descendants). */
  user: number;
  /** CPU seconds in kernel mode. */
  sys: number;
  /** Peak resident set of the largest process, MB (10^6 bytes). */
  rssMB: number;
  /** Average cores busy with work other than the child, the servers and this process. */
  others: number;
  /** Average cores stolen by the hypervisor. */
  steal: number;
  /** CPU seconds the servers of the scenario (registry, nginx) used meanwhile. */
  serverCpu: number;
  /** Killed by our timeout. */
  timedOut: boolean;
  stdout: string;
  stderr: string;
}

export interface MeasureOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Kill the child (SIGKILL to its group) after this long. @default 600000 */
  timeoutMs?: number;
  /** Processes whose CPU is part of the work (registry, nginx); not counted as noise. */
  serverPids?: () => number[];
}

/** Checks that `/usr/bin/time` is there (Debian package `time`). */
export function checkTime(): void {
  if (!fs.existsSync(TIME)) {
    throw new Error(`${TIME} is missing: install it with "apt-get install -y time"`);
  }
}

interface CpuSnap {
  busy: number;
  steal: number;
  servers: number;
  self: number;
}

function readStat(): { busy: number; steal: number } {
  const line = fs.readFileSync("/proc/stat", "utf8").split("\n")[0];
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
  const [user, nice, system, , , irq, softirq, steal] = f;
  return { busy: (user + nice + system + irq + softirq) / HZ, steal: steal / HZ };
}

/** utime + stime of one process (all its threads), seconds; 0 when it is gone. */
export function processCpu(pid: number): number {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / HZ; // fields 14 and 15 of stat
  } catch {
    return 0;
  }
}

function snap(serverPids: number[]): CpuSnap {
  const { busy, steal } = readStat();
  const servers = serverPids.reduce((a, p) => a + processCpu(p), 0);
  const u = process.cpuUsage();
  return { busy, steal, servers, self: (u.user + u.system) / 1e6 };
}

let active: number | undefined;

/** Kills the process group of the child being measured, if any (on interrupt). */
export function killActive(): void {
  if (active === undefined) return;
  try {
    process.kill(-active, "SIGKILL");
  } catch { /* gone */ }
}

/** Runs `cmd` under /usr/bin/time and measures it (never throws for a failing child). */
export async function measure(cmd: string[], opts: MeasureOptions = {}): Promise<Measured> {
  const tfile = path.join(os.tmpdir(), `haul-bench-time-${process.pid}-${Date.now()}.txt`);
  const pids = opts.serverPids?.() ?? [];
  const before = snap(pids);
  const t0 = performance.now();
  const child = spawn(TIME, ["-f", "%U %S %M", "-o", tfile, "--", ...cmd], {
    cwd: opts.cwd,
    env: { ...process.env, NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  active = child.pid;
  const out: Uint8Array[] = [];
  const err: Uint8Array[] = [];
  child.stdout!.on("data", (c: Uint8Array) => out.push(c));
  child.stderr!.on("data", (c: Uint8Array) => err.push(c));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-child.pid!, "SIGKILL");
    } catch { /* gone */ }
  }, opts.timeoutMs ?? 600_000);
  const code = await new Promise<number>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (c, s) => resolve(c ?? 128 + (s === "SIGKILL" ? 9 : 15)));
  });
  const wall = (performance.now() - t0) / 1000;
  active = undefined;
  clearTimeout(timer);
  const after = snap(pids);
  const text = await fsp.readFile(tfile, "utf8").catch(() => "");
  await fsp.rm(tfile, { force: true });
  // "Command exited with non-zero status N" / "Command terminated by signal N" come first.
  const last = text.trim().split("\n").pop() ?? "";
  const [u, s, m] = last.split(" ").map(Number);
  const user = Number.isFinite(u) ? u : NaN;
  const sys = Number.isFinite(s) ? s : NaN;
  const child_cpu = (user || 0) + (sys || 0);
  const otherCpu = (after.busy - before.busy) - child_cpu - (after.servers - before.servers) -
    (after.self - before.self);
  const dec = new TextDecoder();
  const join = (parts: Uint8Array[]) => parts.map((p) => dec.decode(p)).join("");
  return {
    code,
    wall,
    user,
    sys,
    rssMB: Number.isFinite(m) ? (m * 1024) / 1e6 : NaN,
    others: Math.max(0, otherCpu) / wall,
    steal: (after.steal - before.steal) / wall,
    serverCpu: after.servers - before.servers,
    timedOut,
    stdout: join(out),
    stderr: join(err),
  };
}

/** Runs a command to completion for its side effects; throws on failure. */
export function run(cmd: string, args: string[], env?: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...env },
    });
    const out: Uint8Array[] = [];
    const err: Uint8Array[] = [];
    child.stdout!.on("data", (c: Uint8Array) => out.push(c));
    child.stderr!.on("data", (c: Uint8Array) => err.push(c));
    child.once("error", reject);
    child.once("exit", (code) => {
      const dec = new TextDecoder();
      const text = (p: Uint8Array[]) => p.map((c) => dec.decode(c)).join("");
      if (code === 0) resolve(text(out));
      else reject(new Error(`${cmd} ${args.join(" ")} exited ${code}: ${text(err).slice(-2000)}`));
    });
  });
}

// ---------------------------------------------------------------- page cache

let canDrop: boolean | undefined;

/**
 * Writes back dirty pages, drops the page cache (root only), then reads each of
 * `warm` once so the source of the transfer is in memory. Returns whether the
 * cache could be dropped.
 */
export async function coldExceptSource(warm: string[]): Promise<boolean> {
  await run("sync", []);
  if (canDrop !== false) {
    try {
      fs.writeFileSync("/proc/sys/vm/drop_caches", "1");
      canDrop = true;
    } catch {
      canDrop = false;
    }
  }
  const buf = new Uint8Array(8 << 20);
  for (const f of warm) {
    const fd = fs.openSync(f, "r");
    try {
      while (fs.readSync(fd, buf, 0, buf.byteLength, null) > 0) { /* read */ }
    } finally {
      fs.closeSync(fd);
    }
  }
  return canDrop;
}

/** The 1, 5 and 15 minute load averages. */
export function loadAverage(): [number, number, number] {
  const [a, b, c] = fs.readFileSync("/proc/loadavg", "utf8").split(" ").map(Number);
  return [a, b, c];
}

/** Pids whose command line contains `needle` (e.g. a registry's config file path). */
export function findPids(needle: string): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, "utf8").replaceAll("\0", " ");
      if (cmd.includes(needle) && !cmd.startsWith("sh -c")) out.push(Number(name));
    } catch { /* gone */ }
  }
  return out;
}

/** rchar/wchar of a process (bytes it read/wrote through syscalls, sockets included). */
export function processIo(pid: number): { rchar: number; wchar: number } {
  try {
    const t = fs.readFileSync(`/proc/${pid}/io`, "utf8");
    const get = (k: string) => Number(new RegExp(`^${k}: (\\d+)`, "m").exec(t)?.[1] ?? NaN);
    return { rchar: get("rchar"), wchar: get("wchar") };
  } catch {
    return { rchar: NaN, wchar: NaN };
  }
}

/** Median of the finite values; NaN when there are none. */
export function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const BENCH_LOCK = path.join(os.tmpdir(), "haul-bench.lock");

/**
 * One bench at a time on this machine (scripts/bench.ts, scripts/serve_load.ts): two would drop
 * each other's page cache and share the cores, and both would measure nonsense. Waits for a
 * running one (a lock whose pid is gone is stale); returns the function that releases it.
 */
export async function lockBench(log: (msg: string) => void): Promise<() => void> {
  for (let waited = 0;; waited++) {
    try {
      fs.writeFileSync(BENCH_LOCK, String(process.pid), { flag: "wx" });
      return () => fs.rmSync(BENCH_LOCK, { force: true });
    } catch {
      const pid = Number(fs.readFileSync(BENCH_LOCK, "utf8").trim());
      let alive = false;
      try {
        process.kill(pid, 0);
        alive = pid !== process.pid;
      } catch { /* stale */ }
      if (!alive) {
        fs.rmSync(BENCH_LOCK, { force: true });
        continue;
      }
      if (waited % 12 === 0) log(`another bench is running (pid ${pid}); waiting for it to finish`);
      await new Promise((r) => setTimeout(r, 5000));
    }
  }
}
