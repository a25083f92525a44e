/**
 * haul: move content-addressed blobs between OCI / Ollama registries and disk.
 *
 * @example
 * ```ts
 * import { pull } from "./lib/mod.ts";
 * await pull("127.0.0.1:5000/library/tiny:latest", { insecure: true, modelsDir: "/tmp/models" });
 * ```
 * @module
 */
export { DEFAULT_TUNING, download } from "./download/download.ts";
export type { DownloadOptions, DownloadResult, TransferTuning } from "./download/download.ts";
export { currentPlatform, pull, resolveReference } from "./ops/pull.ts";
export type { PullOptions, PullResult } from "./ops/pull.ts";
export { push } from "./ops/push.ts";
export type { PushOptions, PushResult } from "./ops/push_common.ts";
export { copy } from "./ops/copy.ts";
export { DEFAULT_TAG_TTL_MS, parseUpstream, PullThrough } from "./ops/pull_through.ts";
export type {
  PullThroughOptions,
  PullThroughRepository,
  UpstreamRegistry,
} from "./ops/pull_through.ts";
export type { CopyOptions } from "./ops/copy.ts";
export { DEFAULT_UPLOAD_TUNING, putManifest, upload } from "./upload/upload.ts";
export type {
  BlobReader,
  OpenBlob,
  UploadOptions,
  UploadResult,
  UploadTuning,
} from "./upload/upload.ts";
export { formatReference, manifestTag, parseReference, shortName } from "./registry/reference.ts";
export type { Reference } from "./registry/reference.ts";
export { parseChallenges, pickChallenge } from "./auth/challenge.ts";
export type { Challenge } from "./auth/challenge.ts";
export type { AuthChallenge } from "./auth/authenticator.ts";
export { loadCredential } from "./auth/credentials.ts";
export type { Credential } from "./auth/credentials.ts";
export { defaultModelsDir, OllamaStore } from "./store/ollama.ts";
export { ociBlobFileName, OciLayout, REF_NAME_ANNOTATION } from "./store/oci_layout.ts";
export type { OciLayoutEntry } from "./store/oci_layout.ts";
export {
  availablePlatforms,
  formatPlatform,
  normalizePlatform,
  platformMatches,
  selectManifest,
} from "./registry/platform.ts";
export {
  checkMirrorUrl,
  defaultConfigPath,
  loadMirrors,
  mirrorsFor,
  parseMirrorConfig,
  parseMirrorList,
} from "./registry/mirror_config.ts";
export type { LoadMirrorsOptions, MirrorMap, MirrorSource } from "./registry/mirror_config.ts";
export { MIRROR_RETRY, SourceSet } from "./registry/mirror.ts";
export type { Source, SourceSetOptions } from "./registry/mirror.ts";
export { manifestBlobs, MediaType, parseManifest } from "./registry/manifest.ts";
export type {
  Blob,
  Descriptor,
  ImageManifest,
  IndexManifest,
  Platform,
} from "./registry/manifest.ts";
export { checkDigest, isDigest, sha256Digest } from "./digest.ts";
export type { ProgressEvent } from "./progress_events.ts";
export type { ConnectionOptions } from "./registry/session.ts";
export type { Fetch } from "./transport/fetch.ts";
export * from "./errors.ts";
export { createRegistryHandler, parseRange } from "./server/registry_server.ts";
export type {
  RegistryHandlerOptions,
  RequestLogEntry,
  ServeLogger,
} from "./server/registry_server.ts";
export { locateUpstream } from "./server/upstream.ts";
export type { Upstream, UpstreamRepository } from "./server/upstream.ts";
export {
  checkTlsPem,
  CONNECTION_DEFAULTS,
  DEFAULT_PORT,
  DEFAULT_SHUTDOWN_TIMEOUT_MS,
  serve,
} from "./server/http_server.ts";
export type {
  ConnectionLimitEvent,
  ConnectionLimits,
  Handler,
  HttpServer,
  ResponseEntry,
  ServeOptions,
  TlsPem,
} from "./server/http_server.ts";
export { accessLogRecord } from "./server/access_log.ts";
export { BasicAuth, parseHtpasswd, withBasicAuth } from "./server/basic_auth.ts";
export type { BasicAuthOptions } from "./server/basic_auth.ts";
export type { AccessLogRecord } from "./server/access_log.ts";
export {
  computeChunksums,
  DEFAULT_CHUNK_SIZE,
  fetchChunksums,
  formatChunksums,
  parseChunksums,
} from "./registry/chunksums.ts";
export type { Chunksum, FetchChunksumsOptions, FetchedChunksums } from "./registry/chunksums.ts";
export { DEFAULT_MIN_AGE } from "./store/scan.ts";
export type { StoredModel } from "./store/scan.ts";
export { formatAge, listModels } from "./store/list.ts";
export { ollamaAlias } from "./store/catalog.ts";
export {
  findOllamaKey,
  isOllamaRegistryHost,
  keyCandidates,
  OLLAMA_KEY_ENV,
  parseOpenSshKey,
  signOllamaRequest,
} from "./auth/ollama_key.ts";
export type { FindKeyOptions, OllamaKey } from "./auth/ollama_key.ts";
export { OLLAMA_PART_PLAN, ollamaEtag, ollamaParts } from "./upload/redirected.ts";
export type { ListOptions } from "./store/list.ts";
export { removeModels } from "./store/remove.ts";
export type { RemoveOptions, RemoveResult } from "./store/remove.ts";
export { prune } from "./store/prune.ts";
export type { PrunedFile, PruneOptions, PruneResult } from "./store/prune.ts";
export { hashFile, verify } from "./store/verify.ts";
export type { BlobProblem, VerifyOptions, VerifyProgress, VerifyResult } from "./store/verify.ts";
export { checkLogin, login, logout, parseRegistry } from "./ops/login.ts";
export type { LoginOptions, LoginResult, LogoutResult } from "./ops/login.ts";
export { COMMIT, VERSION } from "./version.ts";
