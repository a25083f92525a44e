/**
 * Steps 1 and 2, where no bytes go: does the registry have the blob already
 * (`HEAD /v2/<name>/blobs/<digest>`), and the cross-repository mount
 * (`POST /v2/<name>/blobs/uploads/?mount=<d>&from=<r>`): 201 → the registry linked the
 * blob, no bytes sent; 202 → it opened a session instead.
 */
import type { Blob } from "../registry/manifest.ts";
import type { UploadContext } from "./context.ts";
import { inStep } from "./errors.ts";
import { withRetries } from "./retry.ts";
import { postSession } from "./session.ts";

/**
 * True when the destination repository has `b` (HEAD answered 2xx), false on 404.
 *
 * @throws {RegistryError} for any other answer, its message led by the step.
 */
export async function checkBlob(ctx: UploadContext, b: Blob): Promise<boolean> {
  try {
    return await ctx.target.hasBlob(b.digest, ctx.signal);
  } catch (err) {
    throw inStep(err, `checking whether the registry has ${b.digest}`);
  }
}

/** What a mount attempt gave: the blob, or a session to send it in. */
export type MountResult = { mounted: true } | { mounted: false; location: string };

/**
 * Mounts `b` from repository `from` on the same registry. A refused mount (no access
 * to `from`) falls back to a plain session within the same attempt.
 */
export function mountBlob(ctx: UploadContext, b: Blob, from: string): Promise<MountResult> {
  return withRetries(ctx, b, () => postMount(ctx, b, from));
}

async function postMount(ctx: UploadContext, b: Blob, from: string): Promise<MountResult> {
  const url = `${ctx.target.uploadsUrl}?mount=${encodeURIComponent(b.digest)}&from=${
    encodeURIComponent(from)
  }`;
  const step = `mounting ${b.digest} from ${from}`;
  const res = await ctx.target.send(
    new Request(url, { method: "POST", headers: { "content-length": "0" }, signal: ctx.signal }),
    step,
  );
  if (res.status === 201) {
    await res.body?.cancel().catch(() => {});
    return { mounted: true };
  }
  if (res.status === 202) {
    await res.body?.cancel().catch(() => {});
    return { mounted: false, location: ctx.target.location(res, url, "POST", step) };
  }
  if (res.status === 401 || res.status === 403 || res.status === 404) {
    await res.body?.cancel().catch(() => {});
    return { mounted: false, location: await postSession(ctx, b) };
  }
  return await ctx.target.fail(res, "POST", url, step);
}
