/**
 * The pull-through upstream of `haul serve --upstream`: fills the served store from upstream
 * registries with haul's own `pull()` (every blob downloaded verified, present ones skipped,
 * the manifest written last) and, for a blob asked for on its own, the download engine.
 *
 * Single flight: one pull per upstream reference and one download per blob digest at a time;
 * every request that needs it awaits the same promise, so however many clients ask at once,
 * the upstream sends the bytes once. A blob request waits for the pulls in flight from the
 * same upstream repository first (the blob is most likely one of theirs), then fetches the
 * blob alone if the store still lacks it. Tags are re-resolved after `tagTtlMs`; digests and
 * blobs never are. It has the shape of lib/server/upstream.ts `Upstream`.
 *
 * Streamed (the handler passes a {@link PullThroughWatch}): the manifest is resolved first and
 * returned at once, and the pull of exactly that digest (stored under the tag) reports its
 * blobs as they land, so the handler serves them before they are in (lib/server/blob_fill.ts).
 * An image index (or Docker manifest list) is stored and returned as soon as it is fetched,
 * nothing else: the client picks its platform and asks for that manifest by digest, which is
 * pulled as any image is; the platforms no client asks for are never fetched.
 */
import { download } from "../download/download.ts";
import { NotFoundError, UsageError } from "../errors.ts";
import type { ConnectionOptions } from "../registry/session.ts";
import { createSession } from "../registry/session.ts";
import { errorFromResponse, readBody } from "../registry/client.ts";
import type { TransferTuning, WrittenHooks } from "../download/download.ts";
import type { FetchedManifest } from "../registry/client.ts";
import { imageBlobs, parseManifest } from "../registry/manifest.ts";
import type { ProgressEvent } from "../progress_events.ts";
import { defaultModelsDir, OllamaStore } from "../store/ollama.ts";
import { parseReference } from "../registry/reference.ts";
import { pull } from "./pull.ts";
import { stat } from "node:fs/promises";

/**
 * After a failed pull of a reference, or a failed fetch of a blob asked for on its own (a 5xx
 * after the engine's retries, a digest mismatch), requests for it within this long get the same
 * error at once (the store's copy, if any, is then served) instead of a new round of retries:
 * many clients retrying would otherwise each send the upstream a new fetch.
 */
export const FAILURE_HOLD_MS = 10_000;

/** Default {@link PullThroughOptions.tagTtlMs}: five minutes. */
export const DEFAULT_TAG_TTL_MS = 5 * 60_000;

export interface PullThroughOptions extends ConnectionOptions, TransferTuning {
  /**
   * Upstream registries, `http://host[:port]` or `https://host[:port]` (no path); names
   * without the host of one go to the first.
   */
  upstreams: string[];
  /** The served store. @default $OLLAMA_MODELS or ~/.ollama/models */
  modelsDir?: string;
  /** How long a resolved tag is served without asking upstream again. @default 5 minutes */
  tagTtlMs?: number;
  /** Stops every fetch in flight (server shutdown). */
  signal?: AbortSignal;
}

/** One upstream registry. */
export interface UpstreamRegistry {
  /** `http://host[:port]` or `https://…` */
  base: string;
  /** `host[:port]`, lower case */
  host: string;
  insecure: boolean;
}

/** Parses an `--upstream` URL. @throws {UsageError} for anything but http(s)://host[:port]. */
export function parseUpstream(url: string): UpstreamRegistry {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError(`--upstream ${JSON.stringify(url)}: not a URL (http://HOST[:PORT])`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new UsageError(`--upstream ${url}: only http:// and https:// upstreams are supported`);
  }
  if ((u.pathname !== "/" && u.pathname !== "") || u.search || u.hash || u.username) {
    throw new UsageError(`--upstream ${url}: give scheme://host[:port] only, no path or user`);
  }
  return {
    base: `${u.protocol}//${u.host}`,
    host: u.host.toLowerCase(),
    insecure: u.protocol === "http:",
  };
}

/** A repository on an upstream (lib/server/upstream.ts `UpstreamRepository`). */
export interface PullThroughRepository {
  host: string;
  repository: string;
}

interface Flight {
  /** `host/repository` */
  repoKey: string;
  done: Promise<void>;
  /** The manifest answered before its blobs are in: an index, or an image with a watch. */
  manifest?: Promise<FetchedManifest | undefined>;
}

/**
 * How a pull reports its blobs as they land (the shape of lib/server/blob_fill.ts `PullWatch`):
 * the engine's hooks, `pull()`'s events, the manifest's blobs before the pull reaches them, and
 * the pull's outcome.
 */
export interface PullThroughWatch extends WrittenHooks {
  onEvent: (e: ProgressEvent) => void;
  expect: (blobs: { digest: string; size: number }[]) => void;
  settle: (err?: unknown) => void;
}

/** The pull-through upstream; see the module comment. */
export class PullThrough {
  readonly hosts: readonly string[];
  readonly #upstreams: Map<string, UpstreamRegistry>;
  readonly #options: PullThroughOptions;
  readonly #store: OllamaStore;
  readonly #ttl: number;
  readonly #pulls = new Map<string, Flight>();
  readonly #blobs = new Map<string, Promise<void>>();
  /** When each tag (key `host/repository:tag`) was last resolved upstream. */
  readonly #resolvedAt = new Map<string, number>();
  /**
   * The last failure of each reference (`host/repository:tag` or `@digest`) and of each blob
   * fetched on its own (`host/repository blob digest`), held for {@link FAILURE_HOLD_MS}.
   */
  readonly #failed = new Map<string, { at: number; error: unknown }>();

  constructor(options: PullThroughOptions) {
    if (!options.upstreams.length) throw new UsageError("Pull-through needs at least one upstream");
    const list = options.upstreams.map(parseUpstream);
    this.#upstreams = new Map(list.map((u) => [u.host, u]));
    if (this.#upstreams.size !== list.length) {
      throw new UsageError("--upstream: each upstream host may be given once");
    }
    this.hosts = list.map((u) => u.host);
    this.#options = options;
    this.#store = new OllamaStore(options.modelsDir ?? defaultModelsDir());
    this.#ttl = options.tagTtlMs ?? DEFAULT_TAG_TTL_MS;
    if (!(this.#ttl >= 0)) throw new RangeError(`tagTtlMs must be 0 or more, got ${this.#ttl}`);
  }

  #upstream(host: string): UpstreamRegistry {
    const up = this.#upstreams.get(host);
    if (!up) throw new NotFoundError(`No upstream for host ${host}`);
    return up;
  }

  /**
   * Makes the store hold `reference` (tag or digest) of `repo` and its blobs. An index is
   * stored and returned as soon as it is fetched (its platforms' manifests are references of
   * their own). With `watch`, an image manifest is returned as soon as it is resolved (its
   * blobs then land through `watch`, settled when the pull ends); without, it resolves when
   * the pull is done.
   */
  async ensureManifest(
    repo: PullThroughRepository,
    reference: string,
    watch?: PullThroughWatch,
  ): Promise<FetchedManifest | void> {
    const up = this.#upstream(repo.host);
    const isDigest = reference.includes(":");
    const name = `${repo.host}/${repo.repository}${isDigest ? "@" : ":"}${reference}`;
    if (!isDigest && await this.#fresh(name)) return;
    const failed = this.#failed.get(name);
    if (failed && Date.now() - failed.at < FAILURE_HOLD_MS) throw failed.error;
    let flight = this.#pulls.get(name);
    if (!flight) {
      const streamed = this.#streamed(up, repo, reference, name, watch);
      const done = streamed.then((s) => s.done).finally(() => this.#pulls.delete(name));
      done.catch(() => {}); // a streamed pull's failure reaches its clients through `watch`
      const manifest = streamed.then((s) => s.manifest);
      flight = { repoKey: `${repo.host}/${repo.repository}`, done, manifest };
      this.#pulls.set(name, flight);
    }
    const manifest = await flight.manifest;
    if (manifest) return manifest;
    await flight.done;
  }

  /**
   * Resolves `reference` upstream. An index is stored as it came (under the tag, or as the
   * digest-pinned `sha256-<hex>`) and answered at once: a client picks its platform and asks
   * for that manifest by digest, which is then pulled on its own (a registry mirror never
   * fetches the platforms no one asked for). For an image manifest, starts the pull of exactly
   * that digest (stored under the tag), with `watch` after telling it the manifest's blobs
   * (the manifest is then answered at once; without `watch` only once the pull is done).
   */
  async #streamed(
    up: UpstreamRegistry,
    repo: PullThroughRepository,
    reference: string,
    name: string,
    watch?: PullThroughWatch,
  ): Promise<{ manifest?: FetchedManifest; done: Promise<void> }> {
    const { upstreams: _, tagTtlMs: __, modelsDir: ___, ...rest } = this.#options;
    const session = createSession(up.base, [`repository:${repo.repository}:pull`], rest);
    let got: FetchedManifest;
    let doc;
    try {
      got = await session.client.getManifest(repo.repository, reference, { signal: rest.signal });
      doc = parseManifest(got.bytes, got.mediaType);
    } catch (error) {
      this.#failed.set(name, { at: Date.now(), error });
      throw error;
    }
    if (doc.kind === "index") {
      await this.#storeIndex(name, got);
      return { manifest: got, done: Promise.resolve() };
    }
    const tag = reference.includes(":") ? "" : `:${reference}`;
    const pinned = `${repo.host}/${repo.repository}${tag}@${got.digest}`;
    if (!watch) return { done: this.#pullHeld(up, pinned, undefined, name) };
    const blobs = imageBlobs([doc]).map((b) => ({ digest: b.digest, size: b.size }));
    watch.expect(blobs);
    const done = this.#pullHeld(up, pinned, watch, name).then(
      () => watch.settle(),
      (err) => {
        // The blob whose fetch failed the pull is held as a blob fetched on its own would be.
        const culprit = blobNamedBy(err, new Set(blobs.map((b) => b.digest)));
        if (culprit) this.#hold(blobKey(repo, culprit), err);
        watch.settle(err);
        throw err;
      },
    );
    return { manifest: got, done };
  }

  /**
   * Writes an index (verified by getManifest: its digest, and the pinned one) where `name`
   * lives in the store, so it is served from there until the tag's TTL ends.
   */
  async #storeIndex(name: string, got: FetchedManifest): Promise<void> {
    const started = Date.now();
    try {
      await this.#store.ensureDirs();
      await this.#store.writeManifest(parseReference(name), got.bytes);
    } catch (error) {
      this.#failed.set(name, { at: Date.now(), error });
      throw error;
    }
    this.#failed.delete(name);
    this.#resolvedAt.set(name, started);
  }

  /** A tag resolved less than the TTL ago whose manifest is still in the store. */
  async #fresh(name: string): Promise<boolean> {
    const at = this.#resolvedAt.get(name);
    if (at === undefined || Date.now() - at >= this.#ttl) return false;
    const path = this.#store.manifestPath(parseReference(name));
    return await stat(path).then((s) => s.isFile(), () => false);
  }

  /** {@link pull} of `name`; `key` (@default name) is the reference the TTL is kept for. */
  async #pull(
    up: UpstreamRegistry,
    name: string,
    watch?: PullThroughWatch,
    key = name,
  ): Promise<void> {
    const started = Date.now();
    const { upstreams: _, tagTtlMs: __, ...rest } = this.#options;
    await pull(name, {
      ...rest,
      modelsDir: this.#store.root,
      insecure: up.insecure,
      ...(watch
        ? { onWritten: watch.onWritten, onDiscarded: watch.onDiscarded, onEvent: watch.onEvent }
        : {}),
    });
    this.#resolvedAt.set(key, started);
  }

  /** {@link pull} of `name`, its failure held for a while (see {@link FAILURE_HOLD_MS}). */
  async #pullHeld(
    up: UpstreamRegistry,
    name: string,
    watch?: PullThroughWatch,
    key = name,
  ): Promise<void> {
    try {
      await this.#pull(up, name, watch, key);
      this.#failed.delete(key);
    } catch (error) {
      this.#failed.set(key, { at: Date.now(), error });
      throw error;
    }
  }

  /**
   * The upstream's tags of `repo`, every page (Link `rel="next"`, at most 100 pages).
   * @throws {NotFoundError} when the upstream has no such repository.
   */
  async tags(repo: PullThroughRepository): Promise<string[]> {
    const up = this.#upstream(repo.host);
    const { upstreams: _, tagTtlMs: __, modelsDir: ___, ...rest } = this.#options;
    const session = createSession(up.base, [`repository:${repo.repository}:pull`], rest);
    const tags: string[] = [];
    let url: string | undefined = `${up.base}/v2/${repo.repository}/tags/list?n=1000`;
    for (let page = 0; url && page < 100; page++) {
      const res = await session.client.fetch(new Request(url, { signal: rest.signal }));
      if (res.status === 404) {
        await res.body?.cancel();
        throw new NotFoundError(`${repo.host} has no repository ${repo.repository}`);
      }
      if (!res.ok) throw await errorFromResponse(res, "GET", url);
      const body = JSON.parse(new TextDecoder().decode(await readBody(res, 4 << 20)));
      if (Array.isArray(body?.tags)) {
        tags.push(...body.tags.filter((t: unknown) => typeof t === "string"));
      }
      const next = /<([^>]+)>\s*;\s*rel="?next"?/.exec(res.headers.get("link") ?? "")?.[1];
      url = next === undefined ? undefined : new URL(next, url).href;
    }
    return tags;
  }

  /**
   * Size of blob `digest` of `repo` upstream (HEAD). @throws {NotFoundError} when it lacks it.
   */
  async blobSize(repo: PullThroughRepository, digest: string): Promise<number> {
    const up = this.#upstream(repo.host);
    const key = blobKey(repo, digest);
    this.#throwHeld(key);
    const { upstreams: _, tagTtlMs: __, modelsDir: ___, ...rest } = this.#options;
    const session = createSession(up.base, [`repository:${repo.repository}:pull`], rest);
    try {
      const { size } = await session.client.resolveBlob(repo.repository, digest, {
        signal: rest.signal,
      });
      if (size === undefined || !Number.isSafeInteger(size)) {
        throw new Error(`${up.host} did not say the size of blob ${digest}`);
      }
      return size;
    } catch (error) {
      this.#hold(key, error);
      throw error;
    }
  }

  /** Throws the failure of `key` if it is held (see {@link FAILURE_HOLD_MS}). */
  #throwHeld(key: string): void {
    const failed = this.#failed.get(key);
    if (!failed) return;
    if (Date.now() - failed.at < FAILURE_HOLD_MS) throw failed.error;
    this.#failed.delete(key);
  }

  /** Holds the failure of `key`, unless the server is stopping (then nothing upstream failed). */
  #hold(key: string, error: unknown): void {
    if (!this.#options.signal?.aborted) this.#failed.set(key, { at: Date.now(), error });
  }

  /** Makes the store hold blob `digest` of `repo`; `hooks` follow its bytes as they land. */
  async ensureBlob(
    repo: PullThroughRepository,
    digest: string,
    hooks?: WrittenHooks,
  ): Promise<void> {
    const up = this.#upstream(repo.host);
    const key = blobKey(repo, digest);
    this.#throwHeld(key);
    const repoKey = `${repo.host}/${repo.repository}`;
    const pulls = [...this.#pulls.values()].filter((f) => f.repoKey === repoKey);
    if (pulls.length) {
      await Promise.allSettled(pulls.map((f) => f.done));
      if (await this.#hasBlob(digest)) return;
    }
    let flight = this.#blobs.get(digest);
    if (!flight) {
      flight = this.#fetchBlob(up, repo.repository, digest, hooks).then(
        () => void this.#failed.delete(key),
        (error) => {
          this.#hold(key, error);
          throw error;
        },
      ).finally(() => this.#blobs.delete(digest));
      this.#blobs.set(digest, flight);
    }
    await flight;
  }

  async #hasBlob(digest: string): Promise<boolean> {
    return await stat(this.#store.blobPath(digest)).then((s) => s.isFile(), () => false);
  }

  /** HEAD for the size, then the download engine (verified before the blob gets its name). */
  async #fetchBlob(
    up: UpstreamRegistry,
    repository: string,
    digest: string,
    hooks?: WrittenHooks,
  ): Promise<void> {
    const { upstreams: _, tagTtlMs: __, modelsDir: ___, ...rest } = this.#options;
    const session = createSession(up.base, [`repository:${repository}:pull`], rest);
    const { size } = await session.client.resolveBlob(repository, digest, {
      signal: rest.signal,
    });
    if (size === undefined || !Number.isSafeInteger(size)) {
      throw new Error(`${up.host} did not say the size of blob ${digest}`);
    }
    await this.#store.ensureDirs();
    await download({
      ...rest,
      blobs: [{ digest, size }],
      baseUrl: up.base,
      repository,
      session,
      destDir: this.#store.blobsDir,
      partialDir: this.#store.partialDir,
      onWritten: hooks?.onWritten,
      onDiscarded: hooks?.onDiscarded,
    });
  }
}

/** The key a blob fetched on its own is held under in `#failed` (apart from any reference). */
function blobKey(repo: PullThroughRepository, digest: string): string {
  return `${repo.host}/${repo.repository} blob ${digest}`;
}

/**
 * The blob of `digests` that `err` (or a cause) names first, in its message or URL: the blob
 * whose fetch failed a pull (`Digest mismatch for sha256:…`, `GET …/blobs/sha256:… failed`).
 */
function blobNamedBy(err: unknown, digests: ReadonlySet<string>): string | undefined {
  for (let e = err, i = 0; e && i < 5; e = (e as { cause?: unknown }).cause, i++) {
    const text = `${(e as Error).message ?? ""} ${(e as { url?: unknown }).url ?? ""}`;
    for (const m of text.matchAll(/sha256:[0-9a-f]{64}/g)) if (digests.has(m[0])) return m[0];
  }
  return undefined;
}
