/**
 * Push from an OCI image layout (what `haul pull --oci`, skopeo and oras write): the entry of
 * index.json named by REF's tag (or digest), its blobs first through {@link upload} (read
 * from `blobs/sha256/<hex>`), then the manifest bytes unchanged, so the destination serves
 * the same digest. An index goes up after every manifest it lists, each by digest.
 * Reached through `push(ref, dest, { ociLayout })` (lib/ops/push.ts).
 */
import type { Blob } from "../registry/manifest.ts";
import { IntegrityError, ManifestError, UsageError } from "../errors.ts";
import {
  type Descriptor,
  imageBlobs,
  type ImageManifest,
  type IndexManifest,
  parseManifest,
} from "../registry/manifest.ts";
import { pushed, type PushOptions, type PushResult } from "./push_common.ts";
import { formatReference, type Reference } from "../registry/reference.ts";
import { createSession } from "../registry/session.ts";
import { OciLayout } from "../store/oci_layout.ts";
import { uploadImage } from "../upload/upload.ts";

interface LayoutDoc {
  digest: string;
  bytes: Uint8Array;
  mediaType: string;
  doc: ImageManifest | IndexManifest;
}

/**
 * Pushes the image `source` names in the layout at `options.ociLayout` to `target`.
 * @throws {NotFoundError} when the layout has no such entry (the message lists its names)
 *   or lacks a blob.
 */
export async function pushFromLayout(
  source: Reference,
  target: Reference,
  options: PushOptions & { ociLayout: string },
): Promise<PushResult> {
  const layout = new OciLayout(options.ociLayout);
  await layout.open();
  const entry = await layout.find(
    source.tag !== undefined ? { refName: source.tag } : { digest: source.digest },
  );
  const digest = entry.descriptor.digest;
  if (source.digest !== undefined && source.digest !== digest) {
    throw new UsageError(
      `${formatReference(source)} pins ${source.digest}, the layout's "${source.tag}" is ${digest}`,
    );
  }
  if (target.digest !== undefined && target.digest !== digest) {
    throw new UsageError(
      `${formatReference(target)} pins ${target.digest}, the image is ${digest}`,
    );
  }
  const top = await readDoc(layout, entry.descriptor);
  // Manifests an index lists go up first, by digest; nested indexes are refused as copy does.
  const children: LayoutDoc[] = [];
  if (top.doc.kind === "index") {
    const seen = new Set<string>();
    for (const m of top.doc.manifests) {
      if (seen.has(m.digest)) continue;
      seen.add(m.digest);
      const child = await readDoc(layout, m);
      if (child.doc.kind !== "manifest") throw new ManifestError("An index lists another index");
      children.push(child);
    }
  }
  const blobs = imageBlobs(
    top.doc.kind === "manifest" ? [top.doc] : children.map((c) => c.doc as ImageManifest),
  );
  // Every blob must be in the layout before anything goes over the network.
  await Promise.all(blobs.map(async (b) => await (await layout.openBlob(b)).close()));

  const base = `${target.scheme}://${target.host}`;
  const session = createSession(base, [`repository:${target.repository}:pull,push`], options);
  const manifestRef = target.tag ?? digest;
  const from = options.from;
  const res = await uploadImage(
    {
      ...options,
      blobs: blobs.map((b): Blob => from ? { digest: b.digest, size: b.size, from } : b),
      baseUrl: base,
      repository: target.repository,
      open: (b) => layout.openBlob(b),
      // Upload state files would be foreign files in the layout: resume within this run only.
      stateDir: null,
      session,
    },
    { kind: top.doc.kind, bytes: top.bytes, mediaType: top.mediaType },
    children,
    manifestRef,
  );
  return pushed(options, res, { source, dest: target, digest, blobs });
}

/** Reads a manifest or index blob (digest checked) and checks it against its descriptor. */
async function readDoc(layout: OciLayout, d: Descriptor): Promise<LayoutDoc> {
  const bytes = await layout.readBlob(d.digest);
  if (bytes.byteLength !== d.size) {
    throw new IntegrityError(
      `Manifest ${d.digest} in ${layout.root} is ${bytes.byteLength} bytes, its descriptor says ${d.size}`,
    );
  }
  const doc = parseManifest(bytes, d.mediaType);
  return { digest: d.digest, bytes, mediaType: doc.mediaType, doc };
}
