/**
 * Step 3: the upload session. Opening one (`POST /v2/<name>/blobs/uploads/` → 202 and a
 * Location), asking where one stands (`GET <location>` → 204, `Range: 0-<last byte>`),
 * resuming one a state file names, and dropping one we give up on (`DELETE <location>`).
 */
import type { Blob } from "../registry/manifest.ts";
import type { UploadContext } from "./context.ts";
import { unwrap, UploadStepError } from "./errors.ts";
import { withRetries } from "./retry.ts";
import { destKey, type DonePart, readState, removeState } from "./state.ts";
import { parseUploadRange } from "./target.ts";

/** Where a session stands: the URL to go on with and the bytes the registry holds. */
export interface SessionPlace {
  location: string;
  offset: number;
  /** A redirected upload's parts in storage (redirected.ts). */
  parts?: DonePart[];
}

/** Opens a session for `b` (retrying what is worth it); resolves to its URL. */
export function openSession(ctx: UploadContext, b: Blob): Promise<string> {
  return withRetries(ctx, b, () => postSession(ctx, b));
}

/** One `POST /v2/<name>/blobs/uploads/`: the new session's URL on 202. */
export async function postSession(ctx: UploadContext, b: Blob): Promise<string> {
  const url = ctx.target.uploadsUrl;
  const step = `opening the upload session for ${b.digest}`;
  const res = await ctx.target.send(
    new Request(url, { method: "POST", headers: { "content-length": "0" }, signal: ctx.signal }),
    step,
  );
  if (res.status === 202) {
    await res.body?.cancel().catch(() => {});
    // distribution-spec 1.1: chunks (but the last) must be at least this long.
    const min = Number(res.headers.get("oci-chunk-min-length"));
    if (Number.isSafeInteger(min) && min > 0) ctx.learned.minChunk = min;
    return ctx.target.location(res, url, "POST", step);
  }
  return await ctx.target.fail(res, "POST", url, step);
}

/**
 * Where the session at `location` stands, or undefined when the registry forgot it.
 * `hint` is the offset we believe (it decides what `Range: 0-0` means).
 */
export async function sessionStatus(
  ctx: UploadContext,
  b: Blob,
  location: string,
  hint: number,
): Promise<SessionPlace | undefined> {
  const step = `asking where the upload session of ${b.digest} stands`;
  const res = await ctx.target.send(new Request(location, { signal: ctx.signal }), step);
  await res.body?.cancel().catch(() => {});
  if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) {
    if (res.status === 401 || res.status === 403) {
      await ctx.target.fail(res, "GET", location, step);
    }
    return undefined;
  }
  if (!res.ok) return await ctx.target.fail(res, "GET", location, step);
  const offset = parseUploadRange(res.headers.get("range"), hint);
  if (offset === undefined) return undefined;
  const next = res.headers.get("location")
    ? ctx.target.location(res, location, "GET", step)
    : location;
  return { location: next, offset };
}

/**
 * {@link sessionStatus}, with a session we cannot ask about (a failure worth retrying)
 * taken as gone: undefined, so the caller starts a new one.
 */
export function whereSessionStands(
  ctx: UploadContext,
  b: Blob,
  location: string,
  hint: number,
): Promise<SessionPlace | undefined> {
  return sessionStatus(ctx, b, location, hint).catch((e) => {
    if (e instanceof UploadStepError && e.retryable) return undefined;
    throw unwrap(e);
  });
}

/**
 * The session an earlier run saved in `statePath` for this blob and destination, when
 * the registry still has it (and holds no more than the blob); else undefined, and the
 * state file is removed.
 */
export async function resumeSession(
  ctx: UploadContext,
  b: Blob,
  statePath: string,
): Promise<SessionPlace | undefined> {
  const saved = await readState(statePath);
  const dest = destKey(ctx.baseUrl, ctx.repository);
  if (saved && saved.digest === b.digest && saved.size === b.size && saved.dest === dest) {
    // Parts in storage: the commit's etag says whether the registry still has them.
    if (saved.parts) return { location: saved.location, offset: saved.offset, parts: saved.parts };
    // A session we cannot ask about is as good as gone: start a new one.
    const at = await whereSessionStands(ctx, b, saved.location, saved.offset);
    if (at && at.offset <= b.size) return at;
  }
  await removeState(statePath);
  return undefined;
}

/** Best effort: tells the registry to drop a session we give up on. */
export async function cancelSession(ctx: UploadContext, location: string): Promise<void> {
  try {
    const res = await ctx.target.request(
      new Request(location, { method: "DELETE", signal: AbortSignal.timeout(5000) }),
    );
    await res.body?.cancel().catch(() => {});
  } catch {
    // The registry purges abandoned sessions itself.
  }
}
