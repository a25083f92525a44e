/** A Docker token server (distribution's token auth spec) issuing real ES256 JWTs. */
import * as crypto from "node:crypto";
import * as fsp from "node:fs/promises";
import * as http from "node:http";
import * as net from "node:net";
import { Buffer } from "node:buffer";
import { b64url } from "./util.ts";

export interface TokenRequest {
  scope: string[];
  user?: string;
  method: string;
  /** What the issued token grants, "type:name:actions" (absent when the request failed). */
  granted?: string[];
  status: number;
}

export interface TokenServer {
  url: string;
  requests: TokenRequest[];
  failNext(n: number, status?: number): void;
  stop(): Promise<void>;
}

export interface TokenServerOptions {
  service: string;
  issuer: string;
  keyFile: string;
  certFile: string;
  users: Record<string, string>;
  /** Anonymous clients get `pull` (default true). */
  anonymousPull?: boolean;
  /** Token lifetime in seconds (default 300). */
  expiresIn?: number;
}

interface Access {
  type: string;
  name: string;
  actions: string[];
}

/** "repository:ns/name:pull,push" → Access; the name is what lies between first and last colon. */
function parseScope(scope: string): Access | undefined {
  const first = scope.indexOf(":");
  const last = scope.lastIndexOf(":");
  if (first < 0 || last <= first) return undefined;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope.slice(last + 1).split(",").filter((a) => a !== ""),
  };
}

/**
 * A Docker token server (the `auth.token` realm), signing ES256 JWTs with the key whose
 * certificate the registry trusts. The x5c header carries that certificate: distribution 2.8
 * verifies the chain in x5c against its rootcertbundle and then the signature with the leaf key.
 */
export async function startTokenServer(opts: TokenServerOptions): Promise<TokenServer> {
  const key = crypto.createPrivateKey(await fsp.readFile(opts.keyFile));
  const certPem = await fsp.readFile(opts.certFile, "utf8");
  const certDer = certPem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, "");
  const isEc = key.asymmetricKeyType === "ec";
  const header = b64url(
    JSON.stringify({ typ: "JWT", alg: isEc ? "ES256" : "RS256", x5c: [certDer] }),
  );
  const anonymousPull = opts.anonymousPull ?? true;
  const expiresIn = opts.expiresIn ?? 300;
  const requests: TokenRequest[] = [];
  const refreshTokens = new Map<string, string>();
  let failures = 0;
  let failStatus = 500;

  const sign = (sub: string, access: Access[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: opts.issuer,
      sub,
      aud: opts.service,
      exp: now + expiresIn,
      nbf: now - 5,
      iat: now,
      jti: crypto.randomUUID(),
      access,
    };
    const input = `${header}.${b64url(JSON.stringify(claims))}`;
    const sig = crypto.sign(
      "sha256",
      Buffer.from(input),
      isEc ? { key, dsaEncoding: "ieee-p1363" } : key,
    );
    return `${input}.${b64url(sig)}`;
  };

  const grant = (user: string | undefined, scopes: string[]): Access[] => {
    const out: Access[] = [];
    for (const s of scopes) {
      const a = parseScope(s);
      if (!a) continue;
      const actions = user !== undefined
        ? a.actions
        : anonymousPull && a.type === "repository"
        ? a.actions.filter((x) => x === "pull")
        : [];
      out.push({ ...a, actions });
    }
    return out;
  };

  const send = (
    res: http.ServerResponse,
    status: number,
    body: unknown,
    extra: Record<string, string> = {},
  ) => {
    const text = JSON.stringify(body);
    // Connection: close so stop() never waits on an idle keep-alive connection.
    res.writeHead(status, {
      "content-type": "application/json",
      "content-length": String(Buffer.byteLength(text)),
      connection: "close",
      ...extra,
    });
    res.end(text);
  };

  const handle = (req: http.IncomingMessage, res: http.ServerResponse, body: string) => {
    const url = new URL(req.url ?? "/", "http://token.invalid");
    const method = req.method ?? "GET";
    let scopes = url.searchParams.getAll("scope").flatMap((s) => s.split(" ")).filter(Boolean);
    const record: TokenRequest = { scope: scopes, method, status: 0 };
    requests.push(record);
    if (failures > 0) {
      failures--;
      record.status = failStatus;
      return send(res, failStatus, {
        errors: [{ code: "UNAVAILABLE", message: "injected failure" }],
      });
    }

    let user: string | undefined;
    let password: string | undefined;
    let refreshUser: string | undefined;
    let isPost = false;
    if (method === "POST") {
      // OAuth2 variant: form body, scopes space-separated.
      isPost = true;
      const form = new URLSearchParams(body);
      scopes = (form.get("scope") ?? "").split(" ").filter(Boolean);
      record.scope = scopes;
      const grantType = form.get("grant_type");
      if (grantType === "password") {
        user = form.get("username") ?? "";
        password = form.get("password") ?? "";
      } else if (grantType === "refresh_token") {
        refreshUser = refreshTokens.get(form.get("refresh_token") ?? "");
        if (refreshUser === undefined) {
          record.status = 401;
          return send(res, 401, { error: "invalid_grant" });
        }
      } else {
        record.status = 400;
        return send(res, 400, { error: "unsupported_grant_type" });
      }
    } else if (method === "GET") {
      const auth = req.headers.authorization ?? "";
      const m = /^Basic\s+(\S+)$/i.exec(auth);
      if (m) {
        const decoded = Buffer.from(m[1], "base64").toString("utf8");
        const colon = decoded.indexOf(":");
        user = colon < 0 ? decoded : decoded.slice(0, colon);
        password = colon < 0 ? "" : decoded.slice(colon + 1);
      }
    } else {
      record.status = 405;
      return send(res, 405, { error: "method not allowed" });
    }

    if (user !== undefined) {
      record.user = user;
      if (!Object.hasOwn(opts.users, user) || opts.users[user] !== password) {
        record.status = 401;
        return send(res, 401, { errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] }, {
          "www-authenticate": 'Basic realm="haul-test-token"',
        });
      }
    }
    const subject = user ?? refreshUser;
    if (refreshUser !== undefined) record.user = refreshUser;
    const access = grant(subject, scopes);
    record.granted = access.map((a) => `${a.type}:${a.name}:${a.actions.join(",")}`);
    record.status = 200;
    const token = sign(subject ?? "", access);
    const out: Record<string, unknown> = {
      token,
      access_token: token,
      expires_in: expiresIn,
      issued_at: new Date().toISOString(),
    };
    if (isPost && subject !== undefined) {
      const refresh = crypto.randomUUID();
      refreshTokens.set(refresh, subject);
      out.refresh_token = refresh;
    }
    send(res, 200, out);
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => handle(req, res, Buffer.concat(chunks).toString("utf8")));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  let stopped = false;
  return {
    url: `http://127.0.0.1:${port}/token`,
    requests,
    failNext(n: number, status = 500) {
      failures = n;
      failStatus = status;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      });
    },
  };
}
