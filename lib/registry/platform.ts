/**
 * Platforms of image indexes and Docker manifest lists: normalising names, matching a
 * request against an entry, and picking the best entry. The rules follow containerd's
 * `platforms` package: `aarch64` is `arm64`, arm64 without a variant is `v8`, 32-bit arm
 * without a variant is `v7`, and an older arm variant runs on a newer one (v7 runs v6, v5).
 */
import type { Descriptor, IndexManifest, Platform } from "./manifest.ts";

const ARCH_ALIASES: Record<string, string> = {
  x86_64: "amd64",
  "x86-64": "amd64",
  aarch64: "arm64",
  armhf: "arm",
  armel: "arm",
  i386: "386",
  i686: "386",
};

/** Default variant of an architecture (what an entry without a variant means). */
const DEFAULT_VARIANT: Record<string, string> = { arm64: "v8", arm: "v7", amd64: "v1" };

/** 32-bit arm variants a request may fall back to, best first. */
const ARM_COMPATIBLE: Record<string, string[]> = {
  v8: ["v8", "v7", "v6", "v5"],
  v7: ["v7", "v6", "v5"],
  v6: ["v6", "v5"],
  v5: ["v5"],
};

/** Lower-cases and canonicalises a platform; the variant is filled in with the default. */
export function normalizePlatform(p: Platform): Required<Platform> {
  const os = p.os.toLowerCase();
  let architecture = p.architecture.toLowerCase();
  let variant = (p.variant ?? "").toLowerCase();
  if (architecture === "armhf" && !variant) variant = "v7";
  if (architecture === "armel" && !variant) variant = "v6";
  architecture = ARCH_ALIASES[architecture] ?? architecture;
  if (architecture === "arm64" && variant === "8") variant = "v8";
  if (architecture === "arm" && /^[5-8]$/.test(variant)) variant = `v${variant}`;
  if (!variant) variant = DEFAULT_VARIANT[architecture] ?? "";
  return { os, architecture, variant };
}

/** `os/arch[/variant]` as written on the command line and in error messages. */
export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}`;
}

/**
 * How well an index entry's platform serves a request: 0 for no match, higher is better.
 * A request without a variant matches every variant of its os/arch (the default variant
 * ranks first); a request with a variant matches the same variant after normalisation
 * (arm64 `v8` is arm64 without a variant), and for 32-bit arm also older variants.
 */
export function platformScore(entry: Platform | undefined, want: Platform): number {
  if (!entry) return 0;
  const e = normalizePlatform(entry);
  const w = normalizePlatform({ ...want, variant: want.variant });
  if (e.os !== w.os || e.architecture !== w.architecture) return 0;
  if (!want.variant) {
    // Any variant will do; prefer the architecture's default, then the newest.
    if (e.variant === w.variant) return 100;
    return 50 + (Number(e.variant.replace(/\D/g, "")) || 0);
  }
  if (e.variant === w.variant) return 100;
  if (e.architecture === "arm") {
    const order = ARM_COMPATIBLE[w.variant] ?? [w.variant];
    const i = order.indexOf(e.variant);
    return i < 0 ? 0 : 100 - i;
  }
  return 0;
}

/** True when the entry's platform can serve the request (see {@link platformScore}). */
export function platformMatches(entry: Platform | undefined, want: Platform): boolean {
  return platformScore(entry, want) > 0;
}

/** The best entry of an index for `want`; the first of equally good entries; undefined if none. */
export function selectManifest(index: IndexManifest, want: Platform): Descriptor | undefined {
  let best: Descriptor | undefined;
  let bestScore = 0;
  for (const m of index.manifests) {
    const s = platformScore(m.platform, want);
    if (s > bestScore) {
      best = m;
      bestScore = s;
    }
  }
  return best;
}

/**
 * The platforms an index offers, for error messages: `linux/amd64, linux/arm64/v8`.
 * Entries without a platform (e.g. attestations) show as `unknown`.
 */
export function availablePlatforms(index: IndexManifest): string[] {
  return index.manifests.map((m) => m.platform ? formatPlatform(m.platform) : "unknown");
}
