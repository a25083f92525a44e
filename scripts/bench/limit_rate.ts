/**
 * How closely `haul pull --limit-rate` holds its rate: pulls a model (one large blob and a small
 * one) from docker-registry on loopback with `--json`, stamps every progress line as it
 * arrives, and reports the rate over every 5-second window after the first second against the
 * asked one (curl's units: 10M = 10 MiB/s). Writes bench/LIMIT_RATE.md.
 *
 *   deno run -A scripts/bench/limit_rate.ts [--rate 10M] [--size 256M] [--bin dist/haul]
 */
import { spawn } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { parseSize } from "../../cli/common.ts";
import {
  makeOllamaModel,
  pushFixture,
  REPO_ROOT,
  startRegistry,
  tmpDir,
} from "../../tests/support/harness.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    rate: { type: "string", default: "10M" },
    size: { type: "string", default: "256M" },
    bin: { type: "string" },
    window: { type: "string", default: "5" },
  },
});
const rate = parseSize(values.rate, "--rate");
const size = parseSize(values.size, "--size");
const windowS = Number(values.window);

/** Runs one pull; returns [seconds since start, bytes completed] samples. */
async function pull(cmd: string[], models: string, ref: string): Promise<[number, number][]> {
  const args = [...cmd.slice(1), "pull", "--insecure", "--json", "--limit-rate", values.rate];
  const child = spawn(cmd[0], [...args, "--models", models, ref], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const t0 = performance.now();
  const done = new Map<string, number>();
  const samples: [number, number][] = [];
  let buf = "";
  child.stdout!.on("data", (c: Uint8Array) => {
    const now = (performance.now() - t0) / 1000;
    buf += new TextDecoder().decode(c);
    const lines = buf.split("\n");
    buf = lines.pop()!;
    for (const l of lines) {
      const j = JSON.parse(l) as { digest?: string; completed?: number };
      if (j.digest && typeof j.completed === "number") {
        done.set(j.digest, j.completed);
        samples.push([now, [...done.values()].reduce((a, b) => a + b, 0)]);
      }
    }
  });
  const code = await new Promise<number>((ok) => child.on("close", (c) => ok(c ?? 1)));
  if (code !== 0) throw new Error(`haul exited ${code}`);
  return samples;
}

/** Bytes at time t, interpolated between samples. */
function at(samples: [number, number][], t: number): number {
  for (let i = 1; i < samples.length; i++) {
    const [t1, b1] = samples[i];
    if (t1 >= t) {
      const [t0, b0] = samples[i - 1];
      return t1 === t0 ? b1 : b0 + ((b1 - b0) * (t - t0)) / (t1 - t0);
    }
  }
  return samples.at(-1)![1];
}

const reg = await startRegistry();
const dir = await tmpDir("haul-limit-rate");
const fx = makeOllamaModel({ layerSizes: [size, 4000], seed: 91 });
try {
  await pushFixture(reg, "bench/limit", "latest", fx);
  const cmd = values.bin
    ? [path.resolve(values.bin)]
    : [Deno.execPath(), "run", "-A", path.join(REPO_ROOT, "main.ts")];
  const samples = await pull(cmd, path.join(dir, "models"), `${reg.host}/bench/limit`);
  // The windows end with the last progress before the blob is done: its verification and fsync
  // come after the last byte.
  const total = samples.at(-1)![1];
  const end = samples.findLast(([, b]) => b < total)![0];
  const rates: number[] = [];
  for (let t = 1; t + windowS <= end; t += 0.5) {
    rates.push((at(samples, t + windowS) - at(samples, t)) / windowS);
  }
  if (process.env.LR_DEBUG) console.log(rates.map((r) => (r / rate).toFixed(3)).join(" "));
  const worst = Math.max(...rates.map((r) => Math.abs(r - rate) / rate));
  const lines = [
    "# `--limit-rate`: the rate over every 5-second window",
    "",
    `Written by \`scripts/bench/limit_rate.ts\` on ${
      new Date().toISOString()
    }: \`haul pull --json ` +
    `--limit-rate ${values.rate}\` (${rate} B/s) of a ${total}-byte model from docker-registry on ` +
    `loopback (${
      values.bin ? values.bin : "deno run main.ts"
    }); every progress line stamped as it ` +
    `arrived; windows of ${windowS} s every 0.5 s, from 1 s after the start to the last byte ` +
    `(the blob's verification and fsync come after it).`,
    "",
    "| | value |",
    "|---|---:|",
    `| whole pull | ${(total / end / rate).toFixed(4)}× the asked rate (${end.toFixed(1)} s) |`,
    `| windows | ${rates.length} |`,
    `| slowest window | ${(Math.min(...rates) / rate).toFixed(4)}× |`,
    `| fastest window | ${(Math.max(...rates) / rate).toFixed(4)}× |`,
    `| worst deviation | ${(worst * 100).toFixed(2)}% (target ≤ 3%) |`,
    `| result | ${worst <= 0.03 ? "PASS" : "**FAIL**"} |`,
    "",
  ];
  await fsp.writeFile(path.join(REPO_ROOT, "bench", "LIMIT_RATE.md"), lines.join("\n"));
  console.log(lines.join("\n"));
} finally {
  await reg.stop();
  await fx.cleanup?.();
  await fsp.rm(dir, { recursive: true, force: true });
}
