import assert from "node:assert/strict";
import { bearerScope, parseChallenges, pickChallenge } from "../../lib/auth/challenge.ts";

Deno.test("parseChallenges() reads a registry Bearer challenge with quoted commas", () => {
  assert.deepEqual(
    parseChallenges(
      'Bearer realm="https://auth.example.com/token",service="registry.example.com",' +
        'scope="repository:a/b:pull,push"',
    ),
    [{
      scheme: "bearer",
      params: {
        realm: "https://auth.example.com/token",
        service: "registry.example.com",
        scope: "repository:a/b:pull,push",
      },
    }],
  );
});

Deno.test("parseChallenges() splits several challenges in one header", () => {
  assert.deepEqual(parseChallenges('Basic realm="x", Bearer realm="y"'), [
    { scheme: "basic", params: { realm: "x" } },
    { scheme: "bearer", params: { realm: "y" } },
  ]);
  assert.deepEqual(
    parseChallenges(
      'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
    ),
    [
      { scheme: "newauth", params: { realm: "apps", type: "1", title: 'Login to "apps"' } },
      { scheme: "basic", params: { realm: "simple" } },
    ],
  );
});

Deno.test("parseChallenges() unescapes quoted-pairs", () => {
  assert.deepEqual(parseChallenges('Bearer realm="a\\"b"'), [
    { scheme: "bearer", params: { realm: 'a"b' } },
  ]);
  assert.deepEqual(parseChallenges('Bearer realm="a\\\\b, c d"'), [
    { scheme: "bearer", params: { realm: "a\\b, c d" } },
  ]);
});

Deno.test("parseChallenges() lower-cases schemes and parameter names, not values", () => {
  for (const s of ["bearer", "BEARER", "Bearer", "bEaReR"]) {
    assert.deepEqual(parseChallenges(`${s} Realm="X", SERVICE=Reg`), [
      { scheme: "bearer", params: { realm: "X", service: "Reg" } },
    ]);
  }
});

Deno.test("parseChallenges() stores token68 under an empty key", () => {
  assert.deepEqual(parseChallenges("Negotiate YWJjZA=="), [
    { scheme: "negotiate", params: { "": "YWJjZA==" } },
  ]);
  assert.deepEqual(parseChallenges('Foo abc/+.~-_=, Basic realm="r"'), [
    { scheme: "foo", params: { "": "abc/+.~-_=" } },
    { scheme: "basic", params: { realm: "r" } },
  ]);
});

Deno.test("parseChallenges() tolerates whitespace, empty elements and bare schemes", () => {
  assert.deepEqual(parseChallenges('  ,, Basic ,  Bearer   realm = "y" ,, service=s ,  '), [
    { scheme: "basic", params: {} },
    { scheme: "bearer", params: { realm: "y", service: "s" } },
  ]);
  assert.deepEqual(parseChallenges(""), []);
  assert.deepEqual(parseChallenges("   "), []);
  assert.deepEqual(parseChallenges("Basic"), [{ scheme: "basic", params: {} }]);
});

Deno.test("parseChallenges() tolerates malformed input without throwing", () => {
  assert.deepEqual(parseChallenges('Bearer realm="unterminated'), [
    { scheme: "bearer", params: { realm: "unterminated" } },
  ]);
  // Unquoted URL values are not tokens, but some servers send them.
  assert.deepEqual(parseChallenges("Bearer realm=https://a.example/token,service=x"), [
    { scheme: "bearer", params: { realm: "https://a.example/token", service: "x" } },
  ]);
  assert.deepEqual(parseChallenges('"junk", Basic realm="r"'), [
    { scheme: "basic", params: { realm: "r" } },
  ]);
  assert.deepEqual(parseChallenges('Bearer realm="a", realm="b"'), [
    { scheme: "bearer", params: { realm: "a" } },
  ]);
  for (const s of ["=", "==,=", "Bearer =x", "Bearer ,=,", '\\"', 'Bearer a="\\']) {
    assert.ok(Array.isArray(parseChallenges(s)));
  }
});

Deno.test("parseChallenges() returns plain objects with no inherited keys", () => {
  const [c] = parseChallenges('Bearer constructor="x"');
  assert.equal(c.params.constructor, "x");
  assert.equal(parseChallenges("Bearer")[0].params.toString, Object.prototype.toString);
});

Deno.test("pickChallenge() prefers Bearer over Basic", () => {
  assert.equal(
    pickChallenge(parseChallenges('Basic realm="x", Bearer realm="y"'))?.scheme,
    "bearer",
  );
  assert.equal(pickChallenge(parseChallenges('Basic realm="x"'))?.scheme, "basic");
  assert.equal(pickChallenge(parseChallenges("Negotiate abc")), undefined);
  assert.equal(pickChallenge([]), undefined);
  assert.equal(
    pickChallenge(parseChallenges('Negotiate abc, Basic realm="x"'))?.params.realm,
    "x",
  );
});

Deno.test("bearerScope() formats a repository scope", () => {
  assert.equal(bearerScope("a/b", ["pull", "push"]), "repository:a/b:pull,push");
  assert.equal(bearerScope("library/m", ["pull"]), "repository:library/m:pull");
  assert.equal(bearerScope("a/b", ["pull", "push", "pull"]), "repository:a/b:pull,push");
  assert.equal(bearerScope("a/b", ["*"]), "repository:a/b:*");
});

Deno.test("bearerScope() rejects bad input", () => {
  assert.throws(() => bearerScope("", ["pull"]), RangeError);
  assert.throws(() => bearerScope("a b", ["pull"]), RangeError);
  assert.throws(() => bearerScope("a/b", []), RangeError);
  assert.throws(() => bearerScope("a/b", ["pull,push"]), RangeError);
  assert.throws(() => bearerScope("a/b", ["Pull"]), RangeError);
});
