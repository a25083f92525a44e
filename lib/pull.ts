/**
 * Manifest-level pull into Ollama's store: resolve each reference, fetch every
 * blob (shared between references, once), then write each manifest last.
 */
import { DEFAULT_TUNING, download, type TransferTuning } from "./download.ts";
import { Semaphore } from "./pool.ts";
import { RateLimiter } from "./rate_limit.ts";
import { ManifestError, UsageError } from "./errors.ts";
import {
  type Descriptor,
  type ImageManifest,
  manifestBlobs,
  parseManifest,
  type Platform,
} from "./manifest.ts";
import type { OnProgress } from "./progress_events.ts";
import { formatReference, parseReference, type Reference } from "./reference.ts";
import { type ConnectionOptions, createSession, type Session } from "./session.ts";
import { defaultModelsDir, OllamaStore } from "./store_ollama.ts";

export interface PullOptions extends ConnectionOptions, TransferTuning {
  /** Store root. @default $OLLAMA_MODELS or ~/.ollama/models */
  modelsDir?: string;
  /** Allow plain http (Ollama's `--insecure`). @default false */
  insecure?: boolean;
  /** Platform to pick from an index. @default the running machine's */
  platform?: Platform;
  onEvent?: OnProgress;
  signal?: AbortSignal;
}

export interface PullResult {
  ref: Reference;
  name: string;
  manifestDigest: string;
  manifestPath: string;
  blobs: Descriptor[];
  /** Bytes received over the network for this pull (all references together). */
  transferred: number;
}

/** The machine's platform in OCI terms. */
export function currentPlatform(): Platform {
  const arch = ({
    x64: "amd64",
    arm64: "arm64",
    arm: "arm",
    ia32: "386",
    ppc64: "ppc64le",
    s390x: "s390x",
  } as Record<
    string,
    string
  >)[process.arch] ?? process.arch;
  const os = process.platform === "win32" ? "windows" : process.platform;
  return { os, architecture: arch };
}

/** Resolves a reference string against the `--insecure` rule. */
export function resolveReference(input: string, insecure = false): Reference {
  const explicitHttp = /^http:\/\//i.test(input);
  const ref = parseReference(input);
  if (explicitHttp && !insecure) {
    throw new UsageError(`Plain http for ${JSON.stringify(input)} needs --insecure`);
  }
  if (insecure && !/^https:\/\//i.test(input)) ref.scheme = "http";
  return ref;
}

interface Resolved {
  ref: Reference;
  session: Session;
  bytes: Uint8Array;
  digest: string;
  manifest: ImageManifest;
}

function platformMatches(p: Platform | undefined, want: Platform): boolean {
  return !!p && p.os === want.os && p.architecture === want.architecture &&
    (!want.variant || p.variant === want.variant);
}

/** Pulls one or more references into the store. */
export async function pull(
  refs: string | string[],
  options: PullOptions = {},
): Promise<PullResult[]> {
  const list = Array.isArray(refs) ? refs : [refs];
  if (!list.length) throw new UsageError("Nothing to pull: give at least one reference");
  const parsed = list.map((r) => resolveReference(r, options.insecure));
  const store = new OllamaStore(options.modelsDir ?? defaultModelsDir());
  // Validate store paths before touching the network or the disk.
  for (const ref of parsed) store.manifestPath(ref);
  await store.ensureDirs();
  const emit = options.onEvent ?? (() => {});
  const sessions = new Map<string, Session>();
  const sessionFor = (ref: Reference) => {
    const base = `${ref.scheme}://${ref.host}`;
    const key = `${base} ${ref.repository}`;
    let s = sessions.get(key);
    if (!s) {
      s = createSession(base, [`repository:${ref.repository}:pull`], options);
      sessions.set(key, s);
    }
    return s;
  };

  const resolved: Resolved[] = [];
  for (const ref of parsed) {
    emit({ type: "manifest", ref: formatReference(ref) });
    const session = sessionFor(ref);
    let got = await session.client.getManifest(ref.repository, ref.digest ?? ref.tag ?? "latest", {
      signal: options.signal,
    });
    let doc = parseManifest(got.bytes, got.mediaType);
    if (doc.kind === "index") {
      const want = options.platform ?? currentPlatform();
      const pick = doc.manifests.find((m) => platformMatches(m.platform, want));
      if (!pick) {
        const avail = doc.manifests.map((m) =>
          m.platform
            ? `${m.platform.os}/${m.platform.architecture}${
              m.platform.variant ? "/" + m.platform.variant : ""
            }`
            : "?"
        );
        throw new ManifestError(
          `${
            formatReference(ref)
          } has no manifest for ${want.os}/${want.architecture}; available: ${avail.join(", ")}`,
        );
      }
      got = await session.client.getManifest(ref.repository, pick.digest, {
        signal: options.signal,
      });
      doc = parseManifest(got.bytes, got.mediaType);
      if (doc.kind !== "manifest") throw new ManifestError("An index points to another index");
    }
    resolved.push({ ref, session, bytes: got.bytes, digest: got.digest, manifest: doc });
  }

  // Blobs per repository (blob URLs are per repository); a blob shared by two
  // references is fetched once.
  const groups = new Map<string, { r: Resolved; blobs: Descriptor[] }>();
  const claimed = new Set<string>();
  for (const r of resolved) {
    const key = `${r.ref.scheme}://${r.ref.host}/${r.ref.repository}`;
    const g = groups.get(key) ?? { r, blobs: [] };
    for (const b of manifestBlobs(r.manifest)) {
      if (claimed.has(b.digest)) continue;
      claimed.add(b.digest);
      g.blobs.push(b);
    }
    groups.set(key, g);
  }
  let transferred = 0;
  // One connection pool and one rate limit for every reference of this pull.
  const shared = {
    slots: new Semaphore(options.concurrency ?? DEFAULT_TUNING.concurrency),
    limiter: options.limitRate ? new RateLimiter(options.limitRate) : undefined,
  };
  await Promise.all([...groups.values()].map(async ({ r, blobs }) => {
    const res = await download({
      shared,
      ...options,
      blobs,
      baseUrl: `${r.ref.scheme}://${r.ref.host}`,
      repository: r.ref.repository,
      destDir: store.blobsDir,
      session: r.session,
      onEvent: emit,
      signal: options.signal,
    });
    transferred += res.transferred;
  }));

  const results: PullResult[] = [];
  emit({ type: "verify" });
  for (const r of resolved) {
    emit({ type: "manifest-write", op: "pull" });
    const manifestPath = await store.writeManifest(r.ref, r.bytes);
    emit({ type: "success", ref: formatReference(r.ref) });
    results.push({
      ref: r.ref,
      name: formatReference(r.ref),
      manifestDigest: r.digest,
      manifestPath,
      blobs: manifestBlobs(r.manifest),
      transferred,
    });
  }
  return results;
}
