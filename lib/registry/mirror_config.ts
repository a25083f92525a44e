/**
 * Registry mirrors (pull-through caches) per registry host, as containerd's `hosts.toml` and
 * containers' `registries.conf` configure them, in three places:
 *
 * - a JSON file, `$HAUL_CONFIG`, else `$XDG_CONFIG_HOME/haul/config.json`, else
 *   `~/.config/haul/config.json`:
 *   `{"mirrors": {"registry.ollama.ai": ["http://10.0.0.5:5000"], "*": ["http://cache:5000"]}}`
 * - the environment: `HAUL_MIRRORS="registry.ollama.ai=http://a:5000,http://b:5000;*=http://c:5000"`
 *   (a bare list `http://a:5000,http://b:5000` means `*=` that list; empty means no mirrors)
 * - `--mirror URL` flags, for every registry.
 *
 * The first place that says anything wins as a whole: flags, then the environment, then the
 * file. Within a map, an entry for the exact `host[:port]` wins over `*`. A mirror URL is
 * `http(s)://host[:port]` with no path: the repository path is the origin's.
 */
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { StoreError, UsageError } from "../errors.ts";

/** Mirror base URLs per registry host (`host[:port]`, lower case) or `*` for every host. */
export type MirrorMap = Record<string, string[]>;

/** Where a mirror list came from, for messages. */
export type MirrorSource = "flags" | "env" | "file" | "none";

/**
 * Checks a mirror URL and returns its canonical form `scheme://host[:port]`.
 * @throws {UsageError} naming `where` when the URL has a path, a query, credentials or
 * another scheme than http / https.
 */
export function checkMirrorUrl(url: string, where = "mirror"): string {
  let u: URL;
  try {
    u = new URL(url.trim());
  } catch {
    throw new UsageError(`${where}: ${JSON.stringify(url)} is not a URL (http://host[:port])`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new UsageError(`${where}: ${JSON.stringify(url)} must start with http:// or https://`);
  }
  if (u.username || u.password) {
    throw new UsageError(
      `${where}: ${JSON.stringify(url)} carries credentials; use "haul login" for the mirror`,
    );
  }
  if ((u.pathname !== "/" && u.pathname !== "") || u.search || u.hash) {
    throw new UsageError(
      `${where}: ${
        JSON.stringify(url)
      } has a path or query; a mirror is scheme://host[:port] serving /v2/`,
    );
  }
  return `${u.protocol}//${u.host}`;
}

function checkHostKey(host: string, where: string): string {
  const h = host.trim().toLowerCase();
  if (h === "*") return h;
  if (!/^(?:[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$/.test(h)) {
    throw new UsageError(
      `${where}: ${JSON.stringify(host)} is not a registry host (host[:port] or *)`,
    );
  }
  return h;
}

/**
 * Parses `HAUL_MIRRORS`: `host=url[,url…][;host=url…]`, `*` for every host; a value without
 * `=` is a list for `*`. Whitespace around items is ignored; an empty value is an empty map.
 */
export function parseMirrorList(value: string, where = "HAUL_MIRRORS"): MirrorMap {
  const out: MirrorMap = {};
  for (const entry of value.split(";")) {
    if (!entry.trim()) continue;
    const eq = entry.indexOf("=");
    const host = eq < 0 ? "*" : checkHostKey(entry.slice(0, eq), where);
    const urls = (eq < 0 ? entry : entry.slice(eq + 1)).split(",").map((s) => s.trim())
      .filter(Boolean).map((u) => checkMirrorUrl(u, where));
    if (!urls.length) throw new UsageError(`${where}: no mirror URL for ${host}`);
    out[host] = [...(out[host] ?? []), ...urls];
  }
  return out;
}

/** Parses the JSON config file's text (`{"mirrors": {host: [url…]}}`); other keys are ignored. */
export function parseMirrorConfig(text: string, where = "config"): MirrorMap {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${where}: not valid JSON: ${(e as Error).message}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw new UsageError(`${where}: expected a JSON object`);
  }
  const mirrors = (doc as Record<string, unknown>).mirrors;
  if (mirrors === undefined) return {};
  if (typeof mirrors !== "object" || mirrors === null || Array.isArray(mirrors)) {
    throw new UsageError(`${where}: "mirrors" must be an object of host → [URL, …]`);
  }
  const out: MirrorMap = {};
  for (const [host, list] of Object.entries(mirrors)) {
    const key = checkHostKey(host, where);
    const items = typeof list === "string" ? [list] : list;
    if (!Array.isArray(items) || items.some((u) => typeof u !== "string")) {
      throw new UsageError(`${where}: mirrors of ${JSON.stringify(host)} must be a list of URLs`);
    }
    out[key] = items.map((u) => checkMirrorUrl(u as string, `${where}: ${host}`));
  }
  return out;
}

/** `$HAUL_CONFIG`, else `$XDG_CONFIG_HOME/haul/config.json`, else `~/.config/haul/config.json`. */
export function defaultConfigPath(
  env: Record<string, string | undefined> = process.env,
): string {
  if (env.HAUL_CONFIG) return env.HAUL_CONFIG;
  const base = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), ".config");
  return join(base, "haul", "config.json");
}

/** Options for {@link loadMirrors}. */
export interface LoadMirrorsOptions {
  /** `--mirror` URLs: used for every registry, ahead of everything else. @default [] */
  flags?: string[];
  /** The environment read for `HAUL_MIRRORS`, `HAUL_CONFIG`, `XDG_CONFIG_HOME`, `HOME`. @default process.env */
  env?: Record<string, string | undefined>;
}

/**
 * The mirror map in effect, and where it came from: `--mirror` flags, else `HAUL_MIRRORS`,
 * else the config file. A missing default config file means no mirrors; a missing
 * `$HAUL_CONFIG` file is an error (it was named on purpose).
 */
export async function loadMirrors(
  options: LoadMirrorsOptions = {},
): Promise<{ mirrors: MirrorMap; source: MirrorSource; path?: string }> {
  const env = options.env ?? process.env;
  if (options.flags?.length) {
    return {
      mirrors: { "*": options.flags.map((u) => checkMirrorUrl(u, "--mirror")) },
      source: "flags",
    };
  }
  if (env.HAUL_MIRRORS !== undefined) {
    return { mirrors: parseMirrorList(env.HAUL_MIRRORS), source: "env" };
  }
  const path = defaultConfigPath(env);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ENOENT" && !env.HAUL_CONFIG) return { mirrors: {}, source: "none" };
    if (code === "ENOENT") throw new UsageError(`HAUL_CONFIG: ${path} does not exist`);
    throw new StoreError(`Cannot read ${path}: ${(e as Error).message}`, path, { cause: e });
  }
  return { mirrors: parseMirrorConfig(text, path), source: "file", path };
}

/**
 * The mirrors to try for a registry host, in order: the host's own entry, else `*`.
 * `origin` (scheme://host) is left out so a mirror list never sends haul to the origin twice.
 */
export function mirrorsFor(map: MirrorMap | undefined, host: string, origin?: string): string[] {
  if (!map) return [];
  const list = map[host.toLowerCase()] ?? map["*"] ?? [];
  const seen = new Set<string>(origin ? [origin] : []);
  const out: string[] = [];
  for (const u of list) {
    if (seen.has(u)) continue;
    seen.add(u);
    out.push(u);
  }
  return out;
}
