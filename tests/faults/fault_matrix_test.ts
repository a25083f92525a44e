/**
 * The fault matrix: `haul pull` against Debian's docker-registry through tests/support/fault_proxy.ts,
 * one fault at a time, at the start, middle and end of a large blob fetched in Range parts and
 * in a small blob fetched whole; once (a transient fault, which must end verified) and every
 * time (a persistent fault, which must end in one clear line with the right exit code within
 * the bound). After every cell the store is checked (see fault_support.ts) and, after a
 * failure, a clean pull through the same proxy with faults off must complete verified.
 * The outcome of every cell goes to docs/FAULTS.md.
 */
import assert from "node:assert/strict";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import process from "node:process";
import * as crypto from "node:crypto";
import {
  type Fixture,
  makeOllamaModel,
  MEDIA,
  pushFixture,
  type Registry,
  runCli,
  startRegistry,
  tmpDir,
  TOKEN_SERVICE,
} from "../support/harness.ts";
import {
  type Fault,
  type FaultProxy,
  type ProxiedRequest,
  startFaultProxy,
} from "../support/fault_proxy.ts";
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
  writeDocSection,
} from "./fault_support.ts";

const LARGE = 47 * MiB + 5; // six 8 MiB Range parts, the last one 7 MiB + 5 bytes
const SMALL = 512 * 1024 + 13; // one GET
const PART = "8M";
const PART_BYTES = 8 * MiB;
/**
 * Pull's --stall-timeout: above the transport's retry backoff for --retries 2 (at most
 * 0.375 + 0.75 s), which today runs inside the part's stall window (see the 429 row).
 */
const PULL_STALL = "3";
/**
 * Copy's --stall-timeout. It also bounds the wait for response headers: at 1 s a fresh-clone
 * run on a loaded machine (load average 15) saw the registry's manifest GET exceed it three
 * times (copy/flip/once/middle and end failed with "no response within 1 s").
 */
const COPY_STALL = "2";
const REPO = "library/faulty";
/** Cells run at once; cells sharing a token server run one after another. */
const POOL = 8;

type Mode = "once" | "always";
type Col = "start" | "middle" | "end" | "small";
type EnvName = "plain" | "basic" | "token";
const COLS: Col[] = ["start", "middle", "end", "small"];

interface Expect {
  /** Expected exit code (0: "ok (verified)"). */
  code: number;
  /** What the one error line must say. */
  re?: RegExp;
}

interface CellCtx {
  env: Env;
  front: FaultProxy;
  /** A second origin (basic env): another registry holding the same blobs, behind a proxy. */
  cdn?: FaultProxy;
  /** A proxy that only redirects back to `front` (redirect loop). */
  loop?: FaultProxy;
  mode: Mode;
  col: Col;
  /** Repository of the cell (push/copy: the destination's). */
  repo: string;
  /** Push: the error says the source blob is corrupt (set after the run). */
  blamesSource?: boolean;
}

interface Row {
  id: string;
  title: string;
  env: EnvName;
  /** Hard bound on one run, seconds. */
  boundS: number;
  /**
   * "byte" (default): the fault hits requests whose range reaches the position. "part": every
   * request for the Range part holding it (a trickle must follow the part as it resumes).
   */
  span?: "byte" | "part";
  /** Rough seconds of the "every time" cells, to schedule the long ones first. */
  slowS?: number;
  /** Methods the fault applies to (default GET). */
  methods?: (mode: Mode) => string[];
  /** Cells that make no sense or are left out, with why. */
  na?: (col: Col, mode: Mode) => string | undefined;
  /** The fault for a request reaching the position; `rel` is the position within its body. */
  fault: (ctx: CellCtx, req: ProxiedRequest, rel: number, rangeStart: number) => Fault;
  /** Before the run (token endpoint failing from the first request). */
  before?: (ctx: CellCtx) => void;
  /** Whether the rule applies at all in this cell (token "start" uses `before` only). */
  usesProxy?: (col: Col) => boolean;
  expect: (mode: Mode, col: Col) => Expect;
  /** Extra checks after the run; returns problems. */
  check?: (ctx: CellCtx) => string[];
}

const ok: Expect = { code: 0 };
const persistent = (code: number, re: RegExp) => (mode: Mode): Expect =>
  mode === "once" ? ok : { code, re };
const noRange = (col: Col) =>
  col === "small" ? "n/a: a blob this small is fetched without Range" : undefined;

const noAuthTo = (name: string, p?: FaultProxy): string[] => {
  if (!p) return [];
  const leaked = p.requests.filter((q) => q.headers.authorization !== undefined);
  return leaked.length ? [`${leaked.length} request(s) to the ${name} carried Authorization`] : [];
};

const ROWS: Row[] = [
  {
    id: "reset",
    title: "connection reset after N body bytes",
    env: "plain",
    boundS: 40,
    fault: (_c, _r, rel) => ({ resetAfter: rel }),
    expect: persistent(7, /connection|reset|closed|network|failed/i),
  },
  ...[500, 502, 503].map((status): Row => ({
    id: `s${status}`,
    title: `HTTP ${status}`,
    env: "plain",
    boundS: 40,
    fault: () => ({ status }),
    expect: persistent(3, new RegExp(`HTTP ${status}`)),
  })),
  {
    id: "s429",
    title: "HTTP 429 with Retry-After: 4 (longer than --stall-timeout 3)",
    env: "plain",
    boundS: 60,
    slowS: 12,
    fault: () => ({ status: 429, retryAfter: "4" }),
    expect: persistent(3, /HTTP 429/),
    check: (c) => {
      // The request after a 429 came at least Retry-After later (allow 100 ms of timer slack).
      const reqs = c.front.requests;
      const i = reqs.findIndex((q) => q.status === 429);
      if (i < 0) return ["no 429 was sent"];
      const again = reqs.slice(i + 1).find((q) =>
        q.url === reqs[i].url && q.headers.range === reqs[i].headers.range
      );
      if (!again) return c.mode === "once" ? ["the request was never repeated after the 429"] : [];
      const gap = again.at - reqs[i].at;
      return gap >= 3900 ? [] : [`repeated ${gap} ms after a 429 with Retry-After: 4`];
    },
  },
  {
    id: "stall",
    title: "headers, then the body stalls forever",
    env: "plain",
    boundS: 60,
    slowS: 36,
    fault: (_c, _r, rel) => ({ stallAfter: rel }),
    expect: persistent(7, /stall/i),
  },
  {
    id: "trickle",
    title: "trickle (100 kB/s, far below the other parts)",
    env: "plain",
    boundS: 60,
    span: "part",
    slowS: 27,
    fault: (c) => ({ rateBytesPerSec: c.col === "small" ? 128 * 1024 : 100_000 }),
    // A small blob has no parts to compare with: it is just slow, and must finish.
    expect: (mode, col) => mode === "once" || col === "small" ? ok : { code: 7, re: /slow|speed/i },
  },
  {
    id: "flip",
    title: "one byte flipped",
    env: "plain",
    boundS: 40,
    fault: (_c, _r, rel) => ({ flipByteAt: rel }),
    expect: persistent(5, /digest|mismatch|hash/i),
  },
  {
    id: "truncate",
    title: "fewer bytes than Content-Length, then close",
    env: "plain",
    boundS: 40,
    fault: (_c, _r, rel) => ({ truncateAt: rel }),
    expect: persistent(7, /closed|connection|bytes|failed/i),
  },
  {
    id: "whole200",
    title: "Range answered with 200 and the whole body",
    env: "plain",
    boundS: 40,
    na: noRange,
    fault: () => ({ ignoreRange: true }),
    expect: () => ok,
  },
  {
    id: "badrange",
    title: "wrong Content-Range (shifted by one byte)",
    env: "plain",
    boundS: 40,
    na: noRange,
    fault: (_c, req, _rel, a) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ""));
      const b = m ? Number(m[2]) : LARGE - 1;
      return { contentRange: `bytes ${a + 1}-${b + 1}/${LARGE}` };
    },
    expect: persistent(5, /Content-Range/),
  },
  {
    id: "redirect",
    title: "blob GET redirected to a second origin (Basic auth registry)",
    env: "basic",
    boundS: 40,
    methods: (mode) => mode === "once" ? ["GET"] : ["GET", "HEAD"],
    fault: (c, req) => ({ redirectTo: `${c.cdn!.url}${req.url}` }),
    expect: () => ok,
    check: (c) => [
      ...(c.cdn!.requests.length ? [] : ["the second origin saw no request"]),
      ...noAuthTo("second origin", c.cdn),
    ],
  },
  {
    id: "loop",
    title: "redirect loop between two origins (Basic auth registry)",
    env: "basic",
    boundS: 40,
    fault: (c, req) => ({ redirectTo: `${c.loop!.url}${req.url}?haul-loop=1` }),
    expect: persistent(7, /redirect/i),
    check: (c) => noAuthTo("looping origin", c.loop),
  },
  {
    id: "token",
    title: "token endpoint failing (HTTP 500; token auth registry)",
    env: "token",
    boundS: 40,
    // start: from the very first token request; elsewhere: a 401 on the blob request at the
    // position forces a token refresh, and the token endpoint fails from then on.
    usesProxy: (col) => col !== "start",
    before: (c) => {
      if (c.col === "start") c.env.reg.token!.failNext(c.mode === "once" ? 1 : 1_000_000, 500);
    },
    fault: (c) => {
      c.env.reg.token!.failNext(c.mode === "once" ? 1 : 1_000_000, 500);
      return {
        status: 401,
        headers: {
          "www-authenticate": `Bearer realm="${
            c.env.reg.token!.url
          }",service="${TOKEN_SERVICE}",scope="repository:${REPO}:pull"`,
        },
      };
    },
    expect: persistent(4, /token/i),
  },
];

// ------------------------------------------------------------------ push and copy

type Op = "pull" | "push" | "copy";

/** Faults on the destination's upload requests (haul push). */
const PUSH_ROWS: Row[] = [
  {
    id: "reset",
    title: "connection reset after N upload body bytes",
    env: "plain",
    boundS: 45,
    fault: (_c, _r, rel) => ({ resetRequestAfter: Math.max(1, rel) }),
    expect: persistent(7, /connection|reset|closed|network|failed|broken/i),
  },
  ...[500, 502, 503].map((status): Row => ({
    id: `s${status}`,
    title: `HTTP ${status}`,
    env: "plain",
    boundS: 45,
    fault: () => ({ status }),
    expect: persistent(3, new RegExp(`HTTP ${status}`)),
  })),
  {
    id: "s429",
    title: "HTTP 429 with Retry-After: 2",
    env: "plain",
    boundS: 60,
    slowS: 12,
    fault: () => ({ status: 429, retryAfter: "2" }),
    expect: persistent(3, /HTTP 429/),
  },
  {
    id: "stall",
    title: "request read, then no response ever",
    env: "plain",
    // Each hung cell costs the whole bound: one cell shows it. 45 s leaves room for the 30 s
    // default request timeout to fire once and the chunk to go again.
    boundS: 45,
    slowS: 45,
    na: (col, mode) =>
      col === "middle" && mode === "once"
        ? undefined
        : "not run: the middle cell shows it (each hung cell costs the whole bound)",
    fault: () => ({ noResponse: true }),
    expect: persistent(7, /timed out|no response|stall/i),
  },
  {
    id: "flip",
    title: "one upload byte flipped on the way",
    env: "plain",
    boundS: 45,
    fault: (_c, _r, rel) => ({ flipRequestByteAt: rel }),
    expect: persistent(5, /digest|mismatch|hash|DIGEST_INVALID/i),
    check: (c) => c.blamesSource ? ["the message calls the source blob corrupt; it verifies"] : [],
  },
  {
    id: "truncate",
    title: "upload body cut short, then close",
    env: "plain",
    boundS: 45,
    fault: (_c, _r, rel) => ({ truncateRequestAt: Math.max(1, rel) }),
    expect: persistent(7, /connection|closed|reset|network|failed|broken/i),
  },
  {
    id: "badrange",
    title: "PATCH acknowledged with a wrong Range (1 MiB short)",
    env: "plain",
    boundS: 30,
    na: (col) => col === "small" ? "n/a: a blob this small goes up in one PUT" : undefined,
    fault: (_c, req) => {
      const m = /^(\d+)-(\d+)$/.exec(String(req.headers["content-range"] ?? ""));
      const end = m ? Number(m[2]) : 0;
      return { responseHeaders: { range: `0-${Math.max(0, end - MiB)}` } };
    },
    expect: persistent(5, /range|offset|acknowledg/i),
    check: (c) => c.blamesSource ? ["the message calls the source blob corrupt; it verifies"] : [],
  },
  {
    id: "redirect",
    title: "upload request redirected to a second origin (Basic auth registry)",
    env: "basic",
    boundS: 45,
    fault: (c, req) => ({ redirectTo: `${c.cdn!.url}${req.url}` }),
    // The second origin fronts the same registry, so it needs credentials haul must not send
    // there: any clean end will do, as long as no Authorization leaks.
    expect: () => ({ code: -1 }),
    check: (c) => noAuthTo("second origin", c.cdn),
  },
  {
    id: "loop",
    title: "redirect loop between two origins (Basic auth registry)",
    env: "basic",
    boundS: 45,
    fault: (c, req) => ({
      redirectTo: `${c.loop!.url}${req.url}${req.url.includes("?") ? "&" : "?"}haul-loop=1`,
    }),
    expect: persistent(7, /redirect/i),
    check: (c) => noAuthTo("looping origin", c.loop),
  },
  {
    id: "token",
    title: "token endpoint failing (HTTP 500; token auth registry)",
    env: "token",
    boundS: 45,
    usesProxy: (col) => col !== "start",
    before: (c) => {
      if (c.col === "start") c.env.reg.token!.failNext(c.mode === "once" ? 1 : 1_000_000, 500);
    },
    fault: (c) => {
      c.env.reg.token!.failNext(c.mode === "once" ? 1 : 1_000_000, 500);
      return {
        status: 401,
        headers: {
          "www-authenticate": `Bearer realm="${
            c.env.reg.token!.url
          }",service="${TOKEN_SERVICE}",scope="repository:${c.repo}:pull,push"`,
        },
      };
    },
    expect: persistent(4, /token/i),
  },
];

/** Source-side faults of `haul copy`: the pull rows whose fault is on the blob GET. */
// Copy asks for a whole blob and sends Range only to resume, so the Range rows do not apply.
const COPY_ROW_IDS = ["reset", "s503", "stall", "flip", "truncate"];

/** Start offset of the upload request (PATCH chunk or closing PUT) reaching `pos`, else undefined. */
function reachUpload(
  req: ProxiedRequest,
  blob: { digest: string; size: number },
  large: boolean,
  pos: number,
): number | undefined {
  if (!req.url.includes("/blobs/uploads/") || req.url.includes("haul-loop=1")) return undefined;
  if (req.method === "PATCH") {
    if (!large) return undefined;
    const m = /^(?:bytes[ =])?(\d+)-(\d+)/.exec(String(req.headers["content-range"] ?? ""));
    if (!m) return undefined;
    return pos >= Number(m[1]) && pos <= Number(m[2]) ? Number(m[1]) : undefined;
  }
  if (req.method !== "PUT") return undefined;
  const digest = new URL(req.url, "http://x").searchParams.get("digest");
  const len = Number(req.headers["content-length"] ?? 0);
  if (digest !== blob.digest || !(len > 0)) return undefined;
  const a = blob.size - len;
  return pos >= a ? a : undefined;
}

/** Reads a model back from a registry with plain fetch (not haul): manifest bytes and every blob. */
async function remoteProblems(reg: Registry, repo: string, fx: Fixture): Promise<string[]> {
  const headers: Record<string, string> = { accept: MEDIA.dockerManifest };
  if (reg.token) {
    const u = new URL(reg.token.url);
    u.searchParams.set("service", TOKEN_SERVICE);
    u.searchParams.set("scope", `repository:${repo}:pull`);
    const t = await fetch(u, { headers: { authorization: `Basic ${btoa("alice:wonderland")}` } });
    headers.authorization = `Bearer ${(await t.json()).token}`;
  } else if (await fetch(`${reg.url}/v2/`).then((r) => (r.body?.cancel(), r.status === 401))) {
    headers.authorization = `Basic ${btoa("alice:wonderland")}`;
  }
  const out: string[] = [];
  const m = await fetch(`${reg.url}/v2/${repo}/manifests/latest`, { headers });
  const bytes = new Uint8Array(await m.arrayBuffer());
  if (m.status !== 200) return [`manifest: HTTP ${m.status}`];
  if (!bytes.every((v, i) => v === fx.manifest[i]) || bytes.length !== fx.manifest.length) {
    out.push("the destination's manifest differs from the source's");
  }
  for (const b of fx.blobs) {
    const r = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers });
    if (r.status !== 200) {
      await r.body?.cancel();
      out.push(`${b.digest.slice(0, 19)}…: HTTP ${r.status}`);
      continue;
    }
    const h = crypto.createHash("sha256").update(new Uint8Array(await r.arrayBuffer())).digest(
      "hex",
    );
    if (`sha256:${h}` !== b.digest) out.push(`${b.digest.slice(0, 19)}… has other content`);
  }
  return out;
}

let cellCounter = 0;

/** A Docker config dir with alice's credentials for `host`. */
async function credentialsFor(host: string): Promise<string> {
  const d = await tmpDir("haul-fault-docker");
  await fsp.writeFile(
    path.join(d, "config.json"),
    JSON.stringify({ auths: { [host]: { auth: btoa("alice:wonderland") } } }),
  );
  return d;
}

/** One push or copy cell: the fault on the destination's uploads (push) or the source's GETs (copy). */
async function runTransferCell(
  op: "push" | "copy",
  env: Env,
  row: Row,
  mode: Mode,
  col: Col,
  fx: Fixture,
  positions: Record<Col, number>,
  shared: { sourceStore: string; sourceRef: string; copySrc: Registry; copyDest: Registry },
): Promise<CellResult> {
  const blob = col === "small" ? fx.blobs[2] : fx.blobs[1];
  const pos = positions[col];
  const id = `c${++cellCounter}`;
  // push: the proxy fronts the destination; copy: it fronts the source.
  const faulted = op === "push" ? env.reg : shared.copySrc;
  const front = await startFaultProxy(faulted.url);
  const repo = `${op}/${row.id}-${id}`;
  const ctx: CellCtx = { env, front, mode, col, repo };
  if (row.id === "redirect") ctx.cdn = await startFaultProxy(env.reg.url);
  if (row.id === "loop") {
    ctx.loop = await startFaultProxy(env.reg.url, {
      rule: (req) => ({ redirectTo: `${front.url}${req.url}` }),
    });
  }
  let used = false;
  if (row.usesProxy?.(col) ?? true) {
    front.setRule((req) => {
      if (ctx.loop && req.url.includes("haul-loop=1")) {
        return { redirectTo: `${ctx.loop.url}${req.url}` };
      }
      const a = op === "push"
        ? reachUpload(req, blob, col !== "small", pos)
        : reach(req, blob.digest, blob.size, pos, ["GET"], row.span);
      if (a === undefined || (mode === "once" && used)) return undefined;
      used = true;
      return row.fault(ctx, req, Math.max(0, pos - a), a);
    });
  }
  // push needs credentials on registries with auth (token auth allows anonymous pulls only).
  const docker = op === "push" && env.name !== "plain"
    ? await credentialsFor(front.host)
    : env.dockerConfig
    ? await env.dockerConfig(front.host)
    : undefined;
  const cliEnv: Record<string, string> = docker ? { DOCKER_CONFIG: docker } : {};
  // Each push gets its own store, hard-linked from the shared one (same blob files, so the
  // source-intact check still reads them): the push ledger (.haul/pushed.json) another cell
  // wrote would turn this cell's upload into a mount, which no upload fault can touch.
  const cellStore = op === "push" ? await linkedStore(shared.sourceStore) : undefined;
  const dest = op === "push"
    ? `${front.host}/${repo}:latest`
    : `${shared.copyDest.host}/${repo}:latest`;
  const args = op === "push"
    ? [
      "push",
      "--insecure",
      "--quiet",
      "--models",
      cellStore!,
      "--chunk-size",
      PART,
      "--retries",
      "2",
      shared.sourceRef,
      dest,
    ]
    : [
      "copy",
      "--insecure",
      "--quiet",
      "--chunk-size",
      PART,
      "--stall-timeout",
      COPY_STALL,
      "--retries",
      "2",
      `${front.host}/${REPO}:latest`,
      dest,
    ];
  const destReg = op === "push" ? env.reg : shared.copyDest;
  const want = row.expect(mode, col);
  const fails: string[] = [];
  let text: string;
  const t0 = Date.now();
  // Copy's stall timeout is 1 s, so it needs less than pull's bound.
  const boundS = op === "copy" ? Math.min(row.boundS, 40) : row.boundS;
  try {
    row.before?.(ctx);
    const r = await runCli(args, { timeoutMs: boundS * 1000, env: cliEnv });
    const seconds = (Date.now() - t0) / 1000;
    if (r.timedOut) {
      text = `no exit within ${boundS} s (killed)`;
      fails.push(text);
    } else if (r.code === 0) {
      const bad = await remoteProblems(destReg, repo, fx);
      text = bad.length ? `exit 0 but ${bad.join("; ")}` : "ok (verified)";
      if (bad.length) fails.push(text);
    } else {
      const { line, single } = errorLine(r.stderr);
      text = `error exit ${r.code}: ${shorten(line)}`;
      if (!single) {
        fails.push(`stderr is not one "haul:" line: ${JSON.stringify(r.stderr.slice(-400))}`);
      }
      if (r.code === 1) fails.push("internal error");
      ctx.blamesSource = /source blob is corrupt/i.test(line);
    }
    if (!fails.length && want.code !== -1) {
      if (want.code === 0 && text !== "ok (verified)") fails.push(`expected ok (verified)`);
      if (want.code !== 0) {
        if (r.code !== want.code) fails.push(`expected exit ${want.code}`);
        else if (want.re && !want.re.test(r.stderr)) {
          fails.push(`expected the message to match ${want.re}`);
        }
      }
    }
    fails.push(...(row.check?.(ctx) ?? []));
    if (op === "push") {
      fails.push(
        ...(await storeProblems(cellStore!, fx.blobs)).map((p) => `source store: ${p}`),
      );
    }
    if (r.code !== 0 && !r.timedOut) {
      front.setRule(undefined);
      if (env.reg.token) env.reg.token.failNext(0);
      const clean = await runCli(args, { timeoutMs: 60_000, env: cliEnv });
      if (clean.code !== 0) {
        fails.push(
          `clean re-run failed (exit ${clean.code}): ${shorten(errorLine(clean.stderr).line)}`,
        );
      } else {
        const bad = await remoteProblems(destReg, repo, fx);
        if (bad.length) fails.push(`clean re-run: ${bad.join("; ")}`);
      }
    }
    const shown = `${text}, ${seconds.toFixed(1)} s`;
    return {
      row,
      mode,
      col,
      op,
      seconds,
      fail: fails.length > 0,
      text: fails.length ? `FAIL: ${fails.join("; ")} (got: ${shown})` : shown,
    };
  } finally {
    if (env.reg.token) env.reg.token.failNext(0);
    await front.stop();
    await ctx.cdn?.stop();
    await ctx.loop?.stop();
    if (docker) await fsp.rm(docker, { recursive: true, force: true });
  }
}

interface Env {
  name: EnvName;
  reg: Registry;
  /** Basic env: the second origin holding the same blobs. */
  cdnReg?: Registry;
  /** Credentials file dir for a front proxy's host, when the registry needs them. */
  dockerConfig?: (host: string) => Promise<string>;
}

interface CellResult {
  op: Op;
  row: Row;
  mode: Mode;
  col: Col;
  text: string;
  fail: boolean;
  seconds: number;
}

function shorten(msg: string): string {
  return msg.replace(/^haul: /, "").replace(/sha256:([0-9a-f]{12})[0-9a-f]{52}/g, "sha256:$1…")
    .replace(/http:\/\/127\.0\.0\.1:\d+/g, "http://127.0.0.1:PORT")
    .replace(/127\.0\.0\.1:\d+/g, "127.0.0.1:PORT")
    .replace(/_state=[^&\s]+/g, "_state=…")
    .replace(/uploads\/[0-9a-f-]{36}/g, "uploads/<uuid>")
    .replace(/\/tmp\/[\w.-]+\//g, "<tmp>/");
}

/** Start offset of the request's byte range when it reaches `pos` of the blob, else undefined. */
function reach(
  req: ProxiedRequest,
  digest: string,
  size: number,
  pos: number,
  methods: string[],
  span: "byte" | "part" = "byte",
): number | undefined {
  if (!methods.includes(req.method) || !req.url.includes(`/blobs/${digest}`)) return undefined;
  if (req.url.includes("haul-loop=1")) return undefined;
  const m = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ""));
  const a = m ? Number(m[1]) : 0;
  const b = m && m[2] !== "" ? Number(m[2]) : size - 1;
  if (span === "part" && size > PART_BYTES) {
    const p0 = Math.floor(pos / PART_BYTES) * PART_BYTES;
    const p1 = Math.min(p0 + PART_BYTES, size) - 1;
    return a <= p1 && b >= p0 ? a : undefined;
  }
  return pos >= a && pos <= b ? a : undefined;
}

async function storeOk(models: string, host: string, fx: Fixture): Promise<string[]> {
  const problems = await missingOrWrong(models, fx.blobs);
  const manifest = await fsp.readFile(
    path.join(models, "manifests", host, ...REPO.split("/"), "latest"),
  )
    .catch(() => undefined);
  if (!manifest) problems.push("no manifest written");
  else if (!new Uint8Array(manifest).every((v, i) => v === fx.manifest[i])) {
    problems.push("manifest bytes differ from the registry's");
  }
  return problems;
}

async function runCell(
  env: Env,
  row: Row,
  mode: Mode,
  col: Col,
  fx: Fixture,
  positions: Record<Col, number>,
): Promise<CellResult> {
  const blob = col === "small" ? fx.blobs[2] : fx.blobs[1];
  const pos = positions[col];
  const models = await tmpDir("haul-fault-models");
  const front = await startFaultProxy(env.reg.url);
  const ctx: CellCtx = { env, front, mode, col, repo: REPO };
  if (row.id === "redirect") ctx.cdn = await startFaultProxy(env.cdnReg!.url);
  if (row.id === "loop") {
    ctx.loop = await startFaultProxy(env.reg.url, {
      rule: (req) => ({ redirectTo: `${front.url}${req.url}` }),
    });
  }
  const methods = row.methods?.(mode) ?? ["GET"];
  let used = false;
  if (row.usesProxy?.(col) ?? true) {
    front.setRule((req) => {
      if (ctx.loop && req.url.includes("haul-loop=1")) {
        return { redirectTo: `${ctx.loop.url}${req.url}` }; // keep looping
      }
      const a = reach(req, blob.digest, blob.size, pos, methods, row.span);
      if (a === undefined || (mode === "once" && used)) return undefined;
      used = true;
      return row.fault(ctx, req, Math.max(0, pos - a), a);
    });
  }
  const docker = env.dockerConfig ? await env.dockerConfig(front.host) : undefined;
  const cliEnv: Record<string, string> = docker ? { DOCKER_CONFIG: docker } : {};
  const args = [
    "pull",
    "--insecure",
    "--quiet",
    "--models",
    models,
    "--part-size",
    PART,
    "--stall-timeout",
    PULL_STALL,
    "--retries",
    "2",
    `${front.host}/${REPO}:latest`,
  ];
  const want = row.expect(mode, col);
  const fails: string[] = [];
  let text: string;
  const t0 = Date.now();
  try {
    row.before?.(ctx);
    const r = await runCli(args, { timeoutMs: row.boundS * 1000, env: cliEnv });
    const seconds = (Date.now() - t0) / 1000;
    if (r.timedOut) {
      text = `no exit within ${row.boundS} s (killed)`;
      fails.push(text);
    } else if (r.code === 0) {
      const bad = await storeOk(models, front.host, fx);
      text = bad.length ? `exit 0 but ${bad.join("; ")}` : "ok (verified)";
      if (bad.length) fails.push(text);
    } else {
      const { line, single } = errorLine(r.stderr);
      text = `error exit ${r.code}: ${shorten(line)}`;
      if (!single) {
        fails.push(`stderr is not one "haul:" line: ${JSON.stringify(r.stderr.slice(-400))}`);
      }
    }
    if (!fails.length) {
      if (want.code === 0 && text !== "ok (verified)") fails.push(`expected ok (verified)`);
      if (want.code !== 0) {
        if (r.code !== want.code) fails.push(`expected exit ${want.code}`);
        else if (want.re && !want.re.test(r.stderr)) {
          fails.push(`expected the message to match ${want.re}`);
        }
      }
    }
    fails.push(...(row.check?.(ctx) ?? []));
    fails.push(...await storeProblems(models, fx.blobs));
    if (r.code !== 0) {
      // Faults off: the state left behind must lead a clean run to a verified store.
      front.setRule(undefined);
      if (env.reg.token) env.reg.token.failNext(0);
      const clean = await runCli(args, { timeoutMs: 60_000, env: cliEnv });
      if (clean.code !== 0) {
        fails.push(
          `clean re-pull failed (exit ${clean.code}): ${shorten(errorLine(clean.stderr).line)}`,
        );
      } else {
        const bad = await storeOk(models, front.host, fx);
        if (bad.length) fails.push(`clean re-pull: ${bad.join("; ")}`);
      }
      fails.push(
        ...(await storeProblems(models, fx.blobs)).map((p) => `after clean re-pull: ${p}`),
      );
    }
    const shown = `${text}, ${seconds.toFixed(1)} s`;
    return {
      op: "pull",
      row,
      mode,
      col,
      seconds,
      fail: fails.length > 0,
      text: fails.length ? `FAIL: ${fails.join("; ")} (got: ${shown})` : shown,
    };
  } finally {
    if (env.reg.token) env.reg.token.failNext(0);
    await front.stop();
    await ctx.cdn?.stop();
    await ctx.loop?.stop();
    await fsp.rm(models, { recursive: true, force: true });
    if (docker) await fsp.rm(docker, { recursive: true, force: true });
  }
}

/** Runs tasks `n` at a time; tasks with the same lane run one after another. */
async function pool<T>(tasks: { lane?: string; run: () => Promise<T> }[], n: number): Promise<T[]> {
  const out: T[] = new Array(tasks.length);
  const busy = new Set<string>();
  const pending = tasks.map((t, i) => ({ ...t, i }));
  let running = 0;
  await new Promise<void>((resolve, reject) => {
    const pump = () => {
      if (!pending.length && running === 0) return resolve();
      while (running < n) {
        const k = pending.findIndex((t) => !t.lane || !busy.has(t.lane));
        if (k < 0) return;
        const t = pending.splice(k, 1)[0];
        running++;
        if (t.lane) busy.add(t.lane);
        t.run().then((v) => {
          out[t.i] = v;
        }, reject).finally(() => {
          running--;
          if (t.lane) busy.delete(t.lane);
          pump();
        });
      }
    };
    pump();
  });
  return out;
}

async function pushAvailable(): Promise<boolean> {
  const r = await runCli(["push", "--help"], { timeoutMs: 30_000 });
  return r.code === 0;
}

/** A copy of the store at `src` whose files are hard links (no .haul/ state). */
async function linkedStore(src: string): Promise<string> {
  const dst = await tmpDir("haul-fault-cell-store");
  for (const top of ["blobs", "manifests"]) {
    for (const rel of await fsp.readdir(path.join(src, top), { recursive: true })) {
      const from = path.join(src, top, rel);
      const to = path.join(dst, top, rel);
      if ((await fsp.stat(from)).isDirectory()) await fsp.mkdir(to, { recursive: true });
      else {
        await fsp.mkdir(path.dirname(to), { recursive: true });
        await fsp.link(from, to);
      }
    }
  }
  return dst;
}

Deno.test({
  name: "haul pull fault matrix: transient faults end verified, persistent ones in one clear line",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const r = rng(SEED);
    const fx = makeOllamaModel({ layerSizes: [LARGE, SMALL], seed: SEED % 100_000 });
    const positions: Record<Col, number> = {
      start: between(r, 100, 64 * 1024),
      middle: Math.floor(LARGE / 2) + between(r, -MiB, MiB),
      end: LARGE - between(r, 100, 64 * 1024),
      small: between(r, SMALL >> 2, (3 * SMALL) >> 2),
    };
    const started = Date.now();
    const regs: Registry[] = [];
    const dockerDirs: string[] = [];
    try {
      const [plain, basic, cdnReg, token] = await Promise.all([
        startRegistry(),
        startRegistry({ auth: "basic" }),
        startRegistry(),
        startRegistry({ auth: "token" }),
      ]);
      regs.push(plain, basic, cdnReg, token);
      const alice = { user: "alice", pass: "wonderland" };
      await Promise.all([
        pushFixture(plain, REPO, "latest", fx),
        pushFixture(basic, REPO, "latest", fx, alice),
        pushFixture(cdnReg, REPO, "latest", fx),
        pushFixture(token, REPO, "latest", fx, alice),
      ]);
      const envs: Record<EnvName, Env> = {
        plain: { name: "plain", reg: plain },
        basic: {
          name: "basic",
          reg: basic,
          cdnReg,
          dockerConfig: async (host) => {
            const d = await tmpDir("haul-fault-docker");
            dockerDirs.push(d);
            await fsp.writeFile(
              path.join(d, "config.json"),
              JSON.stringify({ auths: { [host]: { auth: btoa("alice:wonderland") } } }),
            );
            return d;
          },
        },
        token: { name: "token", reg: token },
      };

      // HAUL_FAULT_ROWS=reset,flip and HAUL_FAULT_OPS=pull,copy narrow a run (debugging).
      const only = process.env.HAUL_FAULT_ROWS?.split(",");
      const ops = (process.env.HAUL_FAULT_OPS?.split(",") ?? ["pull", "push", "copy"]) as Op[];
      const push = ops.some((o) => o !== "pull") && await pushAvailable();
      // push reads from a store: fill one from the registry, honestly, once.
      const sourceStore = await tmpDir("haul-fault-source");
      dockerDirs.push(sourceStore);
      const sourceRef = `${plain.host}/${REPO}:latest`;
      if (push) {
        const filled = await runCli([
          "pull",
          "--insecure",
          "--quiet",
          "--models",
          sourceStore,
          sourceRef,
        ]);
        assert.equal(filled.code, 0, filled.stderr);
      }
      const shared = { sourceStore, sourceRef, copySrc: plain, copyDest: cdnReg };
      const tasks: {
        lane?: string;
        weight: number;
        run: () => Promise<CellResult | undefined>;
      }[] = [];
      const naCells: CellResult[] = [];
      const tables: { op: Op; rows: Row[] }[] = [
        { op: "pull", rows: ROWS },
        { op: "push", rows: PUSH_ROWS },
        { op: "copy", rows: ROWS.filter((r) => COPY_ROW_IDS.includes(r.id)) },
      ];
      for (const { op, rows } of tables) {
        if (!ops.includes(op) || (op !== "pull" && !push)) continue;
        for (const row of rows) {
          if (only && !only.includes(row.id)) continue;
          for (const mode of ["once", "always"] as Mode[]) {
            for (const col of COLS) {
              const na = row.na?.(col, mode);
              if (na) {
                naCells.push({ op, row, mode, col, text: na, fail: false, seconds: 0 });
                continue;
              }
              const env = envs[row.env];
              tasks.push({
                lane: row.env === "token" ? "token" : undefined,
                weight: mode === "always" ? row.slowS ?? 3 : 3,
                run: () =>
                  op === "pull"
                    ? runCell(env, row, mode, col, fx, positions)
                    : runTransferCell(op, env, row, mode, col, fx, positions, shared),
              });
            }
          }
        }
      }
      // The long cells first, so that they overlap the short ones.
      tasks.sort((x, y) => y.weight - x.weight);
      const results = [
        ...(await pool(tasks, POOL)).filter((x): x is CellResult => !!x),
        ...naCells,
      ];
      const elapsed = (Date.now() - started) / 1000;

      const lines: string[] = [];
      lines.push(
        "## Fault matrix: `haul pull`, `haul push`, `haul copy`",
        "",
        `Run ${today()}, seed ${SEED}, ${results.length} cells in ${elapsed.toFixed(0)} s ` +
          `(${POOL} at a time), Deno ${Deno.version.deno}. Each cell runs the CLI once with a hard ` +
          "time bound against Debian's docker-registry behind `tests/support/fault_proxy.ts`: " +
          `\`haul pull --insecure --quiet --part-size ${PART} --stall-timeout ${PULL_STALL} --retries 2\`, ` +
          `\`haul push --insecure --quiet --chunk-size ${PART} --retries 2\` (from a store filled ` +
          "by an honest pull), `haul copy --insecure --quiet --chunk-size " + PART +
          ` --stall-timeout ${COPY_STALL} --retries 2\` (to a second registry).`,
        "",
        `- Large blob: ${LARGE} bytes (pull: ${Math.ceil(LARGE / PART_BYTES)} Range parts of ` +
          `8 MiB; push: ${Math.ceil(LARGE / PART_BYTES)} PATCH chunks of 8 MiB); small blob: ` +
          `${SMALL} bytes (one GET; one PUT).`,
        `- Fault positions (byte offsets, from the seed): start ${positions.start}, middle ${positions.middle}, ` +
          `end ${positions.end} (large blob), small ${positions.small} (small blob). A fault hits ` +
          "the request whose byte range reaches the position (pull and copy: the blob GET at the " +
          "source; push: the PATCH chunk or closing PUT at the destination); byte-level faults " +
          "(reset, stall, flip, truncate) act at that byte of the body. The trickle follows " +
          "the Range part holding the position.",
        '- "once": only the first such request misbehaves (a transient fault: the command must ' +
          'end "ok (verified)"). "every time": every such request misbehaves (a persistent ' +
          "fault: one `haul:` line on stderr, the expected exit code, within the bound).",
        "- Token rows: at start the token endpoint fails from the first token request; elsewhere " +
          "a 401 on the request at the position forces a token refresh and the endpoint fails " +
          "from then on.",
        "- In every cell: pull: each `blobs/sha256-*` is re-hashed against its name and each " +
          "`-partial.json` a later run could trust is compared with the blob's real bytes; push " +
          "and copy: success means the destination, read back with plain `fetch`, serves the " +
          "same manifest bytes and every blob with the right digest; push's source store must " +
          "stay intact. After a failure the same command with the faults off must complete " +
          "verified. A cell that breaks any of these reads `FAIL: why`.",
      );
      for (const { op, rows } of tables) {
        lines.push(
          "",
          `### \`haul ${op}\``,
          "",
          "| fault | when | start | middle | end | small blob |",
          "| --- | --- | --- | --- | --- | --- |",
        );
        const why = !ops.includes(op)
          ? "not run: left out of this run (HAUL_FAULT_OPS)"
          : op !== "pull" && !push
          ? "not run: push not available"
          : "not run";
        for (const row of rows) {
          for (const mode of ["once", "always"] as Mode[]) {
            const cells = COLS.map((c) =>
              results.find((x) => x.op === op && x.row === row && x.mode === mode && x.col === c)
                ?.text ?? why
            );
            lines.push(
              `| ${cell(row.title)} | ${mode === "once" ? "once" : "every time"} | ${
                cells.map(cell).join(" | ")
              } |`,
            );
          }
        }
      }
      await writeDocSection("matrix", lines.join("\n"));
      const failed = results.filter((x) => x.fail);
      assert.deepEqual(
        failed.map((x) => `${x.op}/${x.row.id}/${x.mode}/${x.col}: ${x.text}`),
        [],
        "every cell as expected (see docs/FAULTS.md)",
      );
    } finally {
      await Promise.all(regs.map((g) => g.stop()));
      await fx.cleanup?.();
      for (const d of dockerDirs) await fsp.rm(d, { recursive: true, force: true });
    }
  },
});
