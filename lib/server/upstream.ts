/**
 * `haul serve --upstream`: what the registry handler asks of a pull-through upstream, and how
 * it maps a requested name onto one. The handler stays a reader of the store: an
 * {@link Upstream} (lib/ops/pull_through.ts implements one) puts manifests and blobs into the
 * store, and the handler then serves them from there as it serves everything else; an image
 * manifest the upstream returns at once is served from memory, and its blobs while they land
 * (blob_fill.ts, fill_response.ts), until its pull has put the model in the store.
 *
 * Name → upstream: a name whose first component is the host of an upstream
 * (`127.0.0.1_5000/ns/m`, read as in lib/store/catalog.ts) goes to that upstream; else
 * containerd's mirror query `?ns=HOST` picks the upstream with host HOST (`ns=docker.io`, as
 * containerd sends for Docker Hub images, picks an upstream at registry-1.docker.io or
 * index.docker.io); else the first one.
 * The store location is `manifests/<upstream host>/<repository>/<tag>`, as `haul pull` of
 * `<upstream host>/<repository>:<tag>` writes it.
 */
import { NotFoundError } from "../errors.ts";
import type { ParsedName } from "../store/catalog.ts";
import type { BlobFill, BlobFills, PullWatch } from "./blob_fill.ts";

/** A repository on an upstream, and where it lives in the store (`manifests/<host>/<repository>`). */
export interface UpstreamRepository {
  /** The upstream's `host[:port]`, lower case. */
  host: string;
  /** e.g. `library/tiny` */
  repository: string;
}

/** What the registry handler needs from a pull-through upstream. */
export interface Upstream {
  /** The upstreams' `host[:port]`s, lower case; names without one of them go to the first. */
  readonly hosts: readonly string[];
  /**
   * Makes the store hold `reference` (a tag or a manifest digest) of `repo` and every blob it
   * names. The handler calls it for every tag request (a tag resolved less than the TTL ago
   * returns at once) and for a digest the store lacks.
   * @throws {NotFoundError} when the upstream has no such manifest; another error when the
   * upstream could not be reached or sent bad bytes.
   *
   * With `watch`, it may answer as soon as an image manifest is resolved, its blobs still
   * coming: it returns the manifest, calls `watch.expect` with the manifest's blobs first, passes
   * `watch`'s hooks and `onEvent` to the engine and calls `watch.settle` when the pull ends; the
   * handler serves the manifest from memory and the blobs as they land (blob_fill.ts).
   */
  ensureManifest(
    repo: UpstreamRepository,
    reference: string,
    watch?: PullWatch,
  ): Promise<UpstreamManifest | void>;
  /** Makes the store hold blob `digest` of `repo` (called when the store lacks it). */
  ensureBlob(
    repo: UpstreamRepository,
    digest: string,
    hooks?: Pick<PullWatch, "onWritten" | "onDiscarded">,
  ): Promise<void>;
  /**
   * The size of blob `digest` upstream; with it a blob asked for on its own is served while it
   * lands (`ensureBlob` then gets the fill's hooks). @throws {NotFoundError} when it lacks it.
   */
  blobSize?(repo: UpstreamRepository, digest: string): Promise<number>;
  /**
   * The upstream's tags of `repo` (tags/list answers them merged with the store's).
   * @throws {NotFoundError} when the upstream has no such repository.
   */
  tags?(repo: UpstreamRepository): Promise<string[]>;
}

/** A manifest as the upstream sent it. */
export interface UpstreamManifest {
  bytes: Uint8Array;
  digest: string;
  mediaType: string;
}

type Candidate = Extract<ParsedName, { ok: true }>["candidates"][number];

/** The upstream repository a parsed name (and `?ns=`) goes to; see the module comment. */
export function locateUpstream(
  candidates: readonly Candidate[],
  ns: string | null,
  hosts: readonly string[],
): UpstreamRepository {
  const own = candidates.slice(0, -1).find((c) => hosts.includes(c.host.toLowerCase()));
  if (own) return { host: own.host.toLowerCase(), repository: own.repository.join("/") };
  // The last candidate is always the default-host reading: the whole name as the repository.
  const plain = candidates[candidates.length - 1].repository.join("/");
  const byNs = ns === null ? undefined : hosts.find((h) => sameRegistry(h, ns));
  return { host: byNs ?? hosts[0], repository: plain };
}

/** Docker Hub's names: images are named `docker.io/...`, its registry API is registry-1.docker.io. */
const DOCKER_HUB = new Set(["docker.io", "registry-1.docker.io", "index.docker.io"]);

/** Whether `ns` (containerd's `?ns=`, the image's registry name) names upstream `host`. */
function sameRegistry(host: string, ns: string): boolean {
  const n = ns.toLowerCase();
  return host === n || (DOCKER_HUB.has(host) && DOCKER_HUB.has(n));
}

/** An error answer: status, OCI code, message. */
export interface UpstreamFailure {
  status: number;
  code: string;
  message: string;
}

/** What {@link fillFromUpstream} found: where to look in the store, and what to answer if absent. */
export interface UpstreamFill {
  /** Store candidates to look in, the upstream's location first. */
  candidates: Candidate[];
  /** The answer when the store lacks the thing after all (the upstream failed). */
  failure?: UpstreamFailure;
  /** A blob asked for on its own, landing now (with `fills` and `blobSize`). */
  fill?: BlobFill;
  /** A manifest to serve as it is, its blobs still landing (see {@link Upstream.ensureManifest}). */
  manifest?: UpstreamManifest;
}

/** What the handler is asked for, as far as the upstream is concerned. */
export interface UpstreamRequest {
  kind: "manifests" | "blobs" | "chunksums";
  reference: string;
  candidates: Candidate[];
  ns: string | null;
  /**
   * Whether the store already holds the blob or manifest digest asked for, looked up among
   * `candidates` (the upstream's location first: a digest of a pulled-through index or image
   * is found where the pull put it).
   */
  present: (candidates: Candidate[]) => Promise<boolean>;
  /** Where a model's blobs are followed while they land. @default none: wait for the pull */
  fills?: BlobFills;
}

/**
 * Asks `upstream` for what `req` names when it is missing (or a tag, always: the TTL is the
 * upstream's business). A failure is returned, not thrown: the store may still hold it
 * (upstream down: serve what the store has, with a warning).
 */
export async function fillFromUpstream(
  upstream: Upstream,
  req: UpstreamRequest,
  warn: (message: string) => void,
): Promise<UpstreamFill> {
  const repo = locateUpstream(req.candidates, req.ns, upstream.hosts);
  const candidates = [
    { host: repo.host, repository: repo.repository.split("/") },
    ...req.candidates,
  ];
  const isTagRequest = req.kind === "manifests" && !req.reference.includes(":");
  if (!isTagRequest && await req.present(candidates)) return { candidates };
  try {
    if (req.kind === "manifests") {
      const manifest = await upstream.ensureManifest(repo, req.reference, req.fills?.pullWatch());
      return manifest ? { candidates, manifest } : { candidates };
    }
    if (req.fills && upstream.blobSize) {
      const size = await upstream.blobSize(repo, req.reference);
      const fills = req.fills;
      const fill = fills.run(
        req.reference,
        size,
        () => upstream.ensureBlob(repo, req.reference, fills.hooks),
      );
      return { candidates, fill };
    }
    await upstream.ensureBlob(repo, req.reference);
    return { candidates };
  } catch (err) {
    const what = `${repo.host}/${repo.repository} ${req.reference}`;
    const message = `upstream: ${what}: ${(err as Error)?.message ?? err}`;
    if (err instanceof NotFoundError) {
      // The upstream's own code when it said one (NAME_UNKNOWN for a repository it lacks).
      const said = ociCodeOf(err);
      const code = said === "NAME_UNKNOWN"
        ? said
        : req.kind === "manifests"
        ? "MANIFEST_UNKNOWN"
        : "BLOB_UNKNOWN";
      return { candidates, failure: { status: 404, code, message } };
    }
    warn(`${message} (serving what the store has, if anything)`);
    return { candidates, failure: { status: 502, code: "UNKNOWN", message } };
  }
}

/** The first OCI error code in `err` or its causes (a RegistryError's `codes`), if any. */
function ociCodeOf(err: unknown): string | undefined {
  for (let e = err, i = 0; e && i < 5; e = (e as { cause?: unknown }).cause, i++) {
    const codes = (e as { codes?: { code?: unknown }[] }).codes;
    const code = Array.isArray(codes) ? codes[0]?.code : undefined;
    if (typeof code === "string") return code;
    if (/\bNAME_UNKNOWN\b/.test(String((e as Error).message))) return "NAME_UNKNOWN";
  }
  return undefined;
}
