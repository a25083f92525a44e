/**
 * Manifest-level push (local Ollama store → registry), built on {@link upload}: every blob
 * first (skipped when present, mounted when another repository of the same registry has it),
 * then the manifest bytes unchanged, so the destination serves the same digest. Copy
 * (registry → registry) is in lib/ops/copy.ts, re-exported here.
 */
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { isDigest, Sha256 } from "../digest.ts";
import { AuthError, ManifestError, NotFoundError, RegistryError, UsageError } from "../errors.ts";
import { isOllamaRegistryHost, noKeyMessage } from "../auth/ollama_key.ts";
import type { Session } from "../registry/session.ts";
import { manifestBlobs, parseManifest } from "../registry/manifest.ts";
import { resolveReference } from "./pull.ts";
import { pushFromLayout } from "./push_oci.ts";
import {
  baseOf,
  manifestRefFor,
  pushed,
  type PushOptions,
  type PushResult,
} from "./push_common.ts";
import {
  formatReference,
  parseReference,
  type Reference,
  shortName,
} from "../registry/reference.ts";
import { createSession } from "../registry/session.ts";
import { defaultModelsDir, OllamaStore } from "../store/ollama.ts";
import { openStoreBlob } from "../disk/blob_file.ts";
import { upload } from "../upload/upload.ts";

export type { PushOptions, PushResult } from "./push_common.ts";
export { copy, type CopyOptions } from "./copy.ts";

function checkRepository(repo: string, flag: string): string {
  if (/[:@]/.test(repo)) throw new UsageError(`${flag}: expected a repository, got "${repo}"`);
  let ref: Reference;
  try {
    ref = parseReference(`localhost/${repo}`);
  } catch (e) {
    throw new UsageError(`${flag}: ${(e as Error).message}`);
  }
  return ref.repository;
}

/**
 * Pushes a model from the local store to DEST (default: REF itself): blobs, then
 * the manifest bytes exactly as stored.
 *
 * @throws {NotFoundError} when the model or one of its blobs is not in the store.
 * @throws {RegistryError} when the destination refuses a blob or the manifest.
 */
export async function push(
  ref: string,
  dest?: string,
  options: PushOptions = {},
): Promise<PushResult> {
  const source = resolveReference(ref, options.insecure);
  const target = resolveReference(dest ?? ref, options.insecure);
  if (options.ociLayout !== undefined) {
    return await pushFromLayout(source, target, { ...options, ociLayout: options.ociLayout });
  }
  const store = new OllamaStore(options.modelsDir ?? defaultModelsDir());
  options.onEvent?.({ type: "manifest", ref: formatReference(source), op: "push" });
  const bytes = await store.readManifest(source);
  if (!bytes) {
    throw new NotFoundError(
      `Model ${shortName(source)} is not in ${store.root} (no ${store.manifestPath(source)})`,
    );
  }
  const doc = parseManifest(bytes);
  if (doc.kind !== "manifest") {
    throw new ManifestError(`${shortName(source)} is an index; haul push expects a model manifest`);
  }
  const blobs = manifestBlobs(doc);
  // Every blob must be in the store before anything goes over the network.
  await Promise.all(blobs.map(async (b) => (await openStoreBlob(store.blobsDir, b)).close()));

  const sameRegistry = baseOf(source) === baseOf(target);
  const from = options.from !== undefined
    ? checkRepository(options.from, "--from")
    : sameRegistry && source.repository !== target.repository
    ? source.repository
    : undefined;
  const manifestDigest = new Sha256();
  manifestDigest.update(bytes);
  const digest = manifestDigest.digest();
  const manifestRef = manifestRefFor(target, digest);

  const session = createSession(
    baseOf(target),
    [`repository:${target.repository}:pull,push`],
    options,
  );
  // Where earlier pushes put each blob on this registry: a mount source for the rest.
  const ledger = await readPushLedger(store.root);
  const known = ledger[baseOf(target)] ?? {};
  const mountFrom = (digest: string) => {
    if (from) return from;
    const repo = known[digest];
    return repo && repo !== target.repository ? repo : undefined;
  };
  const res = await upload({
    ...options,
    redirectUploads: options.redirectUploads ?? redirects(target.host, options),
    blobs: blobs.map((b) => {
      const src = mountFrom(b.digest);
      return src ? { digest: b.digest, size: b.size, from: src } : b;
    }),
    baseUrl: baseOf(target),
    repository: target.repository,
    srcDir: store.blobsDir,
    // Out of blobs/, where Ollama's startup prune deletes what is not a blob after an hour.
    stateDir: await pushStateDir(store.root),
    manifest: bytes,
    manifestRef,
    manifestMediaType: doc.mediaType,
    session,
  }).catch((err) => {
    throw refusal(err, session, target, options);
  });
  const mine = (ledger[baseOf(target)] ??= {});
  for (const b of blobs) mine[b.digest] ??= target.repository;
  await writePushLedger(store.root, ledger);
  return pushed(options, res, { source, dest: target, digest, blobs });
}

/** Ollama's registry, or a registry an Ollama key was named for, gets redirected parts. */
function redirects(host: string, options: PushOptions): boolean {
  return isOllamaRegistryHost(host) || options.keyFile !== undefined ||
    options.ollamaKey !== undefined;
}

/**
 * A push the registry refused (401/403) after an Ollama key signed the token, or when none
 * was found: one line saying which key, and what to do.
 */
function refusal(err: unknown, session: Session, target: Reference, options: PushOptions) {
  if (!(err instanceof RegistryError) || (err.status !== 401 && err.status !== 403)) return err;
  const where = `${target.host}/${target.repository}`;
  const key = session.auth.signedWith;
  if (key) {
    return new AuthError(
      `Not allowed to push to ${where} with the Ollama key ${key.path}: push under a namespace ` +
        `this key owns, or add its public key on ollama.com (Settings, Keys): ${key.publicKey}`,
      { cause: err },
    );
  }
  if (session.auth.noOllamaKey) {
    return new AuthError(`Cannot push to ${where}: ${noKeyMessage(options)}`, { cause: err });
  }
  return err;
}

/** `<models>/.haul/push/`: the upload sessions a killed push continues. */
async function pushStateDir(root: string): Promise<string> {
  const dir = join(root, ".haul", "push");
  await mkdir(dir, { recursive: true }).catch(() => {});
  return dir;
}

/** `{ "<scheme://host>": { "<digest>": "<repository>" } }`: where pushes left each blob. */
type PushLedger = Record<string, Record<string, string>>;

const LEDGER_MAX_BLOBS = 100_000;
const REPO_RE =
  /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;

function ledgerPath(root: string): string {
  return join(root, ".haul", "pushed.json");
}

async function readPushLedger(root: string): Promise<PushLedger> {
  try {
    const doc: unknown = JSON.parse(await readFile(ledgerPath(root), "utf8"));
    if (typeof doc !== "object" || doc === null || Array.isArray(doc)) return {};
    const out: PushLedger = {};
    for (const [base, blobs] of Object.entries(doc)) {
      if (typeof blobs !== "object" || blobs === null) continue;
      const entries = Object.entries(blobs as Record<string, unknown>).filter(([d, r]) =>
        isDigest(d) && typeof r === "string" && REPO_RE.test(r)
      );
      out[base] = Object.fromEntries(entries.slice(-LEDGER_MAX_BLOBS)) as Record<string, string>;
    }
    return out;
  } catch {
    return {}; // absent or unreadable: only a hint
  }
}

async function writePushLedger(root: string, ledger: PushLedger): Promise<void> {
  const path = ledgerPath(root);
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    await mkdir(join(root, ".haul"), { recursive: true });
    await writeFile(tmp, JSON.stringify(ledger));
    await rename(tmp, path);
  } catch {
    await rm(tmp, { force: true }).catch(() => {});
  }
}
