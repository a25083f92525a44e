/** haul's version; the commit is stamped in by scripts/compile.sh for binaries. */
export const VERSION = "0.1.0";
// deno-lint-ignore prefer-const
export let COMMIT = "dev";
