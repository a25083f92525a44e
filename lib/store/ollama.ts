/**
 * Ollama's model store layout:
 *   <root>/blobs/sha256-<hex>
 *   <root>/manifests/<host[:port]>/<namespace>/<model>/<tag>
 * Root: `$OLLAMA_MODELS`, else `~/.ollama/models`. Manifests hold the registry's
 * bytes unchanged and are written atomically (temp file, fsync, rename). The temp file is
 * in `<root>/.haul/tmp/`, not beside the manifest: stock Ollama reads every file at
 * `manifests/*\/*\/*\/*` as a manifest, and one that is not makes it skip its startup prune
 * and warn in `ollama list` (server/images.go, manifest.Manifests).
 */
import { randomBytes } from "node:crypto";
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join, resolve, sep } from "node:path";
import { digestToFileName } from "../digest.ts";
import { storeError, UsageError } from "../errors.ts";
import { syncDir, syncPath } from "../disk/fsio.ts";
import { manifestTag, type Reference } from "../registry/reference.ts";

/** `$OLLAMA_MODELS`, else `~/.ollama/models`. */
export function defaultModelsDir(env: Record<string, string | undefined> = process.env): string {
  if (env.OLLAMA_MODELS) return resolve(env.OLLAMA_MODELS);
  return join(env.HOME || homedir(), ".ollama", "models");
}

export class OllamaStore {
  readonly root: string;
  readonly blobsDir: string;
  readonly manifestsDir: string;
  /** haul's temp files for manifests, outside `manifests/` (same filesystem, so renames are atomic). */
  readonly tmpDir: string;

  constructor(root: string) {
    this.root = resolve(root);
    this.blobsDir = join(this.root, "blobs");
    this.manifestsDir = join(this.root, "manifests");
    this.tmpDir = join(this.root, ".haul", "tmp");
  }

  /** A fresh temp path for a manifest being written: `.haul/tmp/manifest.<pid>-<hex>.tmp`. */
  manifestTempPath(): string {
    return join(this.tmpDir, `manifest.${process.pid}-${randomBytes(4).toString("hex")}.tmp`);
  }

  blobPath(digest: string): string {
    return join(this.blobsDir, digestToFileName(digest));
  }

  /**
   * Where haul's in-progress downloads, their resume state and locks live: outside `blobs/`,
   * which Ollama's startup prune clears of every file not named `sha256-<hex>`
   * (server/images.go, PruneLayers), on the same filesystem so the final rename is atomic.
   */
  get partialDir(): string {
    return join(this.root, ".haul", "partial");
  }

  /** Where haul downloads `digest` until it is verified. */
  partialPath(digest: string): string {
    return join(this.partialDir, `${digestToFileName(digest)}-partial`);
  }

  manifestPath(ref: Reference): string {
    const parts = [ref.host, ...ref.repository.split("/"), manifestTag(ref)];
    for (const p of parts) {
      if (
        !p || p === "." || p === ".." || p.includes("/") || p.includes("\\") || p.includes("\0")
      ) {
        throw new UsageError(`Reference component ${JSON.stringify(p)} cannot be a store path`);
      }
    }
    const path = join(this.manifestsDir, ...parts);
    if (!path.startsWith(this.manifestsDir + sep)) {
      throw new UsageError(`Reference escapes the store: ${JSON.stringify(parts.join("/"))}`);
    }
    return path;
  }

  async ensureDirs(): Promise<void> {
    for (const d of [this.blobsDir, this.manifestsDir]) {
      await mkdir(d, { recursive: true }).catch((e) => {
        throw storeError("create directory", d, e);
      });
    }
  }

  /** True when the blob is present with the expected size (content is trusted, as Ollama does; `verify` re-hashes). */
  async hasBlob(digest: string, size: number): Promise<boolean> {
    try {
      const s = await stat(this.blobPath(digest));
      return s.isFile() && s.size === size;
    } catch {
      return false;
    }
  }

  async readManifest(ref: Reference): Promise<Uint8Array | undefined> {
    try {
      return new Uint8Array(await readFile(this.manifestPath(ref)));
    } catch (e) {
      if ((e as { code?: string }).code === "ENOENT") return undefined;
      throw storeError("read", this.manifestPath(ref), e);
    }
  }

  /** Writes the manifest bytes atomically, last, so a model is visible only when complete. */
  async writeManifest(ref: Reference, bytes: Uint8Array): Promise<string> {
    const path = this.manifestPath(ref);
    const dir = path.slice(0, path.lastIndexOf(sep));
    const tmp = this.manifestTempPath();
    try {
      await mkdir(dir, { recursive: true });
      await mkdir(this.tmpDir, { recursive: true });
      await writeFile(tmp, bytes);
      await syncPath(tmp);
      await rename(tmp, path);
      await syncDir(dir);
    } catch (e) {
      await rm(tmp, { force: true }).catch(() => {});
      throw storeError("write manifest", path, e);
    }
    return path;
  }
}
