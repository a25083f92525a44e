/** haul's version; keep it equal to deno.json's (scripts/compile.sh checks). */
export const VERSION = "0.1.0";

// Replaced by `bun build --define HAUL_BUILD_COMMIT='"…"'` (scripts/compile.sh); under
// `deno run` it is undeclared and `typeof` is "undefined", so nothing is read from disk.
declare const HAUL_BUILD_COMMIT: string | undefined;

/** The git commit a binary was built from; "dev" when run from source. */
export const COMMIT: string = typeof HAUL_BUILD_COMMIT === "string" ? HAUL_BUILD_COMMIT : "dev";
