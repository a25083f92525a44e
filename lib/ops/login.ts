/**
 * `login` / `logout`: save and remove registry credentials the way the Docker CLI does, so
 * that docker, skopeo, crane and haul share them.
 *
 * - `config.json` in `$DOCKER_CONFIG` or `~/.docker`: `auths.<host>.auth` is base64
 *   `user:password`. Every other key of the file is kept; the file is replaced atomically
 *   (temp file, fsync, rename) with mode 0600 in a directory created with mode 0700.
 * - When `credHelpers[host]` or `credsStore` names a helper, the secret goes to
 *   `docker-credential-<name> store` (`{"ServerURL","Username","Secret"}` on stdin) and
 *   `config.json` keeps an empty `auths.<host>` entry, as docker writes it; `logout` runs
 *   `erase` with the server URL on stdin.
 * - Docker Hub (`docker.io`, `index.docker.io`, `registry-1.docker.io`) is stored under
 *   `https://index.docker.io/v1/`, docker's key for it.
 *
 * No error message, result or event ever contains the password.
 */
import { randomBytes } from "node:crypto";
import { chmod, lstat, mkdir, open, readFile, realpath, rename, rm } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { helperDetail, runCredentialHelper } from "../auth/credential_helper.ts";
import type { Credential } from "../auth/credentials.ts";
import { AuthError, RegistryError, storeError, UsageError } from "../errors.ts";
import { syncDir } from "../disk/fsio.ts";
import { parseReference } from "../registry/reference.ts";
import { type ConnectionOptions, createSession } from "../registry/session.ts";

const DOCKER_HUB_ALIASES = new Set(["docker.io", "index.docker.io", "registry-1.docker.io"]);
/** The key (and helper server URL) docker uses for Docker Hub. */
export const DOCKER_HUB_SERVER = "https://index.docker.io/v1/";
const DOCKER_HUB_REGISTRY = "https://registry-1.docker.io";

/** Where credentials live; shared by {@link login} and {@link logout}. */
export interface DockerConfigOptions {
  /**
   * Directory holding `config.json`.
   * @default env.DOCKER_CONFIG, else `~/.docker`
   */
  configDir?: string;
  /**
   * Environment: `DOCKER_CONFIG`, `HOME`, and `PATH` used to find credential helpers.
   * @default process.env
   */
  env?: Record<string, string | undefined>;
  /**
   * How long a credential helper may run, in milliseconds.
   * @default 10000
   */
  helperTimeout?: number;
  signal?: AbortSignal;
}

/** Options for {@link login}. */
export interface LoginOptions
  extends DockerConfigOptions, Pick<ConnectionOptions, "userAgent" | "caCerts" | "fetch"> {
  /**
   * Reach the registry over plain http for the check.
   * @default false
   */
  insecure?: boolean;
  /**
   * Check the credentials against the registry (`GET /v2/`) before saving them.
   * @default true
   */
  check?: boolean;
}

/** A registry named on the command line, normalised. */
export interface RegistryName {
  /** `host[:port]`, lower case. */
  host: string;
  /** The key used in `auths` and the server URL given to helpers. */
  serverAddress: string;
  /** Base URL checked by {@link login}: `scheme://host[:port]`. */
  baseUrl: string;
}

/** What {@link login} stored. */
export interface LoginResult {
  registry: string;
  serverAddress: string;
  username: string;
  /** `config.json` itself, or the helper that holds the secret. */
  storedIn: { kind: "config"; path: string } | { kind: "helper"; helper: string; path: string };
}

/** What {@link logout} removed. */
export interface LogoutResult {
  registry: string;
  /** `auths` keys removed from config.json. */
  removedKeys: string[];
  /** The helper that erased a secret, if one did. */
  erasedFrom?: string;
  /** False when there was nothing to remove. */
  loggedOut: boolean;
  path: string;
}

/**
 * Normalises `host[:port]`, `https://host[:port][/path]` or a Docker Hub alias.
 *
 * @throws {UsageError} when the name is not a registry host, or is `http://` without
 *   `insecure`.
 */
export function parseRegistry(input: string, insecure = false): RegistryName {
  const trimmed = input.trim();
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(trimmed);
  const scheme = m?.[1].toLowerCase();
  if (scheme !== undefined && scheme !== "http" && scheme !== "https") {
    throw new UsageError(`Invalid registry ${JSON.stringify(input)}: use host[:port]`);
  }
  if (scheme === "http" && !insecure) {
    throw new UsageError(`Plain http for ${JSON.stringify(input)} needs --insecure`);
  }
  const rest = m ? trimmed.slice(m[0].length) : trimmed;
  const hostPart = rest.split("/")[0];
  if (hostPart === "" || hostPart.includes("@")) {
    throw new UsageError(`Invalid registry ${JSON.stringify(input)}: use host[:port]`);
  }
  let host: string;
  try {
    // The reference grammar validates hosts; with a scheme the first component is the host.
    host = parseReference(`https://${hostPart}/a/b`).host;
  } catch {
    throw new UsageError(`Invalid registry ${JSON.stringify(input)}: use host[:port]`);
  }
  if (DOCKER_HUB_ALIASES.has(host)) {
    return { host: "docker.io", serverAddress: DOCKER_HUB_SERVER, baseUrl: DOCKER_HUB_REGISTRY };
  }
  const useHttp = insecure && scheme !== "https";
  return { host, serverAddress: host, baseUrl: `${useHttp ? "http" : "https"}://${host}` };
}

/**
 * Checks `credential` against the registry, then saves it to Docker's config (or its
 * credential helper).
 *
 * @throws {AuthError} when the registry refuses the credentials ("login failed"), the config
 *   is unreadable, or a helper fails.
 * @throws {RegistryError} when the registry answers `/v2/` with another error.
 * @throws {UsageError} when the registry name or credential is unusable.
 * @throws {StoreError} when config.json cannot be written.
 */
export async function login(
  registry: string,
  credential: Credential,
  options: LoginOptions = {},
): Promise<LoginResult> {
  const name = parseRegistry(registry, options.insecure);
  if (credential.username === "" || credential.username.includes(":")) {
    throw new UsageError("The username must be non-empty and cannot contain ':'");
  }
  if (credential.password === "") throw new UsageError("The password is empty");
  const { env, file, timeout } = configLocation(options);
  // Fail on a broken config before talking to the registry.
  const config = await readConfig(file);
  if (options.check ?? true) await checkLogin(name, credential, options);

  const helper = helperFor(config, name);
  const auths = isRecord(config.auths) ? config.auths : {};
  let storedIn: LoginResult["storedIn"];
  if (helper !== undefined) {
    await runHelper(
      helper,
      "store",
      JSON.stringify({
        ServerURL: name.serverAddress,
        Username: credential.username,
        Secret: credential.password,
      }),
      env,
      timeout,
      options.signal,
      credential.password,
    );
    // Docker keeps an empty entry so that `docker` knows about the login.
    auths[name.serverAddress] = {};
    storedIn = { kind: "helper", helper: `docker-credential-${helper}`, path: file };
  } else {
    const auth = btoa(
      String.fromCharCode(
        ...new TextEncoder().encode(`${credential.username}:${credential.password}`),
      ),
    );
    const previous = auths[name.serverAddress];
    // Keep docker's other fields of the entry (e.g. "email"); the secret is replaced.
    const entry: Record<string, unknown> = isRecord(previous) ? { ...previous } : {};
    delete entry.identitytoken;
    delete entry.username;
    delete entry.password;
    entry.auth = auth;
    auths[name.serverAddress] = entry;
    storedIn = { kind: "config", path: file };
  }
  config.auths = auths;
  await writeConfig(file, config);
  return {
    registry: name.host,
    serverAddress: name.serverAddress,
    username: credential.username,
    storedIn,
  };
}

/**
 * Removes the credentials for a registry: every `auths` key naming its host, and the
 * helper's entry when a helper is configured.
 *
 * @throws {AuthError} when the config is unreadable or a helper fails (other than "not found").
 * @throws {StoreError} when config.json cannot be written.
 */
export async function logout(
  registry: string,
  options: DockerConfigOptions = {},
): Promise<LogoutResult> {
  const name = parseRegistry(registry, true);
  const { env, file, timeout } = configLocation(options);
  const config = await readConfig(file);
  const result: LogoutResult = {
    registry: name.host,
    removedKeys: [],
    loggedOut: false,
    path: file,
  };
  const helper = helperFor(config, name);
  if (helper !== undefined) {
    const erased = await runHelper(
      helper,
      "erase",
      name.serverAddress,
      env,
      timeout,
      options.signal,
    );
    if (erased) result.erasedFrom = `docker-credential-${helper}`;
  }
  if (isRecord(config.auths)) {
    for (const key of Object.keys(config.auths)) {
      if (keyHost(key) === name.host) {
        delete config.auths[key];
        result.removedKeys.push(key);
      }
    }
    if (result.removedKeys.length) await writeConfig(file, config);
  }
  result.loggedOut = result.removedKeys.length > 0 || result.erasedFrom !== undefined;
  return result;
}

/**
 * `GET /v2/` through the transport stack with `credential`: 2xx means the registry accepts
 * it (or needs none).
 *
 * @throws {AuthError} "login failed" on 401/403 or a refused token request.
 * @throws {RegistryError} on another HTTP error.
 */
export async function checkLogin(
  name: RegistryName,
  credential: Credential,
  options: Pick<LoginOptions, "userAgent" | "caCerts" | "fetch" | "signal"> = {},
): Promise<void> {
  const session = createSession(name.baseUrl, [], {
    credential,
    userAgent: options.userAgent,
    caCerts: options.caCerts,
    fetch: options.fetch,
    retry: { maxRetries: 2 },
  });
  const url = `${name.baseUrl}/v2/`;
  let res: Response;
  try {
    res = await session.fetch(new Request(url, { signal: options.signal }));
  } catch (err) {
    if (err instanceof AuthError) {
      throw new AuthError(`Login to ${name.host} failed: ${err.message}`, { cause: err });
    }
    throw err;
  }
  await res.body?.cancel().catch(() => {});
  if (res.ok) return;
  if (res.status === 401 || res.status === 403) {
    throw new AuthError(
      `Login to ${name.host} failed: the registry refused the username or password ` +
        `(HTTP ${res.status})`,
    );
  }
  throw new RegistryError({
    status: res.status,
    method: "GET",
    url,
    message: `Login to ${name.host} failed: GET ${url} answered HTTP ${res.status}` +
      (res.status === 404 ? " (is this a registry?)" : ""),
  });
}

// ------------------------------------------------------------------------------------ config

function configLocation(options: DockerConfigOptions) {
  const env = options.env ?? process.env;
  const timeout = options.helperTimeout ?? 10_000;
  if (!Number.isFinite(timeout) || timeout <= 0) {
    throw new RangeError(`Invalid helperTimeout ${timeout}: must be a positive number`);
  }
  options.signal?.throwIfAborted();
  const dir = options.configDir ?? env.DOCKER_CONFIG ?? join(env.HOME || homedir(), ".docker");
  return { env, timeout, file: join(dir, "config.json") };
}

async function readConfig(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === "ENOENT") return {};
    throw new AuthError(`Cannot read Docker config ${file}: ${code ?? "read failed"}`, {
      cause: err,
    });
  }
  if (text.trim() === "") return {};
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

/** Replaces config.json atomically with mode 0600 (through a symlink to its target). */
async function writeConfig(file: string, config: Record<string, unknown>): Promise<void> {
  let target = file;
  try {
    if ((await lstat(file)).isSymbolicLink()) target = await realpath(file);
  } catch {
    // Not there yet.
  }
  const dir = dirname(target);
  const tmp = `${target}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // Docker indents with tabs.
    const fh = await open(tmp, "wx", 0o600);
    try {
      await fh.writeFile(JSON.stringify(config, null, "\t") + "\n");
      await fh.sync();
    } finally {
      await fh.close();
    }
    await chmod(tmp, 0o600);
    await rename(tmp, target);
    await syncDir(dir);
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => {});
    throw storeError("write Docker config", target, e);
  }
}

function helperFor(config: Record<string, unknown>, name: RegistryName): string | undefined {
  const helpers = isRecord(config.credHelpers) ? config.credHelpers : {};
  const keys = name.serverAddress === DOCKER_HUB_SERVER
    ? ["docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB_SERVER]
    : [name.host];
  const key = keys.find((k) => typeof helpers[k] === "string" && helpers[k] !== "");
  if (key !== undefined) return helpers[key] as string;
  if (typeof config.credsStore === "string" && config.credsStore !== "") return config.credsStore;
  return undefined;
}

/** Docker's ConvertToHostname: drop the scheme and everything from the first '/'. */
function keyHost(key: string): string {
  const h = key.replace(/^https?:\/\//i, "").split("/")[0].toLowerCase();
  return DOCKER_HUB_ALIASES.has(h) ? "docker.io" : h;
}

// ------------------------------------------------------------------------------------ helpers

/**
 * Runs `docker-credential-<name> <action>` with `input` on stdin. Resolves false when the
 * helper reports "credentials not found" (erase of something absent).
 */
async function runHelper(
  name: string,
  action: "store" | "erase",
  input: string,
  env: Record<string, string | undefined>,
  timeout: number,
  signal: AbortSignal | undefined,
  secret?: string,
): Promise<boolean> {
  const result = await runCredentialHelper(name, action, input, { env, timeout, signal });
  const program = result.program;
  if (!result.found) {
    throw new AuthError(
      `Credential helper ${program} (named in Docker's config.json) is not on PATH: ` +
        `install it or remove credsStore/credHelpers from the config`,
    );
  }
  if (result.code === 0) return true;
  const output = `${result.stdout}\n${result.stderr}`;
  if (action === "erase" && /credentials not found/i.test(output)) return false;
  throw new AuthError(
    `Credential helper ${program} ${action} failed (exit code ${result.code})` +
      helperDetail(output, secret),
  );
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
