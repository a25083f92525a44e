/**
 * The pull side of the OCI distribution API (distribution-spec v1.1, "Pull")
 * over an Ollama store, plus Ollama's chunksums endpoint, as a plain
 * `(Request) => Promise<Response>` handler (put it on a socket with
 * `http_server.ts`):
 *
 *   GET        /v2/                              API version check
 *   GET, HEAD  /v2/<name>/manifests/<tag|digest>
 *   GET, HEAD  /v2/<name>/blobs/<digest>         Range, If-None-Match, If-Range
 *   GET, HEAD  /v2/<name>/chunksums/<digest>     Ollama: `<digest> <start>-<end>` lines
 *   GET        /v2/<name>/tags/list              ?n=&last= pagination, Link header
 *   GET        /v2/_catalog                      ?n=&last= pagination, Link header
 *
 * Everything else that would write is 405 UNSUPPORTED: the store is read-only.
 * Names map onto the store as described in `lib/store/catalog.ts`.
 */
import { ChunksumsCache } from "../store/chunksums_cache.ts";
import { DEFAULT_CHUNK_SIZE } from "../registry/chunksums.ts";
import { isDigest } from "../digest.ts";
import { join } from "node:path";
import {
  DEFAULT_READ_SIZE,
  isTag,
  type ParsedName,
  StoreCatalog,
  type StoredManifest,
  type StoreRepository,
} from "../store/catalog.ts";
import { defaultModelsDir } from "../store/ollama.ts";
import {
  fillFromUpstream,
  locateUpstream,
  type Upstream,
  type UpstreamFailure,
} from "./upstream.ts";
import { NotFoundError } from "../errors.ts";
import { type BlobFill, BlobFills } from "./blob_fill.ts";
import { fillResponse } from "./fill_response.ts";

type Candidate = Extract<ParsedName, { ok: true }>["candidates"][number];

/** Where the handler reports what it does; nothing is printed otherwise. */
export interface ServeLogger {
  /** Something the operator should know (e.g. sidecars cannot be written, a 500). */
  warn(message: string): void;
  /** One line per request, when wanted. */
  request?(entry: RequestLogEntry): void;
}

/** What {@link ServeLogger.request} receives. */
export interface RequestLogEntry {
  method: string;
  /** Path and query as requested. */
  path: string;
  status: number;
  /** Body bytes sent or being sent (Content-Length), 0 for none and for HEAD. */
  bytes: number;
}

/** Options for {@link createRegistryHandler}. */
export interface RegistryHandlerOptions {
  /** Store root. @default $OLLAMA_MODELS or ~/.ollama/models */
  modelsDir?: string;
  /** Host of names written without one. @default "registry.ollama.ai" */
  defaultHost?: string;
  /** Namespace of one-component names (`llama3.2` → `library/llama3.2`). @default "library" */
  defaultNamespace?: string;
  /** Chunk size of the chunksums endpoint, at least 64 KiB. @default 64 MiB */
  chunkSize?: number;
  /** Bytes per read when streaming a blob (memory per client is ~2 of these). @default 256 KiB */
  readSize?: number;
  /** Largest page of tags/list and _catalog (a larger `n` is clamped). @default 1000 */
  maxPageSize?: number;
  /** Aborting ends every response still streaming (server shutdown). */
  signal?: AbortSignal;
  logger?: ServeLogger;
  /**
   * Pull-through: asked for what the store lacks, and for every tag (it re-resolves a tag
   * after its TTL), before the store is read (see `upstream.ts`). @default none (read-only)
   */
  upstream?: Upstream;
}

const API_VERSION = "registry/2.0";

/** Builds the handler. @throws {RangeError} when an option is invalid. */
export function createRegistryHandler(
  options: RegistryHandlerOptions = {},
): (req: Request) => Promise<Response> {
  const root = options.modelsDir ?? defaultModelsDir();
  const readSize = options.readSize ?? DEFAULT_READ_SIZE;
  const maxPageSize = options.maxPageSize ?? 1000;
  if (!Number.isSafeInteger(readSize) || readSize < 1024) {
    throw new RangeError(`readSize must be an integer of at least 1024, got ${readSize}`);
  }
  if (!Number.isSafeInteger(maxPageSize) || maxPageSize < 1) {
    throw new RangeError(`maxPageSize must be a positive integer, got ${maxPageSize}`);
  }
  const catalog = new StoreCatalog(root, {
    defaultHost: options.defaultHost,
    defaultNamespace: options.defaultNamespace,
  });
  const logger = options.logger;
  const chunksums = new ChunksumsCache(join(catalog.root, ".haul", "chunksums"), {
    chunkSize: options.chunkSize ?? DEFAULT_CHUNK_SIZE,
    onWarn: (m) => logger?.warn(m),
    signal: options.signal,
  });
  const ctx: Ctx = {
    catalog,
    chunksums,
    readSize,
    maxPageSize,
    signal: options.signal,
    upstream: options.upstream,
    warn: (m) => logger?.warn(m),
    fills: options.upstream
      ? new BlobFills({
        blobPath: (d) => catalog.blobPath(d),
        onFailure: (f, e) => logger?.warn(`upstream: blob ${f.digest}: ${e.message}`),
      })
      : undefined,
  };

  return async (req) => {
    let res: Response;
    try {
      res = await route(req, ctx);
    } catch (err) {
      logger?.warn(`${req.method} ${safePath(req.url)} failed: ${(err as Error)?.message ?? err}`);
      res = ociError(req, 500, "UNKNOWN", "internal error reading the store");
    }
    if (!res.headers.has("docker-distribution-api-version")) {
      res.headers.set("docker-distribution-api-version", API_VERSION);
    }
    logger?.request?.({
      method: req.method,
      path: safePath(req.url),
      status: res.status,
      bytes: req.method === "HEAD" ? 0 : Number(res.headers.get("content-length") ?? 0),
    });
    return res;
  };
}

interface Ctx {
  catalog: StoreCatalog;
  chunksums: ChunksumsCache;
  readSize: number;
  maxPageSize: number;
  signal?: AbortSignal;
  upstream?: Upstream;
  warn: (message: string) => void;
  /** With an upstream: the blobs landing now, served as they land. */
  fills?: BlobFills;
}

function safePath(url: string): string {
  const u = new URL(url);
  return (u.pathname + u.search).slice(0, 300);
}

async function route(req: Request, ctx: Ctx): Promise<Response> {
  const url = new URL(req.url);
  // Raw pathname: percent-escapes stay escaped, so `%2e%2e` or `%2f` never pass the grammar.
  const path = url.pathname;
  if (req.method !== "GET" && req.method !== "HEAD") {
    return ociError(
      req,
      405,
      "UNSUPPORTED",
      `haul serve is read-only: ${req.method} is not allowed`,
      {
        allow: "GET, HEAD",
      },
    );
  }
  if (path === "/v2/" || path === "/v2") {
    return json(req, 200, {});
  }
  if (!path.startsWith("/v2/")) return ociError(req, 404, "UNSUPPORTED", "Not a /v2/ endpoint");
  if (path === "/v2/_catalog") return await catalogList(req, url, ctx);
  const parts = path.slice(4).split("/");
  if (parts.length >= 3 && parts.at(-2) === "tags" && parts.at(-1) === "list") {
    return await tagsList(req, url, parts.slice(0, -2).join("/"), ctx);
  }
  const kind = parts.at(-2);
  if (parts.length < 3 || (kind !== "manifests" && kind !== "blobs" && kind !== "chunksums")) {
    return ociError(req, 404, "UNSUPPORTED", "Unknown endpoint");
  }
  const name = parts.slice(0, -2).join("/");
  const reference = parts.at(-1)!;
  const parsed = ctx.catalog.parseName(name);
  if (!parsed.ok) {
    return ociError(req, 400, "NAME_INVALID", `Invalid repository name: ${parsed.reason}`);
  }
  if (kind !== "manifests" || reference.includes(":")) {
    if (!isDigest(reference)) {
      return ociError(req, 400, "DIGEST_INVALID", "Digest must be sha256:<64 lower-case hex>");
    }
  } else if (!isTag(reference)) {
    return ociError(req, 404, "MANIFEST_UNKNOWN", "Not a valid tag");
  }
  const landing = kind === "manifests" ? undefined : ctx.fills?.get(reference);
  if (landing && kind === "chunksums") {
    return ociError(req, 404, "BLOB_UNKNOWN", `Blob ${reference} is still landing`);
  }
  if (landing) {
    const res = await landingBlob(req, landing, ctx);
    if (res) return res; // else it is in the store now
  }
  const filled = ctx.upstream
    ? await fillFromUpstream(ctx.upstream, {
      kind,
      reference,
      candidates: parsed.candidates,
      ns: url.searchParams.get("ns"),
      present: (candidates) => isPresent(kind, reference, candidates, ctx),
      fills: ctx.fills,
    }, ctx.warn)
    : { candidates: parsed.candidates };
  if ("fill" in filled && filled.fill && kind === "chunksums") {
    // Started for the blob GET that follows; its chunksums once it is in the store.
    return ociError(req, 404, "BLOB_UNKNOWN", `Blob ${reference} is still landing`);
  }
  if ("fill" in filled && filled.fill) {
    const res = await landingBlob(req, filled.fill, ctx);
    if (res) return res; // else it is in the store now
  }
  if (kind === "manifests" && "manifest" in filled && filled.manifest) {
    return manifestResponse(req, {
      ...filled.manifest,
      bytes: new Uint8Array(filled.manifest.bytes),
    });
  }
  const failure = filled.failure;
  const repo = await ctx.catalog.findRepository(filled.candidates);
  // A blob fetched on its own (no manifest of it in the store yet) is served all the same.
  if (!repo && (kind === "manifests" || !ctx.upstream || failure)) {
    if (failure) return ociError(req, failure.status, failure.code, failure.message);
    return ociError(req, 404, "NAME_UNKNOWN", `Repository ${name} is not in this store`);
  }
  if (kind === "manifests") return await manifest(req, repo!, reference, ctx, failure);
  if (kind === "blobs") return await blob(req, reference, ctx, failure);
  return await chunksumsOf(req, url, name, reference, ctx);
}

/** With an upstream: does the store hold the blob, or the manifest digest, asked for? */
async function isPresent(
  kind: string,
  reference: string,
  candidates: Parameters<StoreCatalog["findRepository"]>[0],
  ctx: Ctx,
): Promise<boolean> {
  if (kind !== "manifests") {
    const file = await ctx.catalog.openBlob(reference);
    await file?.close();
    return file !== undefined;
  }
  if (!reference.includes(":")) return false;
  const repo = await ctx.catalog.findRepository(candidates);
  return repo !== undefined && (await ctx.catalog.manifest(repo, reference)) !== undefined;
}

async function manifest(
  req: Request,
  repo: StoreRepository,
  reference: string,
  ctx: Ctx,
  failure?: UpstreamFailure,
): Promise<Response> {
  const m = await ctx.catalog.manifest(repo, reference);
  if (!m && failure) return ociError(req, failure.status, failure.code, failure.message);
  if (!m) {
    return ociError(req, 404, "MANIFEST_UNKNOWN", `Manifest ${reference} is not in this store`);
  }
  return manifestResponse(req, m);
}

/** A manifest's answer (ETag, If-None-Match). */
function manifestResponse(req: Request, m: StoredManifest): Response {
  const etag = `"${m.digest}"`;
  const headers = new Headers({
    "content-type": m.mediaType,
    "docker-content-digest": m.digest,
    etag,
    "content-length": String(m.bytes.byteLength),
  });
  if (matchesEtag(req.headers.get("if-none-match"), m.digest)) {
    headers.delete("content-length");
    return new Response(null, { status: 304, headers });
  }
  return new Response(req.method === "HEAD" ? null : m.bytes, { status: 200, headers });
}

/**
 * A blob still landing from the upstream (blob_fill.ts): If-None-Match and Range as for a
 * stored blob; undefined when it has landed (serve it from the store).
 */
async function landingBlob(req: Request, fill: BlobFill, ctx: Ctx): Promise<Response | undefined> {
  if (matchesEtag(req.headers.get("if-none-match"), fill.digest)) {
    return new Response(null, { status: 304, headers: { etag: `"${fill.digest}"` } });
  }
  let range = parseRange(req.headers.get("range"), fill.size);
  const ifRange = req.headers.get("if-range");
  if (range && ifRange !== null && !matchesEtag(ifRange, fill.digest, true)) range = undefined;
  if (range === "unsatisfiable") {
    return ociError(req, 416, "RANGE_INVALID", `Range is outside the ${fill.size}-byte blob`, {
      "content-range": `bytes */${fill.size}`,
    });
  }
  return await fillResponse(req, fill, range, { readSize: ctx.readSize, signal: ctx.signal });
}

async function blob(
  req: Request,
  digest: string,
  ctx: Ctx,
  failure?: UpstreamFailure,
): Promise<Response> {
  const file = await ctx.catalog.openBlob(digest);
  if (!file && failure) return ociError(req, failure.status, failure.code, failure.message);
  if (!file) return ociError(req, 404, "BLOB_UNKNOWN", `Blob ${digest} is not in this store`);
  const size = file.size;
  const headers = new Headers({
    "content-type": "application/octet-stream",
    "docker-content-digest": digest,
    etag: `"${digest}"`,
    "accept-ranges": "bytes",
    // Content-addressed: the bytes behind a digest never change.
    "cache-control": "public, max-age=31536000, immutable",
  });
  // RFC 9110 §13.2.2: If-None-Match is evaluated before Range.
  if (matchesEtag(req.headers.get("if-none-match"), digest)) {
    await file.close();
    return new Response(null, { status: 304, headers });
  }
  let range = parseRange(req.headers.get("range"), size);
  const ifRange = req.headers.get("if-range");
  if (range && ifRange !== null && !matchesEtag(ifRange, digest, true)) range = undefined;
  if (range === "unsatisfiable") {
    await file.close();
    return ociError(
      req,
      416,
      "RANGE_INVALID",
      `Range ${req.headers.get("range")} is outside the ${size}-byte blob`,
      {
        "content-range": `bytes */${size}`,
      },
    );
  }
  const [start, end] = range ? [range.start, range.end] : [0, size];
  headers.set("content-length", String(end - start));
  if (range) headers.set("content-range", `bytes ${start}-${end - 1}/${size}`);
  const status = range ? 206 : 200;
  // Stock Ollama GETs a blob once for its "direct URL" and accepts only a 307 or a 200 that
  // names one in `Location` (server/download.go, blobDownload.run: resp.Location()), then
  // fetches Range parts from it; a registry serving the bytes itself names itself.
  if (status === 200) headers.set("location", new URL(req.url).href);
  if (req.method === "HEAD") {
    await file.close();
    return new Response(null, { status, headers });
  }
  const body = file.stream(start, end, { readSize: ctx.readSize, signal: ctx.signal });
  return new Response(body, { status, headers });
}

async function chunksumsOf(
  req: Request,
  url: URL,
  name: string,
  digest: string,
  ctx: Ctx,
): Promise<Response> {
  const text = await ctx.chunksums.get(ctx.catalog.blobPath(digest), digest);
  if (text === undefined) {
    return ociError(req, 404, "BLOB_UNKNOWN", `Blob ${digest} is not in this store`);
  }
  const bytes = new TextEncoder().encode(text);
  return new Response(req.method === "HEAD" ? null : bytes, {
    status: 200,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      "content-length": String(bytes.byteLength),
      // Ollama's client uses it as is: absolute, on the origin the client reached.
      "content-location": `${url.origin}/v2/${name}/blobs/${digest}`,
      "docker-content-digest": digest,
    },
  });
}

async function tagsList(req: Request, url: URL, name: string, ctx: Ctx): Promise<Response> {
  const parsed = ctx.catalog.parseName(name);
  if (!parsed.ok) {
    return ociError(req, 400, "NAME_INVALID", `Invalid repository name: ${parsed.reason}`);
  }
  const upstreamTags = await tagsUpstream(url, parsed.candidates, ctx);
  const repo = await ctx.catalog.findRepository(
    upstreamTags ? [...upstreamTags.candidates, ...parsed.candidates] : parsed.candidates,
  );
  if (!repo && !upstreamTags?.tags) {
    return ociError(req, 404, "NAME_UNKNOWN", `Repository ${name} is not in this store`);
  }
  const stored = repo ? await ctx.catalog.tags(repo) : [];
  const all = [...new Set([...stored, ...(upstreamTags?.tags ?? [])])].sort();
  const page = paginate(url, all, ctx.maxPageSize);
  if (typeof page === "string") return ociError(req, 400, "PAGINATION_NUMBER_INVALID", page);
  const res = json(req, 200, { name, tags: page.items });
  if (page.next) res.headers.set("link", `<${url.pathname}?${page.next}>; rel="next"`);
  return res;
}

/**
 * With --upstream: the upstream's tags of the name (undefined tags when it has no such
 * repository, or cannot be reached: then the store's alone, with a warning), and the store
 * location of the upstream's copy.
 */
async function tagsUpstream(
  url: URL,
  candidates: Candidate[],
  ctx: Ctx,
): Promise<{ tags?: string[]; candidates: Candidate[] } | undefined> {
  const up = ctx.upstream;
  if (!up?.tags) return undefined;
  const at = locateUpstream(candidates, url.searchParams.get("ns"), up.hosts);
  const located: Candidate[] = [{ host: at.host, repository: at.repository.split("/") }];
  try {
    return { tags: await up.tags(at), candidates: located };
  } catch (err) {
    if (!(err instanceof NotFoundError)) {
      ctx.warn(`upstream ${at.host}: tags of ${at.repository}: ${(err as Error).message}`);
    }
    return { candidates: located };
  }
}

async function catalogList(req: Request, url: URL, ctx: Ctx): Promise<Response> {
  const page = paginate(url, await ctx.catalog.repositories(), ctx.maxPageSize);
  if (typeof page === "string") return ociError(req, 400, "PAGINATION_NUMBER_INVALID", page);
  const res = json(req, 200, { repositories: page.items });
  if (page.next) res.headers.set("link", `<${url.pathname}?${page.next}>; rel="next"`);
  return res;
}

/**
 * distribution-spec "Listing Tags": entries after `last`, at most `n`; when more
 * remain, the next page's query (`n=…&last=…`) for the Link header.
 */
function paginate(
  url: URL,
  sorted: string[],
  max: number,
): { items: string[]; next?: string } | string {
  const nParam = url.searchParams.get("n");
  let n = max;
  if (nParam !== null) {
    if (!/^[0-9]{1,9}$/.test(nParam)) {
      return `n must be a non-negative integer, got ${JSON.stringify(nParam.slice(0, 20))}`;
    }
    n = Math.min(Number(nParam), max);
  }
  const last = url.searchParams.get("last");
  const after = last === null ? sorted : sorted.filter((x) => x > last);
  const items = after.slice(0, n);
  if (n === 0 || after.length <= n) return { items };
  const q = new URLSearchParams({ n: String(n), last: items[items.length - 1] });
  return { items, next: q.toString() };
}

/**
 * One `bytes=` range (RFC 9110 §14.1.2) as [start, end); undefined means serve
 * the whole blob (no header, a malformed one, or several ranges, which a server
 * may ignore); "unsatisfiable" for a range outside the blob.
 */
export function parseRange(
  header: string | null,
  size: number,
): { start: number; end: number } | "unsatisfiable" | undefined {
  if (header === null) return undefined;
  const m = /^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$/i.exec(header);
  if (!m || (m[1] === "" && m[2] === "")) return undefined;
  if (m[1] === "") {
    const suffix = Number(m[2]);
    if (suffix === 0 || size === 0) return "unsatisfiable";
    return { start: Math.max(0, size - suffix), end: size };
  }
  const start = Number(m[1]);
  if (m[2] !== "" && Number(m[2]) < start) return undefined; // invalid: ignored
  if (start >= size) return "unsatisfiable";
  const end = m[2] === "" ? size : Math.min(Number(m[2]) + 1, size);
  return { start, end };
}

/** If-None-Match / If-Range against a digest ETag; `strong` refuses weak tags (If-Range). */
function matchesEtag(header: string | null, digest: string, strong = false): boolean {
  if (header === null) return false;
  return header.split(",").some((t) => {
    let tag = t.trim();
    if (tag === "*") return !strong;
    if (tag.startsWith("W/")) {
      if (strong) return false;
      tag = tag.slice(2);
    }
    return tag === `"${digest}"` || tag === digest;
  });
}

function json(req: Request, status: number, value: unknown): Response {
  const bytes = new TextEncoder().encode(JSON.stringify(value));
  return new Response(req.method === "HEAD" ? null : bytes, {
    status,
    headers: {
      "content-type": "application/json",
      "content-length": String(bytes.byteLength),
      "docker-distribution-api-version": API_VERSION,
    },
  });
}

/** A distribution-spec error body: `{"errors":[{"code","message"}]}`. */
function ociError(
  req: Request,
  status: number,
  code: string,
  message: string,
  extra: Record<string, string> = {},
): Response {
  const res = json(req, status, { errors: [{ code, message }] });
  for (const [k, v] of Object.entries(extra)) res.headers.set(k, v);
  return res;
}
