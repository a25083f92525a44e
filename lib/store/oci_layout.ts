/**
 * OCI image layout (image-spec v1.0 `image-layout.md`), as skopeo, oras and crane write it:
 *   <dir>/oci-layout        {"imageLayoutVersion":"1.0.0"}
 *   <dir>/index.json        an image index; each entry names a manifest (or index) and
 *                           carries `org.opencontainers.image.ref.name` = the tag
 *   <dir>/blobs/sha256/<hex> every blob, manifests and indexes included, byte for byte
 *
 * Adding an image keeps every other entry of index.json (unknown fields included) and
 * replaces only an entry with the same ref name. index.json is rewritten atomically (temp
 * file, fsync, rename) under a lock file, so two haul processes adding images to one layout
 * do not lose each other's entry. Blobs are written under their digest only once verified.
 */
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { randomBytes } from "node:crypto";
import { checkDigest, sha256Digest } from "../digest.ts";
import {
  HaulError,
  IntegrityError,
  ManifestError,
  NotFoundError,
  storeError,
  UsageError,
} from "../errors.ts";
import { syncDir, syncPath } from "../disk/fsio.ts";
import { waitForLock } from "../disk/lock.ts";
import { type BlobReader, openBlobFile } from "../disk/blob_file.ts";
import {
  type Descriptor,
  MAX_MANIFEST_BYTES,
  MediaType,
  parseManifest,
  type Platform,
} from "../registry/manifest.ts";

/** The annotation skopeo, oras and containerd use for an entry's name in index.json. */
export const REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name";
/** The layout version haul writes and reads (image-spec v1.x all use 1.0.0). */
export const IMAGE_LAYOUT_VERSION = "1.0.0";

/** One entry of index.json as haul reads it. */
export interface OciLayoutEntry {
  descriptor: Descriptor;
  /** `org.opencontainers.image.ref.name`, when present. */
  refName?: string;
}

/** The blob file name inside `blobs/sha256/` for a digest: the hex part. */
export function ociBlobFileName(digest: string): string {
  return checkDigest(digest).slice("sha256:".length);
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** An OCI image layout directory. */
export class OciLayout {
  readonly root: string;
  /** `<root>/blobs/sha256`: where blobs land as `<hex>`. */
  readonly blobsDir: string;
  readonly indexPath: string;
  readonly layoutPath: string;

  constructor(root: string) {
    this.root = resolve(root);
    this.blobsDir = join(this.root, "blobs", "sha256");
    this.indexPath = join(this.root, "index.json");
    this.layoutPath = join(this.root, "oci-layout");
  }

  blobPath(digest: string): string {
    return join(this.blobsDir, ociBlobFileName(digest));
  }

  /**
   * Creates the directories and `oci-layout` when missing; refuses a directory whose
   * `oci-layout` names another major version.
   */
  async init(): Promise<void> {
    await mkdir(this.blobsDir, { recursive: true }).catch((e) => {
      throw storeError("create directory", this.blobsDir, e);
    });
    let text: string | undefined;
    try {
      text = await readFile(this.layoutPath, "utf8");
    } catch (e) {
      if ((e as { code?: string }).code !== "ENOENT") throw storeError("read", this.layoutPath, e);
    }
    if (text !== undefined) {
      this.#checkLayoutFile(text);
      return;
    }
    await this.#atomicWrite(
      this.layoutPath,
      new TextEncoder().encode(JSON.stringify({ imageLayoutVersion: IMAGE_LAYOUT_VERSION })),
    );
  }

  /** Checks that the directory is an OCI layout haul can read (for push). */
  async open(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.layoutPath, "utf8");
    } catch (e) {
      if ((e as { code?: string }).code === "ENOENT") {
        throw new NotFoundError(`${this.root} is not an OCI image layout (no oci-layout file)`);
      }
      throw storeError("read", this.layoutPath, e);
    }
    this.#checkLayoutFile(text);
  }

  #checkLayoutFile(text: string): void {
    let version: unknown;
    try {
      version = (JSON.parse(text) as Json).imageLayoutVersion;
    } catch {
      version = undefined;
    }
    if (typeof version !== "string" || !/^1\.\d+\.\d+$/.test(version)) {
      throw new UsageError(
        `${this.layoutPath} has imageLayoutVersion ${
          JSON.stringify(version)
        }; haul reads and writes 1.x layouts`,
      );
    }
  }

  /** True when the blob is present with the expected size. */
  async hasBlob(digest: string, size: number): Promise<boolean> {
    try {
      const s = await stat(this.blobPath(digest));
      return s.isFile() && s.size === size;
    } catch {
      return false;
    }
  }

  /** Reads a small blob (a manifest or index), checking its digest. */
  async readBlob(digest: string, maxBytes = MAX_MANIFEST_BYTES): Promise<Uint8Array> {
    const path = this.blobPath(digest);
    let bytes: Uint8Array;
    try {
      const s = await stat(path);
      if (s.size > maxBytes) {
        throw new ManifestError(`${path} is ${s.size} bytes, over the ${maxBytes}-byte limit`);
      }
      bytes = new Uint8Array(await readFile(path));
    } catch (e) {
      if (e instanceof ManifestError) throw e;
      if ((e as { code?: string }).code === "ENOENT") {
        throw new NotFoundError(`Blob ${digest} is missing from the layout ${this.root}`);
      }
      throw storeError("read", path, e);
    }
    const got = sha256Digest(bytes);
    if (got !== digest) {
      throw new IntegrityError(`${path} hashes to ${got}, not ${digest}`);
    }
    return bytes;
  }

  /** Writes a small blob (a manifest or index) under its digest, verified; a no-op when present. */
  async writeBlob(digest: string, bytes: Uint8Array): Promise<string> {
    const path = this.blobPath(digest);
    const got = sha256Digest(bytes);
    if (got !== digest) throw new IntegrityError(`Blob hashes to ${got}, not ${digest}`);
    if (await this.hasBlob(digest, bytes.byteLength)) return path;
    await this.#atomicWrite(path, bytes);
    return path;
  }

  /**
   * Opens a blob for upload, checking it is a file of the expected size (the registry
   * checks the digest when the upload closes).
   * @throws {NotFoundError} when the blob is missing from the layout.
   */
  openBlob(blob: { digest: string; size: number }): Promise<BlobReader> {
    return openBlobFile(this.blobPath(blob.digest), blob, { where: "the layout" });
  }

  /** Every entry of index.json, in order (none when the file does not exist yet). */
  async entries(): Promise<OciLayoutEntry[]> {
    const doc = await this.#readIndex();
    const list = Array.isArray(doc.manifests) ? doc.manifests : [];
    return list.map((m, i) => {
      const d = parseEntry(m, `${this.indexPath}: manifests[${i}]`);
      const refName = d.annotations?.[REF_NAME_ANNOTATION];
      return refName === undefined ? { descriptor: d } : { descriptor: d, refName };
    });
  }

  /**
   * The entry for a ref name (a tag) or a digest. With neither, the only entry of a layout
   * holding one image (skopeo's rule for `oci:DIR`).
   * @throws {NotFoundError} listing the names the layout has.
   */
  async find(select: { refName?: string; digest?: string }): Promise<OciLayoutEntry> {
    const all = await this.entries();
    let hit: OciLayoutEntry | undefined;
    if (select.refName !== undefined) hit = all.find((e) => e.refName === select.refName);
    else if (select.digest !== undefined) {
      hit = all.find((e) => e.descriptor.digest === select.digest);
    } else if (all.length === 1) hit = all[0];
    if (hit) return hit;
    const names = all.map((e) => e.refName ?? e.descriptor.digest);
    const what = select.refName ?? select.digest ?? "an image";
    throw new NotFoundError(
      `The layout ${this.root} has no ${JSON.stringify(what)}; it has: ${
        names.length ? names.join(", ") : "nothing"
      }`,
    );
  }

  /**
   * Adds (or replaces, by ref name) an entry of index.json, keeping every other entry as it
   * was. Without a ref name an entry with the same digest and no name is replaced.
   * Call it last, after every blob the entry needs is in place.
   */
  async addManifest(
    entry: { mediaType: string; digest: string; size: number; platform?: Platform },
    refName?: string,
    signal?: AbortSignal,
  ): Promise<void> {
    checkDigest(entry.digest, "manifest digest");
    const lock = await waitForLock(`${this.indexPath}.lock`, () => Promise.resolve(false), {
      signal,
      pollMs: 50,
    }).catch((e) => {
      throw e instanceof HaulError ? e : storeError("lock", `${this.indexPath}.lock`, e);
    });
    if (lock === "done") return; // never: done() is always false
    try {
      const doc = await this.#readIndex();
      const list: unknown[] = Array.isArray(doc.manifests) ? doc.manifests : [];
      const desc: Json = { mediaType: entry.mediaType, digest: entry.digest, size: entry.size };
      if (entry.platform) desc.platform = { ...entry.platform };
      if (refName !== undefined) desc.annotations = { [REF_NAME_ANNOTATION]: refName };
      const same = (m: unknown) => {
        if (!isObject(m)) return false;
        const name = isObject(m.annotations) ? m.annotations[REF_NAME_ANNOTATION] : undefined;
        return refName !== undefined
          ? name === refName
          : name === undefined && m.digest === entry.digest;
      };
      // The new entry takes the place of the first entry it replaces (order is kept).
      const kept: unknown[] = [];
      let placed = false;
      for (const m of list) {
        if (!same(m)) kept.push(m);
        else if (!placed) {
          kept.push(desc);
          placed = true;
        }
      }
      if (!placed) kept.push(desc);
      const out: Json = {
        schemaVersion: 2,
        mediaType: MediaType.ociIndex,
        ...doc,
        manifests: kept,
      };
      await this.#atomicWrite(this.indexPath, new TextEncoder().encode(JSON.stringify(out)));
    } finally {
      await lock.release();
    }
  }

  async #readIndex(): Promise<Json> {
    let text: string;
    try {
      text = await readFile(this.indexPath, "utf8");
    } catch (e) {
      if ((e as { code?: string }).code === "ENOENT") return {};
      throw storeError("read", this.indexPath, e);
    }
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw new ManifestError(`${this.indexPath} is not valid JSON: ${(e as Error).message}`);
    }
    if (!isObject(doc) || (doc.manifests !== undefined && !Array.isArray(doc.manifests))) {
      throw new ManifestError(`${this.indexPath} is not an image index`);
    }
    return doc;
  }

  /** Temp file in the same directory, fsync, rename, fsync the directory. */
  async #atomicWrite(path: string, bytes: Uint8Array): Promise<void> {
    const dir = path.slice(0, path.lastIndexOf("/")) || ".";
    const tmp = `${path}.${process.pid}-${randomBytes(4).toString("hex")}.tmp`;
    try {
      await writeFile(tmp, bytes);
      await syncPath(tmp);
      await rename(tmp, path);
      await syncDir(dir);
    } catch (e) {
      await rm(tmp, { force: true }).catch(() => {});
      throw storeError("write", path, e);
    }
  }
}

function parseEntry(v: unknown, where: string): Descriptor {
  // parseManifest validates descriptors; wrap the entry in a one-entry index to reuse it.
  const doc = { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [v] };
  try {
    const idx = parseManifest(new TextEncoder().encode(JSON.stringify(doc)));
    if (idx.kind === "index") return idx.manifests[0];
  } catch (e) {
    throw new ManifestError(`${where}: ${(e as Error).message}`, { cause: e });
  }
  throw new ManifestError(`${where}: not a descriptor`);
}
