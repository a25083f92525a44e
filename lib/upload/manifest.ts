/**
 * Step 6: putting the manifest (`PUT /v2/<name>/manifests/<reference>`) once every blob
 * it references is in place; for an index, every manifest it lists first.
 */
import { sha256Digest } from "../digest.ts";
import { IntegrityError, ManifestError, RegistryError } from "../errors.ts";
import type { OnProgress } from "../progress_events.ts";
import { errorFromResponse } from "../registry/client.ts";
import { MAX_MANIFEST_BYTES } from "../registry/manifest.ts";
import type { Session } from "../registry/session.ts";
import { inStep } from "./errors.ts";

/**
 * PUTs manifest bytes unchanged under `reference`, with their own media type as
 * Content-Type; checks the digest the registry reports.
 *
 * @throws {RegistryError} when the registry refuses the manifest.
 */
export async function putManifest(
  session: Session,
  repository: string,
  reference: string,
  bytes: Uint8Array,
  options: { mediaType?: string; signal?: AbortSignal } = {},
): Promise<string> {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw new ManifestError(`Manifest is ${bytes.byteLength} bytes, over ${MAX_MANIFEST_BYTES}`);
  }
  const digest = sha256Digest(bytes);
  const mediaType = options.mediaType ?? manifestMediaType(bytes);
  const url = session.client.manifestUrl(repository, reference);
  let res: Response;
  try {
    res = await session.fetch(
      new Request(url, {
        method: "PUT",
        headers: { "content-type": mediaType, "content-length": String(bytes.byteLength) },
        body: bytes as Uint8Array<ArrayBuffer>,
        signal: options.signal,
      }),
    );
  } catch (err) {
    throw inStep(err, `putting the manifest ${repository}:${reference}`);
  }
  if (res.status < 200 || res.status > 299) throw await refused(res, url, repository, reference);
  await res.body?.cancel().catch(() => {});
  const claimed = res.headers.get("docker-content-digest");
  if (claimed?.startsWith("sha256:") && claimed !== digest) {
    throw new IntegrityError(
      `${repository}:${reference} was stored as ${claimed}, not ${digest}: the registry rewrote the manifest`,
    );
  }
  return digest;
}

/** The registry's refusal of a manifest PUT, said as such. */
async function refused(
  res: Response,
  url: string,
  repository: string,
  reference: string,
): Promise<RegistryError> {
  const err = await errorFromResponse(res, "PUT", url);
  const codes = err.codes.length
    ? ": " + err.codes.map((c) => c.message ? `${c.code} (${c.message})` : c.code).join(", ")
    : "";
  return new RegistryError({
    status: err.status,
    method: "PUT",
    url,
    codes: err.codes,
    message: `${new URL(url).host} refused the manifest for ${repository}:${reference} ` +
      `(HTTP ${err.status}${codes})`,
  }, { cause: err });
}

/** The `mediaType` field of a manifest document, else Docker's schema2 type. */
function manifestMediaType(bytes: Uint8Array): string {
  try {
    const doc = JSON.parse(new TextDecoder().decode(bytes)) as { mediaType?: unknown };
    if (typeof doc.mediaType === "string" && doc.mediaType) return doc.mediaType;
  } catch {
    // Not JSON: the registry will say so.
  }
  return "application/vnd.docker.distribution.manifest.v2+json";
}

/**
 * Puts an index after the manifests it lists (each by digest), so the
 * registry never holds an index naming a manifest it lacks. Returns the
 * index's digest as the registry reports it.
 */
export async function putIndex(
  session: Session,
  repository: string,
  reference: string,
  index: { bytes: Uint8Array; mediaType: string },
  children: { digest: string; bytes: Uint8Array; mediaType: string }[],
  options: { signal?: AbortSignal; onEvent?: OnProgress } = {},
): Promise<string> {
  options.onEvent?.({ type: "manifest-write", op: "push" });
  for (const c of children) {
    await putManifest(session, repository, c.digest, c.bytes, {
      mediaType: c.mediaType,
      signal: options.signal,
    });
  }
  return await putManifest(session, repository, reference, index.bytes, {
    mediaType: index.mediaType,
    signal: options.signal,
  });
}
