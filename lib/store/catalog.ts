/**
 * A read-only view of an Ollama store as OCI repositories, for `haul serve`.
 *
 * Names (what a client puts after `/v2/`) map onto `manifests/<host>/<repo…>/<tag>`:
 *   - `library/llama3.2`          → `registry.ollama.ai/library/llama3.2` (the default host)
 *   - `llama3.2`                  → `registry.ollama.ai/library/llama3.2` (Ollama's short form)
 *   - `127.0.0.1_5000/library/x`  → `127.0.0.1:5000/library/x`
 *   - `registry.example.com/ns/x` → `registry.example.com/ns/x`
 * A first component is read as a host when it contains `.` or `:`, is `localhost`,
 * or ends in `_<port>`; it is tried as such, then as part of a default-host name,
 * and the first that exists wins. `host:port` is written `host_port` because a `:`
 * is not allowed in an OCI repository name (skopeo refuses it; docker's reference
 * grammar too); `host:port` is accepted as well for clients that do not check.
 *
 * Safety: every component is checked against the OCI name grammar (or the host
 * grammar) before it is joined into a path, tags against the tag grammar and
 * digests with {@link isDigest}; joined paths are checked to stay under the
 * store. Nothing from a request reaches the filesystem unvalidated.
 */
import { readdir, readFile, stat } from "node:fs/promises";
import { join, resolve, sep } from "node:path";
import { isDigest, sha256Digest } from "../digest.ts";
import { type OpenFile, openFile } from "../disk/file_stream.ts";
import { MAX_MANIFEST_BYTES, MediaType } from "../registry/manifest.ts";
import { DEFAULT_HOST, DEFAULT_NAMESPACE } from "../registry/reference.ts";

export { DEFAULT_READ_SIZE, type OpenFile } from "../disk/file_stream.ts";

// OCI distribution spec, "Pulling manifests": path components and tags.
// Upper case as Ollama allows it (lib/registry/reference.ts): hf.co repositories are mixed case.
const COMPONENT_RE = /^[A-Za-z0-9]+(?:(?:[._]|__|-+)[A-Za-z0-9]+)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const HOSTNAME_RE = /^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)*$/;
const PORT_SUFFIX_RE = /^(.+)_([1-9][0-9]{0,4})$/;
// lib/store/ollama.ts writes a manifest as `<tag>.<pid>.tmp` before renaming it: not a tag yet.
const TEMP_RE = /\.[0-9]+\.tmp$/;
/** Longest repository name accepted (distribution's limit). */
export const MAX_NAME_LENGTH = 255;

/** True when `tag` matches the OCI tag grammar. */
export function isTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

/** True when `name` is a valid OCI repository name (components of the OCI grammar). */
export function isRepositoryName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && name.split("/").every((c) => COMPONENT_RE.test(c));
}

function isHostPort(host: string): boolean {
  const colon = host.lastIndexOf(":");
  const name = colon < 0 ? host : host.slice(0, colon);
  if (!HOSTNAME_RE.test(name) || name.length > 253) return false;
  if (colon < 0) return true;
  const port = host.slice(colon + 1);
  return /^[1-9][0-9]{0,4}$/.test(port) && Number(port) <= 65535;
}

/** `127.0.0.1:5000` → `127.0.0.1_5000`, or undefined when the host cannot be a name component. */
export function hostToComponent(host: string): string | undefined {
  const c = host.replace(/:([0-9]+)$/, "_$1");
  return COMPONENT_RE.test(c) ? c : undefined;
}

/**
 * The two-component name (`namespace/model`, Ollama's grammar: types/model/name.go
 * isValidPart, no `.` in a namespace) under which `haul serve` also answers for a
 * repository that has another host or 3+ components: the host and every component but
 * the last are joined with `_` into the namespace, `.` and `:` written `-`; the last
 * component is the model. `ghcr.io/org/team/model` → `ghcr-io_org_team/model`,
 * `127.0.0.1:5000/library/x` → `127-0-0-1-5000_library/x`; a default-host
 * `a/b/c` → `a_b/c`. Undefined when the repository already has two components on
 * the default host. Resolved by scanning the store (first in sorted order wins a clash).
 */
export function ollamaAlias(
  host: string,
  repository: string[],
  defaultHost: string = DEFAULT_HOST,
): string | undefined {
  const parts = host === defaultHost ? repository : [host, ...repository];
  if (parts.length < 2 || (host === defaultHost && parts.length === 2)) return undefined;
  const namespace = parts.slice(0, -1).join("_").replace(/[.:]/g, "-");
  const alias = `${namespace}/${parts[parts.length - 1]}`;
  return isRepositoryName(alias) ? alias : undefined;
}

/** One way to read a requested name as a store location. */
interface Candidate {
  host: string;
  repository: string[];
}

/** Result of parsing a requested name. */
export type ParsedName =
  | { ok: true; candidates: Candidate[] }
  | { ok: false; reason: string };

/**
 * Validates a repository name from a request (raw, still percent-encoded: a `%`
 * never matches the grammar) and lists the store locations it may mean, in order.
 */
export function parseRepositoryName(
  name: string,
  options: { defaultHost?: string; defaultNamespace?: string } = {},
): ParsedName {
  const defaultHost = options.defaultHost ?? DEFAULT_HOST;
  const defaultNamespace = options.defaultNamespace ?? DEFAULT_NAMESPACE;
  if (name.length === 0) return { ok: false, reason: "empty repository name" };
  if (name.length > MAX_NAME_LENGTH) {
    return { ok: false, reason: `repository name is longer than ${MAX_NAME_LENGTH} characters` };
  }
  const parts = name.split("/");
  const [first, ...rest] = parts;
  const candidates: Candidate[] = [];
  const hostLike = first.includes(".") || first.includes(":") || first === "localhost" ||
    PORT_SUFFIX_RE.test(first);
  if (parts.length >= 2 && hostLike) {
    if (rest.some((c) => !COMPONENT_RE.test(c))) {
      return { ok: false, reason: "path components must match [a-z0-9]+([._-][a-z0-9]+)*" };
    }
    if (first.includes(":")) {
      // Raw host:port: only this reading (':' cannot be in a default-host name).
      if (!isHostPort(first)) return { ok: false, reason: "invalid host[:port] component" };
      return { ok: true, candidates: [{ host: first, repository: rest }] };
    }
    if (!COMPONENT_RE.test(first)) {
      return { ok: false, reason: "path components must match [a-z0-9]+([._-][a-z0-9]+)*" };
    }
    if (isHostPort(first)) candidates.push({ host: first, repository: rest });
    const m = PORT_SUFFIX_RE.exec(first);
    if (m && isHostPort(`${m[1]}:${m[2]}`)) {
      candidates.push({ host: `${m[1]}:${m[2]}`, repository: rest });
    }
  } else if (parts.some((c) => !COMPONENT_RE.test(c))) {
    return { ok: false, reason: "path components must match [a-z0-9]+([._-][a-z0-9]+)*" };
  }
  candidates.push({
    host: defaultHost,
    repository: parts.length === 1 ? [defaultNamespace, ...parts] : parts,
  });
  return { ok: true, candidates };
}

/** A manifest read from the store. */
export interface StoredManifest {
  bytes: Uint8Array<ArrayBuffer>;
  digest: string;
  mediaType: string;
}

/** Media type of a stored manifest: its `mediaType` field, else inferred (OCI 1.0 allows none). */
export function manifestMediaType(bytes: Uint8Array): string {
  try {
    const doc = JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
    if (typeof doc.mediaType === "string" && doc.mediaType) return doc.mediaType;
    if (Array.isArray(doc.manifests)) return MediaType.ociIndex;
    const config = doc.config as { mediaType?: unknown } | undefined;
    if (config?.mediaType === "application/vnd.oci.image.config.v1+json") {
      return MediaType.ociManifest;
    }
  } catch {
    // Not JSON: served as Ollama would have stored it, with the schema2 type.
  }
  return MediaType.dockerManifest;
}

/** Options for {@link StoreCatalog}. */
export interface StoreCatalogOptions {
  /** Host of names written without one. @default "registry.ollama.ai" */
  defaultHost?: string;
  /** Namespace of one-component names. @default "library" */
  defaultNamespace?: string;
}

/** A repository found in the store. */
export interface StoreRepository {
  /** `manifests/<host>/<repo…>` directory. */
  dir: string;
  host: string;
  repository: string;
}

/** Read-only access to an Ollama store's manifests, tags and blobs by OCI name. */
export class StoreCatalog {
  readonly root: string;
  readonly manifestsDir: string;
  readonly blobsDir: string;
  readonly defaultHost: string;
  readonly defaultNamespace: string;

  constructor(root: string, options: StoreCatalogOptions = {}) {
    this.root = resolve(root);
    this.manifestsDir = join(this.root, "manifests");
    this.blobsDir = join(this.root, "blobs");
    this.defaultHost = (options.defaultHost ?? DEFAULT_HOST).toLowerCase();
    this.defaultNamespace = options.defaultNamespace ?? DEFAULT_NAMESPACE;
    if (!isHostPort(this.defaultHost)) {
      throw new RangeError(`Invalid defaultHost ${JSON.stringify(options.defaultHost)}`);
    }
    if (!COMPONENT_RE.test(this.defaultNamespace)) {
      throw new RangeError(`Invalid defaultNamespace ${JSON.stringify(this.defaultNamespace)}`);
    }
  }

  /** Parses a requested name (see {@link parseRepositoryName}). */
  parseName(name: string): ParsedName {
    return parseRepositoryName(name, {
      defaultHost: this.defaultHost,
      defaultNamespace: this.defaultNamespace,
    });
  }

  #dirOf(c: Candidate): string {
    const dir = join(this.manifestsDir, c.host, ...c.repository);
    // Belt and braces: validated components cannot escape, and this proves it.
    if (!dir.startsWith(this.manifestsDir + sep)) {
      throw new Error(`Refusing a store path outside ${this.manifestsDir}`);
    }
    return dir;
  }

  /** The first candidate that is a repository (a directory holding at least one tag). */
  async findRepository(candidates: Candidate[]): Promise<StoreRepository | undefined> {
    for (const c of candidates) {
      const dir = this.#dirOf(c);
      if ((await this.#tagsIn(dir)).length) {
        return { dir, host: c.host, repository: c.repository.join("/") };
      }
    }
    // A two-component name may be the Ollama alias of a longer one (see ollamaAlias).
    const last = candidates[candidates.length - 1];
    if (last?.host !== this.defaultHost || last.repository.length !== 2) return undefined;
    const wanted = last.repository.join("/");
    for (const entry of await this.#scan()) {
      if (ollamaAlias(entry.host, entry.repository, this.defaultHost) !== wanted) continue;
      const dir = this.#dirOf(entry);
      return { dir, host: entry.host, repository: entry.repository.join("/") };
    }
    return undefined;
  }

  /**
   * Ollama aliases of the store's repositories (see {@link ollamaAlias}), alias → long
   * name, for repositories that need one; sorted by alias, first wins a clash.
   */
  async aliases(): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for (const e of await this.#scan()) {
      const alias = ollamaAlias(e.host, e.repository, this.defaultHost);
      if (alias && !out.has(alias)) out.set(alias, e.name);
    }
    return new Map([...out].sort((a, b) => compare(a[0], b[0])));
  }

  /** Every repository with its location, in the sorted order of {@link repositories}. */
  async #scan(): Promise<(Candidate & { name: string })[]> {
    const out: (Candidate & { name: string })[] = [];
    for (const name of await this.repositories()) {
      const parsed = this.parseName(name);
      if (!parsed.ok) continue;
      for (const c of parsed.candidates) {
        if ((await this.#tagsIn(this.#dirOf(c))).length) {
          out.push({ ...c, name });
          break;
        }
      }
    }
    return out;
  }

  /** Tags of a repository, sorted lexically (OCI: "in lexical order"). */
  async tags(repo: StoreRepository): Promise<string[]> {
    return (await this.#tagsIn(repo.dir)).sort(compare);
  }

  async #tagsIn(dir: string): Promise<string[]> {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return [];
    }
    const tags: string[] = [];
    for (const e of entries) {
      if (!TAG_RE.test(e.name) || TEMP_RE.test(e.name)) continue;
      if (e.isFile() || (e.isSymbolicLink() && await isFile(join(dir, e.name)))) tags.push(e.name);
    }
    return tags;
  }

  /** Reads a manifest by tag or digest; undefined when absent. */
  async manifest(
    repo: StoreRepository,
    reference: string,
  ): Promise<StoredManifest | undefined> {
    if (isDigest(reference)) {
      // haul and Ollama store a digest-pinned pull under the tag `sha256-<hex>`.
      const pinned = await this.#readManifest(join(repo.dir, reference.replace(":", "-")));
      if (pinned?.digest === reference) return pinned;
      for (const tag of await this.tags(repo)) {
        const m = await this.#readManifest(join(repo.dir, tag));
        if (m?.digest === reference) return m;
      }
      return undefined;
    }
    if (!TAG_RE.test(reference) || TEMP_RE.test(reference)) return undefined;
    return await this.#readManifest(join(repo.dir, reference));
  }

  async #readManifest(path: string): Promise<StoredManifest | undefined> {
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      const st = await stat(path);
      if (!st.isFile() || st.size > MAX_MANIFEST_BYTES) return undefined;
      bytes = new Uint8Array(await readFile(path));
    } catch {
      return undefined;
    }
    // Manifests are a few KiB: hashing each time (~µs) beats caching by mtime.
    return { bytes, digest: sha256Digest(bytes), mediaType: manifestMediaType(bytes) };
  }

  /** Path of a blob by digest (validated); the file may not exist. */
  blobPath(digest: string): string {
    if (!isDigest(digest)) throw new RangeError(`Invalid digest ${JSON.stringify(digest)}`);
    return join(this.blobsDir, digest.replace(":", "-"));
  }

  /** Opens a blob by digest for ranged reads; undefined when the store lacks it. */
  openBlob(digest: string): Promise<OpenFile | undefined> {
    return openFile(this.blobPath(digest));
  }

  /**
   * Every repository in the store under the name a client uses for it, sorted;
   * names that cannot be written in the OCI grammar (IPv6 hosts, upper case) are left out.
   */
  async repositories(): Promise<string[]> {
    const names = new Set<string>();
    let hosts;
    try {
      hosts = await readdir(this.manifestsDir, { withFileTypes: true });
    } catch {
      return [];
    }
    // Ollama's two-component names for the rest (ollamaAlias), listed unless a real name clashes.
    const aliases = new Set<string>();
    let host: string | undefined;
    const walk = async (dir: string, prefix: string[], depth: number): Promise<void> => {
      if (depth > 16) return;
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      let hasTag = false;
      for (const e of entries) {
        const full = join(dir, e.name);
        const isDir = e.isDirectory() || (e.isSymbolicLink() && await isDirectory(full));
        if (isDir) {
          if (COMPONENT_RE.test(e.name)) await walk(full, [...prefix, e.name], depth + 1);
        } else if (
          !hasTag && TAG_RE.test(e.name) && !TEMP_RE.test(e.name) &&
          (e.isFile() || await isFile(full))
        ) {
          hasTag = true;
        }
      }
      if (hasTag && prefix.length >= 2) {
        const name = prefix.join("/");
        if (name.length <= MAX_NAME_LENGTH) names.add(name);
        const alias = host === undefined
          ? ollamaAlias(this.defaultHost, prefix, this.defaultHost)
          : ollamaAlias(host, prefix.slice(1), this.defaultHost);
        if (alias) aliases.add(alias);
      }
    };
    for (const h of hosts) {
      if (
        !h.isDirectory() &&
        !(h.isSymbolicLink() && await isDirectory(join(this.manifestsDir, h.name)))
      ) {
        continue;
      }
      const name = h.name.toLowerCase();
      if (name !== h.name || !isHostPort(name)) continue;
      const dir = join(this.manifestsDir, h.name);
      if (name === this.defaultHost) {
        // Walk as [repo…]; a name is listed without the host.
        host = undefined;
        await walkRepos(dir, walk);
      } else {
        const component = hostToComponent(name);
        host = name;
        if (component) await walk(dir, [component], 0);
      }
    }
    for (const a of aliases) names.add(a);
    return [...names].sort(compare);
  }
}

async function walkRepos(
  dir: string,
  walk: (dir: string, prefix: string[], depth: number) => Promise<void>,
): Promise<void> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const full = join(dir, e.name);
    if (
      COMPONENT_RE.test(e.name) &&
      (e.isDirectory() || (e.isSymbolicLink() && await isDirectory(full)))
    ) {
      // Names of the default host start at the namespace: the walk needs 2+ components.
      await walk(full, [e.name], 1);
    }
  }
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

async function isFile(path: string): Promise<boolean> {
  return await stat(path).then((s) => s.isFile(), () => false);
}

async function isDirectory(path: string): Promise<boolean> {
  return await stat(path).then((s) => s.isDirectory(), () => false);
}
