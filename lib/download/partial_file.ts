/**
 * The partial file of a large blob (`<blob>-partial`, full size, parts written in
 * place) and its resume state (`<blob>-partial.json`: how much of each part is on
 * disk), so a later run continues where this one stopped; and the last step of
 * every download: fsync, rename into place, fsync the directory.
 */
import { open, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { storeError } from "../errors.ts";
import { createSized, syncDir, syncPath } from "../disk/fsio.ts";
import type { BlobJob } from "./blob_job.ts";
import { type Part, planJob } from "./plan_parts.ts";

export interface State {
  version: 1;
  digest: string;
  size: number;
  parts: Part[];
}

export function statePath(job: BlobJob): string {
  return `${job.partialPath}.json`;
}

/** Loads resume state, trusting it only when it is consistent with the partial file. */
export async function loadState(job: BlobJob): Promise<State | undefined> {
  try {
    const st = JSON.parse(await readFile(statePath(job), "utf8")) as State;
    const info = await stat(job.partialPath);
    if (st.version !== 1 || st.digest !== job.digest || st.size !== job.size) return undefined;
    if (info.size !== job.size || !Array.isArray(st.parts) || st.parts.length === 0) {
      return undefined;
    }
    let expect = 0;
    for (const p of st.parts) {
      if (
        !Number.isSafeInteger(p.offset) || !Number.isSafeInteger(p.size) ||
        !Number.isSafeInteger(p.done) || p.offset !== expect || p.size <= 0 || p.done < 0 ||
        p.done > p.size
      ) return undefined;
      expect += p.size;
    }
    return expect === job.size ? st : undefined;
  } catch {
    return undefined;
  }
}

export async function saveState(job: BlobJob, st: State): Promise<void> {
  const p = statePath(job);
  const tmp = `${p}.${process.pid}.tmp`;
  const json = JSON.stringify(st);
  try {
    await writeFile(tmp, json);
    await rename(tmp, p);
  } catch (err) {
    // A full disk has no room for a new file: rewrite the existing one in place,
    // so what is on disk stays resumable (a torn write is rejected on load).
    await rm(tmp, { force: true }).catch(() => {});
    const fh = await open(p, "r+").catch(() => undefined);
    if (!fh) throw err;
    try {
      await fh.write(json, 0);
      await fh.truncate(new TextEncoder().encode(json).byteLength);
    } finally {
      await fh.close();
    }
  }
}

export async function discardPartial(job: BlobJob): Promise<void> {
  await rm(statePath(job), { force: true });
  await rm(job.partialPath, { force: true });
}

/**
 * The resume state of `job`: the saved one when it matches the partial file, else
 * a new full-size partial file and a new plan of parts, saved before any byte.
 */
export async function openPartial(job: BlobJob, partSize: number): Promise<State> {
  const saved = await loadState(job);
  if (saved) return saved;
  await discardPartial(job);
  try {
    await createSized(job.partialPath, job.size);
  } catch (e) {
    throw storeError("create", job.partialPath, e);
  }
  const st: State = {
    version: 1,
    digest: job.digest,
    size: job.size,
    parts: planJob(job, partSize),
  };
  await saveState(job, st).catch((e) => {
    throw storeError("write", statePath(job), e);
  });
  return st;
}

/** Resume state saves: every this many ms, or sooner once {@link STATE_SAVE_BYTES} are new. */
const STATE_SAVE_MS = 200;
/**
 * New bytes that make a save due before {@link STATE_SAVE_MS} (but not within
 * {@link STATE_SAVE_MIN_MS} of the last one). A kill loses what was written since the last
 * save: at 80 MB/s, 200 ms is 16 MB, which made a killed 60 MB pull fetch 1.26x the model.
 */
const STATE_SAVE_BYTES = 4 << 20;
const STATE_SAVE_MIN_MS = 25;

/**
 * Saves the resume state every 200 ms or every 4 MiB of new bytes, whichever comes first (at
 * most every 25 ms; always when forced), one write at a time.
 */
export class StateSaver {
  #job: BlobJob;
  #state: State;
  #lastSave = 0;
  #pending = 0;
  #saving: Promise<void> | undefined;
  constructor(job: BlobJob, state: State) {
    this.#job = job;
    this.#state = state;
  }
  /** `bytes`: new bytes in the file since the previous call (they may make a save due sooner). */
  async save(force = false, bytes = 0): Promise<void> {
    const now = Date.now();
    this.#pending += bytes;
    const since = now - this.#lastSave;
    const due = since >= STATE_SAVE_MS ||
      (this.#pending >= STATE_SAVE_BYTES && since >= STATE_SAVE_MIN_MS);
    if (!force && !due) return;
    this.#lastSave = now;
    this.#pending = 0;
    // Chained: two saves at once must not share (and mix) the one temp file.
    const next = (this.#saving ?? Promise.resolve()).then(() =>
      saveState(this.#job, this.#state).catch(() => {})
    );
    this.#saving = next;
    await next;
  }
  /** The save in progress, if any. */
  settled(): Promise<void> | undefined {
    return this.#saving;
  }
}

/**
 * Flushes written data to disk as the download goes, in the background, so the
 * fsync before the rename does not have to write the whole blob at the end.
 */
export class BackgroundSync {
  #path: string;
  #every: number;
  #unsynced = 0;
  #syncing: Promise<void> | undefined;
  constructor(path: string, every: number) {
    this.#path = path;
    this.#every = every;
  }
  /** `n` more bytes were written. */
  add(n: number): void {
    this.#unsynced += n;
    if (!this.#every || this.#unsynced < this.#every || this.#syncing) return;
    this.#unsynced = 0;
    this.#syncing = syncPath(this.#path).catch(() => {}).finally(() => {
      this.#syncing = undefined;
    });
  }
  /** The sync in progress, if any. */
  settled(): Promise<void> | undefined {
    return this.#syncing;
  }
}

/** fsync, rename into place, fsync the directory. */
export async function finalize(from: string, to: string, dirSync = true): Promise<void> {
  try {
    await syncPath(from);
    await rename(from, to);
    if (dirSync) await syncDir(to.slice(0, to.lastIndexOf("/")) || ".");
  } catch (e) {
    throw storeError("finish", to, e);
  }
}
