/**
 * Taking over an interrupted stock `ollama pull`: Ollama leaves `blobs/<blob>-partial`
 * (full size, sparse) and one `blobs/<blob>-partial-<N>` JSON per part,
 * `{"N","Offset","Size","Completed"}` (server/download.go: blobDownloadPart,
 * blobDownload.Prepare and readPart). Each part's first `Completed` bytes are on
 * disk. What they claim is checked against the blob (sizes, ranges, the file's
 * size) and kept as haul's resume state; the whole-blob SHA-256 at the end decides
 * (a mismatch starts over once, from scratch: large_blob.ts).
 */
import { readdir, readFile, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { BlobJob } from "./blob_job.ts";
import type { Part } from "./plan_parts.ts";
import { saveState, type State } from "./partial_file.ts";

/** Ollama writes its partial file as bytes land: one touched this recently may be in use. */
const QUIET_MS = 3000;

interface OllamaPart {
  N: number;
  Offset: number;
  Size: number;
  Completed: number;
}

/** Ollama's part files of `job`, checked to cover the blob exactly; undefined otherwise. */
async function readOllamaParts(job: BlobJob): Promise<
  { files: string[]; parts: OllamaPart[] } | undefined
> {
  const dir = dirname(job.path);
  const re = new RegExp(`^${basename(job.path).replace(/[.]/g, "\\.")}-partial-(\\d+)$`);
  const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => re.test(n));
  if (!names.length) return undefined;
  const parts: OllamaPart[] = [];
  for (const n of names) {
    const p = await readFile(join(dir, n), "utf8").then(JSON.parse, () => undefined);
    const ok = p && [p.N, p.Offset, p.Size, p.Completed].every(Number.isSafeInteger) &&
      p.Size > 0 && p.Completed >= 0 && p.Completed <= p.Size;
    if (!ok) return undefined;
    parts.push(p);
  }
  parts.sort((a, b) => a.Offset - b.Offset);
  let expect = 0;
  for (const p of parts) {
    if (p.Offset !== expect) return undefined;
    expect += p.Size;
  }
  if (expect !== job.size) return undefined;
  return { files: names.map((n) => join(dir, n)), parts };
}

/**
 * haul's resume parts from Ollama's: each part's completed bytes are one done part, the
 * rest of it is cut into `partSize` parts to fetch. Following Ollama's own boundaries,
 * not haul's plan, keeps what Ollama already wrote past a gap (a plan part straddling a
 * gap would fetch again everything after it). Adopted parts carry no chunk digest: the
 * whole-blob SHA-256 decides.
 */
function partsFromOllama(parts: OllamaPart[], partSize: number): Part[] {
  const out: Part[] = [];
  for (const p of parts) {
    if (p.Completed > 0) out.push({ offset: p.Offset, size: p.Completed, done: p.Completed });
    for (let at = p.Offset + p.Completed; at < p.Offset + p.Size; at += partSize) {
      out.push({ offset: at, size: Math.min(partSize, p.Offset + p.Size - at), done: 0 });
    }
  }
  return out;
}

/**
 * Moves an interrupted Ollama download of `job` into haul's partial file and resume
 * state; true when it did. Left alone when there is none, when it does not check
 * out, or when its file was written within the last 3 s (a running `ollama pull`:
 * its server writes the partial file as bytes arrive; part files change only at a
 * part's end or interruption).
 */
export async function adoptOllamaPartial(job: BlobJob, partSize: number): Promise<boolean> {
  const src = `${job.path}-partial`;
  if (src === job.partialPath) return false;
  const info = await stat(src).catch(() => undefined);
  if (!info?.isFile() || info.size !== job.size) return false;
  if (Date.now() - info.mtimeMs < QUIET_MS) return false;
  const found = await readOllamaParts(job);
  if (!found) return false;
  await rename(src, job.partialPath);
  const parts = partsFromOllama(found.parts, partSize);
  const st: State = { version: 1, digest: job.digest, size: job.size, parts };
  await saveState(job, st);
  for (const f of found.files) await rm(f, { force: true }).catch(() => {});
  return true;
}
