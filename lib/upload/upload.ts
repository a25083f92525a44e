/**
 * Blob-level upload (the shape of Ollama's transfer package): put a set of
 * content-addressed blobs into one repository, in parallel, then optionally the
 * manifest that references them. Per blob (OCI distribution-spec v1.1, "Pushing
 * blobs"; go-containerregistry's `remote.Write`):
 *
 *   HEAD   /v2/<name>/blobs/<digest>                     200 → already there
 *   POST   /v2/<name>/blobs/uploads/?mount=<d>&from=<r>  201 → mounted, 202 → session
 *   small: POST /v2/<name>/blobs/uploads/, PUT <location>?digest=<d> with the bytes
 *   large: PATCH <location> chunk by chunk (following each Location), PUT ?digest=
 *
 * Chunk bodies are `Uint8Array`s: the transport can clone them, so a 401 refresh
 * or a 307 replays the chunk, and only one chunk per blob is ever in memory.
 *
 * A large blob's session URL and acknowledged offset are saved after every chunk
 * in a state file next to the blob. When a chunk fails, or a later run finds the
 * file, the registry is asked where the session stands (`GET <location>` → 204,
 * `Range: 0-<last byte>`) and the upload continues from there; a session the
 * registry no longer knows (404) is replaced by a new one.
 *
 * distribution 2.8 (Debian's `docker-registry`) keeps the bytes of a PATCH that
 * was cut off mid-body and then rejects the session's state token as stale: the
 * next request gets 404 BLOB_UPLOAD_INVALID and the upload starts over. Behind a
 * request-buffering proxy (nginx's default) a cut-off chunk never reaches the
 * registry and the upload continues from the last acknowledged chunk.
 *
 * Each step is a function of its own, and an error names the step that failed:
 * mount.ts (HEAD, POST ?mount=), session.ts (POST, GET, DELETE), send.ts
 * (one PUT, or PATCH chunks driven by chunked.ts), commit.ts (PUT ?digest=) and
 * manifest.ts; blob.ts runs them for one blob, {@link upload} for all of them. The
 * options and defaults are in options.ts, resume state files in state.ts.
 */
import { checkDigest, sha256Digest } from "../digest.ts";
import { openStoreBlob } from "../disk/blob_file.ts";
import { HaulError, InterruptedError } from "../errors.ts";
import { type Blob, MAX_BLOB_SIZE } from "../registry/manifest.ts";
import { createSession, type Session } from "../registry/session.ts";
import { Semaphore } from "../transport/pool.ts";
import { DEFAULT_RETRY } from "../transport/retry.ts";
import { uploadBlob } from "./blob.ts";
import { Progress, type UploadContext } from "./context.ts";
import { unwrap } from "./errors.ts";
import { putIndex, putManifest } from "./manifest.ts";
import {
  type OpenBlob,
  type Tuning,
  tuningFrom,
  type UploadOptions,
  type UploadResult,
} from "./options.ts";
import { UploadTarget } from "./target.ts";

export { DEFAULT_UPLOAD_TUNING } from "./options.ts";
export type { BlobReader, OpenBlob, UploadOptions, UploadResult, UploadTuning } from "./options.ts";
export { describe, shortenUploadUrls, SourceDigestError } from "./errors.ts";
export { putManifest } from "./manifest.ts";
export { uploadStatePath } from "./state.ts";
export { parseUploadRange, withDigest } from "./target.ts";

/**
 * Uploads `blobs` to `repository`, then the manifest when given; resolves when
 * every blob is in place (and the manifest accepted).
 */
export async function upload(options: UploadOptions): Promise<UploadResult> {
  const tuning = tuningFrom(options);
  checkBlobs(options.blobs);
  const session = options.session ??
    createSession(options.baseUrl, [`repository:${options.repository}:pull,push`], options);
  for (const b of options.blobs) {
    if (b.from && b.from !== options.repository) {
      session.auth.addScope(`repository:${b.from}:pull`);
    }
  }
  const seen = new Set<string>();
  const blobs = options.blobs.filter((b) => !seen.has(b.digest) && seen.add(b.digest));

  const abort = new AbortController();
  const onOuter = () => abort.abort(new InterruptedError());
  options.signal?.addEventListener("abort", onOuter, { once: true });
  if (options.signal?.aborted) onOuter();
  const ctx = contextFor(options, session, tuning, blobs, abort.signal);

  let firstError: unknown;
  try {
    firstError = await uploadAll(ctx, blobs, abort);
    if (firstError === undefined && options.manifest) {
      ctx.emit({ type: "manifest-write", op: "push" });
      ctx.result.manifestDigest = await putManifest(
        session,
        options.repository,
        options.manifestRef ?? sha256Digest(options.manifest),
        options.manifest,
        { mediaType: options.manifestMediaType, signal: ctx.signal },
      );
    }
  } catch (err) {
    firstError ??= err;
  } finally {
    options.signal?.removeEventListener("abort", onOuter);
  }
  if (firstError !== undefined) {
    if (options.signal?.aborted && !(firstError instanceof HaulError)) throw new InterruptedError();
    throw unwrap(firstError);
  }
  return ctx.result;
}

/** Refuses a malformed digest or an impossible size before anything is sent. */
function checkBlobs(blobs: Blob[]): void {
  for (const b of blobs) {
    checkDigest(b.digest, "blob digest");
    if (!Number.isSafeInteger(b.size) || b.size < 0 || b.size > MAX_BLOB_SIZE) {
      throw new RangeError(`Blob ${b.digest} has an invalid size ${b.size}`);
    }
  }
}

/** What the steps share for this call (the defaults of `open` and `stateDir` filled in). */
function contextFor(
  options: UploadOptions,
  session: Session,
  tuning: Tuning,
  blobs: Blob[],
  signal: AbortSignal,
): UploadContext {
  const srcDir = options.srcDir;
  const openBlob: OpenBlob = options.open ??
    ((b) => {
      if (srcDir === undefined) throw new TypeError("upload() needs srcDir or open");
      return openStoreBlob(srcDir, b);
    });
  const emit = options.onEvent ?? (() => {});
  const total = blobs.reduce((a, b) => a + b.size, 0);
  return {
    target: new UploadTarget(session, options.repository, (options.requestTimeout ?? 30) * 1000),
    baseUrl: options.baseUrl,
    repository: options.repository,
    tuning,
    policy: { ...DEFAULT_RETRY, ...options.retry },
    signal,
    emit,
    result: { transferred: 0, skipped: 0, mounted: 0, uploaded: 0, resumed: 0 },
    progress: new Progress(total, emit, options.onProgress),
    openBlob,
    stateDir: options.stateDir === undefined ? srcDir : options.stateDir ?? undefined,
    srcDir,
    storeDir: options.open ? undefined : srcDir,
    redirectUploads: options.redirectUploads ?? false,
    learned: session.learned,
  };
}

/**
 * Uploads every blob, `concurrency` at a time. The first failure aborts the others;
 * resolves to it (undefined when every blob is in place).
 */
async function uploadAll(
  ctx: UploadContext,
  blobs: Blob[],
  abort: AbortController,
): Promise<unknown> {
  const slots = new Semaphore(ctx.tuning.concurrency);
  let firstError: unknown;
  const one = async (b: Blob) => {
    const release = await slots.acquire(ctx.signal);
    try {
      await uploadBlob(ctx, b);
    } finally {
      release();
    }
  };
  await Promise.all(blobs.map((b) =>
    one(b).catch((err) => {
      if (firstError === undefined) {
        firstError = err;
        abort.abort(err);
      }
    })
  ));
  return firstError;
}

/**
 * Uploads an image: its blobs through {@link upload}, then either the manifest
 * (`top.kind` "manifest") or every manifest the index lists, by digest, and the
 * index last ({@link putIndex}), both under `manifestRef`. The result carries
 * the digest the registry gave the top-level document.
 */
export async function uploadImage(
  options: UploadOptions & { session: Session },
  top: { kind: "manifest" | "index"; bytes: Uint8Array; mediaType: string },
  children: { digest: string; bytes: Uint8Array; mediaType: string }[],
  manifestRef: string,
): Promise<UploadResult> {
  const res = await upload({
    ...options,
    ...(top.kind === "manifest"
      ? { manifest: top.bytes, manifestRef, manifestMediaType: top.mediaType }
      : {}),
  });
  if (top.kind === "index") {
    res.manifestDigest = await putIndex(
      options.session,
      options.repository,
      manifestRef,
      top,
      children,
      options,
    );
  }
  return res;
}
