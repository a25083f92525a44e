/**
 * The ed25519 key Ollama's registry knows a user by, and the signed token request made with it.
 * Matches Ollama v0.32.15: auth/auth.go Sign (signature `<base64 ssh-wire public key>:<base64
 * ed25519 signature>`), server/auth.go getAuthorizationToken (signed string
 * `GET,<realm URL>,<base64 of the hex sha256 of an empty body>`), cmd/cmd.go initializeKeypair
 * (the key lives at ~/.ollama/id_ed25519; the Linux service's home is /usr/share/ollama).
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { Buffer } from "node:buffer";
import process from "node:process";
import { AuthError } from "../errors.ts";
import type { Fetch } from "../transport/fetch.ts";

/** The environment variable naming a key file (after `--key`, before the default places). */
export const OLLAMA_KEY_ENV = "HAUL_OLLAMA_KEY";

export interface OllamaKey {
  /** Where the key was read from. */
  path: string;
  privateKey: crypto.KeyObject;
  /** The SSH-wire public key blob. */
  publicWire: Uint8Array;
  /** `ssh-ed25519 AAAA…`: what to add on ollama.com (Settings → Ollama keys). */
  publicKey: string;
}

export interface FindKeyOptions {
  /** `--key FILE`. */
  keyFile?: string;
  /** Where OLLAMA_KEY_ENV and HOME are read. @default process.env */
  env?: Record<string, string | undefined>;
}

const MAGIC = "openssh-key-v1\0";

class Reader {
  #buf: Buffer;
  #at = 0;
  constructor(buf: Buffer) {
    this.#buf = buf;
  }
  u32(): number {
    if (this.#at + 4 > this.#buf.length) throw new Error("truncated key");
    const v = this.#buf.readUInt32BE(this.#at);
    this.#at += 4;
    return v;
  }
  bytes(): Buffer {
    const n = this.u32();
    if (this.#at + n > this.#buf.length) throw new Error("truncated key");
    const out = this.#buf.subarray(this.#at, this.#at + n);
    this.#at += n;
    return out;
  }
  string(): string {
    return this.bytes().toString("latin1");
  }
}

/** Parses an unencrypted OpenSSH (openssh-key-v1) ed25519 private key (PROTOCOL.key). */
export function parseOpenSshKey(text: string, file = "key"): Omit<OllamaKey, "path"> {
  const m = /-----BEGIN OPENSSH PRIVATE KEY-----([\s\S]*?)-----END OPENSSH PRIVATE KEY-----/
    .exec(text);
  if (!m) {
    throw new AuthError(`${file} is not an OpenSSH private key (want "ssh-keygen -t ed25519")`);
  }
  const raw = Buffer.from(m[1].replace(/\s+/g, ""), "base64");
  if (raw.subarray(0, MAGIC.length).toString("latin1") !== MAGIC) {
    throw new AuthError(`${file} is not an openssh-key-v1 private key`);
  }
  try {
    const r = new Reader(raw.subarray(MAGIC.length));
    const cipher = r.string();
    r.string(); // kdf name
    r.bytes(); // kdf options
    if (cipher !== "none") {
      throw new AuthError(
        `${file} is encrypted (${cipher}); Ollama's keys have no passphrase: ` +
          `make one with ssh-keygen -t ed25519 -N ""`,
      );
    }
    if (r.u32() !== 1) throw new AuthError(`${file} holds more than one key`);
    const publicWire = r.bytes();
    const priv = new Reader(r.bytes());
    if (priv.u32() !== priv.u32()) throw new AuthError(`${file}: check bytes differ (corrupt key)`);
    const type = priv.string();
    if (type !== "ssh-ed25519") {
      throw new AuthError(`${file} is a ${type} key; Ollama's registry needs ed25519`);
    }
    const pub = priv.bytes();
    const secret = priv.bytes(); // 32-byte seed followed by the public key
    const privateKey = crypto.createPrivateKey({
      key: {
        kty: "OKP",
        crv: "Ed25519",
        d: secret.subarray(0, 32).toString("base64url"),
        x: pub.toString("base64url"),
      },
      format: "jwk",
    });
    return {
      privateKey,
      publicWire: new Uint8Array(publicWire),
      publicKey: `ssh-ed25519 ${publicWire.toString("base64")}`,
    };
  } catch (e) {
    if (e instanceof AuthError) throw e;
    throw new AuthError(`${file}: ${(e as Error).message}`, { cause: e });
  }
}

/** The places searched, in order: `--key`, $HAUL_OLLAMA_KEY, ~/.ollama, the Linux service's. */
export function keyCandidates(opts: FindKeyOptions = {}): string[] {
  const env = envOf(opts);
  if (opts.keyFile) return [opts.keyFile];
  if (env[OLLAMA_KEY_ENV]) return [env[OLLAMA_KEY_ENV]!];
  const out: string[] = [];
  if (env.HOME) out.push(path.join(env.HOME, ".ollama", "id_ed25519"));
  out.push("/usr/share/ollama/.ollama/id_ed25519");
  return out;
}

function envOf(opts: FindKeyOptions): Record<string, string | undefined> {
  return opts.env ?? process.env;
}

/** Finds and reads the key; undefined when none exists (an explicit one that is missing throws). */
export async function findOllamaKey(opts: FindKeyOptions = {}): Promise<OllamaKey | undefined> {
  const explicit = opts.keyFile !== undefined || envOf(opts)[OLLAMA_KEY_ENV] !== undefined;
  for (const file of keyCandidates(opts)) {
    let text: string;
    try {
      text = await fs.readFile(file, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (explicit) throw new AuthError(`Cannot read the Ollama key ${file}: ${code ?? e}`);
      if (code === "ENOENT" || code === "EACCES" || code === "ENOTDIR") continue;
      throw e;
    }
    return { path: file, ...parseOpenSshKey(text, file) };
  }
  return undefined;
}

const EMPTY_BODY = Buffer.from(crypto.createHash("sha256").update("").digest("hex")).toString(
  "base64",
);

/** The Authorization value for a GET of `url` (the realm with service, scope, ts, nonce). */
export function signOllamaRequest(key: Omit<OllamaKey, "path">, url: string): string {
  const data = Buffer.from(`GET,${url},${EMPTY_BODY}`);
  const sig = crypto.sign(null, data, key.privateKey);
  return `${Buffer.from(key.publicWire).toString("base64")}:${sig.toString("base64")}`;
}

/** The realm URL Ollama's client requests: service, one scope per item, ts, a 16-byte nonce. */
export function ollamaTokenUrl(realm: string, service: string, scopes: string[]): string {
  const u = new URL(realm);
  u.searchParams.append("service", service);
  for (const s of scopes) u.searchParams.append("scope", s);
  u.searchParams.append("ts", String(Math.floor(Date.now() / 1000)));
  u.searchParams.append("nonce", crypto.randomBytes(16).toString("base64url"));
  return u.toString();
}

/** Hosts of Ollama's own registry, where haul looks for the key unasked. */
export function isOllamaRegistryHost(host: string): boolean {
  const h = host.toLowerCase().replace(/:\d+$/, "");
  return h === "registry.ollama.ai" || h === "ollama.com" || h.endsWith(".ollama.com") ||
    h.endsWith(".ollama.ai");
}

/**
 * Whether a session for `host` signs its token requests with an Ollama key: always on Ollama's
 * own hosts, elsewhere only when a key was named (`--key`, HAUL_OLLAMA_KEY, or a key object).
 */
export function wantsOllamaKey(
  host: string,
  opts: FindKeyOptions & { ollamaKey?: OllamaKey },
): boolean {
  return opts.ollamaKey !== undefined || opts.keyFile !== undefined ||
    envOf(opts)[OLLAMA_KEY_ENV] !== undefined || isOllamaRegistryHost(host);
}

/** The message for a push without a key. */
export function noKeyMessage(opts: FindKeyOptions = {}): string {
  return `No Ollama key found (looked in ${keyCandidates(opts).join(", ")}). Create one with ` +
    `ssh-keygen -t ed25519 -f ~/.ollama/id_ed25519 -N "" (or start ollama serve once), add its ` +
    `.pub on ollama.com, or point at one with --key FILE or ${OLLAMA_KEY_ENV}.`;
}

/**
 * A token for `challenge` (realm, service, space-separated scopes) from the realm GET signed
 * with `key`, as server/auth.go getAuthorizationToken does; a refusal names the key and its
 * public half.
 */
export async function fetchOllamaToken(
  key: OllamaKey,
  fetch: Fetch,
  challenge: { realm: string; service?: string; scope?: string },
  signal?: AbortSignal,
): Promise<string> {
  const url = ollamaTokenUrl(
    challenge.realm,
    challenge.service ?? "",
    (challenge.scope ?? "").split(" ").filter(Boolean),
  );
  const res = await fetch(
    new Request(url, { headers: { authorization: signOllamaRequest(key, url) }, signal }),
  );
  const text = await res.text();
  if (!res.ok) {
    throw new AuthError(
      `The registry refused the Ollama key ${key.path} (HTTP ${res.status}); ` +
        `add this public key on ollama.com (Settings, Keys): ${key.publicKey}`,
    );
  }
  let token: unknown;
  try {
    token = (JSON.parse(text) as { token?: unknown }).token;
  } catch {
    throw new AuthError(`Token response from ${new URL(url).host} is not JSON`);
  }
  if (typeof token !== "string" || !token) throw new AuthError("Token response has no token");
  return token;
}

/** {@link fetchOllamaToken} as a `getToken` source for the Authenticator. */
export function ollamaTokenSource(
  key: OllamaKey,
  fetch: Fetch,
): (
  challenge: { realm: string; service?: string; scope?: string },
  signal?: AbortSignal,
) => Promise<string> {
  return (ch, signal) => fetchOllamaToken(key, fetch, ch, signal);
}
