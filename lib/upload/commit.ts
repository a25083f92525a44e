/**
 * Step 5: committing the blob (`PUT <location>?digest=<d>`), with the last bytes as the
 * body when there are any (a small blob goes up in this one request).
 */
import { IntegrityError } from "../errors.ts";
import type { Blob } from "../registry/manifest.ts";
import type { UploadContext } from "./context.ts";
import { OCTET, withDigest } from "./target.ts";

/**
 * Closes the session at `location` with `PUT ?digest=`, sending `data` as the (last)
 * body when given; checks the digest the registry says it stored. `etag` is added to the
 * query after the digest when given (Ollama's redirected parts: redirected.ts).
 */
export async function commitBlob(
  ctx: UploadContext,
  b: Blob,
  location: string,
  data?: Uint8Array,
  etag?: string,
): Promise<void> {
  let url = withDigest(location, b.digest);
  if (etag !== undefined) url += `&etag=${encodeURIComponent(etag)}`;
  const step = data
    ? `sending ${b.digest} in one PUT (${data.byteLength} bytes)`
    : `committing the blob ${b.digest}`;
  const headers: Record<string, string> = {
    "content-type": OCTET,
    "content-length": String(data?.byteLength ?? 0),
  };
  const res = await ctx.target.send(
    new Request(url, {
      method: "PUT",
      headers,
      body: data ? data as Uint8Array<ArrayBuffer> : null,
      signal: ctx.signal,
    }),
    step,
    data?.byteLength ?? 0,
  );
  if (res.status !== 201 && res.status !== 204 && res.status !== 200) {
    return await ctx.target.fail(res, "PUT", url, step);
  }
  await res.body?.cancel().catch(() => {});
  const claimed = res.headers.get("docker-content-digest");
  if (claimed?.startsWith("sha256:") && claimed !== b.digest) {
    throw new IntegrityError(
      `${ctx.target.repository}: the registry stored ${b.digest} as ${claimed}`,
    );
  }
}
