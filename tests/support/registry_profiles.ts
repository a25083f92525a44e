/**
 * Registry profiles: how GHCR, Docker Hub, ECR, Artifact Registry, ACR, Quay, Harbor,
 * Artifactory and Hugging Face differ from distribution 2.8, each behaviour with its source
 * (../shared/REGISTRIES.md), played by a proxy in front of the real docker-registry.
 * The proxy does the registry's auth itself (the registry behind it has none), and may send blob
 * GETs to a "CDN" on 127.0.0.2 with presigned, expiring URLs and token requests to an "auth"
 * host on 127.0.0.3, as the real services do. `scripts/registries_doc.ts` writes
 * docs/REGISTRIES.md from {@link PROFILES}; tests/registry/profiles_test.ts runs pull, push and
 * copy through every profile.
 */
import * as crypto from "node:crypto";
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import * as https from "node:https";
import * as path from "node:path";
import type * as net from "node:net";
import { Buffer } from "node:buffer";
import { freePort, run, tmpDir } from "./util.ts";

/** A CA and a server certificate for 127.0.0.3 (the "auth" host: realms on another host are https). */
async function authHostCert(): Promise<{ dir: string; key: string; cert: string; ca: string }> {
  const dir = await tmpDir("haul-profile-tls");
  const f = (n: string) => path.join(dir, n);
  const ec = ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"];
  await run("openssl", [...ec, f("ca.key")]);
  await run("openssl", [
    "req",
    "-new",
    "-x509",
    "-key",
    f("ca.key"),
    "-out",
    f("ca.crt"),
    "-days",
    "30",
    "-subj",
    "/CN=haul-profile-ca",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  await run("openssl", [...ec, f("auth.key")]);
  await run("openssl", [
    "req",
    "-new",
    "-key",
    f("auth.key"),
    "-out",
    f("auth.csr"),
    "-subj",
    "/CN=127.0.0.3",
  ]);
  await fsp.writeFile(
    f("auth.ext"),
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n" +
      "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.3\n",
  );
  await run("openssl", [
    "x509",
    "-req",
    "-in",
    f("auth.csr"),
    "-CA",
    f("ca.crt"),
    "-CAkey",
    f("ca.key"),
    "-CAcreateserial",
    "-out",
    f("auth.crt"),
    "-days",
    "30",
    "-extfile",
    f("auth.ext"),
  ]);
  return { dir, key: f("auth.key"), cert: f("auth.crt"), ca: f("ca.crt") };
}

/** One way a registry differs, with its source and what haul does about it. */
export interface Quirk {
  behaviour: string;
  source: string;
  haul: string;
  /** The test that proves it (file and test name words). */
  test: string;
}

export type ProfileAuth =
  | { kind: "none" }
  | {
    kind: "bearer";
    /** The realm on the registry's own host, or on another (127.0.0.3). */
    realm: "self" | "other";
    path: string;
    service: string;
    /** Pulls without credentials get an anonymous token. */
    anonymousPull: boolean;
    /** Token lifetime in seconds (Docker Hub's: about 300). @default 3600 */
    ttlSec?: number;
    /** Answer a token POST with this status (GCR 404, Artifactory 401, ACR 400, Harbor 405). */
    postStatus?: number;
    /** Take `POST grant_type=refresh_token` with this refresh token (ACR's identitytoken). */
    refreshToken?: string;
  }
  | { kind: "basic"; realm: string };

export interface Profile {
  id: string;
  name: string;
  /** User and password that may push (also written into config.json by the tests). */
  user: string;
  password: string;
  /** config.json shape for the credentials. @default "auth" (base64 user:password) */
  configShape?: "auth" | "identitytoken";
  auth: ProfileAuth;
  quirks: Quirk[];
  /** Blob GETs (and HEADs) answer 307 to the CDN, whose URLs expire after this many ms. */
  cdnExpiresMs?: number;
  /** A ranged (or sized) PATCH body over this many bytes gets GHCR's 416. */
  patchCap?: number;
  /** PATCH answers 201 (ECR). */
  patchCreated?: boolean;
  /** The upload Range sticks at the end of the first chunk (ECR). */
  stickyRange?: boolean;
  /** PATCH is refused with this status (Artifact Registry: monolithic only). */
  noPatch?: number;
  /** Quay's Range forms: POST `bytes=0--1`, status GET one byte more than stored. */
  quayRanges?: boolean;
  /** Manifests as `text/plain` without Content-Length. */
  textPlainManifests?: boolean;
  /** A mount from a namespace with no repository gets 401 "project … not found" (Harbor). */
  mountMissing401?: boolean;
  /** `Warning: 299 - "<text>"` on every answer. */
  warning?: string;
  /** Docker Hub's rate limit headers on manifest requests; 429 once none are left. */
  rateLimit?: { limit: number; windowSec: number; remaining: number };
  /** A manifest PUT with a Content-Type outside the known ones gets 415 (Quay). */
  strictManifestTypes?: boolean;
  /** Refuse `?digest=` anywhere but in the query of a PUT (Artifactory is strict about it). */
  strictDigest?: boolean;
  /** `OCI-Chunk-Min-Length` on the POST that opens a session (distribution-spec 1.1). */
  chunkMinLength?: number;
  /** Names and tags case-insensitive, `latest` meaning this tag (Hugging Face: Q4_K_M). */
  caseInsensitive?: { defaultTag: string };
  /** Throttle request bodies (uploads) to this many bytes per second. */
  uploadRate?: number;
  /** Throttle CDN bodies to this many bytes per second. */
  cdnRate?: number;
}

const MiB = 1 << 20;

/** The profiles, as REGISTRIES.md describes the registries. */
export const PROFILES: Profile[] = [
  {
    id: "ghcr",
    name: "GitHub Container Registry (ghcr.io)",
    user: "octocat",
    password: "ghp_token",
    auth: {
      kind: "bearer",
      realm: "self",
      path: "/token",
      service: "ghcr.io",
      anonymousPull: true,
    },
    patchCap: 4 * MiB,
    cdnExpiresMs: 300_000,
    quirks: [
      {
        behaviour:
          'A PATCH body over 4 MiB gets 416 "exceeds the maximum permissible limit of 4.00MiB"; a streamed PATCH (chunked, no Content-Range) and POST+PUT are taken',
        source: "oras-project/rust-oci-client#35, ocx-sh/ocx#237, kitops",
        haul:
          "Blobs from a file go as unranged streamed PATCHes (as docker push sends them); a 413/416 naming a limit makes later chunks that small for the run (copy's 16 MiB chunks: 4 MiB)",
        test: "profiles_test.ts: ghcr push/copy, and the 4 MiB cap wire-bytes test",
      },
      {
        behaviour: "Even public images need an anonymous Bearer token",
        source: "CodesWhat/drydock#87",
        haul: "Anonymous token requests when there are no credentials",
        test: "profiles_test.ts: ghcr pull without credentials",
      },
      {
        behaviour: "Blob GET: 307 to pkg-containers.githubusercontent.com, signed and expiring",
        source: "REGISTRIES.md (GHCR), stargz-snapshotter#167",
        haul: "Authorization never follows the redirect; an expired URL is asked for again",
        test: "profiles_test.ts: every profile with a CDN",
      },
    ],
  },
  {
    id: "dockerhub",
    name: "Docker Hub",
    user: "whale",
    password: "dckr_pat",
    auth: {
      kind: "bearer",
      realm: "other",
      path: "/token",
      service: "registry.docker.io",
      anonymousPull: true,
      ttlSec: 2,
    },
    cdnExpiresMs: 600_000,
    uploadRate: 12 * MiB,
    rateLimit: { limit: 100, windowSec: 21600, remaining: 7 },
    quirks: [
      {
        behaviour:
          "Token realm on another host (auth.docker.io); tokens live about 5 minutes, so a long transfer outlives its token",
        source: "moby/moby#29257",
        haul:
          "Credentials go to a realm on another host only over https; a refused token is fetched again once and the request resent (here tokens live 2 s and the upload takes about 4)",
        test: "profiles_test.ts: dockerhub push",
      },
      {
        behaviour:
          "ratelimit-limit: 100;w=21600 and ratelimit-remaining on manifest requests; over the limit a manifest GET gets 429",
        source: "docker/docs usage/pulls.md",
        haul:
          "A warning once when under a tenth of the limit is left; a 429 whose window is hours ends at once with the time to wait (exit 10)",
        test: "profiles_test.ts: Docker Hub rate limit",
      },
    ],
  },
  {
    id: "ecr",
    name: "Amazon ECR",
    user: "AWS",
    password: "eyJwYXlsb2FkIjoi",
    auth: { kind: "basic", realm: "https://012345678901.dkr.ecr.us-east-1.amazonaws.com/" },
    patchCreated: true,
    stickyRange: true,
    quirks: [
      {
        behaviour: "Basic auth on every request, user AWS",
        source: "REGISTRIES.md (ECR)",
        haul: "Basic credentials from config.json after the Basic challenge",
        test: "profiles_test.ts: ecr push/pull/copy",
      },
      {
        behaviour:
          "A PATCH answers 201, not 202, and its Range sticks at the end of the first chunk",
        source: "kitops-ml/kitops, jdx/mise#11376, aws/containers-roadmap#2831",
        haul:
          "201 is taken; a Range that does not move after a taken chunk makes haul count the bytes itself for the run (the commit's digest check decides)",
        test: "profiles_test.ts: ecr copy (16 MiB chunks)",
      },
    ],
  },
  {
    id: "gar",
    name: "Google Artifact Registry",
    user: "oauth2accesstoken",
    password: "ya29.token",
    auth: {
      kind: "bearer",
      realm: "self",
      path: "/v2/token",
      service: "us-docker.pkg.dev",
      anonymousPull: false,
      postStatus: 404,
    },
    noPatch: 405,
    quirks: [
      {
        behaviour:
          "No chunked uploads: monolithic only (what a PATCH gets is unverified: 405 here)",
        source: "GCP docs, dotnet/sdk-container-builds#287, skopeo#1101",
        haul:
          "A PATCH refused with 405/501 switches the run to monolithic POST then PUT ?digest= with the whole blob",
        test: "profiles_test.ts: gar push/copy",
      },
      {
        behaviour: "Basic at the realm with oauth2accesstoken (or _json_key); token POST gets 404",
        source: "REGISTRIES.md (GAR), containerd remotes/docker/authorizer.go",
        haul: "Token requests are GETs with Basic, so POST is never needed",
        test: "profiles_test.ts: gar pull",
      },
    ],
  },
  {
    id: "acr",
    name: "Azure Container Registry",
    user: "00000000-0000-0000-0000-000000000000",
    password: "refresh-token-from-az-acr-login",
    configShape: "identitytoken",
    auth: {
      kind: "bearer",
      realm: "self",
      path: "/oauth2/token",
      service: "haul.azurecr.io",
      anonymousPull: false,
      refreshToken: "refresh-token-from-az-acr-login",
    },
    cdnExpiresMs: 600_000,
    quirks: [
      {
        behaviour:
          "identitytoken in config.json is an OAuth2 refresh token: POST /oauth2/token grant_type=refresh_token",
        source: "Azure/acr docs/AAD-OAuth.md",
        haul: "An identity token is POSTed as a refresh_token grant; access_token is the Bearer",
        test: "profiles_test.ts: acr push/pull/copy",
      },
      {
        behaviour: "Blob GET: 307 to a SAS URL on *.blob.core.windows.net",
        source: "REGISTRIES.md (ACR), Azure/acr#217",
        haul: "No Authorization on the SAS URL (the store refuses two auth mechanisms)",
        test: "profiles_test.ts: acr pull",
      },
    ],
  },
  {
    id: "quay",
    name: "Quay.io",
    user: "quayuser",
    password: "quaypass",
    auth: {
      kind: "bearer",
      realm: "self",
      path: "/v2/auth",
      service: "quay.io",
      anonymousPull: true,
    },
    quayRanges: true,
    strictManifestTypes: true,
    cdnExpiresMs: 600_000,
    quirks: [
      {
        behaviour:
          "Upload Range forms: POST bytes=0--1, PATCH 0-<n-1>, status GET one byte more than stored",
        source: "quay/quay source",
        haul: "Range parsed in every form; a session whose status disagrees is started over",
        test: "profiles_test.ts: quay push/copy",
      },
      {
        behaviour: "An unknown manifest Content-Type gets 415",
        source: "quay/quay source",
        haul: "Manifests go up with their own media type",
        test: "profiles_test.ts: quay push",
      },
    ],
  },
  {
    id: "harbor",
    name: "Harbor",
    user: "robot$ci",
    password: "robotsecret",
    auth: {
      kind: "bearer",
      realm: "self",
      path: "/service/token",
      service: "harbor-registry",
      anonymousPull: false,
      postStatus: 405,
    },
    mountMissing401: true,
    quirks: [
      {
        behaviour: 'A mount from a project that does not exist answers 401 "project … not found"',
        source: "goharbor/harbor#17097",
        haul: "A refused mount falls back to an upload session",
        test: "profiles_test.ts: harbor push with --from a missing project",
      },
      {
        behaviour: "Robot users robot$name",
        source: "REGISTRIES.md (Harbor)",
        haul: "User names are sent as they are (Basic at the realm)",
        test: "profiles_test.ts: harbor pull",
      },
    ],
  },
  {
    id: "artifactory",
    name: "JFrog Artifactory",
    user: "jfrog",
    password: "apikey",
    auth: {
      kind: "bearer",
      realm: "self",
      path: "/artifactory/api/docker/docker-local/v2/token",
      service: "artifactory",
      anonymousPull: false,
      postStatus: 401,
    },
    strictDigest: true,
    cdnExpiresMs: 600_000,
    warning: "this repository is deprecated, use docker-remote",
    quirks: [
      {
        behaviour: "Strict about ?digest= on the commit; optional 302 to signed S3/CloudFront URLs",
        source: "krustlet/krustlet#670",
        haul: "The digest goes in the query of the commit PUT, & or ? as the Location needs",
        test: "profiles_test.ts: artifactory push",
      },
      {
        behaviour: "distribution-spec 1.1 Warning: 299 headers should reach the user",
        source: "distribution-spec 1.1",
        haul: "Each Warning text shown once per run on stderr, and in --json as a status line",
        test: "profiles_test.ts: warnings",
      },
    ],
  },
  {
    id: "hf",
    name: "Hugging Face (hf.co)",
    user: "hf_user",
    password: "hf_token",
    auth: {
      kind: "bearer",
      realm: "other",
      path: "/v2/token",
      service: "huggingface.co",
      anonymousPull: true,
    },
    cdnExpiresMs: 600_000,
    caseInsensitive: { defaultTag: "Q4_K_M" },
    quirks: [
      {
        behaviour: "The 401 names realm https://huggingface.co/v2/token, another host",
        source: "ollama/ollama#15661",
        haul: "Anonymous tokens from a realm on another host; credentials only over https",
        test: "profiles_test.ts: hf pull",
      },
      {
        behaviour:
          "Repositories are mixed case (hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF); tags are case-insensitive and default to Q4_K_M",
        source: "huggingface/hub-docs ollama.md",
        haul:
          "Mixed case is taken as Ollama takes it and kept as written, in requests and in the store; latest is asked for and the registry picks",
        test: "profiles_test.ts: a mixed-case hf.co model",
      },
      {
        behaviour: "Blob GET to a signed URL, then to a CloudFront-signed cdn.hf.co URL",
        source: "REGISTRIES.md (Hugging Face)",
        haul: "Redirects followed without Authorization; expiry handled as for every CDN",
        test: "profiles_test.ts: hf pull",
      },
    ],
  },
];

export interface ProfileRequest {
  host: "registry" | "cdn" | "auth";
  method: string;
  url: string;
  status: number;
  /** Request body bytes received. */
  bytesIn: number;
  /** Response body bytes sent. */
  bytesOut: number;
  authorization?: string;
}

export interface ProfileProxy {
  profile: Profile;
  url: string;
  host: string;
  cdnUrl: string;
  /** https://127.0.0.3:PORT, its certificate signed by `caFile`. */
  authUrl: string;
  /** The CA clients must trust for `authUrl` (DENO_CERT, NODE_EXTRA_CA_CERTS). */
  caFile: string;
  requests: ProfileRequest[];
  /** Token grants issued (user or anonymous, and when). */
  tokens: { user?: string; scopes: string[]; method: string; status: number }[];
  stop(): Promise<void>;
}

interface Token {
  user?: string;
  grants: Map<string, Set<string>>;
  expiresAt: number;
}

const HOP = new Set(["connection", "keep-alive", "transfer-encoding", "content-length", "host"]);

function errorBody(code: string, message: string): string {
  return JSON.stringify({ errors: [{ code, message }] });
}

/** Reads a request body, at `rate` bytes/s when given, stopping early when `stopAt` is passed. */
async function readBody(
  req: http.IncomingMessage,
  rec: ProfileRequest,
  rate?: number,
  stopAfter?: number,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const started = Date.now();
  for await (const c of req) {
    chunks.push(c as Buffer);
    rec.bytesIn += (c as Buffer).length;
    if (stopAfter !== undefined && rec.bytesIn > stopAfter) {
      req.pause();
      break;
    }
    if (rate) {
      const due = started + (rec.bytesIn / rate) * 1000;
      const wait = due - Date.now();
      if (wait > 5) await new Promise((ok) => setTimeout(ok, wait));
    }
  }
  return Buffer.concat(chunks);
}

function send(
  res: http.ServerResponse,
  rec: ProfileRequest,
  status: number,
  body: string | Buffer = "",
  headers: Record<string, string> = {},
): void {
  const b = typeof body === "string" ? Buffer.from(body) : body;
  res.writeHead(status, { "content-length": String(b.length), ...headers });
  rec.bytesOut += b.length;
  res.end(b);
}

/** Starts the proxy for `profile` in front of the docker-registry at `upstream`. */
export async function startProfileProxy(
  upstream: string,
  profile: Profile,
  overrides: Partial<Profile> = {},
): Promise<ProfileProxy> {
  const p: Profile = { ...profile, ...overrides };
  const [port, cport, aport] = [await freePort(), await freePort(), await freePort()];
  const url = `http://127.0.0.1:${port}`;
  const cdnUrl = `http://127.0.0.2:${cport}`;
  const authUrl = `https://127.0.0.3:${aport}`;
  const tls = await authHostCert();
  const secret = crypto.randomBytes(16);
  const requests: ProfileRequest[] = [];
  const tokens: ProfileProxy["tokens"] = [];
  const issued = new Map<string, Token>();
  const firstRange = new Map<string, string>();
  let remaining = p.rateLimit?.remaining ?? 0;
  let cdnClock = 0;

  const record = (
    host: ProfileRequest["host"],
    req: http.IncomingMessage,
    res: http.ServerResponse,
  ) => {
    const rec: ProfileRequest = {
      host,
      method: req.method ?? "GET",
      url: req.url ?? "/",
      status: 0,
      bytesIn: 0,
      bytesOut: 0,
      authorization: req.headers.authorization,
    };
    requests.push(rec);
    res.on("finish", () => rec.status = res.statusCode);
    return rec;
  };

  const basicUser = (h: string | undefined): string | undefined => {
    const m = /^Basic\s+(\S+)$/i.exec(h ?? "");
    if (!m) return undefined;
    const [user, ...rest] = Buffer.from(m[1], "base64").toString().split(":");
    return user === p.user && rest.join(":") === p.password ? user : undefined;
  };

  const challenge = (scope?: string): Record<string, string> => {
    const a = p.auth;
    if (a.kind === "basic") {
      return { "www-authenticate": `Basic realm="${a.realm}",service="ecr.amazonaws.com"` };
    }
    if (a.kind !== "bearer") return {};
    const realm = `${a.realm === "self" ? url : authUrl}${a.path}`;
    return {
      "www-authenticate": `Bearer realm="${realm}",service="${a.service}"${
        scope ? `,scope="${scope}"` : ""
      }`,
    };
  };

  /** The user a request is allowed as, or undefined when it must be challenged. */
  const allowed = (req: http.IncomingMessage, name: string, action: "pull" | "push"): boolean => {
    const a = p.auth;
    if (a.kind === "none") return true;
    if (a.kind === "basic") return basicUser(req.headers.authorization) !== undefined;
    const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? "");
    const t = m ? issued.get(m[1]) : undefined;
    if (!t || t.expiresAt < Date.now()) return false;
    return t.grants.get(name)?.has(action) ?? false;
  };

  const tokenEndpoint = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    rec: ProfileRequest,
  ) => {
    const a = p.auth;
    if (a.kind !== "bearer") return send(res, rec, 404, "");
    const q = new URL(req.url ?? "/", url).searchParams;
    let user: string | undefined;
    let scopes: string[];
    if (req.method === "POST") {
      const form = new URLSearchParams((await readBody(req, rec)).toString());
      if (a.refreshToken && form.get("grant_type") === "refresh_token") {
        if (form.get("refresh_token") !== a.refreshToken) {
          tokens.push({ scopes: [], method: "POST", status: 401 });
          return send(res, rec, 401, errorBody("UNAUTHORIZED", "invalid refresh token"));
        }
        user = p.user;
        scopes = (form.get("scope") ?? "").split(" ").filter(Boolean);
      } else {
        tokens.push({ scopes: [], method: "POST", status: a.postStatus ?? 400 });
        return send(res, rec, a.postStatus ?? 400, errorBody("UNSUPPORTED", "POST not supported"));
      }
    } else {
      req.resume();
      if (a.refreshToken) {
        // ACR takes Basic at the realm too; its identity tokens only by POST.
        user = basicUser(req.headers.authorization);
      } else {
        user = basicUser(req.headers.authorization);
      }
      if (req.headers.authorization && !user) {
        tokens.push({ scopes: [], method: "GET", status: 401 });
        return send(res, rec, 401, errorBody("UNAUTHORIZED", "bad credentials"));
      }
      scopes = q.getAll("scope").flatMap((s) => s.split(" ")).filter(Boolean);
    }
    const grants = new Map<string, Set<string>>();
    for (const s of scopes) {
      const [, name = "", actions = ""] = s.split(":");
      const set = grants.get(name) ?? new Set<string>();
      for (const act of actions.split(",")) {
        if (act === "pull" && (user || a.anonymousPull)) set.add("pull");
        if ((act === "push" || act === "*") && user) set.add("push");
        if (act === "*" && (user || a.anonymousPull)) set.add("pull");
      }
      grants.set(name, set);
    }
    if (!user && !a.anonymousPull) {
      tokens.push({ scopes, method: req.method ?? "GET", status: 401 });
      return send(res, rec, 401, errorBody("UNAUTHORIZED", "authentication required"));
    }
    const t = crypto.randomBytes(18).toString("base64url");
    const ttl = a.ttlSec ?? 3600;
    issued.set(t, { user, grants, expiresAt: Date.now() + ttl * 1000 });
    tokens.push({ user, scopes, method: req.method ?? "GET", status: 200 });
    const body = a.refreshToken && req.method === "POST"
      ? { access_token: t, expires_in: ttl }
      : { token: t, access_token: t, expires_in: ttl };
    send(res, rec, 200, JSON.stringify(body), { "content-type": "application/json" });
  };

  /** Forwards to the registry; returns status, headers and body (bodies are small or buffered). */
  const forward = async (req: http.IncomingMessage, path: string, body?: Buffer) => {
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined || HOP.has(k) || k === "authorization") continue;
      headers[k] = Array.isArray(v) ? v.join(", ") : v;
    }
    headers.host = new URL(url).host;
    const r = await fetch(`${upstream}${path}`, {
      method: req.method,
      headers,
      body: body && body.length ? new Uint8Array(body) : body ? new Uint8Array() : undefined,
      redirect: "manual",
    });
    const out: Record<string, string> = {};
    r.headers.forEach((v, k) => {
      if (!HOP.has(k)) out[k] = v.replaceAll(upstream, url);
    });
    return { status: r.status, headers: out, body: r };
  };

  const reply = async (
    res: http.ServerResponse,
    rec: ProfileRequest,
    r: { status: number; headers: Record<string, string>; body: Response },
    opts: { chunked?: boolean; head?: boolean } = {},
  ) => {
    const h = { ...r.headers, ...(p.warning ? { warning: `299 - "${p.warning}"` } : {}) };
    if (opts.head) {
      const cl = r.body.headers.get("content-length");
      await r.body.body?.cancel();
      res.writeHead(r.status, cl !== null ? { ...h, "content-length": cl } : h);
      return res.end();
    }
    const buf = Buffer.from(await r.body.arrayBuffer());
    if (opts.chunked) {
      res.writeHead(r.status, h);
      rec.bytesOut += buf.length;
      if (buf.length) res.write(buf);
      return res.end();
    }
    send(res, rec, r.status, buf, h);
  };

  const cdnLink = (name: string, digest: string) => {
    const exp = Date.now() + (p.cdnExpiresMs ?? 0);
    const sig = crypto.createHmac("sha256", secret).update(`${name}/${digest}/${exp}`).digest(
      "hex",
    );
    return `${cdnUrl}/blob/${name}/${digest}?X-Amz-Expires=${
      Math.ceil((p.cdnExpiresMs ?? 0) / 1000)
    }&exp=${exp}&X-Amz-Signature=${sig}`;
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const rec = record("registry", req, res);
    const u = new URL(req.url ?? "/", url);
    if (p.caseInsensitive) {
      // The registry behind keeps to lower case: names and tags go to it lower-cased.
      u.pathname = u.pathname.toLowerCase().replace(
        /\/manifests\/latest$/,
        `/manifests/${p.caseInsensitive.defaultTag.toLowerCase()}`,
      );
    }
    const a = p.auth;
    if (a.kind === "bearer" && a.realm === "self" && u.pathname === a.path) {
      return await tokenEndpoint(req, res, rec);
    }
    const warn: Record<string, string> = p.warning ? { warning: `299 - "${p.warning}"` } : {};
    if (u.pathname === "/v2/" || u.pathname === "/v2") {
      req.resume();
      if (a.kind !== "none" && !allowed(req, "", "pull") && !req.headers.authorization) {
        return send(res, rec, 401, errorBody("UNAUTHORIZED", "authentication required"), {
          ...challenge(),
          ...warn,
        });
      }
      return send(res, rec, 200, "{}", { "content-type": "application/json", ...warn });
    }
    const m = /^\/v2\/(.+?)\/(manifests|blobs\/uploads|blobs|tags)\/?(.*)$/.exec(u.pathname);
    if (!m) {
      req.resume();
      return send(res, rec, 404, errorBody("NOT_FOUND", "not found"));
    }
    const [, name, kind, rest] = m;
    const method = req.method ?? "GET";
    const action = method === "GET" || method === "HEAD" ? "pull" : "push";
    if (!allowed(req, name, action)) {
      req.resume();
      const scope = `repository:${name}:${action === "pull" ? "pull" : "pull,push"}`;
      return send(res, rec, 401, errorBody("UNAUTHORIZED", "authentication required"), {
        "content-type": "application/json",
        ...challenge(scope),
        ...warn,
      });
    }
    if (kind === "manifests") return await manifests(req, res, rec, name, rest, u);
    if (kind === "blobs" && (method === "GET" || method === "HEAD") && p.cdnExpiresMs) {
      req.resume();
      return send(res, rec, 307, "", { location: cdnLink(name, rest), ...warn });
    }
    if (kind === "blobs/uploads") return await uploads(req, res, rec, rest, u);
    const body = method === "GET" || method === "HEAD" ? undefined : await readBody(req, rec);
    if (!body) req.resume();
    const r = await forward(req, `${u.pathname}${u.search}`, body);
    return await reply(res, rec, r, { head: method === "HEAD" });
  };

  const manifests = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    rec: ProfileRequest,
    name: string,
    ref: string,
    u: URL,
  ) => {
    const method = req.method ?? "GET";
    const rl = p.rateLimit;
    const limits: Record<string, string> = rl
      ? {
        "ratelimit-limit": `${rl.limit};w=${rl.windowSec}`,
        "ratelimit-remaining": `${Math.max(0, remaining)};w=${rl.windowSec}`,
        "docker-ratelimit-source": "127.0.0.1",
      }
      : {};
    if (rl && method === "GET") {
      if (remaining <= 0) {
        req.resume();
        return send(
          res,
          rec,
          429,
          errorBody(
            "TOOMANYREQUESTS",
            "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit",
          ),
          { "content-type": "application/json", ...limits },
        );
      }
      remaining--;
      limits["ratelimit-remaining"] = `${remaining};w=${rl.windowSec}`;
    }
    if (method === "PUT" && p.strictManifestTypes) {
      const ct = String(req.headers["content-type"] ?? "");
      if (
        !/^application\/vnd\.(oci\.image\.(manifest|index)|docker\.distribution\.manifest\.(v2|list\.v2))\+json$/
          .test(ct)
      ) {
        req.resume();
        return send(res, rec, 415, errorBody("MANIFEST_INVALID", `unsupported content type ${ct}`));
      }
    }
    const body = method === "PUT" ? await readBody(req, rec) : undefined;
    if (!body) req.resume();
    const r = await forward(req, `/v2/${name}/manifests/${ref}${u.search}`, body);
    r.headers = { ...r.headers, ...limits };
    if (p.textPlainManifests && method === "GET" && r.status === 200) {
      r.headers["content-type"] = "text/plain; charset=utf-8";
      return await reply(res, rec, r, { chunked: true });
    }
    return await reply(res, rec, r, { head: method === "HEAD" });
  };

  const uploads = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    rec: ProfileRequest,
    rest: string,
    u: URL,
  ) => {
    const method = req.method ?? "GET";
    const id = rest.split("/")[0];
    if (method === "POST" && p.mountMissing401 && u.searchParams.get("mount")) {
      const from = u.searchParams.get("from") ?? "";
      const tags = await fetch(`${upstream}/v2/${from}/tags/list`);
      await tags.body?.cancel();
      if (tags.status === 404) {
        req.resume();
        return send(
          res,
          rec,
          401,
          errorBody("UNAUTHORIZED", `project ${from.split("/")[0]} not found`),
          { "content-type": "application/json" },
        );
      }
    }
    if (method === "PATCH" && p.noPatch) {
      req.resume();
      return send(
        res,
        rec,
        p.noPatch,
        errorBody("UNSUPPORTED", "chunked uploads are not supported; use a monolithic upload"),
        { "content-type": "application/json" },
      );
    }
    if (p.strictDigest && method !== "PUT" && u.searchParams.has("digest")) {
      req.resume();
      return send(res, rec, 400, errorBody("DIGEST_INVALID", "digest only on the commit PUT"));
    }
    let body: Buffer | undefined;
    if (method === "PATCH" && p.patchCap !== undefined) {
      const ranged = req.headers["content-range"] !== undefined ||
        req.headers["transfer-encoding"] === undefined;
      body = await readBody(req, rec, p.uploadRate, ranged ? p.patchCap : undefined);
      if (ranged && body.length > p.patchCap) {
        // Refused once the cap is crossed, without reading the rest (the connection closes).
        res.setHeader("connection", "close");
        const sock = req.socket;
        res.on("finish", () => sock?.end());
        return send(
          res,
          rec,
          416,
          errorBody(
            "SIZE_INVALID",
            "the request body is too large and exceeds the maximum permissible limit of 4.00MiB",
          ),
          { "content-type": "application/json" },
        );
      }
    } else if (method === "PATCH" || method === "PUT" || method === "POST") {
      body = await readBody(req, rec, p.uploadRate);
    } else {
      req.resume();
    }
    const r = await forward(req, `${u.pathname}${u.search}`, body);
    const range = r.headers["range"];
    if (method === "PATCH" && p.stickyRange && range && id) {
      if (!firstRange.has(id)) firstRange.set(id, range);
      r.headers["range"] = firstRange.get(id)!;
    }
    if (method === "GET" && p.stickyRange && firstRange.has(id)) {
      r.headers["range"] = firstRange.get(id)!;
    }
    if (method === "PATCH" && p.patchCreated && r.status === 202) r.status = 201;
    if (method === "POST" && p.chunkMinLength && r.status === 202) {
      r.headers["oci-chunk-min-length"] = String(p.chunkMinLength);
    }
    if (p.quayRanges && range) {
      if (method === "POST") r.headers["range"] = "bytes=0--1";
      if (method === "PATCH") r.headers["range"] = range.replace(/^bytes=/, "");
      if (method === "GET") {
        const end = Number(/(\d+)$/.exec(range)?.[1] ?? -1);
        r.headers["range"] = `bytes=0-${end + 1}`;
      }
    }
    return await reply(res, rec, r);
  };

  const cdn = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const rec = record("cdn", req, res);
    req.resume();
    const u = new URL(req.url ?? "/", cdnUrl);
    if (req.headers.authorization) {
      return send(
        res,
        rec,
        400,
        "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>",
      );
    }
    const m = /^\/blob\/(.+)\/(sha256:[0-9a-f]{64})$/.exec(u.pathname);
    const exp = Number(u.searchParams.get("exp"));
    const sig = m
      ? crypto.createHmac("sha256", secret).update(`${m[1]}/${m[2]}/${exp}`).digest("hex")
      : "";
    if (!m || u.searchParams.get("X-Amz-Signature") !== sig) {
      return send(res, rec, 403, "<Error><Code>SignatureDoesNotMatch</Code></Error>");
    }
    if (Date.now() > exp) {
      return send(
        res,
        rec,
        403,
        "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        { "content-type": "application/xml" },
      );
    }
    const h: Record<string, string> = {};
    if (req.headers.range) h.range = String(req.headers.range);
    const r = await fetch(`${upstream}/v2/${m[1]}/blobs/${m[2]}`, {
      method: req.method,
      headers: h,
    });
    const headers: Record<string, string> = {};
    for (const k of ["content-length", "content-range", "content-type", "etag", "accept-ranges"]) {
      const v = r.headers.get(k);
      if (v) headers[k] = v;
    }
    res.writeHead(r.status, headers);
    if (!r.body || req.method === "HEAD") {
      await r.body?.cancel();
      return res.end();
    }
    for await (const chunk of r.body) {
      rec.bytesOut += chunk.length;
      if (!res.write(chunk)) await new Promise((ok) => res.once("drain", ok));
      if (p.cdnRate) {
        // One rate for the whole CDN, however many connections share it.
        cdnClock = Math.max(cdnClock, Date.now()) + (chunk.length / p.cdnRate) * 1000;
        const wait = cdnClock - Date.now();
        if (wait > 5) await new Promise((ok) => setTimeout(ok, wait));
      }
      if (res.destroyed) break;
    }
    res.end();
  };

  const auth = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const rec = record("auth", req, res);
    return await tokenEndpoint(req, res, rec);
  };

  const sockets = new Set<net.Socket>();
  const wrap =
    (fn: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<unknown>) =>
    (req: http.IncomingMessage, res: http.ServerResponse) => {
      fn(req, res).catch((e) => {
        if (!res.headersSent) {
          res.writeHead(502, { "content-type": "application/json" });
          res.end(errorBody("PROXY", String(e)));
        } else res.destroy();
      });
    };
  const servers = [
    http.createServer(wrap(handle)),
    http.createServer(wrap(cdn)),
    https.createServer(
      { key: await fsp.readFile(tls.key), cert: await fsp.readFile(tls.cert) },
      wrap(auth),
    ),
  ];
  for (const s of servers) {
    s.on("connection", (c) => {
      sockets.add(c);
      c.on("close", () => sockets.delete(c));
    });
  }
  await new Promise<void>((ok) => servers[0].listen(port, "127.0.0.1", ok));
  await new Promise<void>((ok) => servers[1].listen(cport, "127.0.0.2", ok));
  await new Promise<void>((ok) => servers[2].listen(aport, "127.0.0.3", ok));
  return {
    profile: p,
    url,
    host: `127.0.0.1:${port}`,
    cdnUrl,
    authUrl,
    caFile: tls.ca,
    requests,
    tokens,
    async stop() {
      for (const c of sockets) c.destroy();
      await Promise.all(servers.map((s) => new Promise((ok) => s.close(ok))));
      await fsp.rm(tls.dir, { recursive: true, force: true });
    },
  };
}

/** A Docker config.json holding the profile's credentials for `host`, in its shape. */
export function dockerConfigFor(profile: Profile, host: string): string {
  const entry = profile.configShape === "identitytoken"
    ? { auth: Buffer.from(`${profile.user}:`).toString("base64"), identitytoken: profile.password }
    : { auth: Buffer.from(`${profile.user}:${profile.password}`).toString("base64") };
  return JSON.stringify({ auths: { [host]: entry } });
}
