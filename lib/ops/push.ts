/**
 * Manifest-level push (local Ollama store → registry) and copy (registry →
 * registry), both built on {@link upload}: every blob first (skipped when
 * present, mounted when another repository of the same registry has it), then
 * the manifest bytes unchanged, so the destination serves the same digest.
 */
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { isDigest, Sha256 } from "../digest.ts";
import type { Blob } from "../registry/manifest.ts";
import {
  IntegrityError,
  InterruptedError,
  ManifestError,
  NetworkError,
  NotFoundError,
  UsageError,
} from "../errors.ts";
import {
  type Descriptor,
  imageBlobs,
  type ImageManifest,
  manifestBlobs,
  parseManifest,
} from "../registry/manifest.ts";
import type { OnProgress } from "../progress_events.ts";
import { resolveReference } from "./pull.ts";
import { pushFromLayout } from "./push_oci.ts";
import {
  formatReference,
  parseReference,
  type Reference,
  shortName,
} from "../registry/reference.ts";
import { errorFromResponse } from "../registry/client.ts";
import {
  backoffDelay,
  DEFAULT_RETRY,
  isTransientError,
  type RetryPolicy,
  sleep,
} from "../transport/retry.ts";
import { type ConnectionOptions, createSession, type Session } from "../registry/session.ts";
import { defaultModelsDir, OllamaStore } from "../store/ollama.ts";
import { type BlobReader, openStoreBlob } from "../disk/blob_file.ts";
import {
  describe,
  type OpenBlob,
  SourceDigestError,
  upload,
  uploadImage,
  type UploadResult,
  type UploadTuning,
} from "../upload/upload.ts";

export interface PushOptions extends ConnectionOptions, UploadTuning {
  /** Store root. @default $OLLAMA_MODELS or ~/.ollama/models */
  modelsDir?: string;
  /**
   * Push from the OCI image layout in this directory instead of Ollama's store: REF's tag
   * (or digest) selects the index.json entry (see lib/push_oci.ts). @default undefined
   */
  ociLayout?: string;
  /** Allow plain http (Ollama's `--insecure`). @default false */
  insecure?: boolean;
  /**
   * A repository on DEST's registry that already holds the blobs, to mount them from.
   * @default REF's repository when REF and DEST are on the same registry, else none
   */
  from?: string;
  onEvent?: OnProgress;
  signal?: AbortSignal;
}

export interface CopyOptions extends ConnectionOptions, UploadTuning {
  /** Allow plain http for both references. @default false */
  insecure?: boolean;
  /** Seconds without a byte from the source before its request is made again. @default 30 */
  stallTimeout?: number;
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

function baseOf(ref: Reference): string {
  return `${ref.scheme}://${ref.host}`;
}

/** The tag or digest a manifest goes under at `dest`; a pinned digest must match. */
function manifestRefFor(dest: Reference, digest: string): string {
  if (dest.digest && dest.digest !== digest) {
    throw new UsageError(
      `${formatReference(dest)} pins ${dest.digest} but the manifest is ${digest}`,
    );
  }
  return dest.tag ?? digest;
}

function checkRepository(repo: string, flag: string): string {
  if (/[:@]/.test(repo)) throw new UsageError(`${flag}: expected a repository, got "${repo}"`);
  let ref: Reference;
  try {
    ref = parseReference(`localhost/${repo}`);
  } catch (e) {
    throw new UsageError(`${flag}: ${(e as Error).message}`);
  }
  return ref.repository;
}

/**
 * Pushes a model from the local store to DEST (default: REF itself): blobs, then
 * the manifest bytes exactly as stored.
 *
 * @throws {NotFoundError} when the model or one of its blobs is not in the store.
 * @throws {RegistryError} when the destination refuses a blob or the manifest.
 */
export async function push(
  ref: string,
  dest?: string,
  options: PushOptions = {},
): Promise<PushResult> {
  const source = resolveReference(ref, options.insecure);
  const target = resolveReference(dest ?? ref, options.insecure);
  if (options.ociLayout !== undefined) {
    return await pushFromLayout(source, target, { ...options, ociLayout: options.ociLayout });
  }
  const store = new OllamaStore(options.modelsDir ?? defaultModelsDir());
  const bytes = await store.readManifest(source);
  if (!bytes) {
    throw new NotFoundError(
      `Model ${shortName(source)} is not in ${store.root} (no ${store.manifestPath(source)})`,
    );
  }
  const doc = parseManifest(bytes);
  if (doc.kind !== "manifest") {
    throw new ManifestError(`${shortName(source)} is an index; haul push expects a model manifest`);
  }
  const blobs = manifestBlobs(doc);
  // Every blob must be in the store before anything goes over the network.
  await Promise.all(blobs.map(async (b) => (await openStoreBlob(store.blobsDir, b)).close()));

  const sameRegistry = baseOf(source) === baseOf(target);
  const from = options.from !== undefined
    ? checkRepository(options.from, "--from")
    : sameRegistry && source.repository !== target.repository
    ? source.repository
    : undefined;
  const manifestDigest = new Sha256();
  manifestDigest.update(bytes);
  const digest = manifestDigest.digest();
  const manifestRef = manifestRefFor(target, digest);

  const session = createSession(
    baseOf(target),
    [`repository:${target.repository}:pull,push`],
    options,
  );
  // Where earlier pushes put each blob on this registry: a mount source for the rest.
  const ledger = await readPushLedger(store.root);
  const known = ledger[baseOf(target)] ?? {};
  const mountFrom = (digest: string) => {
    if (from) return from;
    const repo = known[digest];
    return repo && repo !== target.repository ? repo : undefined;
  };
  const res = await upload({
    ...options,
    blobs: blobs.map((b) => {
      const src = mountFrom(b.digest);
      return src ? { digest: b.digest, size: b.size, from: src } : b;
    }),
    baseUrl: baseOf(target),
    repository: target.repository,
    srcDir: store.blobsDir,
    stateDir: store.blobsDir,
    manifest: bytes,
    manifestRef,
    manifestMediaType: doc.mediaType,
    session,
  });
  const mine = (ledger[baseOf(target)] ??= {});
  for (const b of blobs) mine[b.digest] ??= target.repository;
  await writePushLedger(store.root, ledger);
  options.onEvent?.({ type: "success", ref: formatReference(target) });
  return {
    ...res,
    source,
    dest: target,
    name: formatReference(target),
    manifestDigest: res.manifestDigest ?? digest,
    blobs,
  };
}

/**
 * Copies SRC's manifest (or index, with every manifest it lists) and all their
 * blobs to DEST without the local store: each blob streams from the source into
 * the upload one chunk at a time, its digest checked as it goes.
 */
export async function copy(
  src: string,
  dest: string,
  options: CopyOptions = {},
): Promise<PushResult> {
  const source = resolveReference(src, options.insecure);
  const target = resolveReference(dest, options.insecure);
  const stallTimeout = options.stallTimeout ?? 30;
  if (!Number.isFinite(stallTimeout) || stallTimeout < 0.05) {
    throw new RangeError(`stallTimeout must be at least 0.05 s, got ${stallTimeout}`);
  }
  const policy: RetryPolicy = { ...DEFAULT_RETRY, ...options.retry };
  // The source's headers must come within the stall timeout too (each attempt): a source
  // that stops answering is as stalled as one that stops sending.
  const srcSession = createSession(
    baseOf(source),
    [`repository:${source.repository}:pull`],
    { ...options, requestTimeout: Math.min(options.requestTimeout ?? stallTimeout, stallTimeout) },
  );
  const destSession = createSession(
    baseOf(target),
    [`repository:${target.repository}:pull,push`],
    options,
  );
  const srcRef = source.digest ?? source.tag ?? "latest";
  const top = await srcSession.client.getManifest(source.repository, srcRef, {
    signal: options.signal,
  });
  const topDoc = parseManifest(top.bytes, top.mediaType);
  const manifestRef = manifestRefFor(target, top.digest);

  // An index goes up after the manifests it lists, which go up after their blobs.
  const children: { digest: string; bytes: Uint8Array; mediaType: string; doc: ImageManifest }[] =
    [];
  if (topDoc.kind === "index") {
    const seen = new Set<string>();
    for (const m of topDoc.manifests) {
      if (seen.has(m.digest)) continue;
      seen.add(m.digest);
      const got = await srcSession.client.getManifest(source.repository, m.digest, {
        signal: options.signal,
      });
      const doc = parseManifest(got.bytes, got.mediaType);
      if (doc.kind !== "manifest") throw new ManifestError("An index lists another index");
      children.push({ digest: got.digest, bytes: got.bytes, mediaType: doc.mediaType, doc });
    }
  }
  const blobs = imageBlobs(topDoc.kind === "manifest" ? [topDoc] : children.map((c) => c.doc));
  const from = baseOf(source) === baseOf(target) && source.repository !== target.repository
    ? source.repository
    : undefined;
  const open: OpenBlob = (b, signal) =>
    Promise.resolve(
      new RemoteBlobReader(srcSession, source.repository, b, {
        policy,
        stallTimeoutMs: stallTimeout * 1000,
        signal,
      }),
    );
  const res = await uploadImage(
    {
      ...options,
      blobs: blobs.map((b): Blob => from ? { digest: b.digest, size: b.size, from } : b),
      baseUrl: baseOf(target),
      repository: target.repository,
      open,
      stateDir: null,
      session: destSession,
    },
    { kind: topDoc.kind, bytes: top.bytes, mediaType: topDoc.mediaType },
    children,
    manifestRef,
  );
  options.onEvent?.({ type: "success", ref: formatReference(target) });
  return {
    ...res,
    source,
    dest: target,
    name: formatReference(target),
    manifestDigest: res.manifestDigest ?? top.digest,
    blobs,
  };
}

interface RemoteReaderOptions {
  policy: RetryPolicy;
  stallTimeoutMs: number;
  signal?: AbortSignal;
}

/**
 * A blob read from a registry as one GET stream, consumed in order by the
 * upload's chunk reads and hashed on the way; the last read fails with an
 * IntegrityError when the bytes do not hash to the digest, before the upload
 * commits. A read further back than the last chunk (the destination lost bytes)
 * re-opens the stream with `Range`; bytes already hashed are not hashed again.
 * A stream that breaks or stalls is re-opened where it stopped.
 */
class RemoteBlobReader implements BlobReader {
  readonly #session: Session;
  readonly #url: string;
  readonly #blob: Blob;
  readonly #opts: RemoteReaderOptions;
  #reader?: ReadableStreamDefaultReader<Uint8Array>;
  /** Offset of the next byte the open stream delivers. */
  #pos = 0;
  #leftover: Uint8Array | undefined;
  #hash = new Sha256();
  #hashed = 0;
  #last: { start: number; data: Uint8Array } | undefined;
  #failures = 0;

  constructor(session: Session, repository: string, blob: Blob, opts: RemoteReaderOptions) {
    this.#session = session;
    this.#url = session.client.blobUrl(repository, blob.digest);
    this.#blob = blob;
    this.#opts = opts;
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
    const last = this.#last;
    if (last && offset >= last.start && offset + length <= last.start + last.data.byteLength) {
      return last.data.subarray(offset - last.start, offset - last.start + length);
    }
    if (offset + length > this.#blob.size) {
      throw new RangeError(`Read past the end of ${this.#blob.digest}`);
    }
    if (offset !== this.#pos || !this.#reader) await this.#open(offset, signal);
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      const piece = await this.#next(signal);
      const take = Math.min(piece.byteLength, length - filled);
      out.set(piece.subarray(0, take), filled);
      this.#consume(piece.subarray(0, take));
      this.#leftover = take < piece.byteLength ? piece.subarray(take) : undefined;
      filled += take;
    }
    this.#last = { start: offset, data: out };
    return out;
  }

  async close(): Promise<void> {
    await this.#reader?.cancel().catch(() => {});
    this.#reader = undefined;
  }

  /** Hashes the bytes at #pos that were not hashed before; checks the digest at the end. */
  #consume(bytes: Uint8Array): void {
    const start = this.#pos;
    this.#pos += bytes.byteLength;
    if (this.#pos > this.#hashed) {
      this.#hash.update(bytes.subarray(Math.max(0, this.#hashed - start)));
      this.#hashed = this.#pos;
      if (this.#hashed === this.#blob.size) {
        const got = this.#hash.digest();
        if (got !== this.#blob.digest) {
          // Forget everything read: the upload reads the blob once more from byte 0.
          this.#hash = new Sha256();
          this.#hashed = 0;
          this.#last = undefined;
          this.#reader?.cancel().catch(() => {});
          this.#reader = undefined;
          throw new SourceDigestError(
            `Source blob ${this.#blob.digest} from ${new URL(this.#url).host} hashes to ${got}`,
          );
        }
      }
    }
  }

  async #open(at: number, signal?: AbortSignal): Promise<void> {
    await this.close();
    this.#leftover = undefined;
    this.#pos = at;
    const headers: Record<string, string> = {};
    if (at > 0) headers.range = `bytes=${at}-`;
    let res: Response;
    try {
      res = await this.#session.fetch(new Request(this.#url, { headers, signal }));
    } catch (err) {
      if (signal?.aborted) throw new InterruptedError();
      // "… failed after 3 attempts: fetch failed" says more with the cause's cause.
      const said = (err as { cause?: Error })?.cause?.message;
      if (err instanceof NetworkError && said && err.message.endsWith(said)) {
        const detail = describe(err.cause);
        if (detail !== said) {
          throw new NetworkError(`${err.message.slice(0, -said.length)}${detail}`, {
            cause: err.cause,
          });
        }
      }
      throw err;
    }
    if (res.status === 404) {
      await res.body?.cancel().catch(() => {});
      throw new NotFoundError(`Blob ${this.#blob.digest} not found at ${new URL(this.#url).host}`);
    }
    if (res.status !== 200 && res.status !== 206) {
      throw await errorFromResponse(res, "GET", this.#url);
    }
    if (!res.body) throw new IntegrityError(`GET ${this.#blob.digest} returned no body`);
    const want = this.#blob.size - at;
    if (res.status === 206) {
      const cr = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
      if (!cr || Number(cr[1]) !== at || Number(cr[2]) !== this.#blob.size - 1) {
        await res.body.cancel().catch(() => {});
        throw new IntegrityError(
          `Source answered bytes=${at}- with Content-Range ${res.headers.get("content-range")}`,
        );
      }
    }
    const cl = res.headers.get("content-length");
    const expected = res.status === 206 ? want : this.#blob.size;
    if (cl !== null && Number(cl) !== expected) {
      await res.body.cancel().catch(() => {});
      throw new IntegrityError(
        `Source sent Content-Length ${cl} for ${this.#blob.digest}, expected ${expected}`,
      );
    }
    this.#reader = res.body.getReader();
    if (res.status === 200 && at > 0) {
      // The source ignored Range: skip to where we are.
      this.#pos = 0;
      let skip = at;
      while (skip > 0) {
        const piece = await this.#next(signal);
        const take = Math.min(piece.byteLength, skip);
        this.#consume(piece.subarray(0, take));
        this.#leftover = take < piece.byteLength ? piece.subarray(take) : undefined;
        skip -= take;
      }
    }
  }

  /** The next bytes of the stream, re-opening it after a break or a stall. */
  async #next(signal?: AbortSignal): Promise<Uint8Array> {
    if (this.#leftover) {
      const l = this.#leftover;
      this.#leftover = undefined;
      return l;
    }
    for (let reopen = false;; reopen = true) {
      if (signal?.aborted) throw new InterruptedError();
      try {
        if (reopen) await this.#open(this.#pos, signal);
        const r = await this.#readWithStall(signal);
        if (r.done) throw new NetworkError(`Source stream of ${this.#blob.digest} ended early`);
        if (this.#pos + r.value.byteLength > this.#blob.size) {
          throw new IntegrityError(`Source sent more than ${this.#blob.size} bytes`);
        }
        if (r.value.byteLength) return r.value;
      } catch (err) {
        if (signal?.aborted || err instanceof IntegrityError) throw err;
        if (!(err instanceof NetworkError) && !isTransientError(err)) throw err;
        if (++this.#failures > this.#opts.policy.maxRetries) {
          const why = describe(err);
          const stalled = /no response/i.test(why) && !/stall/i.test(why) ? "Source stalled: " : "";
          throw new NetworkError(
            `${stalled}Reading ${this.#blob.digest} from ${
              new URL(this.#url).host
            } failed ${this.#failures} times: ${why}`,
            { cause: err },
          );
        }
        await sleep(backoffDelay(this.#failures, this.#opts.policy), signal);
      }
    }
  }

  async #readWithStall(signal?: AbortSignal): Promise<ReadableStreamReadResult<Uint8Array>> {
    const reader = this.#reader;
    if (!reader) throw new NetworkError("Source stream is closed");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reader.cancel().catch(() => {});
        reject(
          new NetworkError(`Source stalled: no data for ${this.#opts.stallTimeoutMs / 1000} s`),
        );
      }, this.#opts.stallTimeoutMs);
    });
    try {
      return await Promise.race([reader.read(), stalled]);
    } finally {
      clearTimeout(timer);
      if (signal?.aborted) await reader.cancel().catch(() => {});
    }
  }
}

/** `{ "<scheme://host>": { "<digest>": "<repository>" } }`: where pushes left each blob. */
type PushLedger = Record<string, Record<string, string>>;

const LEDGER_MAX_BLOBS = 100_000;
const REPO_RE =
  /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;

function ledgerPath(root: string): string {
  return join(root, ".haul", "pushed.json");
}

async function readPushLedger(root: string): Promise<PushLedger> {
  try {
    const doc: unknown = JSON.parse(await readFile(ledgerPath(root), "utf8"));
    if (typeof doc !== "object" || doc === null || Array.isArray(doc)) return {};
    const out: PushLedger = {};
    for (const [base, blobs] of Object.entries(doc)) {
      if (typeof blobs !== "object" || blobs === null) continue;
      const entries = Object.entries(blobs as Record<string, unknown>).filter(([d, r]) =>
        isDigest(d) && typeof r === "string" && REPO_RE.test(r)
      );
      out[base] = Object.fromEntries(entries.slice(-LEDGER_MAX_BLOBS)) as Record<string, string>;
    }
    return out;
  } catch {
    return {}; // absent or unreadable: only a hint
  }
}

async function writePushLedger(root: string, ledger: PushLedger): Promise<void> {
  const path = ledgerPath(root);
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    await mkdir(join(root, ".haul"), { recursive: true });
    await writeFile(tmp, JSON.stringify(ledger));
    await rename(tmp, path);
  } catch {
    await rm(tmp, { force: true }).catch(() => {});
  }
}
