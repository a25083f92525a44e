/**
 * Everyday operations on an Ollama model store, one module each: list (lib/store/list.ts),
 * rm (remove.ts), prune (prune.ts) and verify (verify.ts), over the scans in scan.ts (which
 * also notes how they stay safe beside a running pull). This module re-exports them.
 */
export { DEFAULT_MIN_AGE } from "./scan.ts";
export type { StoredModel, StoreOpsOptions } from "./scan.ts";
export { formatAge, listModels } from "./list.ts";
export type { ListOptions } from "./list.ts";
export { removeModels } from "./remove.ts";
export type { BlobFile, RemoveOptions, RemoveResult } from "./remove.ts";
export { prune } from "./prune.ts";
export type { PrunedFile, PrunedKind, PruneOptions, PruneResult } from "./prune.ts";
export { hashFile, verify } from "./verify.ts";
export type {
  BlobProblem,
  BlobProblemKind,
  ManifestProblem,
  VerifyOptions,
  VerifyProgress,
  VerifyResult,
} from "./verify.ts";
