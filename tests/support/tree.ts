/** Comparing stores: every file under a folder, small ones whole, large ones by hash. */
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { sha256File } from "./bytes.ts";
import { MiB } from "./util.ts";

/** Files at most this large are returned whole by readTree; larger ones as size + hash. */
export const READ_TREE_INLINE_MAX = MiB;

/**
 * Every regular file under `dir`, keyed by its relative POSIX path: small files as bytes, large
 * ones as `{ size, sha256 }`, so two stores compare with assert.deepEqual.
 */
export async function readTree(
  dir: string,
): Promise<Map<string, Uint8Array | { size: number; sha256: string }>> {
  const out = new Map<string, Uint8Array | { size: number; sha256: string }>();
  const walk = async (rel: string) => {
    const entries = await fsp.readdir(path.join(dir, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const full = path.join(dir, r);
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) {
        const st = await fsp.stat(full);
        if (st.size <= READ_TREE_INLINE_MAX) out.set(r, new Uint8Array(await fsp.readFile(full)));
        else out.set(r, { size: st.size, sha256: await sha256File(full) });
      }
    }
  };
  await walk("");
  return out;
}
