/**
 * Typed errors. Every error haul raises on purpose is a {@link HaulError}
 * carrying the process exit code the CLI maps it to; `main.ts` is the only
 * place that turns them into an exit.
 *
 * Exit codes (documented in README.md):
 *  - 1   unexpected internal error
 *  - 2   usage: bad flag, bad REF
 *  - 3   registry refused the request (HTTP error other than auth / not found)
 *  - 4   authentication or authorization failed
 *  - 5   integrity: digest or size mismatch, server lied about ranges
 *  - 6   not found: manifest, tag, blob or local model missing
 *  - 7   network: connection failed, timed out, stalled after all retries
 *  - 8   local store / disk: write failed, disk full, permission
 *  - 9   invalid manifest or index document
 *  - 10  rate limited for longer than is worth waiting (Docker Hub's pull limit)
 *  - 130 interrupted (Ctrl-C / abort)
 */

export const ExitCode = {
  internal: 1,
  usage: 2,
  registry: 3,
  auth: 4,
  integrity: 5,
  notFound: 6,
  network: 7,
  store: 8,
  manifest: 9,
  rateLimited: 10,
  interrupted: 130,
} as const;

/** Base class of every error haul raises deliberately. */
export class HaulError extends Error {
  /** Process exit code the CLI uses for this error. */
  readonly exitCode: number;
  constructor(message: string, exitCode: number, options?: ErrorOptions) {
    super(message, options);
    this.name = "HaulError";
    this.exitCode = exitCode;
  }
}

/** Bad command line or bad reference. */
export class UsageError extends HaulError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.usage, options);
    this.name = "UsageError";
  }
}

/** Strips userinfo and query secrets from a URL before it is shown. */
export function redactUrl(url: string | URL): string {
  try {
    const u = new URL(String(url));
    u.username = "";
    u.password = "";
    for (const k of [...u.searchParams.keys()]) {
      if (/token|sig|signature|auth|key|credential|secret|password/i.test(k)) {
        u.searchParams.set(k, "REDACTED");
      }
    }
    return u.toString();
  } catch {
    return String(url);
  }
}

/** One error from an OCI distribution error body: `{errors:[{code,message}]}`. */
export interface OciErrorDetail {
  code: string;
  message?: string;
}

/** The registry answered with an HTTP error status. */
export class RegistryError extends HaulError {
  readonly status: number;
  readonly method: string;
  readonly url: string;
  readonly codes: OciErrorDetail[];
  constructor(
    init: {
      status: number;
      method: string;
      url: string | URL;
      codes?: OciErrorDetail[];
      message?: string;
      /** @default from the status: 401/403 auth, 404 not found, else registry */
      exitCode?: number;
    },
    options?: ErrorOptions,
  ) {
    const url = redactUrl(init.url);
    const codes = init.codes ?? [];
    const detail = codes.length
      ? ": " + codes.map((c) => c.message ? `${c.code} (${c.message})` : c.code).join(", ")
      : "";
    const exit = init.exitCode ??
      (init.status === 401 || init.status === 403
        ? ExitCode.auth
        : init.status === 404
        ? ExitCode.notFound
        : ExitCode.registry);
    super(
      init.message ?? `${init.method} ${url} failed with HTTP ${init.status}${detail}`,
      exit,
      options,
    );
    this.name = "RegistryError";
    this.status = init.status;
    this.method = init.method;
    this.url = url;
    this.codes = codes;
  }
}

/** Credentials missing or refused, token endpoint failed. */
export class AuthError extends HaulError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.auth, options);
    this.name = "AuthError";
  }
}

/** Content did not match its digest or size, or a server sent other bytes than asked. */
export class IntegrityError extends HaulError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.integrity, options);
    this.name = "IntegrityError";
  }
}

/** Something named does not exist (manifest, tag, local model, blob in store). */
export class NotFoundError extends HaulError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.notFound, options);
    this.name = "NotFoundError";
  }
}

/** Connection-level failure that survived every retry. */
export class NetworkError extends HaulError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.network, options);
    this.name = "NetworkError";
  }
}

/** Local filesystem failure (disk full, permission, ...), naming the path. */
export class StoreError extends HaulError {
  readonly path: string;
  constructor(message: string, path: string, options?: ErrorOptions) {
    super(message, ExitCode.store, options);
    this.name = "StoreError";
    this.path = path;
  }
}

/** A manifest or index that is malformed or unsafe. */
export class ManifestError extends HaulError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, ExitCode.manifest, options);
    this.name = "ManifestError";
  }
}

/** The operation was cancelled through its AbortSignal. */
export class InterruptedError extends HaulError {
  constructor(message = "Interrupted", options?: ErrorOptions) {
    super(message, ExitCode.interrupted, options);
    this.name = "InterruptedError";
  }
}

/** Wraps a filesystem error into a StoreError with a message naming the path. */
export function storeError(action: string, path: string, err: unknown): StoreError {
  const code = (err as { code?: string })?.code;
  const why = code === "ENOSPC"
    ? "no space left on device"
    : code === "EFBIG"
    ? "file too large (file size limit)"
    : code === "EACCES" || code === "EPERM"
    ? "permission denied"
    : code === "EDQUOT"
    ? "disk quota exceeded"
    : (err as Error)?.message ?? String(err);
  return new StoreError(`Cannot ${action} ${path}: ${why}`, path, { cause: err });
}

/** True for filesystem errors that retrying cannot fix. */
export function isFatalFsError(err: unknown): boolean {
  const code = (err as { code?: string })?.code;
  return code === "ENOSPC" || code === "EFBIG" || code === "EDQUOT" || code === "EACCES" ||
    code === "EPERM" || code === "EROFS";
}
