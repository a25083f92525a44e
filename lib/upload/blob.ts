/**
 * One blob's push, step by step: check (HEAD), resume a saved session or try the
 * mount / open a session (POST), send the bytes (one PUT, PATCH chunks and commit, or
 * Ollama's redirected parts and commit).
 */
import type { Blob } from "../registry/manifest.ts";
import { Monolithic, sendChunked } from "./chunked.ts";
import type { UploadContext } from "./context.ts";
import { checkBlob, mountBlob, type MountResult } from "./mount.ts";
import { sendRedirected } from "./redirected.ts";
import { sendMonolithic, sendWhole } from "./send.ts";
import { openSession, resumeSession, type SessionPlace } from "./session.ts";
import { removeState, uploadStatePath } from "./state.ts";

/** Puts `b` in place in the destination repository, counting what it took in `ctx.result`. */
export async function uploadBlob(ctx: UploadContext, b: Blob): Promise<void> {
  if (await checkBlob(ctx, b)) {
    ctx.result.skipped++;
    ctx.progress.present(b, false);
    return;
  }
  const large = b.size > ctx.tuning.chunkSize;
  // Looked up for every blob: an earlier run may have used a smaller chunk size.
  const statePath = ctx.stateDir
    ? uploadStatePath(ctx.stateDir, b.digest, ctx.baseUrl, ctx.repository)
    : undefined;
  const resumed = statePath ? await resumeSession(ctx, b, statePath) : undefined;
  let at: SessionPlace;
  if (resumed) {
    at = resumed;
    ctx.result.resumed++;
  } else {
    const started = await mountOrOpen(ctx, b);
    if (started.mounted) {
      ctx.result.mounted++;
      ctx.progress.present(b, true);
      return;
    }
    at = { location: started.location, offset: 0 };
  }
  ctx.emit({
    type: "blob-start",
    op: "push",
    digest: b.digest,
    total: b.size,
    completed: at.offset,
  });
  ctx.progress.credit(b, at.offset);

  const reader = await ctx.openBlob(b, ctx.signal);
  try {
    if (ctx.redirectUploads && (!resumed || resumed.parts)) {
      await sendRedirected(ctx, b, reader, {
        location: at.location,
        done: resumed?.parts ?? [],
        resumed: resumed !== undefined,
        statePath,
      });
    } else if (!large && !resumed) {
      await sendWhole(ctx, b, at.location, reader);
    } else if (ctx.learned.monolithic) {
      await sendMonolithic(ctx, b, at.location, reader);
    } else {
      await sendChunked(ctx, b, reader, { ...at, resumed: resumed !== undefined, statePath })
        .catch(async (err) => {
          if (!(err instanceof Monolithic)) throw err;
          // No PATCH here: the blob again, whole, in a new session.
          await sendMonolithic(ctx, b, await openSession(ctx, b), reader);
          if (statePath) await removeState(statePath);
        });
    }
  } finally {
    await reader.close();
  }
  ctx.result.uploaded++;
  ctx.progress.credit(b, b.size);
  ctx.emit({ type: "blob-done", op: "push", digest: b.digest, total: b.size, skipped: false });
}

/** A blob that names another repository is mounted from it; any other gets a new session. */
async function mountOrOpen(ctx: UploadContext, b: Blob): Promise<MountResult> {
  if (b.from && b.from !== ctx.repository) return await mountBlob(ctx, b, b.from);
  return { mounted: false, location: await openSession(ctx, b) };
}
