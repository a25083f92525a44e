/**
 * Assembles the transport stack for one registry, once:
 *   userAgent → redirects → auth → retry → runtime fetch
 */
import { type AuthChallenge, Authenticator } from "../auth/authenticator.ts";
import type { Credential } from "../auth/credentials.ts";
import { findOllamaKey, type OllamaKey, wantsOllamaKey } from "../auth/ollama_key.ts";
import { RegistryClient } from "./client.ts";
import type { RetryPolicy } from "../transport/retry.ts";
import {
  baseFetch,
  type Fetch,
  type RetryOptions,
  withHeaderTimeout,
  withRedirects,
  withRetry,
  withUserAgent,
  withWarnings,
} from "../transport/fetch.ts";
import type { OnProgress } from "../progress_events.ts";
import { withAuth } from "../auth/authenticator.ts";
import { VERSION } from "../version.ts";

/** Connection and auth options shared by every transfer API. */
export interface ConnectionOptions {
  /** `User-Agent` header. @default "haul/<version>" */
  userAgent?: string;
  /** Bearer token to start with. */
  token?: string;
  /** Custom token source, called with the registry's challenge. */
  getToken?: (challenge: AuthChallenge, signal?: AbortSignal) => Promise<string>;
  /** Credentials; default: Docker's config.json for the host. `null` for none. */
  credential?: Credential | null;
  /**
   * An Ollama key (lib/auth/ollama_key.ts findOllamaKey): Bearer tokens from a realm on the
   * registry's own host are then fetched with Ollama's signed request (server/auth.go) unless
   * `getToken` is given.
   * @default found by findOllamaKey when `keyFile` or $HAUL_OLLAMA_KEY names one, or the
   * registry is Ollama's (registry.ollama.ai, ollama.com); else none
   */
  ollamaKey?: OllamaKey;
  /** The Ollama key file to sign with (`--key`). @default see `ollamaKey` */
  keyFile?: string;
  /** Where $HAUL_OLLAMA_KEY and $HOME are read when looking for the key. @default process.env */
  env?: Record<string, string | undefined>;
  /** Extra CA certificates (PEM). */
  caCerts?: string[];
  /** Skip TLS certificate checks (Bun only; see lib/transport/fetch.ts). @default false */
  insecureTls?: boolean;
  /** Retry policy for requests and parts. */
  retry?: Partial<RetryPolicy>;
  /** Replaces the runtime's fetch at the bottom of the stack (tests, proxies). */
  fetch?: Fetch;
  /** Called before each retry. */
  onRetry?: RetryOptions["onRetry"];
  /** Seconds to wait for response headers (each attempt). @default 30 */
  requestTimeout?: number;
  /**
   * What the registry says beside its answers (`Warning` headers, a rate limit running low),
   * each text once per callback. @default a `warning` event to `onEvent` when there is one
   */
  onWarning?: (message: string) => void;
}

/** The texts each warning callback has been given already (once per run). */
const shown = new WeakMap<object, Set<string>>();

function warningSink(options: ConnectionOptions): ((m: string) => void) | undefined {
  const onEvent = (options as { onEvent?: OnProgress }).onEvent;
  const sink = options.onWarning ??
    (onEvent ? (message: string) => onEvent({ type: "warning", message }) : undefined);
  if (!sink) return undefined;
  const key = options.onWarning ?? onEvent!;
  return (m) => {
    let seen = shown.get(key);
    if (!seen) shown.set(key, seen = new Set());
    if (seen.has(m)) return;
    seen.add(m);
    sink(m);
  };
}

export interface Session {
  fetch: Fetch;
  auth: Authenticator;
  client: RegistryClient;
  /** What this registry has shown it wants, learnt from its answers during the run. */
  learned: RegistryTraits;
}

/**
 * Upload limits a registry revealed (lib/upload/chunked.ts), kept for the rest of the run so
 * every later blob goes up the way that worked.
 */
export interface RegistryTraits {
  /** Largest PATCH body it takes (a 413/416 "too large": GHCR's 4 MiB). */
  maxChunk?: number;
  /** `OCI-Chunk-Min-Length` it sent (distribution-spec 1.1). */
  minChunk?: number;
  /** It takes no PATCH (404/405/501): monolithic POST then PUT (Artifact Registry). */
  monolithic?: boolean;
  /** Its upload `Range` does not follow the bytes taken (ECR's sticks at the first chunk). */
  rangeUnreliable?: boolean;
  /** It refused even an unranged (streamed) PATCH as too large: ranged chunks only. */
  noStreamed?: boolean;
}

/** Builds the stack for `baseUrl` (scheme://host[:port]) with the given scopes. */
export function createSession(
  baseUrl: string,
  scopes: string[],
  options: ConnectionOptions = {},
): Session {
  const host = new URL(baseUrl).host;
  const bottom = options.fetch ??
    baseFetch({ caCerts: options.caCerts, insecureTls: options.insecureTls });
  // Headers must come within the request timeout; transfers pass their stall
  // timeout, so a server that never answers is noticed as fast as one that stops.
  const stall = (options as { stallTimeout?: number }).stallTimeout;
  const warn = warningSink(options);
  const seen = warn ? withWarnings(bottom, warn) : bottom;
  const timed = withHeaderTimeout(seen, (options.requestTimeout ?? stall ?? 30) * 1000);
  const retried = withRetry(timed, { ...options.retry, onRetry: options.onRetry });
  const userAgent = options.userAgent ?? `haul/${VERSION}`;
  const tokenFetch = withUserAgent(withRedirects(retried), userAgent);
  const auth = new Authenticator({
    host,
    fetch: tokenFetch,
    scopes,
    credential: options.credential,
    token: options.token,
    getToken: options.getToken,
    ollamaKey: wantsOllamaKey(host, options)
      ? () => options.ollamaKey ? Promise.resolve(options.ollamaKey) : findOllamaKey(options)
      : undefined,
  });
  const fetch = withUserAgent(withRedirects(withAuth(retried, auth)), userAgent);
  return { fetch, auth, client: new RegistryClient({ baseUrl, fetch }), learned: {} };
}
