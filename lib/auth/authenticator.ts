/**
 * Registry authentication: answers `WWW-Authenticate` challenges with Basic
 * credentials or Bearer tokens (Docker token protocol), caches the token for the
 * operation's scopes, shares one in-flight token request between concurrent
 * callers, and refreshes once on a 401. Credentials and tokens are attached only
 * to requests for the registry host they were issued for.
 */
import { type Challenge, parseChallenges, pickChallenge } from "./challenge.ts";
import { type Credential, IDENTITY_TOKEN_USERNAME, loadCredential } from "./credentials.ts";
import { fetchOllamaToken, type OllamaKey } from "./ollama_key.ts";
import { AuthError, redactUrl } from "../errors.ts";
import { type Fetch, ReplayNeeded, SEND_ONCE } from "../transport/fetch.ts";

/** What a custom token function receives (as in Ollama's transfer package). */
export interface AuthChallenge {
  realm: string;
  service: string;
  scope: string;
}

export interface AuthenticatorOptions {
  /** Registry host with port, e.g. `registry.ollama.ai` or `127.0.0.1:5000`. */
  host: string;
  /** Fetch used for token requests (no auth layer). */
  fetch: Fetch;
  /** Scopes the operation needs, e.g. `repository:library/x:pull`. @default [] */
  scopes?: string[];
  /** Credentials; by default looked up in Docker's config.json for `host`. */
  credential?: Credential | null;
  /** A bearer token to start with (refreshed through the challenge when refused). */
  token?: string;
  /** Replaces the built-in token request. */
  getToken?: (challenge: AuthChallenge, signal?: AbortSignal) => Promise<string>;
  /**
   * Finds the Ollama key (called once, at the first Bearer challenge whose realm is on the
   * registry's own host): with a key, token requests are signed as Ollama signs them
   * (lib/auth/ollama_key.ts); without one they go as usual (anonymous or credentialed).
   */
  ollamaKey?: () => Promise<OllamaKey | undefined>;
}

interface Token {
  value: string;
  expiresAt: number;
}

const MAX_TOKEN_RESPONSE = 1 << 20;

export class Authenticator {
  readonly host: string;
  #opts: AuthenticatorOptions;
  #scopes: Set<string>;
  #credential?: Promise<Credential | undefined>;
  #token?: Token;
  #inflight?: Promise<Token>;
  #basic = false;
  #lastBearer?: Challenge;
  #ollamaKey?: Promise<OllamaKey | undefined>;
  #httpsPrefix: string;
  #httpPrefix: string;
  /** The Ollama key the last token request was signed with, if any. */
  signedWith?: OllamaKey;
  /** An Ollama key was looked for and none was found. */
  noOllamaKey = false;

  constructor(options: AuthenticatorOptions) {
    this.#opts = options;
    this.host = options.host.toLowerCase();
    this.#httpsPrefix = `https://${this.host}/`;
    this.#httpPrefix = `http://${this.host}/`;
    this.#scopes = new Set(options.scopes ?? []);
    if (options.token) this.#token = { value: options.token, expiresAt: Infinity };
  }

  /** Adds scopes (e.g. `pull` on a mount source) to later token requests. */
  addScope(scope: string): void {
    if (!this.#scopes.has(scope)) {
      this.#scopes.add(scope);
      this.#token = undefined;
    }
  }

  /** True when `url` is on this registry's host (the only place credentials go). */
  covers(url: string): boolean {
    // A URL as a Request holds it (host lowercased) that starts with `<scheme>://<host>/` is
    // on the host: no parse per request (one per blob). Anything else is parsed.
    if (url.startsWith(this.#httpsPrefix) || url.startsWith(this.#httpPrefix)) return true;
    return new URL(url).host.toLowerCase() === this.host;
  }

  #getCredential(): Promise<Credential | undefined> {
    if (this.#opts.credential !== undefined) {
      return Promise.resolve(this.#opts.credential ?? undefined);
    }
    return (this.#credential ??= loadCredential(this.host));
  }

  /** The Authorization value to send to this registry now, if any. */
  async header(): Promise<string | undefined> {
    if (this.#token && this.#token.expiresAt > Date.now() + 5_000) {
      return `Bearer ${this.#token.value}`;
    }
    if (this.#token && this.#lastBearer) {
      return `Bearer ${(await this.#refresh(this.#lastBearer)).value}`;
    }
    if (this.#basic) {
      const c = await this.#getCredential();
      if (c) return "Basic " + btoa(`${c.username}:${c.password}`);
    }
    return undefined;
  }

  /**
   * Handles a 401 challenge. Returns true when a new Authorization is ready and
   * the request is worth sending again.
   */
  async challenge(
    header: string | null,
    sentAuthorization: string | undefined,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const ch = pickChallenge(parseChallenges(header ?? ""));
    if (!ch) return false;
    if (ch.scheme === "basic") {
      if (this.#basic && sentAuthorization?.startsWith("Basic ")) return false;
      const c = await this.#getCredential();
      if (!c) {
        throw new AuthError(
          `${this.host} requires a login (Basic auth): run 'haul login ${this.host}' or add it to Docker's config.json`,
        );
      }
      this.#basic = true;
      return true;
    }
    if (ch.scheme !== "bearer") return false;
    const before = this.#scopes.size;
    const scope = ch.params["scope"];
    if (scope) { for (const s of scope.split(" ")) if (s) this.#scopes.add(s); }
    this.#lastBearer = ch;
    // Another request refreshed the token since this one was sent: just resend.
    const current = this.#token ? `Bearer ${this.#token.value}` : undefined;
    if (this.#scopes.size === before && current && sentAuthorization !== current) return true;
    // The token we sent was refused (or lacks a scope): fetch a fresh one.
    this.#token = undefined;
    await this.#refresh(ch, signal);
    return true;
  }

  #refresh(ch: Challenge, signal?: AbortSignal): Promise<Token> {
    if (this.#inflight) return this.#inflight;
    const p = this.#fetchToken(ch, signal).then((t) => {
      this.#token = t;
      return t;
    }).finally(() => {
      this.#inflight = undefined;
    });
    this.#inflight = p;
    return p;
  }

  async #fetchToken(ch: Challenge, signal?: AbortSignal): Promise<Token> {
    const realm = ch.params["realm"];
    if (!realm) throw new AuthError(`${this.host} sent a Bearer challenge without a realm`);
    let realmUrl: URL;
    try {
      realmUrl = new URL(realm);
    } catch {
      throw new AuthError(`${this.host} sent an invalid token realm ${JSON.stringify(realm)}`);
    }
    if (realmUrl.protocol !== "https:" && realmUrl.protocol !== "http:") {
      throw new AuthError(`Refusing token realm ${redactUrl(realmUrl)}: not http(s)`);
    }
    const scopes = [...this.#scopes].sort();
    const service = ch.params["service"] ?? "";
    if (this.#opts.getToken) {
      const value = await this.#opts.getToken({ realm, service, scope: scopes.join(" ") }, signal);
      return { value, expiresAt: Infinity };
    }
    if (this.#opts.ollamaKey && realmUrl.host.toLowerCase() === this.host) {
      const key = await (this.#ollamaKey ??= this.#opts.ollamaKey());
      this.noOllamaKey = key === undefined;
      if (key) {
        const scope = scopes.join(" ");
        const value = await fetchOllamaToken(
          key,
          this.#opts.fetch,
          { realm, service, scope },
          signal,
        );
        this.signedWith = key;
        return { value, expiresAt: Infinity };
      }
    }
    const url = new URL(realmUrl);
    if (service) url.searchParams.set("service", service);
    for (const s of scopes) url.searchParams.append("scope", s);
    const headers = new Headers({ accept: "application/json" });
    // Credentials go to the realm the registry named only over https, or when the
    // realm is on the registry's own host name (docker does the same for https).
    const cred = await this.#getCredential();
    const registryHostname = this.host.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
    const realmHostname = realmUrl.hostname.replace(/^\[|\]$/g, "");
    const sendCred = cred && (realmUrl.protocol === "https:" || realmHostname === registryHostname);
    let req: Request;
    if (sendCred && cred.username === IDENTITY_TOKEN_USERNAME) {
      // An identity token (ACR's `identitytoken`) is an OAuth2 refresh token: POST it to the
      // realm (docker's fetchTokenWithOAuth; Azure/acr docs/AAD-OAuth.md).
      const form = new URLSearchParams({
        grant_type: "refresh_token",
        client_id: "haul",
        service,
        scope: scopes.join(" "),
        refresh_token: cred.password,
      });
      headers.set("content-type", "application/x-www-form-urlencoded");
      req = new Request(realmUrl, { method: "POST", headers, body: form.toString(), signal });
    } else {
      if (sendCred) {
        headers.set("authorization", "Basic " + btoa(`${cred.username}:${cred.password}`));
      }
      req = new Request(url, { headers, signal });
    }
    let res: Response;
    try {
      res = await this.#opts.fetch(req);
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new AuthError(
        `Token request to ${redactUrl(realmUrl)} failed: ${(err as Error).message}`,
        { cause: err },
      );
    }
    const text = await readCapped(res, MAX_TOKEN_RESPONSE);
    if (!res.ok) {
      throw new AuthError(
        res.status === 401 || res.status === 403
          ? `Token request to ${realmUrl.host} was refused (HTTP ${res.status}): ${
            cred ? "check the credentials for " + this.host : "log in to " + this.host
          }`
          : `Token request to ${realmUrl.host} failed with HTTP ${res.status}`,
      );
    }
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse(text);
    } catch {
      throw new AuthError(`Token response from ${realmUrl.host} is not JSON`);
    }
    const value = typeof body.token === "string"
      ? body.token
      : typeof body.access_token === "string"
      ? body.access_token
      : undefined;
    if (!value) throw new AuthError(`Token response from ${realmUrl.host} has no token`);
    // Docker token spec: expires_in defaults to 60 s.
    const ttl = typeof body.expires_in === "number" && body.expires_in > 0 ? body.expires_in : 60;
    return { value, expiresAt: Date.now() + ttl * 1000 };
  }
}

async function readCapped(res: Response, max: number): Promise<string> {
  if (!res.body) return "";
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > max) {
      await reader.cancel();
      throw new AuthError(`Token response is larger than ${max} bytes`);
    }
    chunks.push(value);
  }
  const all = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.byteLength;
  }
  return new TextDecoder().decode(all);
}

/**
 * Attaches the registry's Authorization to requests for its host and answers a
 * 401 challenge once per request.
 */
export function withAuth(next: Fetch, auth: Authenticator): Fetch {
  return async (req) => {
    if (!auth.covers(req.url)) {
      if (!req.headers.has("authorization")) return next(req);
      const headers = new Headers(req.headers);
      headers.delete("authorization");
      return next(new Request(req, { headers }));
    }
    const once = req.headers.has(SEND_ONCE);
    const replay = req.body !== null && !once ? req.clone() : undefined;
    const sent = await auth.header();
    const res = await next(sent ? withHeader(req, "authorization", sent) : req);
    if (res.status !== 401) {
      await replay?.body?.cancel().catch(() => {});
      return res;
    }
    const again = await auth.challenge(res.headers.get("www-authenticate"), sent, req.signal);
    if (!again) {
      await replay?.body?.cancel().catch(() => {});
      return res;
    }
    await res.body?.cancel().catch(() => {});
    // A send-once body went with the first try: the token is fresh, the caller resends.
    if (once && req.body !== null) throw new ReplayNeeded(401, req.url);
    const fresh = await auth.header();
    const retry = replay ?? req;
    return next(fresh ? withHeader(retry, "authorization", fresh) : retry);
  };
}

function withHeader(req: Request, name: string, value: string): Request {
  const headers = new Headers(req.headers);
  headers.set(name, value);
  // deno-lint-ignore no-explicit-any
  return new Request(req, { headers, ...(req.body ? { duplex: "half" } as any : {}) });
}
