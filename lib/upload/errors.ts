/**
 * How upload failures are carried between steps and how they reach the caller: a
 * {@link UploadStepError} names the step it happened in and whether trying again may
 * help; {@link unwrap} turns it into the error a caller sees, its message led by the
 * step ("Sending bytes 0-16777215 of sha256:…: PATCH … failed with HTTP 500").
 */
import { join } from "node:path";
import { digestToFileName } from "../digest.ts";
import { HaulError, IntegrityError, NetworkError, redactUrl, RegistryError } from "../errors.ts";

/** A failure while talking to the registry, the step it happened in, and whether trying again may help. */
export class UploadStepError extends Error {
  /** What the upload was doing, e.g. "committing the blob sha256:…". */
  readonly step: string;
  readonly retryable: boolean;
  readonly sessionGone: boolean;
  constructor(step: string, cause: unknown, retryable: boolean, sessionGone = false) {
    super((cause as Error)?.message ?? String(cause), { cause });
    this.step = step;
    this.retryable = retryable;
    this.sessionGone = sessionGone;
  }
}

/** The OCI error codes that say a session is unknown or unusable. */
export function isSessionGone(err: RegistryError): boolean {
  return err.status === 404 ||
    err.codes.some((c) => c.code === "BLOB_UPLOAD_UNKNOWN" || c.code === "BLOB_UPLOAD_INVALID");
}

export function isDigestInvalid(err: unknown): boolean {
  return err instanceof RegistryError && err.codes.some((c) => c.code === "DIGEST_INVALID");
}

export function unwrapCause(err: unknown): unknown {
  return err instanceof UploadStepError ? err.cause : err;
}

/**
 * The error a caller sees: the RegistryError inside, or a NetworkError for a connection
 * failure, its message led by the step that failed.
 */
export function unwrap(err: unknown): unknown {
  if (!(err instanceof UploadStepError)) return err;
  const cause = err.cause;
  if (cause instanceof HaulError) return inStep(cause, err.step);
  return new NetworkError(`${sentence(err.step)}: ${describe(cause)}`, { cause });
}

/**
 * A RegistryError or NetworkError with `step` leading its message (and upload session
 * URLs shortened); any other error as it is.
 */
export function inStep<E>(err: E, step: string): E {
  if (!(err instanceof RegistryError) && !(err instanceof NetworkError)) return err;
  return restate(err, `${sentence(step)}: ${shortenUploadUrls(err.message)}`);
}

/** An error's message with its cause's (or code) when that says more: "fetch failed (ECONNRESET: …)". */
export function describe(err: unknown): string {
  const msg = (err as Error)?.message ?? String(err);
  const inner = (err as { cause?: unknown })?.cause;
  const code = (err as { code?: unknown })?.code ?? (inner as { code?: unknown })?.code;
  const why = [
    typeof code === "string" ? code : "",
    inner instanceof Error ? inner.message : typeof inner === "string" ? inner : "",
  ].filter((x) => x && !msg.includes(x));
  return shortenUploadUrls(why.length ? `${msg} (${why.join(": ")})` : msg);
}

const UPLOAD_URL = /(https?:\/\/[^\s"']*?\/blobs\/uploads\/)([^/?#\s"']{1,8})[^\s"']*/g;

/** `…/blobs/uploads/<uuid>?_state=…` as `…/blobs/uploads/<first 8 of uuid>…` in a message. */
export function shortenUploadUrls(text: string): string {
  return text.replace(UPLOAD_URL, (_m, head: string, id: string) => `${head}${id}…`);
}

/** An upload session URL, redacted and shortened for a message. */
export function shortUploadUrl(url: string): string {
  return shortenUploadUrls(redactUrl(url));
}

/** The same error with upload session URLs in its message shortened. */
export function withShortUrls<E extends HaulError>(err: E): E {
  const short = shortenUploadUrls(err.message);
  return short === err.message ? err : restate(err, short);
}

/** A RegistryError or NetworkError again with another message (fields and cause kept). */
function restate<E>(err: E, message: string): E {
  if (err instanceof RegistryError) {
    return new RegistryError({
      status: err.status,
      method: err.method,
      url: err.url,
      codes: err.codes,
      message,
    }, { cause: err.cause }) as unknown as E;
  }
  if (err instanceof NetworkError) {
    return new NetworkError(message, { cause: err.cause }) as unknown as E;
  }
  return err;
}

/** "sending bytes 0-9" → "Sending bytes 0-9". */
function sentence(step: string): string {
  return step.charAt(0).toUpperCase() + step.slice(1);
}

/**
 * What a reader throws when the source's bytes do not hash to the digest (copy): the
 * upload reads the blob once more from the start before it gives up.
 */
export class SourceDigestError extends IntegrityError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SourceDigestError";
  }
}

export function corruptSource(
  b: { digest: string },
  srcDir: string | undefined,
  got: string,
): IntegrityError {
  const where = srcDir ? ` (${join(srcDir, digestToFileName(b.digest))})` : "";
  return new IntegrityError(
    `The registry refused ${b.digest}: the local blob is corrupt${where}: it hashes to ${got}`,
  );
}

export function garbledInTransit(b: { digest: string }): IntegrityError {
  return new IntegrityError(
    `The registry refused ${b.digest} twice (DIGEST_INVALID): the registry received different ` +
      `bytes than sent; the source verifies, so something between haul and the registry changes them`,
  );
}
