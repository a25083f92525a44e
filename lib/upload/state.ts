/**
 * Upload state files: a large blob's session URL and acknowledged offset, saved after
 * every chunk next to the blob, so a later run can ask the registry where the session
 * stands and continue it (see the top of upload.ts).
 */
import { createHash, randomBytes } from "node:crypto";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { digestToFileName } from "../digest.ts";

/** What a state file holds: enough to find and check a session again. */
export interface SessionState {
  version: 1;
  digest: string;
  size: number;
  /** `<origin>/<repository>` the session belongs to. */
  dest: string;
  /** The session URL the registry gave last (absolute). */
  location: string;
  /** Bytes the registry has acknowledged. */
  offset: number;
  /**
   * Ollama's redirected uploads (redirected.ts): the parts already PUT to storage, each with
   * the hex MD5 of its bytes (the commit's etag is made of them); `location` is then the
   * session URL the next part's PATCH goes to.
   */
  parts?: DonePart[];
}

/** A part of a redirected upload that storage has taken. */
export interface DonePart {
  offset: number;
  size: number;
  md5: string;
}

/** Where the state file of `digest`'s upload to `baseUrl`/`repository` lives. */
export function uploadStatePath(
  dir: string,
  digest: string,
  baseUrl: string,
  repository: string,
): string {
  const key = createHash("sha256").update(destKey(baseUrl, repository)).digest("hex");
  return join(dir, `${digestToFileName(digest)}-upload-${key.slice(0, 16)}.json`);
}

/** `<origin>/<repository>`: which destination a state file belongs to. */
export function destKey(baseUrl: string, repository: string): string {
  return `${new URL(baseUrl).origin}/${repository}`;
}

/** The state saved at `path`, or undefined when there is none or it does not parse. */
export async function readState(path: string): Promise<SessionState | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    return undefined;
  }
  try {
    const s = JSON.parse(text) as Partial<SessionState>;
    if (
      s.version !== 1 || typeof s.digest !== "string" || typeof s.size !== "number" ||
      typeof s.dest !== "string" || typeof s.location !== "string" ||
      typeof s.offset !== "number" || !Number.isSafeInteger(s.offset) || s.offset < 0 ||
      (s.parts !== undefined && !validParts(s.parts))
    ) return undefined;
    const u = new URL(s.location);
    if (u.protocol !== "http:" && u.protocol !== "https:") return undefined;
    return s as SessionState;
  } catch {
    return undefined;
  }
}

function validParts(parts: unknown): boolean {
  return Array.isArray(parts) &&
    parts.every((p: Partial<DonePart>) =>
      Number.isSafeInteger(p?.offset) && Number.isSafeInteger(p?.size) &&
      typeof p?.md5 === "string" && /^[0-9a-f]{32}$/.test(p.md5)
    );
}

/** Writes the state file atomically; a store we cannot write only costs cross-run resume. */
export async function writeState(path: string, state: SessionState): Promise<void> {
  // A name of its own per write: two writes at once must not share (and mix) one file.
  const tmp = `${path}.${process.pid}-${randomBytes(4).toString("hex")}.tmp`;
  try {
    await writeFile(tmp, JSON.stringify(state));
    await rename(tmp, path);
  } catch {
    await rm(tmp, { force: true }).catch(() => {});
  }
}

/** Removes the state file, if any (best effort). */
export async function removeState(path: string): Promise<void> {
  await rm(path, { force: true }).catch(() => {});
}
