/**
 * Registry credentials from Docker's `config.json`: inline `auths` entries, `credHelpers` and
 * `credsStore` (docker-credential-helpers protocol: `docker-credential-<name> get`, server URL
 * on stdin, `{"ServerURL","Username","Secret"}` on stdout).
 *
 * No error message ever contains a password, token or helper output that could hold one.
 */

import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { helperDetail, runCredentialHelper } from "./credential_helper.ts";
import { AuthError } from "../errors.ts";

/**
 * A username and password (or token). An identity token is returned as Docker's helpers do:
 * `{ username: "<token>", password: <identity token> }`; see {@link IDENTITY_TOKEN_USERNAME}.
 */
export interface Credential {
  username: string;
  password: string;
}

/** Options for {@link loadCredential}. */
export interface CredentialOptions {
  /**
   * Directory holding `config.json`.
   * @default env.DOCKER_CONFIG, else `~/.docker`
   */
  configDir?: string;
  /**
   * Environment: `DOCKER_CONFIG`, `HOME`, and `PATH` used to find and run credential helpers.
   * @default process.env
   */
  env?: Record<string, string | undefined>;
  /**
   * How long a credential helper may run, in milliseconds.
   * @default 10000
   */
  helperTimeout?: number;
  /** Aborts a running credential helper. */
  signal?: AbortSignal;
}

/** Username Docker uses to mark an identity (refresh) token as the password. */
export const IDENTITY_TOKEN_USERNAME = "<token>";

const DOCKER_HUB_ALIASES = new Set(["docker.io", "index.docker.io", "registry-1.docker.io"]);
const DOCKER_HUB_SERVER = "https://index.docker.io/v1/";

/**
 * Finds credentials for a registry host (`host[:port]`) the way the Docker CLI does:
 * `credHelpers[host]`, else `credsStore`, else the inline `auths` entry. Unlike Docker, an
 * inline entry is still used when the helper is missing or has nothing for the host.
 *
 * Resolves to undefined when there is no config file or nothing for this host.
 *
 * @throws {AuthError} when config.json is unreadable or invalid, an entry cannot be decoded,
 *   or a credential helper fails for a reason other than "credentials not found".
 * @throws {RangeError} when host or an option is invalid.
 */
export async function loadCredential(
  host: string,
  options: CredentialOptions = {},
): Promise<Credential | undefined> {
  const env = options.env ?? process.env;
  const timeout = options.helperTimeout ?? 10_000;
  if (host === "" || /[\s/]/.test(host)) {
    throw new RangeError(`Invalid registry host ${JSON.stringify(host)}`);
  }
  if (!Number.isFinite(timeout) || timeout <= 0) {
    throw new RangeError(`Invalid helperTimeout ${timeout}: must be a positive number`);
  }
  options.signal?.throwIfAborted();
  host = host.toLowerCase();
  const dir = options.configDir ?? env.DOCKER_CONFIG ?? join(env.HOME || homedir(), ".docker");
  const file = join(dir, "config.json");

  const config = await readConfig(file);
  if (config === undefined) return undefined;

  const hub = DOCKER_HUB_ALIASES.has(host);
  const helperKeys = hub ? [host, "index.docker.io", "docker.io", DOCKER_HUB_SERVER] : [host];
  const helpers = isRecord(config.credHelpers) ? config.credHelpers : {};
  const helperKey = helperKeys.find((k) => typeof helpers[k] === "string" && helpers[k] !== "");
  const helper = helperKey !== undefined
    ? helpers[helperKey] as string
    : typeof config.credsStore === "string" && config.credsStore !== ""
    ? config.credsStore
    : undefined;
  if (helper !== undefined) {
    const serverUrl = hub ? DOCKER_HUB_SERVER : host;
    const fromHelper = await runHelper(helper, serverUrl, env, timeout, options.signal);
    if (fromHelper !== undefined) return fromHelper;
  }

  const auths = isRecord(config.auths) ? config.auths : {};
  const key = findAuthKey(auths, host, hub);
  if (key === undefined) return undefined;
  return decodeEntry(auths[key], key, file);
}

async function readConfig(file: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw new AuthError(`Cannot read Docker config ${file}: ${code ?? "read failed"}`, {
      cause: err,
    });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    // No cause: JSON.parse messages quote the text, which may hold a secret.
    throw new AuthError(`Docker config ${file} is not valid JSON: fix or remove it`);
  }
  if (!isRecord(parsed)) {
    throw new AuthError(`Docker config ${file} is not a JSON object: fix or remove it`);
  }
  return parsed;
}

/** Exact keys first (Docker's own forms), then any key whose host part matches. */
function findAuthKey(
  auths: Record<string, unknown>,
  host: string,
  hub: boolean,
): string | undefined {
  const candidates = [
    host,
    `https://${host}`,
    `http://${host}`,
    `https://${host}/v1/`,
    `https://${host}/v2/`,
    ...(hub ? [DOCKER_HUB_SERVER] : []),
  ];
  const exact = candidates.find((k) => Object.hasOwn(auths, k));
  if (exact !== undefined) return exact;
  // Docker's ConvertToHostname: strip the scheme and everything from the first '/'.
  return Object.keys(auths).find((k) => {
    const h = k.replace(/^https?:\/\//i, "").split("/")[0].toLowerCase();
    return h === host || (hub && DOCKER_HUB_ALIASES.has(h));
  });
}

function decodeEntry(entry: unknown, key: string, file: string): Credential | undefined {
  if (!isRecord(entry)) return undefined;
  if (typeof entry.identitytoken === "string" && entry.identitytoken !== "") {
    return { username: IDENTITY_TOKEN_USERNAME, password: entry.identitytoken };
  }
  if (typeof entry.auth === "string" && entry.auth !== "") {
    let decoded: string;
    try {
      const bin = atob(entry.auth.trim());
      decoded = new TextDecoder("utf-8", { fatal: true }).decode(
        Uint8Array.from(bin, (c) => c.charCodeAt(0)),
      );
    } catch {
      throw new AuthError(`The "auth" value for ${key} in ${file} is not valid base64 text`);
    }
    const sep = decoded.indexOf(":");
    if (sep === -1) {
      throw new AuthError(`The "auth" value for ${key} in ${file} is not "user:password"`);
    }
    // Split at the first ':' only: passwords may contain ':'.
    return { username: decoded.slice(0, sep), password: decoded.slice(sep + 1) };
  }
  if (typeof entry.username === "string" && typeof entry.password === "string") {
    if (entry.username === "" && entry.password === "") return undefined;
    return { username: entry.username, password: entry.password };
  }
  return undefined;
}

async function runHelper(
  name: string,
  serverUrl: string,
  env: Record<string, string | undefined>,
  timeout: number,
  signal: AbortSignal | undefined,
): Promise<Credential | undefined> {
  const result = await runCredentialHelper(name, "get", serverUrl, { env, timeout, signal });
  const program = result.program;
  if (!result.found) return undefined;
  if (result.code !== 0) {
    // docker-credential-helpers prints ErrCredentialsNotFound ("credentials not found in
    // native keychain") on stdout; some helpers use stderr.
    const output = `${result.stdout}\n${result.stderr}`;
    if (/credentials not found/i.test(output)) return undefined;
    throw new AuthError(
      `Credential helper ${program} failed for ${serverUrl} (exit code ${result.code})` +
        helperDetail(output),
    );
  }
  let out: unknown;
  try {
    out = JSON.parse(result.stdout);
  } catch {
    throw new AuthError(`Credential helper ${program} returned invalid JSON for ${serverUrl}`);
  }
  if (!isRecord(out) || typeof out.Secret !== "string") {
    throw new AuthError(`Credential helper ${program} returned no Secret for ${serverUrl}`);
  }
  if (out.Secret === "") return undefined;
  const username = typeof out.Username === "string" ? out.Username : "";
  return { username, password: out.Secret };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
