/**
 * End-to-end test harness for haul, one module per concern (all re-exported here):
 *   util.ts          ports, temp dirs, child processes
 *   bytes.ts         deterministic test data
 *   fixtures.ts      Ollama models and OCI images to push
 *   certs.ts         keys and certificates (openssl)
 *   token_server.ts  a Docker token server issuing ES256 JWTs
 *   registry.ts      Debian's `docker-registry` (distribution 2.8.2), or distribution 3, on loopback
 *   pusher.ts        an independent pusher
 *   cli.ts           running the CLI (deno, bun, the binary)
 *   tree.ts          comparing stores
 * and, beside them, fault_proxy.ts (faults in front of the real registry),
 * registry_profiles.ts (GHCR, Docker Hub, ECR… played in front of it), ollama.ts and
 * ollama_registry.ts (stock Ollama, and Ollama's registry emulated) and oci_fixtures.ts (OCI
 * layouts and indexes).
 *
 * Nothing here imports lib/: the fixtures and the pusher are the oracle the CLI
 * is checked against, so they must not share its bugs. Only Web APIs and `node:`
 * built-ins are used so the harness runs under Deno and Bun.
 */
export * from "./util.ts";
export * from "./bytes.ts";
export * from "./fixtures.ts";
export * from "./certs.ts";
export * from "./token_server.ts";
export * from "./registry.ts";
export * from "./pusher.ts";
export * from "./cli.ts";
export * from "./tree.ts";
