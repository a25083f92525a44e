/**
 * An emulation of Ollama's registry (registry.ollama.ai / ollama.com) as a proxy in front of the
 * harness's real docker-registry. Behaviours, each from ../shared/REGISTRIES.md "Ollama's
 * registry" and Ollama v0.32.15's client source:
 * - blob GETs answer 307 to another host, a "storage" listener on 127.0.0.2 (same process) with a
 *   presigned-looking query; storage needs no auth and refuses Authorization (S3: "Only one auth
 *   mechanism allowed").
 * - manifests come as `text/plain` without Content-Length.
 * - a token endpoint on the proxy itself (server/auth.go getAuthorizationToken refuses a realm on
 *   another host) verifying Ollama's signed requests: `Authorization: <base64 ssh-wire public
 *   key>:<base64 ed25519 signature>` over `GET,<url>,<base64(hex sha256(""))>` (auth/auth.go Sign).
 * - Bearer challenges on push (and on pull with `challengePulls`); a key may push only to the
 *   namespaces `keys` gives it.
 * - redirected uploads (server/upload.go uploadPart): a PATCH with `X-Redirect-Uploads: 1` gets 307,
 *   `Location` = a presigned PUT URL on storage, `Docker-Upload-Location` = the next session URL;
 *   the parts (maybe in parallel) are held and forwarded into the real registry's upload session at
 *   the commit `PUT ?digest=&etag=`, whose etag (md5 of the parts' md5s, `-<n>`, Run) is checked;
 *   a part PUT without Content-Length gets S3's 411 MissingContentLength.
 */
import * as crypto from "node:crypto";
import * as http from "node:http";
import type * as net from "node:net";
import { Buffer } from "node:buffer";
import { freePort } from "./util.ts";

export interface OllamaRegistryOptions {
  /** Public key (`ssh-ed25519 AAAA…` or just its base64) → namespaces it may push to. */
  keys?: Record<string, string[]>;
  /** Challenge pulls too (anonymous token requests still get pull). Default false. */
  challengePulls?: boolean;
  /** The `service` of the challenge. Default "ollama.com". */
  service?: string;
  /**
   * The base URL clients know this registry by (a test that names it https://registry.ollama.ai
   * and rewrites): signed token URLs are verified against it. Default its own URL.
   */
  publicUrl?: string;
}

export interface OllamaRegistryRequest {
  host: "registry" | "storage";
  method: string;
  url: string;
  status: number;
  authorization?: string;
}

export interface TokenGrant {
  /** The base64 SSH-wire public key that signed, absent when anonymous. */
  key?: string;
  scopes: string[];
  push: string[];
  status: number;
  error?: string;
}

export interface OllamaRegistry {
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT */
  host: string;
  /** http://127.0.0.2:PORT */
  storageUrl: string;
  requests: OllamaRegistryRequest[];
  tokens: TokenGrant[];
  stop(): Promise<void>;
}

interface Upload {
  name: string;
  /** The real registry's session URL. */
  location: string;
  parts: Map<number, Buffer>;
}

interface Token {
  key?: string;
  push: Set<string>;
}

const EMPTY_SHA = Buffer.from(crypto.createHash("sha256").update("").digest("hex")).toString(
  "base64",
);

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function send(
  res: http.ServerResponse,
  status: number,
  body: string | Buffer = "",
  headers: Record<string, string> = {},
): void {
  const b = typeof body === "string" ? Buffer.from(body) : body;
  res.writeHead(status, { "content-length": String(b.length), ...headers });
  res.end(b);
}

function regError(res: http.ServerResponse, status: number, code: string, message: string) {
  send(res, status, JSON.stringify({ errors: [{ code, message }] }), {
    "content-type": "application/json",
  });
}

/** The ed25519 key in an SSH-wire public key blob (string "ssh-ed25519", string key). */
export function wireToKey(wire: Buffer): crypto.KeyObject {
  const tl = wire.readUInt32BE(0);
  const type = wire.subarray(4, 4 + tl).toString();
  if (type !== "ssh-ed25519") throw new Error(`not an ed25519 key: ${type}`);
  const kl = wire.readUInt32BE(4 + tl);
  const raw = wire.subarray(8 + tl, 8 + tl + kl);
  return crypto.createPublicKey({
    key: { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") },
    format: "jwk",
  });
}

/** Verifies a signed token request as Ollama's client makes it (server/auth.go). */
export function verifySignedRequest(url: string, authorization: string): string {
  const colon = authorization.indexOf(":");
  if (colon < 0) throw new Error("authorization is not <pubkey>:<signature>");
  const pub = authorization.slice(0, colon);
  const sig = Buffer.from(authorization.slice(colon + 1), "base64");
  const key = wireToKey(Buffer.from(pub, "base64"));
  const data = Buffer.from(`GET,${url},${EMPTY_SHA}`);
  if (!crypto.verify(null, data, key, sig)) throw new Error("signature does not verify");
  return pub;
}

/** `/v2/<name>/<kind>/<rest>` → parts; name is everything before the kind. */
function route(path: string): { name: string; kind: string; rest: string } | undefined {
  const m = /^\/v2\/(.+?)\/(manifests|blobs\/uploads|blobs)\/?(.*)$/.exec(path);
  return m ? { name: m[1], kind: m[2], rest: m[3] } : undefined;
}

export async function startOllamaRegistry(
  upstream: string,
  opts: OllamaRegistryOptions = {},
): Promise<OllamaRegistry> {
  const [port, sport] = [await freePort(), await freePort()];
  const url = `http://127.0.0.1:${port}`;
  const storageUrl = `http://127.0.0.2:${sport}`;
  const service = opts.service ?? "ollama.com";
  const keys = new Map<string, string[]>();
  for (const [k, ns] of Object.entries(opts.keys ?? {})) {
    keys.set(k.startsWith("ssh-ed25519 ") ? k.split(" ")[1] : k, ns);
  }
  const requests: OllamaRegistryRequest[] = [];
  const tokens: TokenGrant[] = [];
  const issued = new Map<string, Token>();
  const uploads = new Map<string, Upload>();

  const unauthorized = (res: http.ServerResponse, name: string, actions: string) => {
    const scope = `repository:${name}:${actions}`;
    const body = JSON.stringify({
      errors: [{ code: "UNAUTHORIZED", message: "unauthorized: authentication required" }],
    });
    send(res, 401, body, {
      "content-type": "application/json",
      "www-authenticate": `Bearer realm="${url}/token",service="${service}",scope="${scope}"`,
    });
  };
  const bearer = (req: http.IncomingMessage): Token | undefined => {
    const m = /^Bearer\s+(\S+)$/.exec(req.headers.authorization ?? "");
    return m ? issued.get(m[1]) : undefined;
  };
  const mayPush = (req: http.IncomingMessage, name: string) =>
    bearer(req)?.push.has(name.split("/")[0]) ?? false;

  const token = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const full = `${opts.publicUrl ?? url}${req.url}`;
    const q = new URL(full).searchParams;
    const scopes = q.getAll("scope").flatMap((s) => s.split(" ")).filter(Boolean);
    const grant: TokenGrant = { scopes, push: [], status: 200 };
    tokens.push(grant);
    const auth = req.headers.authorization;
    let key: string | undefined;
    if (auth) {
      try {
        key = verifySignedRequest(full, auth);
      } catch (e) {
        grant.status = 401;
        grant.error = (e as Error).message;
        return send(
          res,
          401,
          JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: grant.error }] }),
        );
      }
      if (!q.get("ts") || !q.get("nonce")) {
        grant.status = 400;
        grant.error = "missing ts or nonce";
        return send(
          res,
          400,
          JSON.stringify({ errors: [{ code: "DENIED", message: grant.error }] }),
        );
      }
    }
    grant.key = key;
    const own = new Set(key ? keys.get(key) ?? [] : []);
    for (const s of scopes) {
      const [, name = "", actions = ""] = s.split(":");
      const ns = name.split("/")[0];
      if (actions.includes("push") && own.has(ns)) grant.push.push(ns);
    }
    const t = crypto.randomBytes(24).toString("base64url");
    issued.set(t, { key, push: new Set(grant.push) });
    send(res, 200, JSON.stringify({ token: t }), { "content-type": "application/json" });
  };

  const forward = async (
    method: string,
    path: string,
    headers: Record<string, string>,
    body?: Buffer,
  ) => {
    const target = path.startsWith("http") ? path : `${upstream}${path}`;
    return await fetch(target, {
      method,
      headers,
      body: body ? new Uint8Array(body) : undefined,
      redirect: "manual",
    });
  };

  const relay = async (res: http.ServerResponse, r: Response, textPlain = false, head = false) => {
    const body = Buffer.from(await r.arrayBuffer());
    const h: Record<string, string> = {};
    r.headers.forEach((v, k) => {
      if (!["content-length", "connection", "transfer-encoding", "keep-alive"].includes(k)) {
        h[k] = v;
      }
    });
    const length = r.headers.get("content-length");
    if (head && length !== null) {
      res.writeHead(r.status, { ...h, "content-length": length });
      res.end();
      return;
    }
    if (textPlain) {
      // Ollama's registry: text/plain, no Content-Length (ollama/ollama#6470).
      h["content-type"] = "text/plain; charset=utf-8";
      res.writeHead(r.status, h);
      if (body.length) res.write(body);
      res.end();
      return;
    }
    send(res, r.status, body, h);
  };

  const manifests = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    name: string,
    ref: string,
  ) => {
    const method = req.method ?? "GET";
    if (method === "PUT" || method === "DELETE") {
      if (!mayPush(req, name)) return unauthorized(res, name, "pull,push");
      const body = await readBody(req);
      const r = await forward(method, `/v2/${name}/manifests/${ref}`, {
        "content-type": req.headers["content-type"] ??
          "application/vnd.docker.distribution.manifest.v2+json",
      }, body);
      return relay(res, r);
    }
    req.resume();
    const r = await forward(method, `/v2/${name}/manifests/${ref}`, {
      accept: req.headers.accept ??
        "application/vnd.docker.distribution.manifest.v2+json",
    });
    if (method === "HEAD") return relay(res, r, false, true);
    return relay(res, r, r.ok);
  };

  const blobs = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    name: string,
    digest: string,
  ) => {
    req.resume();
    if (req.method === "GET") {
      // server/download.go: a 307 to another host is where Ollama reads the Location.
      const sig = crypto.randomBytes(16).toString("hex");
      const loc = `${storageUrl}/blob/${name}/${digest}?X-Amz-Algorithm=AWS4-HMAC-SHA256` +
        `&X-Amz-Expires=86400&X-Amz-Signature=${sig}`;
      return send(res, 307, "", { location: loc });
    }
    const r = await forward(req.method ?? "HEAD", `/v2/${name}/blobs/${digest}`, {});
    return relay(res, r, false, req.method === "HEAD");
  };

  const uploadUrl = (name: string, id: string) => `${url}/v2/${name}/blobs/uploads/${id}`;

  const startUpload = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    name: string,
    search: string,
  ) => {
    req.resume();
    if (!mayPush(req, name)) return unauthorized(res, name, "pull,push");
    const r = await forward("POST", `/v2/${name}/blobs/uploads/${search}`, {});
    if (r.status !== 202) return relay(res, r);
    await r.body?.cancel();
    const id = crypto.randomUUID();
    const location = new URL(r.headers.get("location") ?? "", upstream).toString();
    uploads.set(id, { name, location, parts: new Map() });
    const next = uploadUrl(name, id);
    send(res, 202, "", { location: next, "docker-upload-location": next, range: "0-0" });
  };

  const patchUpload = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    up: Upload,
    id: string,
  ) => {
    const next = uploadUrl(up.name, id);
    if (req.headers["x-redirect-uploads"] === "1") {
      req.resume();
      const m = /^(?:bytes=)?(\d+)-(\d+)$/.exec(String(req.headers["content-range"] ?? ""));
      if (!m) return regError(res, 400, "BLOB_UPLOAD_INVALID", "Content-Range start-end required");
      const sig = crypto.randomBytes(16).toString("hex");
      const loc = `${storageUrl}/part/${id}/${m[1]}?X-Amz-Algorithm=AWS4-HMAC-SHA256` +
        `&X-Amz-Expires=86400&X-Amz-Signature=${sig}`;
      return send(res, 307, "", { location: loc, "docker-upload-location": next });
    }
    const body = await readBody(req);
    const end = [...up.parts].reduce((n, [o, b]) => Math.max(n, o + b.length), 0);
    up.parts.set(end, body);
    const total = end + body.length;
    send(res, 202, "", {
      location: next,
      "docker-upload-location": next,
      range: `0-${Math.max(0, total - 1)}`,
    });
  };

  const commitUpload = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    up: Upload,
    id: string,
    q: URLSearchParams,
  ) => {
    const body = await readBody(req);
    if (body.length) {
      const end = [...up.parts].reduce((n, [o, b]) => Math.max(n, o + b.length), 0);
      up.parts.set(end, body);
    }
    const ordered = [...up.parts].sort((a, b) => a[0] - b[0]);
    let at = 0;
    for (const [o, b] of ordered) {
      if (o !== at) return regError(res, 400, "BLOB_UPLOAD_INVALID", `gap or overlap at ${at}`);
      at += b.length;
    }
    const etag = q.get("etag");
    if (etag !== null) {
      const outer = crypto.createHash("md5");
      for (const [, b] of ordered) outer.update(crypto.createHash("md5").update(b).digest());
      const want = `${outer.digest("hex")}-${ordered.length}`;
      if (etag !== want) {
        return regError(res, 400, "BLOB_UPLOAD_INVALID", `etag ${etag} != ${want}`);
      }
    }
    const all = Buffer.concat(ordered.map(([, b]) => b));
    let loc = up.location;
    if (all.length) {
      const p = await forward("PATCH", loc, { "content-type": "application/octet-stream" }, all);
      if (p.status !== 202) return relay(res, p);
      await p.body?.cancel();
      loc = new URL(p.headers.get("location") ?? loc, upstream).toString();
    }
    const u = new URL(loc);
    u.searchParams.set("digest", q.get("digest") ?? "");
    const r = await forward("PUT", u.toString(), { "content-length": "0" });
    if (r.status === 201) uploads.delete(id);
    return relay(res, r);
  };

  const uploadsRoute = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    name: string,
    rest: string,
    q: URLSearchParams,
    search: string,
  ) => {
    if (rest === "" && req.method === "POST") return await startUpload(req, res, name, search);
    if (!mayPush(req, name)) {
      req.resume();
      return unauthorized(res, name, "pull,push");
    }
    const up = uploads.get(rest);
    if (!up) {
      req.resume();
      return regError(res, 404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown");
    }
    if (req.method === "PATCH") return patchUpload(req, res, up, rest);
    if (req.method === "PUT") return commitUpload(req, res, up, rest, q);
    req.resume();
    const end = [...up.parts].reduce((n, [o, b]) => Math.max(n, o + b.length), 0);
    send(res, 204, "", { range: `0-${Math.max(0, end - 1)}`, location: uploadUrl(name, rest) });
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const u = new URL(req.url ?? "/", url);
    const rec: OllamaRegistryRequest = {
      host: "registry",
      method: req.method ?? "GET",
      url: req.url ?? "/",
      status: 0,
      authorization: req.headers.authorization,
    };
    requests.push(rec);
    res.on("finish", () => rec.status = res.statusCode);
    if (u.pathname === "/token") return token(req, res);
    if (u.pathname === "/v2/" || u.pathname === "/v2") {
      req.resume();
      return send(res, 200, "{}", { "content-type": "application/json" });
    }
    const r = route(u.pathname);
    if (!r) {
      req.resume();
      return regError(res, 404, "NOT_FOUND", "not found");
    }
    if (opts.challengePulls && !bearer(req) && (req.method === "GET" || req.method === "HEAD")) {
      req.resume();
      return unauthorized(res, r.name, "pull");
    }
    if (r.kind === "manifests") return manifests(req, res, r.name, r.rest);
    if (r.kind === "blobs") return blobs(req, res, r.name, r.rest);
    return await uploadsRoute(req, res, r.name, r.rest, u.searchParams, u.search);
  };

  const storage = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const u = new URL(req.url ?? "/", storageUrl);
    const rec: OllamaRegistryRequest = {
      host: "storage",
      method: req.method ?? "GET",
      url: req.url ?? "/",
      status: 0,
      authorization: req.headers.authorization,
    };
    requests.push(rec);
    res.on("finish", () => rec.status = res.statusCode);
    if (req.headers.authorization) {
      req.resume();
      // S3/R2 refuse a presigned query next to an Authorization header.
      return send(
        res,
        400,
        "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>",
      );
    }
    if (!u.searchParams.get("X-Amz-Signature")) {
      req.resume();
      return send(res, 403, "<Error><Code>AccessDenied</Code></Error>");
    }
    const part = /^\/part\/([^/]+)\/(\d+)$/.exec(u.pathname);
    if (part && req.method === "PUT") {
      if (req.headers["content-length"] === undefined) {
        // S3 and R2 want the length of a presigned PUT up front (no chunked bodies).
        req.resume();
        return send(res, 411, "<Error><Code>MissingContentLength</Code></Error>");
      }
      const up = uploads.get(part[1]);
      const body = await readBody(req);
      if (!up) return send(res, 404, "<Error><Code>NoSuchUpload</Code></Error>");
      up.parts.set(Number(part[2]), body);
      const md5 = crypto.createHash("md5").update(body).digest("hex");
      return send(res, 200, "", { etag: `"${md5}"` });
    }
    const blob = /^\/blob\/(.+)\/(sha256:[0-9a-f]{64})$/.exec(u.pathname);
    if (blob && (req.method === "GET" || req.method === "HEAD")) {
      req.resume();
      const h: Record<string, string> = {};
      if (req.headers.range) h.range = String(req.headers.range);
      const r = await fetch(`${upstream}/v2/${blob[1]}/blobs/${blob[2]}`, {
        method: req.method,
        headers: h,
      });
      const headers: Record<string, string> = {};
      for (
        const k of ["content-length", "content-range", "content-type", "etag", "accept-ranges"]
      ) {
        const v = r.headers.get(k);
        if (v) headers[k] = v;
      }
      res.writeHead(r.status, headers);
      if (!r.body || req.method === "HEAD") {
        await r.body?.cancel();
        return res.end();
      }
      for await (const chunk of r.body) {
        if (!res.write(chunk)) await new Promise((ok) => res.once("drain", ok));
      }
      res.end();
      return;
    }
    req.resume();
    send(res, 404, "<Error><Code>NoSuchKey</Code></Error>");
  };

  const sockets = new Set<net.Socket>();
  const wrap =
    (fn: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<unknown>) =>
    (req: http.IncomingMessage, res: http.ServerResponse) => {
      fn(req, res).catch((e) => {
        if (!res.headersSent) regError(res, 502, "PROXY", String(e));
        else res.destroy();
      });
    };
  const server = http.createServer(wrap(handle));
  const store = http.createServer(wrap(storage));
  for (const s of [server, store]) {
    s.on("connection", (c) => {
      sockets.add(c);
      c.on("close", () => sockets.delete(c));
    });
  }
  await new Promise<void>((ok) => server.listen(port, "127.0.0.1", ok));
  await new Promise<void>((ok) => store.listen(sport, "127.0.0.2", ok));
  return {
    url,
    host: `127.0.0.1:${port}`,
    storageUrl,
    requests,
    tokens,
    async stop() {
      for (const c of sockets) c.destroy();
      await Promise.all([server, store].map((s) => new Promise((ok) => s.close(ok))));
    },
  };
}
