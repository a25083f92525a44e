/**
 * What push (lib/ops/push.ts), push from a layout (lib/ops/push_oci.ts) and copy
 * (lib/ops/copy.ts) share: their options and result, and where a manifest goes at the
 * destination.
 */
import { UsageError } from "../errors.ts";
import type { Descriptor } from "../registry/manifest.ts";
import type { OnProgress } from "../progress_events.ts";
import { formatReference, type Reference } from "../registry/reference.ts";
import type { ConnectionOptions } from "../registry/session.ts";
import type { UploadResult, UploadTuning } from "../upload/upload.ts";

export interface PushOptions extends ConnectionOptions, UploadTuning {
  /** Store root. @default $OLLAMA_MODELS or ~/.ollama/models */
  modelsDir?: string;
  /**
   * Push from the OCI image layout in this directory instead of Ollama's store: REF's tag
   * (or digest) selects the index.json entry (see lib/ops/push_oci.ts). @default undefined
   */
  ociLayout?: string;
  /** Allow plain http (Ollama's `--insecure`). @default false */
  insecure?: boolean;
  /**
   * A repository on DEST's registry that already holds the blobs, to mount them from.
   * @default REF's repository when REF and DEST are on the same registry, else none
   */
  from?: string;
  /**
   * Send parts as Ollama's registry takes them (lib/upload/redirected.ts).
   * @default true for registry.ollama.ai / ollama.com and when `keyFile` or `ollamaKey` is given
   */
  redirectUploads?: boolean;
  onEvent?: OnProgress;
  signal?: AbortSignal;
}

/** What a push or copy did. */
export interface PushResult extends UploadResult {
  /** Where the content came from. */
  source: Reference;
  /** Where it went. */
  dest: Reference;
  /** `host/repository:tag` of the destination. */
  name: string;
  /** Digest of the top-level manifest (or index) at the destination. */
  manifestDigest: string;
  /** Every blob the destination now has for this reference. */
  blobs: Descriptor[];
}

/**
 * Ends a push, copy or layout push: the `success` event, then the result, whose manifest
 * digest is what the upload reports, else the manifest's own (`digest`).
 */
export function pushed(
  options: Pick<PushOptions, "onEvent">,
  res: UploadResult,
  at: { source: Reference; dest: Reference; digest: string; blobs: Descriptor[] },
): PushResult {
  options.onEvent?.({ type: "success", ref: formatReference(at.dest) });
  return {
    ...res,
    source: at.source,
    dest: at.dest,
    name: formatReference(at.dest),
    manifestDigest: res.manifestDigest ?? at.digest,
    blobs: at.blobs,
  };
}

/** `scheme://host` of a reference. */
export function baseOf(ref: Reference): string {
  return `${ref.scheme}://${ref.host}`;
}

/** The tag or digest a manifest goes under at `dest`; a pinned digest must match. */
export function manifestRefFor(dest: Reference, digest: string): string {
  if (dest.digest && dest.digest !== digest) {
    throw new UsageError(
      `${formatReference(dest)} pins ${dest.digest} but the manifest is ${digest}`,
    );
  }
  return dest.tag ?? digest;
}
