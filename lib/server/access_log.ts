/**
 * One access-log record per response of `haul serve`: what was asked (method, repository
 * name, digest), what was answered (status, body bytes, time) and to whom. The face prints
 * it (`--log-format json`: one JSON object per line).
 */
import type { ResponseEntry } from "./node_respond.ts";

/** One line of the access log. */
export interface AccessLogRecord {
  /** When the response ended, ISO 8601. */
  time: string;
  client: string;
  method: string;
  path: string;
  /** Repository name as requested (`library/llama3.2`), for the /v2/<name>/… endpoints. */
  name?: string;
  /** The manifest, blob or chunksums digest served (also for a manifest asked by tag). */
  digest?: string;
  /** The tag, for a manifest asked by tag. */
  tag?: string;
  status: number;
  /** Body bytes sent. */
  bytes: number;
  /** Milliseconds from the request head to the last byte (or the cut), to 0.1 ms. */
  durationMs: number;
  /** False when the connection closed before the whole body was sent. */
  complete: boolean;
  /** The authenticated user (`--htpasswd`); absent without auth or credentials. */
  user?: string;
}

const ENDPOINT = /^\/v2\/(.+)\/(manifests|blobs|chunksums)\/([^/?]+)$/;
const TAGS = /^\/v2\/(.+)\/tags\/list$/;

/** The record of one response; `now` is when it ended. */
export function accessLogRecord(entry: ResponseEntry, now = new Date()): AccessLogRecord {
  const pathname = entry.path.split("?")[0];
  const m = ENDPOINT.exec(pathname);
  const name = m?.[1] ?? TAGS.exec(pathname)?.[1];
  const reference = m?.[3];
  const byDigest = reference?.includes(":") ? reference : undefined;
  const digest = entry.headers.get("docker-content-digest") ?? byDigest;
  const tag = reference !== undefined && !byDigest && m?.[2] === "manifests"
    ? reference
    : undefined;
  const record: AccessLogRecord = {
    time: now.toISOString(),
    client: entry.client,
    method: entry.method,
    path: entry.path,
    ...(name !== undefined ? { name: safeDecode(name) } : {}),
    ...(tag !== undefined ? { tag } : {}),
    ...(digest ? { digest } : {}),
    status: entry.status,
    bytes: entry.bytes,
    durationMs: Math.round(entry.durationMs * 10) / 10,
    complete: entry.complete,
    ...(entry.user !== undefined ? { user: entry.user } : {}),
  };
  return record;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
