import assert from "node:assert/strict";
import { Authenticator, withAuth } from "../../lib/auth/authenticator.ts";
import {
  type Fetch,
  finalUrl,
  withHeaderTimeout,
  withRedirects,
} from "../../lib/transport/fetch.ts";
import { NetworkError } from "../../lib/errors.ts";

interface Seen {
  url: string;
  auth: string | null;
}

Deno.test("withRedirects() follows relative and cross-origin redirects and drops Authorization on another origin", async () => {
  const seen: Seen[] = [];
  const next: Fetch = (req) => {
    seen.push({ url: req.url, auth: req.headers.get("authorization") });
    const u = new URL(req.url);
    if (u.pathname === "/a") {
      return Promise.resolve(new Response(null, { status: 307, headers: { location: "/b" } }));
    }
    if (u.host === "reg.test" && u.pathname === "/b") {
      return Promise.resolve(
        new Response(null, { status: 302, headers: { location: "https://cdn.test/blob?sig=1" } }),
      );
    }
    return Promise.resolve(new Response("data"));
  };
  const res = await withRedirects(next)(
    new Request("https://reg.test/a", { headers: { authorization: "Bearer t" } }),
  );
  assert.equal(await res.text(), "data");
  assert.deepEqual(seen, [
    { url: "https://reg.test/a", auth: "Bearer t" },
    { url: "https://reg.test/b", auth: "Bearer t" },
    { url: "https://cdn.test/blob?sig=1", auth: null },
  ]);
  assert.equal(finalUrl(res, "https://reg.test/a"), "https://cdn.test/blob?sig=1");
});

Deno.test("withRedirects() stops redirect loops and https→http downgrades", async () => {
  const loop: Fetch = (req) =>
    Promise.resolve(new Response(null, { status: 302, headers: { location: req.url } }));
  await assert.rejects(withRedirects(loop, 5)(new Request("https://reg.test/x")), NetworkError);
  const down: Fetch = () =>
    Promise.resolve(
      new Response(null, { status: 302, headers: { location: "http://evil.test/x" } }),
    );
  await assert.rejects(withRedirects(down)(new Request("https://reg.test/x")), /plain http/);
});

function tokenRegistry(opts: { tokens: string[] }) {
  let tokenCalls = 0;
  const seen: Seen[] = [];
  const next: Fetch = async (req) => {
    const u = new URL(req.url);
    seen.push({ url: req.url, auth: req.headers.get("authorization") });
    if (u.host === "auth.test") {
      tokenCalls++;
      await new Promise((r) => setTimeout(r, 10));
      return new Response(
        JSON.stringify({
          token: opts.tokens[Math.min(tokenCalls - 1, opts.tokens.length - 1)],
          expires_in: 300,
        }),
      );
    }
    const valid = `Bearer ${opts.tokens.at(-1)}`;
    if (req.headers.get("authorization") !== valid) {
      return new Response("{}", {
        status: 401,
        headers: {
          "www-authenticate":
            `Bearer realm="https://auth.test/token",service="reg.test",scope="repository:a/b:pull"`,
        },
      });
    }
    return new Response("ok");
  };
  return { next, seen, tokenCalls: () => tokenCalls };
}

Deno.test("withAuth() shares one token request between concurrent callers and caches it", async () => {
  const reg = tokenRegistry({ tokens: ["T1"] });
  const auth = new Authenticator({ host: "reg.test", fetch: reg.next, credential: null });
  const f = withAuth(reg.next, auth);
  const all = await Promise.all(
    Array.from({ length: 8 }, () => f(new Request("https://reg.test/v2/a/b/blobs/x"))),
  );
  for (const r of all) assert.equal(await r.text(), "ok");
  assert.equal(reg.tokenCalls(), 1);
  await f(new Request("https://reg.test/v2/a/b/blobs/y"));
  assert.equal(reg.tokenCalls(), 1, "cached");
});

Deno.test("withAuth() refreshes a refused token once", async () => {
  const reg = tokenRegistry({ tokens: ["old", "new"] });
  const auth = new Authenticator({
    host: "reg.test",
    fetch: reg.next,
    credential: null,
    token: "stale",
  });
  const r = await withAuth(reg.next, auth)(new Request("https://reg.test/v2/a/b/manifests/latest"));
  assert.equal(r.status, 401, "first fetched token is also refused: no loop");
  const r2 = await withAuth(reg.next, auth)(
    new Request("https://reg.test/v2/a/b/manifests/latest"),
  );
  assert.equal(await r2.text(), "ok");
});

Deno.test("withAuth() never sends credentials to another host", async () => {
  const seen: Seen[] = [];
  const next: Fetch = (req) => {
    seen.push({ url: req.url, auth: req.headers.get("authorization") });
    return Promise.resolve(new Response("x"));
  };
  const auth = new Authenticator({
    host: "reg.test",
    fetch: next,
    token: "secret",
    credential: null,
  });
  const f = withAuth(next, auth);
  await f(new Request("https://cdn.test/blob", { headers: { authorization: "Bearer leaked" } }));
  await f(new Request("https://reg.test/v2/"));
  assert.deepEqual(seen, [{ url: "https://cdn.test/blob", auth: null }, {
    url: "https://reg.test/v2/",
    auth: "Bearer secret",
  }]);
});

Deno.test("withAuth() sends credentials to a token realm on another host only over https", async () => {
  const seen: Seen[] = [];
  const mk = (realm: string): Fetch => (req) => {
    seen.push({ url: req.url, auth: req.headers.get("authorization") });
    if (new URL(req.url).pathname === "/token") {
      return Promise.resolve(new Response(JSON.stringify({ token: "t" })));
    }
    if (req.headers.get("authorization") === "Bearer t") return Promise.resolve(new Response("ok"));
    return Promise.resolve(
      new Response(null, {
        status: 401,
        headers: { "www-authenticate": `Bearer realm="${realm}"` },
      }),
    );
  };
  for (
    const [realm, expectCred] of [["http://other.test/token", false], [
      "https://other.test/token",
      true,
    ]] as const
  ) {
    seen.length = 0;
    const next = mk(realm);
    const auth = new Authenticator({
      host: "reg.test",
      fetch: next,
      credential: { username: "u", password: "p" },
    });
    await withAuth(next, auth)(new Request("https://reg.test/v2/"));
    const tokenReq = seen.find((s) => s.url.startsWith(realm))!;
    assert.equal(tokenReq.auth !== null, expectCred, realm);
  }
});

Deno.test("withHeaderTimeout() fails a request whose headers never come, so retries can take over", async () => {
  const hang: Fetch = (req) =>
    new Promise((_, reject) =>
      req.signal.addEventListener("abort", () => reject(req.signal.reason))
    );
  const t0 = Date.now();
  await assert.rejects(
    withHeaderTimeout(hang, 50)(new Request("http://127.0.0.1:1/v2/")),
    /no response .* within 0.05 s/,
  );
  assert.ok(Date.now() - t0 < 2000);
  const ok: Fetch = () => Promise.resolve(new Response("fine"));
  assert.equal(
    await (await withHeaderTimeout(ok, 50)(new Request("http://127.0.0.1:1/v2/"))).text(),
    "fine",
  );
});
