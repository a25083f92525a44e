import assert from "node:assert/strict";
import {
  createRenderer,
  formatBytes,
  formatDuration,
  formatRate,
  JsonRenderer,
  type OllamaProgressLine,
  PlainRenderer,
  ProgressState,
  QuietRenderer,
  renderTty,
  TtyRenderer,
} from "../../cli/progress.ts";
import type { ProgressEvent } from "../../lib/progress_events.ts";

const A = "sha256:de20d2cf2dc4" + "0".repeat(52);
const B = "sha256:3a1f2b3c4d5e" + "1".repeat(52);

/** A clock the test moves by hand. */
function fakeClock(start = 0) {
  let t = start;
  return {
    now: () => t,
    set: (ms: number) => {
      t = ms;
    },
  };
}

function collect() {
  const out: string[] = [];
  return { out, write: (s: string) => void out.push(s) };
}

const progress = (digest: string, total: number, completed: number): ProgressEvent => ({
  type: "blob-progress",
  op: "pull",
  digest,
  total,
  completed,
});

/** manifest, A already present (42 GB), B at 1.2 of 4 GB after 5 s at 240 MB/s. */
function knownState(): ProgressState {
  const s = new ProgressState();
  s.apply({ type: "manifest", ref: "library/llama3:latest" }, 0);
  s.apply({ type: "blob-start", op: "pull", digest: A, total: 42e9, completed: 0 }, 0);
  s.apply({ type: "blob-done", op: "pull", digest: A, total: 42e9, skipped: true }, 0);
  s.apply({ type: "blob-start", op: "pull", digest: B, total: 4e9, completed: 0 }, 0);
  for (let t = 1000; t <= 5000; t += 1000) s.apply(progress(B, 4e9, t * 240e3), t);
  return s;
}

Deno.test("formatBytes() uses Ollama's decimal units", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(96), "96 B");
  assert.equal(formatBytes(999), "999 B");
  assert.equal(formatBytes(1000), "1 KB");
  assert.equal(formatBytes(1500), "1.5 KB");
  assert.equal(formatBytes(999_999), "999 KB");
  assert.equal(formatBytes(9_960), "10 KB");
  assert.equal(formatBytes(1.5e9), "1.5 GB");
  assert.equal(formatBytes(42e9), "42 GB");
  assert.equal(formatBytes(4e9), "4 GB");
  assert.equal(formatBytes(2e12), "2 TB");
  assert.equal(formatBytes(1000.9), "1 KB");
});

Deno.test("formatDuration() shows at most two units", () => {
  assert.equal(formatDuration(0), "0s");
  assert.equal(formatDuration(-3), "0s");
  assert.equal(formatDuration(4), "4s");
  assert.equal(formatDuration(4.4), "4s");
  assert.equal(formatDuration(59.6), "1m0s");
  assert.equal(formatDuration(96), "1m36s");
  assert.equal(formatDuration(999), "16m39s");
  assert.equal(formatDuration(1000), "16m40s");
  assert.equal(formatDuration(3720), "1h2m");
  assert.equal(formatDuration(100 * 3600 - 0.4), "99h+");
  assert.equal(formatDuration(Infinity), "99h+");
});

Deno.test("formatRate() appends /s to the byte size", () => {
  assert.equal(formatRate(0), "0 B/s");
  assert.equal(formatRate(999), "999 B/s");
  assert.equal(formatRate(1000), "1 KB/s");
  assert.equal(formatRate(112.7e6), "112 MB/s");
  assert.equal(formatRate(1.5e9), "1.5 GB/s");
});

Deno.test("renderTty() draws a known state at 80 columns", () => {
  assert.deepEqual(renderTty(knownState(), { width: 80, now: 5000 }), [
    "pulling manifest",
    "pulling de20d2cf2dc4: 100% ▕██████████████████▏  42 GB",
    "pulling 3a1f2b3c4d5e:  30% ▕█████             ▏    1.2/4.0 GB  240 MB/s     12s",
  ]);
});

Deno.test("renderTty() adds the closing phases and fills the bar when done", () => {
  const s = knownState();
  s.apply({ type: "blob-done", op: "pull", digest: B, total: 4e9, skipped: false }, 16_000);
  s.apply({ type: "verify" }, 16_000);
  s.apply({ type: "verify" }, 16_000); // repeated phase shows once
  s.apply({ type: "manifest-write", op: "pull" }, 16_000);
  s.apply({ type: "success", ref: "library/llama3:latest" }, 16_000);
  assert.deepEqual(renderTty(s, { width: 60, now: 16_000 }), [
    "pulling manifest",
    "pulling de20d2cf2dc4: 100%  42 GB",
    "pulling 3a1f2b3c4d5e: 100%  4 GB",
    "verifying sha256 digest",
    "writing manifest",
    "success",
  ]);
});

Deno.test("renderTty() never exceeds the width", () => {
  const s = knownState();
  s.apply({ type: "verify" }, 5000);
  for (const width of [1, 2, 10, 20, 40, 59, 60, 61, 79, 80, 120, 200]) {
    for (const line of renderTty(s, { width, now: 5000 })) {
      assert.ok(Array.from(line).length <= Math.max(1, width - 1), `${width}: ${line}`);
    }
  }
  assert.deepEqual(renderTty(s, { width: 40, now: 5000 }), [
    "pulling manifest",
    "pulling de20d2cf2dc4: 100%  42 GB",
    "pulling 3a1f2b3c4d5e:  30%  1.2/4.0 GB…",
    "verifying sha256 digest",
  ]);
  const wide = renderTty(s, { width: 120, now: 5000 })[2];
  assert.equal(Array.from(wide).length, 119);
});

Deno.test("renderTty() lowers the percentage when completed decreases", () => {
  const s = new ProgressState();
  s.apply({ type: "blob-start", op: "pull", digest: B, total: 1000, completed: 0 }, 0);
  s.apply(progress(B, 1000, 500), 1000);
  assert.match(renderTty(s, { width: 80, now: 1000 })[0], /: {2}50% ▕/);
  // A failed attempt's 250 bytes are discarded.
  s.apply(progress(B, 1000, 250), 1500);
  const line = renderTty(s, { width: 80, now: 1500 })[0];
  assert.match(line, /: {2}25% ▕████ {14}▏ +250 B\/1 KB  +333 B\/s +2s$/);
  assert.equal(s.blob("pull", B)?.completed, 250);
  // Speed counts what was moved, never goes negative.
  assert.equal(s.speed(s.blob("pull", B)!, 1500), 500 / 1.5);
  s.apply(progress(B, 1000, -5), 1600);
  assert.match(renderTty(s, { width: 80, now: 1600 })[0], /: {3}0% ▕ {18}▏/);
});

Deno.test("ProgressState.speed() and eta() use the sliding window", () => {
  const s = new ProgressState({ windowMs: 5000 });
  s.apply({ type: "blob-start", op: "pull", digest: A, total: 100e6, completed: 10e6 }, 0);
  const blob = () => s.blob("pull", A)!;
  assert.equal(s.speed(blob(), 0), undefined);
  s.apply(progress(A, 100e6, 11e6), 500);
  assert.equal(s.speed(blob(), 500), undefined, "less than a second measured");
  s.apply(progress(A, 100e6, 12e6), 1000);
  assert.equal(s.speed(blob(), 1000), 2e6, "credited bytes do not count");
  assert.equal(s.eta(blob(), 1000), 44);
  // 10 s later at 1 MB/s: the window only holds the last 5 s.
  for (let t = 2000; t <= 11_000; t += 1000) {
    s.apply(progress(A, 100e6, 12e6 + (t - 1000) * 1000), t);
  }
  assert.equal(s.speed(blob(), 11_000), 1e6);
  assert.equal(s.eta(blob(), 11_000), 78);
  assert.ok(blob().samples.length <= 8, `samples are pruned: ${blob().samples.length}`);
  // Stalled: the rate decays, then reads 0 once the window holds nothing new.
  assert.equal(s.speed(blob(), 13_500), 2e6 / 4.5);
  assert.equal(s.speed(blob(), 16_001), 0);
  assert.equal(s.eta(blob(), 16_001), undefined);
  s.apply({ type: "blob-done", op: "pull", digest: A, total: 100e6, skipped: false }, 20_000);
  assert.equal(s.speed(blob(), 30_000), 90e6 / 20, "average speed once done");
  assert.equal(s.eta(blob(), 30_000), undefined);
});

Deno.test("ProgressState.apply() keeps rows in order and counts retries", () => {
  const s = new ProgressState();
  s.apply({ type: "manifest", ref: "x" }, 0);
  s.apply(progress(A, 10, 3), 0); // no start seen: the blob appears anyway
  s.apply({ type: "retry", digest: A, attempt: 2, reason: "reset", delayMs: 10 }, 1);
  s.apply({ type: "blob-done", op: "pull", digest: B, total: 7, skipped: true }, 2);
  s.apply(progress(B, 7, 1), 3); // late report for a finished blob is ignored
  assert.deepEqual(
    s.rows.map((r) => r.kind === "phase" ? r.status : r.blob.digest),
    ["pulling manifest", A, B],
  );
  assert.equal(s.blob("pull", A)?.retries, 1);
  assert.equal(s.blob("pull", B)?.completed, 7);
  assert.throws(() => new ProgressState({ windowMs: 0 }), RangeError);
});

Deno.test("TtyRenderer redraws the block in place and throttles", () => {
  const clock = fakeClock();
  const { out, write } = collect();
  // 42 columns: 40 for the lines, 2 kept free for the terminal's "^C" echo.
  const r = new TtyRenderer({ write, now: clock.now, width: 42, intervalMs: 100 });
  r.handle({ type: "manifest", ref: "m" });
  assert.deepEqual(out, ["\x1b[?2026h\x1b[?25l\x1b[2Kpulling manifest\x1b[?2026l"]);

  r.handle({ type: "blob-start", op: "pull", digest: A, total: 1000, completed: 0 });
  assert.equal(out.length, 1, "throttled: the last frame is 0 ms old");
  clock.set(50);
  r.handle(progress(A, 1000, 100));
  assert.equal(out.length, 1, "throttled");
  clock.set(60);
  r.handle({ type: "retry", digest: A, attempt: 2, reason: "x", delayMs: 0 });
  assert.equal(out.length, 1, "retries are not drawn");
  clock.set(100);
  r.handle(progress(A, 1000, 500));
  assert.equal(out.length, 2);
  assert.equal(
    out[1],
    "\x1b[?2026h\r\x1b[2Kpulling manifest\n\x1b[2Kpulling de20d2cf2dc4:  50%  500 B/1 KB\x1b[?2026l",
  );
  clock.set(120);
  r.handle({ type: "blob-done", op: "pull", digest: A, total: 1000, skipped: false });
  assert.equal(out.length, 3, "completion is drawn at once");
  r.handle({ type: "verify" });
  assert.equal(out.length, 4, "phase changes are drawn at once");
  r.flush();
  assert.equal(out.length, 5);
  r.close();
  assert.equal(
    out[5],
    "\x1b[?2026h\r\x1b[2A\x1b[2Kpulling manifest\n\x1b[2Kpulling de20d2cf2dc4: 100%  1 KB\n" +
      "\x1b[2Kverifying sha256 digest\n\x1b[?25h\x1b[?2026l",
  );
  r.handle({ type: "success", ref: "m" });
  r.close();
  assert.equal(out.length, 6, "nothing after close");
});

Deno.test("TtyRenderer leaves room after the last line for the ^C a terminal echoes", () => {
  // The cursor rests at the end of the frame's last line; a Ctrl-C echoes "^C" there. A line
  // that then wraps moves the cursor a row down and the final frame lands a row too low,
  // leaving a second "pulling manifest" above it (seen at 80 columns).
  const clock = fakeClock();
  const { out, write } = collect();
  const r = new TtyRenderer({ write, now: clock.now, width: 80, intervalMs: 0 });
  r.handle({ type: "manifest", ref: "m" });
  r.handle({ type: "blob-start", op: "pull", digest: A, total: 200e6, completed: 0 });
  for (let t = 200; t <= 4600; t += 200) {
    clock.set(t);
    r.handle(progress(A, 200e6, t * 23e3)); // 23 MB/s: size, speed and ETA columns all shown
  }
  // deno-lint-ignore no-control-regex
  const frame = out.at(-1)!.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
  const lines = frame.split(/\r|\n/).filter((l) => l.length > 0);
  assert.ok(lines.some((l) => /\/200 MB +23 MB\/s +4s$/.test(l)), frame);
  for (const line of lines) {
    assert.ok(Array.from(line).length + 2 <= 79, `"${line}" leaves no room`);
  }
});

Deno.test("TtyRenderer writes nothing when no event came", () => {
  const { out, write } = collect();
  const r = new TtyRenderer({ write, now: () => 0 });
  r.flush();
  r.close();
  assert.deepEqual(out, []);
});

Deno.test("TtyRenderer shows the last rows that fit the height", () => {
  const { out, write } = collect();
  let rows = 3;
  const r = new TtyRenderer({ write, now: () => 0, width: 30, height: () => rows });
  r.handle({ type: "manifest", ref: "m" });
  r.handle({ type: "blob-done", op: "pull", digest: A, total: 1, skipped: true });
  r.handle({ type: "blob-done", op: "pull", digest: B, total: 2, skipped: true });
  r.handle({ type: "verify" });
  assert.equal(
    out.at(-1),
    "\x1b[?2026h\r\x1b[2A\x1b[2Kpulling de20d2cf2dc4: 100%…\n\x1b[2Kpulling 3a1f2b3c4d5e: 100%…\n" +
      "\x1b[2Kverifying sha256 digest\x1b[?2026l",
  );
  // The terminal shrank: lines left over from the taller frame are cleared.
  rows = 1;
  r.flush();
  assert.equal(
    out.at(-1),
    "\x1b[?2026h\r\x1b[2A\x1b[2Kverifying sha256 digest\n\x1b[2K\n\x1b[2K\x1b[2A\x1b[?2026l",
  );
});

Deno.test("TtyRenderer rejects bad options", () => {
  const write = () => {};
  assert.throws(() => new TtyRenderer({ write, now: () => 0, width: 0 }), RangeError);
  assert.throws(() => new TtyRenderer({ write, now: () => 0, intervalMs: -1 }), RangeError);
  assert.throws(() => new PlainRenderer({ write, now: () => 0, intervalMs: NaN }), RangeError);
});

Deno.test("PlainRenderer writes start, periodic, retry, done and phase lines", () => {
  const clock = fakeClock();
  const { out, write } = collect();
  const r = new PlainRenderer({ write, now: clock.now });
  r.handle({ type: "manifest", ref: "library/llama3:latest" });
  r.handle({ type: "blob-start", op: "pull", digest: B, total: 4e9, completed: 1e9 });
  r.handle({ type: "blob-done", op: "pull", digest: A, total: 42e9, skipped: true });
  for (let t = 1000; t <= 12_000; t += 1000) {
    clock.set(t);
    r.handle(progress(B, 4e9, 1e9 + t * 100e3));
  }
  clock.set(12_500);
  r.handle({ type: "retry", digest: B, attempt: 2, reason: "connection reset", delayMs: 2000 });
  r.handle({ type: "retry", attempt: 3, reason: "HTTP 503", delayMs: 0 });
  clock.set(30_000);
  r.flush(); // a stall: the timer still reports
  r.handle({ type: "blob-done", op: "pull", digest: B, total: 4e9, skipped: false });
  r.handle({ type: "blob-done", op: "push", digest: A, total: 1, skipped: true, mounted: true });
  r.handle({ type: "verify" });
  r.handle({ type: "manifest-write", op: "pull" });
  r.handle({ type: "success", ref: "library/llama3:latest" });
  r.close();
  r.handle({ type: "verify" });
  assert.deepEqual(out.join("").split("\n"), [
    "pulling manifest for library/llama3:latest",
    "pulling 3a1f2b3c4d5e 4 GB (resuming at 1 GB)",
    "pulling de20d2cf2dc4 already present",
    "pulling 3a1f2b3c4d5e 37% 1.5/4.0 GB 100 MB/s 25s left",
    "pulling 3a1f2b3c4d5e 50% 2.0/4.0 GB 100 MB/s 20s left",
    "retrying 3a1f2b3c4d5e (attempt 2, in 2s): connection reset",
    "retrying (attempt 3): HTTP 503",
    "pulling 3a1f2b3c4d5e 55% 2.2/4.0 GB 0 B/s",
    "pulling 3a1f2b3c4d5e done (4 GB in 30s, 100 MB/s)",
    "pushing de20d2cf2dc4 mounted",
    "verifying sha256 digest",
    "writing manifest",
    "success: library/llama3:latest",
    "",
  ]);
});

function parseLines(out: string[]): OllamaProgressLine[] {
  const text = out.join("");
  assert.ok(text.endsWith("\n"));
  return text.slice(0, -1).split("\n").map((l) => JSON.parse(l) as OllamaProgressLine);
}

Deno.test("JsonRenderer streams Ollama's /api/pull statuses in order", () => {
  const clock = fakeClock();
  const { out, write } = collect();
  const r = new JsonRenderer({ write, now: clock.now });
  r.handle({ type: "manifest", ref: "m" });
  r.handle({ type: "blob-start", op: "pull", digest: A, total: 300, completed: 0 });
  r.handle({ type: "blob-start", op: "pull", digest: B, total: 50, completed: 50 });
  r.handle({ type: "blob-done", op: "pull", digest: B, total: 50, skipped: true });
  for (let t = 10; t <= 300; t += 10) {
    clock.set(t);
    r.handle(progress(A, 300, t));
    if (t === 150) {
      r.handle({ type: "retry", digest: A, attempt: 2, reason: "reset", delayMs: 0 });
    }
  }
  r.handle({ type: "blob-done", op: "pull", digest: A, total: 300, skipped: false });
  r.handle({ type: "verify" });
  r.handle({ type: "manifest-write", op: "pull" });
  r.handle({ type: "success", ref: "m" });
  r.close();
  const lines = parseLines(out);
  const tail = (d: string) => d.slice(7, 19);
  assert.deepEqual(lines, [
    { status: "pulling manifest" },
    { status: `pulling ${tail(A)}`, digest: A, total: 300 },
    { status: `pulling ${tail(B)}`, digest: B, total: 50, completed: 50 },
    { status: `pulling ${tail(A)}`, digest: A, total: 300, completed: 100 },
    { status: `pulling ${tail(A)}`, digest: A, total: 300, completed: 200 },
    { status: `pulling ${tail(A)}`, digest: A, total: 300, completed: 300 },
    { status: "verifying sha256 digest" },
    { status: "writing manifest" },
    { status: "success" },
  ]);
  // Key order matches Ollama's api.ProgressResponse.
  assert.equal(
    out[2],
    `{"status":"pulling ${tail(B)}","digest":"${B}","total":50,"completed":50}\n`,
  );
});

Deno.test("JsonRenderer throttles per digest and flushes the latest value", () => {
  const clock = fakeClock(1000);
  const { out, write } = collect();
  const r = new JsonRenderer({ write, now: clock.now, intervalMs: 100 });
  r.handle(progress(A, 1000, 1)); // first one always goes out
  r.handle(progress(B, 1000, 1));
  clock.set(1050);
  r.handle(progress(A, 1000, 2));
  r.handle(progress(B, 1000, 2));
  assert.equal(out.length, 2);
  clock.set(1099);
  r.handle(progress(A, 1000, 3));
  assert.equal(out.length, 2);
  clock.set(1100);
  r.handle(progress(A, 1000, 4));
  assert.equal(out.length, 3);
  r.handle(progress(A, 1000, 1000)); // completed == total is never held back
  r.handle({ type: "blob-done", op: "pull", digest: A, total: 1000, skipped: false });
  assert.equal(out.length, 4, "done does not repeat the final line");
  r.flush(); // B's throttled value
  r.flush();
  const lines = parseLines(out);
  assert.deepEqual(lines.map((l) => [l.digest, l.completed]), [
    [A, 1],
    [B, 1],
    [A, 4],
    [A, 1000],
    [B, 2],
  ]);
});

Deno.test("JsonRenderer uses Ollama's push statuses", () => {
  const { out, write } = collect();
  const r = new JsonRenderer({ write, now: () => 0 });
  r.handle({ type: "blob-done", op: "push", digest: A, total: 9, skipped: true, mounted: true });
  r.handle({ type: "manifest-write", op: "push" });
  r.handle({ type: "success", ref: "m" });
  assert.deepEqual(parseLines(out), [
    { status: `pushing ${A.slice(7, 19)}`, digest: A, total: 9, completed: 9 },
    { status: "pushing manifest" },
    { status: "success" },
  ]);
});

Deno.test("createRenderer() picks the renderer for a mode", () => {
  const opts = { write: () => {}, now: () => 0 };
  assert.ok(createRenderer("tty", opts) instanceof TtyRenderer);
  assert.ok(createRenderer("plain", opts) instanceof PlainRenderer);
  assert.ok(createRenderer("json", opts) instanceof JsonRenderer);
  assert.ok(createRenderer("quiet", opts) instanceof QuietRenderer);
  assert.throws(
    () => createRenderer("fancy" as "tty", opts),
    { name: "RangeError", message: /mode must be .* received "fancy"/ },
  );
});

Deno.test("QuietRenderer writes nothing", () => {
  const { out, write } = collect();
  const r = createRenderer("quiet", { write, now: () => 0 });
  r.handle({ type: "manifest", ref: "m" });
  r.flush();
  r.close();
  assert.deepEqual(out, []);
});
