/**
 * upload(): the request sequence against an in-process registry (a plain
 * `(Request) => Response` handler injected as the bottom `fetch`), so requests,
 * bodies and failures are counted and injected exactly.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { parseUploadRange, upload, uploadStatePath, withDigest } from "../../lib/upload/upload.ts";
import type { ProgressEvent } from "../../lib/progress_events.ts";
import { IntegrityError, RegistryError } from "../../lib/errors.ts";
import { tmpDir } from "../support/harness.ts";

const BASE = "http://registry.test";
const KiB = 1024;

const digestOf = (b: Uint8Array) => "sha256:" + createHash("sha256").update(b).digest("hex");

function bytes(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

interface Logged {
  method: string;
  url: string;
  headers: Headers;
  body: Uint8Array;
}

/** A minimal distribution-like registry in memory. */
class FakeRegistry {
  blobs = new Map<string, Map<string, Uint8Array>>(); // repo → digest → bytes
  manifests = new Map<string, { type: string; body: Uint8Array }>();
  sessions = new Map<string, { repo: string; data: Uint8Array[]; size: number }>();
  log: Logged[] = [];
  /** Return a Response to replace the normal answer, throw to fail the connection. */
  fault?: (req: Logged, n: number) => Response | undefined;
  /** Answer each PATCH with a relative Location carrying a query (as distribution does). */
  relative = true;
  #next = 1;

  has(repo: string, digest: string) {
    return this.blobs.get(repo)?.has(digest) ?? false;
  }
  put(repo: string, digest: string, data: Uint8Array) {
    if (!this.blobs.has(repo)) this.blobs.set(repo, new Map());
    this.blobs.get(repo)!.set(digest, data);
  }

  #loc(id: string, size: number) {
    const p = `/v2/${this.sessions.get(id)!.repo}/blobs/uploads/${id}?_state=${id}.${size}`;
    return this.relative ? p : BASE + p;
  }

  fetch = async (req: Request): Promise<Response> => {
    const body = new Uint8Array(await req.arrayBuffer());
    const u = new URL(req.url);
    const logged: Logged = { method: req.method, url: req.url, headers: req.headers, body };
    this.log.push(logged);
    const injected = this.fault?.(logged, this.log.length);
    if (injected) return injected;
    const err = (status: number, code: string) =>
      new Response(JSON.stringify({ errors: [{ code, message: code.toLowerCase() }] }), {
        status,
        headers: { "content-type": "application/json" },
      });
    let m = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(u.pathname);
    if (m && (req.method === "HEAD" || req.method === "GET")) {
      const data = this.blobs.get(m[1])?.get(m[2]);
      if (!data) return new Response(null, { status: 404 });
      return new Response(req.method === "HEAD" ? null : data as Uint8Array<ArrayBuffer>, {
        headers: { "content-length": String(data.byteLength) },
      });
    }
    m = /^\/v2\/(.+)\/blobs\/uploads\/$/.exec(u.pathname);
    if (m && req.method === "POST") {
      const mount = u.searchParams.get("mount");
      const from = u.searchParams.get("from");
      if (mount && from && this.has(from, mount)) {
        this.put(m[1], mount, this.blobs.get(from)!.get(mount)!);
        return new Response(null, {
          status: 201,
          headers: { location: `/v2/${m[1]}/blobs/${mount}` },
        });
      }
      const id = `u${this.#next++}`;
      this.sessions.set(id, { repo: m[1], data: [], size: 0 });
      return new Response(null, {
        status: 202,
        headers: { location: this.#loc(id, 0), range: "0-0" },
      });
    }
    m = /^\/v2\/(.+)\/blobs\/uploads\/(u\d+)$/.exec(u.pathname);
    if (m) {
      const s = this.sessions.get(m[2]);
      if (!s) return err(404, "BLOB_UPLOAD_UNKNOWN");
      const range = () => `0-${Math.max(0, s.size - 1)}`;
      if (req.method === "GET") {
        return new Response(null, {
          status: 204,
          headers: { location: this.#loc(m[2], s.size), range: range() },
        });
      }
      if (req.method === "PATCH" || req.method === "PUT") {
        if (body.byteLength) {
          s.data.push(body);
          s.size += body.byteLength;
        }
        if (req.method === "PATCH") {
          return new Response(null, {
            status: 202,
            headers: { location: this.#loc(m[2], s.size), range: range() },
          });
        }
        const want = u.searchParams.get("digest")!;
        const all = new Uint8Array(s.size);
        let o = 0;
        for (const c of s.data) {
          all.set(c, o);
          o += c.byteLength;
        }
        this.sessions.delete(m[2]);
        if (digestOf(all) !== want) return err(400, "DIGEST_INVALID");
        this.put(s.repo, want, all);
        return new Response(null, { status: 201, headers: { "docker-content-digest": want } });
      }
      if (req.method === "DELETE") {
        this.sessions.delete(m[2]);
        return new Response(null, { status: 204 });
      }
    }
    m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(u.pathname);
    if (m && req.method === "PUT") {
      const doc = JSON.parse(new TextDecoder().decode(body));
      for (const d of [doc.config, ...doc.layers]) {
        if (!this.has(m[1], d.digest)) return err(400, "MANIFEST_BLOB_UNKNOWN");
      }
      this.manifests.set(`${m[1]}:${m[2]}`, {
        type: req.headers.get("content-type") ?? "",
        body,
      });
      return new Response(null, {
        status: 201,
        headers: { "docker-content-digest": digestOf(body) },
      });
    }
    return err(405, "UNSUPPORTED");
  };

  count(method: string, re?: RegExp) {
    return this.log.filter((l) => l.method === method && (!re || re.test(l.url))).length;
  }
  sent() {
    return this.log.filter((l) => l.method === "PATCH" || l.method === "PUT")
      .reduce((a, l) => a + l.body.byteLength, 0);
  }
}

async function withBlobs<T>(
  sizes: number[],
  fn: (dir: string, blobs: { digest: string; size: number; data: Uint8Array }[]) => Promise<T>,
): Promise<T> {
  const dir = await tmpDir("haul-upload-test");
  try {
    const blobs = [];
    for (const [i, size] of sizes.entries()) {
      const data = bytes(size, i + 1);
      const digest = digestOf(data);
      await fsp.writeFile(path.join(dir, digest.replace(":", "-")), data);
      blobs.push({ digest, size, data });
    }
    return await fn(dir, blobs);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

const quick = { maxRetries: 3, baseDelayMs: 1, maxDelayMs: 5 };

Deno.test("withDigest() appends with & when the Location has a query, ? otherwise", () => {
  const d = "sha256:" + "a".repeat(64);
  assert.equal(
    withDigest("http://r/v2/x/blobs/uploads/1", d),
    `http://r/v2/x/blobs/uploads/1?digest=sha256%3A${"a".repeat(64)}`,
  );
  assert.equal(
    withDigest("http://r/u?_state=a%3Db", d),
    `http://r/u?_state=a%3Db&digest=sha256%3A${"a".repeat(64)}`,
  );
  assert.equal(
    withDigest("http://r/u?x=1#frag", d),
    `http://r/u?x=1&digest=sha256%3A${"a".repeat(64)}`,
  );
});

Deno.test("parseUploadRange() reads 0-N as N+1 bytes and 0-0 by the hint", () => {
  assert.equal(parseUploadRange("0-1048575"), 1048576);
  assert.equal(parseUploadRange("bytes=0-99"), 100);
  assert.equal(parseUploadRange("0-0"), 0);
  assert.equal(parseUploadRange("0-0", 1), 1);
  assert.equal(parseUploadRange(null), undefined);
  assert.equal(parseUploadRange("5-9"), undefined);
  assert.equal(parseUploadRange("0-x"), undefined);
});

Deno.test("upload() skips present blobs, mounts from `from`, sends the rest, then the manifest", async () => {
  await withBlobs([100, 200, 300], async (dir, [a, b, c]) => {
    const reg = new FakeRegistry();
    reg.put("dst/m", a.digest, a.data);
    reg.put("src/m", b.digest, b.data);
    const manifest = new TextEncoder().encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.docker.distribution.manifest.v2+json",
      config: { digest: a.digest, size: a.size },
      layers: [{ digest: b.digest, size: b.size }, { digest: c.digest, size: c.size }],
    }));
    const events: ProgressEvent[] = [];
    const res = await upload({
      blobs: [a, b, c].map((x) => ({ digest: x.digest, size: x.size, from: "src/m" })),
      baseUrl: BASE,
      repository: "dst/m",
      srcDir: dir,
      fetch: reg.fetch,
      credential: null,
      manifest,
      manifestRef: "v1",
      onEvent: (e) => events.push(e),
    });
    assert.deepEqual(
      { skipped: res.skipped, mounted: res.mounted, uploaded: res.uploaded, sent: res.transferred },
      { skipped: 1, mounted: 1, uploaded: 1, sent: 300 },
    );
    assert.equal(reg.sent(), 300 + manifest.byteLength);
    assert.equal(reg.count("PATCH"), 0, "a small blob goes up in one PUT");
    const m = reg.manifests.get("dst/m:v1")!;
    assert.equal(m.type, "application/vnd.docker.distribution.manifest.v2+json");
    assert.deepEqual(m.body, manifest);
    assert.equal(res.manifestDigest, digestOf(manifest));
    // The manifest goes up last.
    assert.match(reg.log.at(-1)!.url, /\/manifests\/v1$/);
    const done = events.filter((e) => e.type === "blob-done");
    assert.equal(done.length, 3);
    assert.ok(done.some((e) => e.type === "blob-done" && e.mounted === true));
    assert.deepEqual(events.filter((e) => e.type === "manifest-write"), [
      { type: "manifest-write", op: "push" },
    ]);
  });
});

Deno.test("upload() sends a large blob as PATCH chunks following each Location, then PUT ?digest=", async () => {
  await withBlobs([300 * KiB + 5], async (dir, [blob]) => {
    const reg = new FakeRegistry();
    const res = await upload({
      blobs: [blob],
      baseUrl: BASE,
      repository: "a/b",
      srcDir: dir,
      chunkSize: 64 * KiB,
      fetch: reg.fetch,
      credential: null,
    });
    assert.equal(res.uploaded, 1);
    const patches = reg.log.filter((l) => l.method === "PATCH");
    assert.equal(patches.length, 5);
    let offset = 0;
    for (const p of patches) {
      assert.equal(p.headers.get("content-type"), "application/octet-stream");
      assert.equal(p.headers.get("content-length"), String(p.body.byteLength));
      assert.equal(p.headers.get("content-range"), `${offset}-${offset + p.body.byteLength - 1}`);
      // Each PATCH goes to the Location the previous answer gave (its _state carries the offset).
      assert.ok(p.url.startsWith(`${BASE}/v2/a/b/blobs/uploads/u1?_state=u1.${offset}`), p.url);
      offset += p.body.byteLength;
    }
    const put = reg.log.find((l) => l.method === "PUT")!;
    assert.equal(put.body.byteLength, 0);
    assert.equal(
      put.url,
      `${BASE}/v2/a/b/blobs/uploads/u1?_state=u1.${blob.size}&digest=${
        encodeURIComponent(blob.digest)
      }`,
    );
    assert.deepEqual(reg.blobs.get("a/b")!.get(blob.digest), blob.data);
    const files = await fsp.readdir(dir);
    assert.deepEqual(files, [blob.digest.replace(":", "-")], "state file removed at the end");
  });
});

Deno.test("upload() asks the session after a failed PATCH and continues from the registry's offset", async () => {
  await withBlobs([256 * KiB], async (dir, [blob]) => {
    const reg = new FakeRegistry();
    let patches = 0;
    reg.fault = (req) => {
      if (req.method === "PATCH" && ++patches === 3) {
        throw new TypeError("connection reset by peer");
      }
      return undefined;
    };
    const res = await upload({
      blobs: [blob],
      baseUrl: BASE,
      repository: "a/b",
      srcDir: dir,
      chunkSize: 64 * KiB,
      fetch: reg.fetch,
      credential: null,
      retry: quick,
    });
    assert.deepEqual(reg.blobs.get("a/b")!.get(blob.digest), blob.data);
    assert.equal(reg.count("POST"), 1, "the same session went on");
    assert.equal(reg.count("GET", /uploads\/u1/), 1, "asked where the session stands");
    assert.equal(res.transferred, blob.size + 64 * KiB, "only the failed chunk went twice");
  });
});

Deno.test("upload() starts a new session when the registry forgot the old one", async () => {
  await withBlobs([256 * KiB], async (dir, [blob]) => {
    const reg = new FakeRegistry();
    let patches = 0;
    reg.fault = (req) => {
      if (req.method === "PATCH" && ++patches === 3) {
        reg.sessions.delete("u1"); // distribution after a cut-off chunk: BLOB_UPLOAD_INVALID
        throw new TypeError("connection reset by peer");
      }
      return undefined;
    };
    const events: ProgressEvent[] = [];
    await upload({
      blobs: [blob],
      baseUrl: BASE,
      repository: "a/b",
      srcDir: dir,
      chunkSize: 64 * KiB,
      fetch: reg.fetch,
      credential: null,
      retry: quick,
      onEvent: (e) => events.push(e),
    });
    assert.deepEqual(reg.blobs.get("a/b")!.get(blob.digest), blob.data);
    assert.equal(reg.count("POST"), 2);
    assert.ok(events.some((e) => e.type === "retry"));
    const progress = events.filter((e) => e.type === "blob-progress").map((e) =>
      e.type === "blob-progress" ? e.completed : -1
    );
    assert.ok(progress.includes(0), "completed went back to 0 for the new session");
  });
});

Deno.test("upload() resumes a session saved by an earlier run; a stale one is replaced", async () => {
  await withBlobs([256 * KiB], async (dir, [blob]) => {
    const reg = new FakeRegistry();
    const ac = new AbortController();
    let patches = 0;
    reg.fault = (req) => {
      if (req.method === "PATCH" && ++patches === 3) {
        ac.abort(); // the process dies while the third chunk is on its way
        throw new DOMException("aborted", "AbortError");
      }
      return undefined;
    };
    await assert.rejects(
      upload({
        blobs: [blob],
        baseUrl: BASE,
        repository: "a/b",
        srcDir: dir,
        chunkSize: 64 * KiB,
        fetch: reg.fetch,
        credential: null,
        signal: ac.signal,
      }),
      { name: "InterruptedError" },
    );
    const statePath = uploadStatePath(dir, blob.digest, BASE, "a/b");
    const saved = JSON.parse(await fsp.readFile(statePath, "utf8"));
    assert.equal(saved.offset, 128 * KiB);
    reg.fault = undefined;
    reg.log = [];
    const res = await upload({
      blobs: [blob],
      baseUrl: BASE,
      repository: "a/b",
      srcDir: dir,
      chunkSize: 64 * KiB,
      fetch: reg.fetch,
      credential: null,
    });
    assert.equal(res.resumed, 1);
    assert.equal(reg.count("POST"), 0);
    assert.equal(res.transferred, 128 * KiB);
    assert.deepEqual(reg.blobs.get("a/b")!.get(blob.digest), blob.data);
    await assert.rejects(fsp.stat(statePath));

    // A state file naming a session the registry no longer has: start over.
    await fsp.writeFile(
      statePath,
      JSON.stringify({ ...saved, location: `${BASE}/v2/a/b/blobs/uploads/u99?_state=x` }),
    );
    reg.blobs.clear();
    reg.log = [];
    const again = await upload({
      blobs: [blob],
      baseUrl: BASE,
      repository: "a/b",
      srcDir: dir,
      chunkSize: 64 * KiB,
      fetch: reg.fetch,
      credential: null,
    });
    assert.equal(again.resumed, 0);
    assert.equal(again.transferred, blob.size);
    assert.deepEqual(reg.blobs.get("a/b")!.get(blob.digest), blob.data);
  });
});

Deno.test("upload() replays a chunk after a 401 with a fresh token", async () => {
  await withBlobs([128 * KiB], async (dir, [blob]) => {
    const reg = new FakeRegistry();
    let tokens = 0;
    let refused = false;
    const realm = "http://auth.test/token";
    const fetch = (req: Request): Promise<Response> => {
      if (req.url.startsWith(realm)) {
        tokens++;
        return Promise.resolve(Response.json({ token: `t${tokens}`, expires_in: 300 }));
      }
      // The first PATCH is refused as if its token had expired.
      if (req.method === "PATCH" && !refused) {
        refused = true;
        return Promise.resolve(
          new Response(null, {
            status: 401,
            headers: {
              "www-authenticate":
                `Bearer realm="${realm}",service="t",scope="repository:a/b:pull,push"`,
            },
          }),
        );
      }
      return reg.fetch(req);
    };
    await upload({
      blobs: [blob],
      baseUrl: BASE,
      repository: "a/b",
      srcDir: dir,
      chunkSize: 64 * KiB,
      fetch,
      token: "t0",
      credential: null,
    });
    assert.equal(tokens, 1);
    assert.deepEqual(reg.blobs.get("a/b")!.get(blob.digest), blob.data);
    const patches = reg.log.filter((l) => l.method === "PATCH");
    assert.equal(patches.length, 2, "the refused chunk was replayed, not skipped");
    assert.equal(patches[0].headers.get("authorization"), "Bearer t1");
  });
});

Deno.test("upload() reports a refused manifest as a RegistryError and a corrupt blob as an IntegrityError", async () => {
  await withBlobs([100], async (dir, [a]) => {
    const reg = new FakeRegistry();
    const missing = "sha256:" + "b".repeat(64);
    const manifest = new TextEncoder().encode(JSON.stringify({
      schemaVersion: 2,
      config: { digest: a.digest, size: a.size },
      layers: [{ digest: missing, size: 1 }],
    }));
    await assert.rejects(
      upload({
        blobs: [a],
        baseUrl: BASE,
        repository: "a/b",
        srcDir: dir,
        fetch: reg.fetch,
        credential: null,
        manifest,
        manifestRef: "latest",
      }),
      (e: unknown) =>
        e instanceof RegistryError && e.exitCode === 3 && /refused the manifest/.test(e.message) &&
        /MANIFEST_BLOB_UNKNOWN/.test(e.message),
    );

    // The file no longer hashes to its name: the registry refuses it.
    await fsp.writeFile(path.join(dir, a.digest.replace(":", "-")), bytes(100, 42));
    await assert.rejects(
      upload({
        blobs: [{ digest: a.digest, size: a.size }],
        baseUrl: BASE,
        repository: "c/d",
        srcDir: dir,
        fetch: reg.fetch,
        credential: null,
        retry: quick,
      }),
      (e: unknown) => e instanceof IntegrityError && e.message.includes(dir),
    );
  });
});

Deno.test("upload() follows a 307 to another host with the chunk and without Authorization", async () => {
  await withBlobs([128 * KiB], async (dir, [blob]) => {
    const reg = new FakeRegistry();
    reg.relative = false;
    const storage: Logged[] = [];
    const sentToRegistry: (string | null)[] = [];
    const fetch = async (req: Request): Promise<Response> => {
      const u = new URL(req.url);
      if (u.host === "storage.test") {
        const body = new Uint8Array(await req.arrayBuffer());
        storage.push({ method: req.method, url: req.url, headers: req.headers, body });
        // Storage accepts the bytes on the registry's behalf.
        const target = u.searchParams.get("target")!;
        return reg.fetch(
          new Request(target, {
            method: req.method,
            headers: req.headers,
            body: body as Uint8Array<ArrayBuffer>,
          }),
        );
      }
      if (req.method === "PATCH") {
        sentToRegistry.push(req.headers.get("authorization"));
        await req.body?.cancel();
        return new Response(null, {
          status: 307,
          headers: { location: `http://storage.test/put?target=${encodeURIComponent(req.url)}` },
        });
      }
      return reg.fetch(req);
    };
    await upload({
      blobs: [blob],
      baseUrl: BASE,
      repository: "a/b",
      srcDir: dir,
      chunkSize: 64 * KiB,
      fetch,
      token: "secret",
      credential: null,
    });
    assert.deepEqual(reg.blobs.get("a/b")!.get(blob.digest), blob.data);
    // The first PATCH streams from the file and cannot follow the 307 with its body;
    // that chunk and the rest then go from memory, and follow it.
    assert.deepEqual(sentToRegistry, ["Bearer secret", "Bearer secret", "Bearer secret"]);
    assert.equal(storage.length, 2);
    for (const s of storage) {
      assert.equal(s.method, "PATCH");
      assert.equal(s.body.byteLength, 64 * KiB);
      assert.equal(s.headers.get("authorization"), null, "no credentials to another host");
    }
  });
});
