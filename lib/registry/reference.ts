/**
 * Model / image references: `[scheme://][host[:port]/]path[:tag][@sha256:<hex>]`.
 *
 * Defaults follow Ollama (host `registry.ollama.ai`, namespace `library`, tag `latest`); the
 * repository grammar follows the OCI distribution spec, with upper case allowed as Ollama allows it. A parsed reference is
 * safe to turn into a store path: no component can be empty, `.`, `..` or contain a separator.
 */

import { UsageError } from "../errors.ts";

/** A parsed, validated reference. */
export interface Reference {
  /** URL scheme used to reach the registry. */
  scheme: "https" | "http";
  /** Registry host, with port when given, lower-cased (`localhost:5000`, `[::1]:5000`). */
  host: string;
  /** Repository path, e.g. `library/llama3.2` or `a/b/c`. */
  repository: string;
  /** Tag; undefined only for digest-pinned references written without a tag. */
  tag?: string;
  /** Pinned manifest digest, `sha256:<64 lower-case hex>`. */
  digest?: string;
}

/** Options for {@link parseReference}. */
export interface ParseReferenceOptions {
  /**
   * Host used when the reference names none.
   * @default "registry.ollama.ai"
   */
  defaultHost?: string;
  /**
   * Namespace prepended to single-component repositories (`llama3.2` → `library/llama3.2`).
   * @default "library"
   */
  defaultNamespace?: string;
  /**
   * Tag used when the reference has neither tag nor digest.
   * @default "latest"
   */
  defaultTag?: string;
}

/** Options for {@link shortName}: the defaults that may be left out of the short form. */
export interface ShortNameOptions {
  /** @default "registry.ollama.ai" */
  defaultHost?: string;
  /** @default "library" */
  defaultNamespace?: string;
}

/** Ollama's registry. */
export const DEFAULT_HOST = "registry.ollama.ai";
/** Ollama's default namespace. */
export const DEFAULT_NAMESPACE = "library";
/** Ollama's default tag. */
export const DEFAULT_TAG = "latest";

// Ollama: host ≤ 350, namespace/model/tag ≤ 80. OCI: repository ≤ 255 in practice (distribution).
const MAX_HOST = 350;
const MAX_COMPONENT = 80;
const MAX_REPOSITORY = 255;

// OCI distribution spec, "Pulling manifests": path components and tags.
// Upper case is allowed as Ollama allows it (types/model/name.go isValidPart), kept as written:
// Hugging Face repositories are mixed case (hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF). A
// registry that keeps to the OCI spec's lower case answers NAME_INVALID itself.
const COMPONENT_RE = /^[A-Za-z0-9]+(?:(?:[._]|__|-+)[A-Za-z0-9]+)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
// Host labels: letters, digits, '-' and '_' inside (Ollama accepts '_', Docker does not).
const HOSTNAME_RE = /^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)*$/;
const PORT_RE = /^[1-9][0-9]{0,4}$/;

/**
 * Parses a reference the way Ollama resolves model names, with OCI validation.
 *
 * - `llama3.2` → `registry.ollama.ai/library/llama3.2:latest`
 * - `user/model:tag`, `host[:port]/ns/model:tag`, `host/a/b/c:tag`
 * - `name@sha256:<hex>` pins a digest (tag stays undefined unless written)
 * - `http://` / `https://` prefix sets the scheme; with a scheme the first component is always
 *   the host.
 *
 * The first component is a host iff it contains `.` or `:` or is `localhost` (Docker's rule).
 *
 * @throws {UsageError} when the reference is malformed or could escape a directory.
 * @throws {RangeError} when an option is invalid.
 */
export function parseReference(input: string, options: ParseReferenceOptions = {}): Reference {
  const defaultHost = options.defaultHost ?? DEFAULT_HOST;
  const defaultNamespace = options.defaultNamespace ?? DEFAULT_NAMESPACE;
  const defaultTag = options.defaultTag ?? DEFAULT_TAG;
  if (checkHost(defaultHost.toLowerCase()) !== undefined) {
    throw new RangeError(`Invalid defaultHost "${defaultHost}"`);
  }
  if (defaultNamespace.includes("/") || checkComponent(defaultNamespace) !== undefined) {
    throw new RangeError(`Invalid defaultNamespace "${defaultNamespace}"`);
  }
  if (checkTag(defaultTag) !== undefined) {
    throw new RangeError(`Invalid defaultTag "${defaultTag}"`);
  }

  const fail = (why: string): never => {
    throw new UsageError(`Invalid reference ${JSON.stringify(input)}: ${why}`);
  };

  if (input === "") fail("it is empty");
  if (/\s/.test(input)) fail("it contains whitespace");
  // deno-lint-ignore no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(input)) fail("it contains a control character");
  if (input.includes("\\")) fail("it contains a backslash");
  if (input.includes("%")) fail("percent-encoding is not allowed");

  let rest = input;
  let scheme: "https" | "http" = "https";
  let explicitScheme = false;
  const schemeMatch = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(rest);
  if (schemeMatch) {
    const s = schemeMatch[1].toLowerCase();
    if (s !== "https" && s !== "http") fail(`scheme "${schemeMatch[1]}" is not http or https`);
    scheme = s as "https" | "http";
    explicitScheme = true;
    rest = rest.slice(schemeMatch[0].length);
  } else if (rest.includes("://")) {
    fail("malformed scheme");
  }
  if (rest === "") fail("it names no repository");

  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    const d = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (d.includes("@")) fail("more than one '@'");
    digest = checkDigest(d, fail);
  }

  if (rest.endsWith("/")) fail("trailing '/'");

  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    const why = checkTag(tag);
    if (why !== undefined) fail(why);
  }
  if (rest === "") fail("it names no repository");

  const parts = rest.split("/");
  // Checked before host detection, which would otherwise read `..` as a host name.
  const dots = parts.find((p) => p === "." || p === "..");
  if (dots !== undefined) fail(`path component "${dots}" is not allowed`);
  let host = defaultHost.toLowerCase();
  const first = parts[0];
  if (
    explicitScheme ||
    (parts.length > 1 && (first.includes(".") || first.includes(":") || first === "localhost"))
  ) {
    if (parts.length === 1) fail("it names a host but no repository");
    host = first.toLowerCase();
    const why = checkHost(host);
    if (why !== undefined) fail(why);
    parts.shift();
  }
  if (parts.length === 1) parts.unshift(defaultNamespace);
  for (const part of parts) {
    const why = checkComponent(part);
    if (why !== undefined) fail(why);
  }
  const repository = parts.join("/");
  if (repository.length > MAX_REPOSITORY) {
    fail(`repository is longer than ${MAX_REPOSITORY} characters`);
  }

  if (tag === undefined && digest === undefined) tag = defaultTag;
  const ref: Reference = { scheme, host, repository };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

/** Formats `host/repository[:tag][@digest]` (no scheme); parses back to the same reference. */
export function formatReference(ref: Reference): string {
  return `${ref.host}/${ref.repository}${ref.tag !== undefined ? `:${ref.tag}` : ""}${
    ref.digest !== undefined ? `@${ref.digest}` : ""
  }`;
}

/**
 * The name as Ollama shows it: the default host and the default namespace are left out when
 * doing so still parses back to the same reference; the tag is kept (`llama3.2:latest`).
 */
export function shortName(ref: Reference, options: ShortNameOptions = {}): string {
  const defaultHost = (options.defaultHost ?? DEFAULT_HOST).toLowerCase();
  const defaultNamespace = options.defaultNamespace ?? DEFAULT_NAMESPACE;
  let name = ref.repository;
  const parts = name.split("/");
  if (ref.host === defaultHost) {
    if (parts.length === 2 && parts[0] === defaultNamespace) {
      name = parts[1];
    } else if (parts[0].includes(".") || parts[0] === "localhost") {
      // Would be read back as a host: keep the host.
      name = `${ref.host}/${name}`;
    }
  } else {
    name = `${ref.host}/${name}`;
  }
  return `${name}${ref.tag !== undefined ? `:${ref.tag}` : ""}${
    ref.digest !== undefined ? `@${ref.digest}` : ""
  }`;
}

/**
 * The manifest name used in URLs and store paths: the tag, else `sha256-<hex>` for a
 * digest-only reference (Ollama's file-name form of a digest).
 */
export function manifestTag(ref: Reference): string {
  if (ref.tag !== undefined) return ref.tag;
  if (ref.digest !== undefined) return ref.digest.replace(":", "-");
  throw new TypeError("Reference has neither a tag nor a digest");
}

function checkDigest(d: string, fail: (why: string) => never): string {
  const sep = d.indexOf(":");
  if (sep === -1) return fail(`digest "${d}" must be sha256:<64 hex digits>`);
  const algorithm = d.slice(0, sep);
  const hex = d.slice(sep + 1);
  if (algorithm.toLowerCase() !== "sha256") {
    return fail(`digest algorithm "${algorithm}" is not supported (only sha256)`);
  }
  if (!/^[0-9a-fA-F]*$/.test(hex)) return fail(`digest "${d}" is not hexadecimal`);
  if (hex.length !== 64) {
    return fail(`digest "${d}" has ${hex.length} hex digits, sha256 needs 64`);
  }
  // Hex case carries no meaning; store the canonical lower-case form.
  const normalized = `sha256:${hex.toLowerCase()}`;
  if (!DIGEST_RE.test(normalized)) return fail(`digest "${d}" is malformed`);
  return normalized;
}

function checkTag(tag: string): string | undefined {
  if (tag === "") return "empty tag";
  if (tag.length > MAX_COMPONENT) return `tag "${tag}" is longer than ${MAX_COMPONENT} characters`;
  if (!TAG_RE.test(tag)) {
    return `tag "${tag}" must be letters, digits, '_', '.' or '-' and not start with '.' or '-'`;
  }
  return undefined;
}

function checkComponent(part: string): string | undefined {
  if (part === "") return "empty path component";
  if (part === "." || part === "..") return `path component "${part}" is not allowed`;
  if (part.length > MAX_COMPONENT) {
    return `path component "${part}" is longer than ${MAX_COMPONENT} characters`;
  }
  if (!COMPONENT_RE.test(part)) {
    return `path component "${part}" must be letters and digits separated by ` +
      `'.', '_', '__' or '-'`;
  }
  return undefined;
}

/** Validates a lower-cased `hostname[:port]`, `a.b.c.d[:port]` or `[ipv6][:port]`. */
function checkHost(host: string): string | undefined {
  if (host === "") return "empty host";
  if (host.length > MAX_HOST) return `host is longer than ${MAX_HOST} characters`;
  let name = host;
  let port: string | undefined;
  if (host.startsWith("[")) {
    const close = host.indexOf("]");
    if (close === -1) return `host "${host}" has an unclosed '['`;
    name = host.slice(0, close + 1);
    const after = host.slice(close + 1);
    if (after !== "") {
      if (!after.startsWith(":")) return `host "${host}" is malformed`;
      port = after.slice(1);
    }
    const inner = name.slice(1, -1);
    if (!/^[0-9a-f:.]+$/.test(inner) || !inner.includes(":") || !isUrlHost(name)) {
      return `host "${host}" is not a valid IPv6 address`;
    }
  } else {
    const colon = host.indexOf(":");
    if (colon !== -1) {
      name = host.slice(0, colon);
      port = host.slice(colon + 1);
    }
    if (!HOSTNAME_RE.test(name)) return `host "${host}" is not a valid host name`;
  }
  if (port !== undefined && (!PORT_RE.test(port) || Number(port) > 65535)) {
    return `port "${port}" must be 1-65535`;
  }
  return undefined;
}

function isUrlHost(bracketed: string): boolean {
  try {
    new URL(`http://${bracketed}/`);
    return true;
  } catch {
    return false;
  }
}
