/**
 * Users for `haul serve --htpasswd FILE`: HTTP Basic auth (RFC 7617) against bcrypt entries
 * as `htpasswd -B` writes them (`user:$2y$05$…`), in front of the registry handler.
 *
 * Every request without valid credentials gets `401` with `WWW-Authenticate: Basic
 * realm="haul"` and the distribution-spec error body (`UNAUTHORIZED`), the challenge that
 * haul pull, Docker, containerd and skopeo answer with their stored credentials.
 *
 * bcrypt comes from bcryptjs (pure JS, no native code, so the same in Deno, Bun and the
 * standalone binary; node:crypto has no bcrypt). A check costs a bcrypt round (about 3 ms
 * at htpasswd's default cost 5, 100 ms at cost 10): a verified user:password is cached as
 * a SHA-256 of the pair and the entry, so a client's hundreds of Range requests pay it once.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { UsageError } from "../errors.ts";
import { setRequestUser } from "./node_respond.ts";

/** The bcrypt library, loaded on the first check (only `--htpasswd` needs it). */
type Bcrypt = { compare(password: string, hash: string): Promise<boolean> };
let bcryptLib: Promise<Bcrypt> | undefined;
function bcrypt(): Promise<Bcrypt> {
  bcryptLib ??= import("npm:bcryptjs@3.0.3").then((m) => (m.default ?? m) as Bcrypt);
  return bcryptLib;
}

const BCRYPT = /^\$2[aby]?\$[0-9]{2}\$[./A-Za-z0-9]{53}$/;

/**
 * Parses an htpasswd file: `user:hash` per line, `#` comments and blank lines skipped.
 * @throws {UsageError} naming the line, for an entry that is not bcrypt (`htpasswd -B`):
 * MD5 (`$apr1$`), SHA-1 (`{SHA}`), crypt and plain text are refused, not half-supported.
 */
export function parseHtpasswd(text: string, file = "htpasswd"): Map<string, string> {
  const users = new Map<string, string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const colon = line.indexOf(":");
    const where = `${file} line ${i + 1}`;
    if (colon <= 0) throw new UsageError(`${where}: expected user:hash`);
    const user = line.slice(0, colon);
    const hash = line.slice(colon + 1);
    if (!BCRYPT.test(hash)) {
      throw new UsageError(
        `${where}: user ${JSON.stringify(user)} has no bcrypt hash; ` +
          `write it with 'htpasswd -B ${file} ${user}'`,
      );
    }
    users.set(user, hash);
  });
  if (users.size === 0) throw new UsageError(`${file}: no users`);
  return users;
}

/** Options for {@link BasicAuth}. */
export interface BasicAuthOptions {
  /** The realm named in the challenge. @default "haul" */
  realm?: string;
  /** Verified credentials remembered (least recently used dropped). @default 1024 */
  cacheSize?: number;
}

/** Checks `Authorization: Basic` headers against a user table. */
export class BasicAuth {
  readonly realm: string;
  #users: Map<string, string>;
  #cache = new Map<string, string>();
  #cacheSize: number;
  /** bcrypt checks run (tests read it to see the cache work). */
  checks = 0;

  constructor(users: Map<string, string>, options: BasicAuthOptions = {}) {
    this.#users = users;
    this.realm = options.realm ?? "haul";
    this.#cacheSize = options.cacheSize ?? 1024;
  }

  /** Replaces the users (SIGHUP); cached verifications of changed entries no longer match. */
  setUsers(users: Map<string, string>): void {
    this.#users = users;
    this.#cache.clear();
  }

  /** The user the header proves, or undefined. */
  async verify(header: string | null): Promise<string | undefined> {
    const m = header === null ? null : /^\s*basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
    if (!m) return undefined;
    let decoded: string;
    try {
      decoded = new TextDecoder("utf-8", { fatal: true }).decode(
        Uint8Array.from(atob(m[1]), (c) => c.charCodeAt(0)),
      );
    } catch {
      return undefined;
    }
    const colon = decoded.indexOf(":");
    if (colon < 0) return undefined;
    const user = decoded.slice(0, colon);
    const password = decoded.slice(colon + 1);
    const hash = this.#users.get(user);
    const key = createHash("sha256").update(`${user}\0${password}\0${hash ?? ""}`).digest("hex");
    const cached = this.#cache.get(key);
    if (hash !== undefined && cached !== undefined && safeEqual(cached, hash)) {
      this.#cache.delete(key);
      this.#cache.set(key, hash);
      return user;
    }
    // An unknown user costs a bcrypt round too: timing does not tell which users exist.
    this.checks++;
    const ok = await (await bcrypt()).compare(password, hash ?? DUMMY_HASH);
    if (!ok || hash === undefined) return undefined;
    this.#cache.set(key, hash);
    if (this.#cache.size > this.#cacheSize) {
      this.#cache.delete(this.#cache.keys().next().value!);
    }
    return user;
  }

  /** The 401 a request without valid credentials gets. */
  challenge(req: Request): Response {
    const body = JSON.stringify({
      errors: [{ code: "UNAUTHORIZED", message: "authentication required" }],
    });
    return new Response(req.method === "HEAD" ? null : body, {
      status: 401,
      headers: {
        "content-type": "application/json",
        "content-length": String(new TextEncoder().encode(body).byteLength),
        "www-authenticate": `Basic realm="${this.realm}"`,
        "docker-distribution-api-version": "registry/2.0",
      },
    });
  }
}

// bcrypt of a random password at cost 5, the cost htpasswd -B uses by default.
const DUMMY_HASH = "$2y$05$Kl.wHLFwKTwOw4ZEsfhPeu5aDm8AQa779M3Q31jU.M5of2kmjVtHG";

function safeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  return x.byteLength === y.byteLength && timingSafeEqual(x, y);
}

/** Wraps a handler: only requests with valid credentials reach it; the log names the user. */
export function withBasicAuth(
  handler: (req: Request) => Promise<Response>,
  auth: BasicAuth,
): (req: Request) => Promise<Response> {
  return async (req) => {
    const user = await auth.verify(req.headers.get("authorization"));
    if (user === undefined) return auth.challenge(req);
    setRequestUser(req, user);
    return await handler(req);
  };
}
