/** Step 1: does the registry have the blob already? (`HEAD /v2/<name>/blobs/<digest>`) */
import type { Blob } from "../registry/manifest.ts";
import type { UploadContext } from "./context.ts";
import { inStep } from "./errors.ts";

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
