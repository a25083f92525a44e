/**
 * A lock file per in-progress blob, so that two haul processes pulling the same
 * model into one store share the work instead of corrupting one partial file:
 * the first takes the lock and downloads; the other waits for the blob to appear
 * (or for the lock to go away) and then uses it. A lock whose process is gone
 * (killed with -9) is stale and taken over. Same-host only (the pid is checked).
 */
import { open, readFile, rm, stat } from "node:fs/promises";
import { hostname } from "node:os";
import { InterruptedError } from "../errors.ts";

export interface BlobLock {
  release(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as { code?: string }).code === "EPERM";
  }
}

/** Tries once to take the lock; returns undefined when a live process holds it. */
export async function tryLock(path: string): Promise<BlobLock | undefined> {
  for (let i = 0; i < 3; i++) {
    try {
      const fh = await open(path, "wx");
      await fh.writeFile(JSON.stringify({ pid: process.pid, host: hostname() }));
      await fh.close();
      return { release: () => rm(path, { force: true }) };
    } catch (e) {
      if ((e as { code?: string }).code !== "EEXIST") throw e;
    }
    let owner: { pid?: number; host?: string } = {};
    try {
      owner = JSON.parse(await readFile(path, "utf8"));
    } catch {
      // Being written right now, or garbage: garbage older than 10 s is stale.
      const age = await stat(path).then((s) => Date.now() - s.mtimeMs, () => Infinity);
      if (age < 10_000) return undefined;
    }
    const mine = owner.host === undefined || owner.host === hostname();
    if (mine && typeof owner.pid === "number" && owner.pid !== process.pid && alive(owner.pid)) {
      return undefined;
    }
    if (mine && owner.pid === process.pid) return undefined; // another task of ours
    await rm(path, { force: true }); // stale: its process is gone
  }
  return undefined;
}

/**
 * Waits until `done()` is true (the other process finished the blob) or the lock
 * can be taken. Calls `tick` while waiting (to show the other process's progress).
 */
export async function waitForLock(
  path: string,
  done: () => Promise<boolean>,
  options: { signal?: AbortSignal; pollMs?: number; tick?: () => Promise<void> } = {},
): Promise<BlobLock | "done"> {
  for (;;) {
    if (options.signal?.aborted) throw new InterruptedError();
    if (await done()) return "done";
    const lock = await tryLock(path);
    if (lock) {
      // Taken: but the other process may have finished just before releasing.
      if (await done()) {
        await lock.release();
        return "done";
      }
      return lock;
    }
    await options.tick?.();
    await new Promise((r) => setTimeout(r, options.pollMs ?? 250));
  }
}
