/** An independent pusher (HEAD, POST, PATCH, PUT) that puts fixtures into a registry. */
import * as fsp from "node:fs/promises";
import { Buffer } from "node:buffer";
import { PIECE } from "./bytes.ts";
import { type Fixture } from "./fixtures.ts";

export interface PushOptions {
  /** Inject a fetch (e.g. one trusting a test CA for TLS registries). */
  fetch?: typeof fetch;
}

type BodyFactory = () => BodyInit | null;

// Our buffers never sit on a SharedArrayBuffer, which is all the DOM typing guards against.
const asBody = (u: Uint8Array): BodyInit => u as Uint8Array<ArrayBuffer>;

/** `key="value"` pairs of a WWW-Authenticate challenge, with its scheme. */
export function parseChallenge(header: string): { scheme: string; params: Record<string, string> } {
  const m = /^\s*(\S+)\s*(.*)$/.exec(header);
  const params: Record<string, string> = {};
  if (!m) return { scheme: "", params };
  for (const p of m[2].matchAll(/([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g)) {
    params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, "$1") : p[3];
  }
  return { scheme: m[1].toLowerCase(), params };
}

/** A file streamed in 8 MiB pieces, so multi-GiB blobs never sit in memory. */
function fileStream(file: string): ReadableStream<Uint8Array> {
  let fh: fsp.FileHandle | undefined;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      fh ??= await fsp.open(file, "r");
      const buf = new Uint8Array(PIECE);
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) {
        await fh.close();
        fh = undefined;
        controller.close();
      } else {
        controller.enqueue(buf.subarray(0, bytesRead));
      }
    },
    async cancel() {
      await fh?.close();
      fh = undefined;
    },
  });
}

/** One registry conversation with its own credentials and current Authorization header. */
class Pusher {
  private authorization: string | undefined;
  constructor(
    private readonly base: string,
    private readonly creds: { user: string; pass: string } | undefined,
    private readonly doFetch: typeof fetch,
  ) {}

  private basic(): string | undefined {
    if (!this.creds) return undefined;
    return `Basic ${Buffer.from(`${this.creds.user}:${this.creds.pass}`).toString("base64")}`;
  }

  private async authenticate(challenge: string): Promise<void> {
    const { scheme, params } = parseChallenge(challenge);
    if (scheme === "basic") {
      const basic = this.basic();
      if (!basic) throw new Error("registry wants Basic auth and no credentials were given");
      this.authorization = basic;
      return;
    }
    if (scheme !== "bearer" || !params.realm) {
      throw new Error(`unsupported challenge: ${challenge}`);
    }
    const u = new URL(params.realm);
    if (params.service) u.searchParams.set("service", params.service);
    for (const s of (params.scope ?? "").split(" ").filter(Boolean)) {
      u.searchParams.append("scope", s);
    }
    const headers: Record<string, string> = {};
    const basic = this.basic();
    if (basic) headers.authorization = basic;
    const res = await this.doFetch(u, { headers });
    const text = await res.text();
    if (!res.ok) throw new Error(`token request ${u} → ${res.status}: ${text}`);
    const body = JSON.parse(text) as { token?: string; access_token?: string };
    const tok = body.token ?? body.access_token;
    if (!tok) throw new Error(`token response without a token: ${text}`);
    this.authorization = `Bearer ${tok}`;
  }

  /** Sends once; on 401 authenticates from the challenge and sends again with a fresh body. */
  async send(
    method: string,
    url: string | URL,
    headers: Record<string, string>,
    body?: BodyFactory,
  ) {
    for (let attempt = 0;; attempt++) {
      const h: Record<string, string> = { ...headers };
      if (this.authorization) h.authorization = this.authorization;
      const b = body ? body() : null;
      const init: RequestInit & { duplex?: "half" } = { method, headers: h, body: b };
      if (b instanceof ReadableStream) init.duplex = "half";
      const res = await this.doFetch(new URL(url, this.base), init);
      if (res.status === 401 && attempt === 0) {
        const challenge = res.headers.get("www-authenticate") ?? "";
        await res.body?.cancel();
        await this.authenticate(challenge);
        continue;
      }
      return res;
    }
  }
}

async function expectStatus(res: Response, ok: number[], what: string): Promise<void> {
  if (ok.includes(res.status)) {
    await res.body?.cancel();
    return;
  }
  throw new Error(`${what} → ${res.status}: ${await res.text()}`);
}

/**
 * Pushes a fixture without lib/: HEAD each blob, monolithic upload (POST then PUT ?digest=) of
 * the missing ones, then PUT the manifest with its media type. Handles Basic and token auth.
 */
export async function pushFixture(
  registry: { url: string },
  repo: string,
  tag: string,
  fx: Fixture,
  auth?: { user: string; pass: string },
  opts: PushOptions = {},
): Promise<void> {
  const p = new Pusher(registry.url, auth, opts.fetch ?? fetch);
  for (const blob of fx.blobs) {
    const head = await p.send("HEAD", `/v2/${repo}/blobs/${blob.digest}`, {});
    await head.body?.cancel();
    if (head.status === 200) continue;
    const post = await p.send("POST", `/v2/${repo}/blobs/uploads/`, { "content-length": "0" });
    const location = post.headers.get("location");
    await expectStatus(post, [202], `POST upload for ${blob.digest}`);
    if (!location) throw new Error("upload POST without Location");
    const put = new URL(location, registry.url);
    put.searchParams.set("digest", blob.digest);
    const data = blob.data;
    const file = blob.path;
    const headers: Record<string, string> = { "content-type": "application/octet-stream" };
    let body: BodyFactory;
    if (data) {
      headers["content-length"] = String(data.length);
      body = () => asBody(data);
    } else if (file) {
      body = () => fileStream(file);
    } else {
      throw new Error(`blob ${blob.digest} has neither data nor path`);
    }
    await expectStatus(await p.send("PUT", put, headers, body), [201], `PUT blob ${blob.digest}`);
  }
  const manifest = fx.manifest;
  const res = await p.send("PUT", `/v2/${repo}/manifests/${tag}`, {
    "content-type": fx.mediaType,
  }, () => asBody(manifest));
  await expectStatus(res, [201], `PUT manifest ${repo}:${tag}`);
}
