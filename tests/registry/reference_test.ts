import assert from "node:assert/strict";
import { UsageError } from "../../lib/errors.ts";
import {
  formatReference,
  manifestTag,
  parseReference,
  type Reference,
  shortName,
} from "../../lib/registry/reference.ts";

const HEX = "0123456789abcdef".repeat(4);
const DIGEST = `sha256:${HEX}`;

function rejects(input: string, pattern: RegExp) {
  assert.throws(() => parseReference(input), (err: unknown) => {
    assert.ok(err instanceof UsageError, `expected UsageError for ${JSON.stringify(input)}`);
    assert.equal(err.exitCode, 2);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes("\n"), "one-line message");
    assert.ok(
      err.message.includes(JSON.stringify(input)),
      `message names the input: ${err.message}`,
    );
    return true;
  });
}

Deno.test("parseReference() applies Ollama defaults", () => {
  assert.deepEqual(parseReference("llama3.2"), {
    scheme: "https",
    host: "registry.ollama.ai",
    repository: "library/llama3.2",
    tag: "latest",
  });
});

Deno.test("parseReference() reads namespace, tag, host and port", () => {
  assert.deepEqual(parseReference("user/model:tag"), {
    scheme: "https",
    host: "registry.ollama.ai",
    repository: "user/model",
    tag: "tag",
  });
  assert.deepEqual(parseReference("localhost:5000/ns/model:v1"), {
    scheme: "https",
    host: "localhost:5000",
    repository: "ns/model",
    tag: "v1",
  });
  assert.deepEqual(parseReference("Example.COM/ns/m"), {
    scheme: "https",
    host: "example.com",
    repository: "ns/m",
    tag: "latest",
  });
  assert.equal(parseReference("localhost/m").host, "localhost");
  assert.equal(parseReference("127.0.0.1:5000/a/b").host, "127.0.0.1:5000");
  assert.equal(parseReference("[::1]:5000/a/b").host, "[::1]:5000");
  assert.equal(parseReference("[FE80::1]/a/b").host, "[fe80::1]");
});

Deno.test("parseReference() treats the first component as a host only with '.', ':' or localhost", () => {
  assert.deepEqual(parseReference("a/b/c:t"), {
    scheme: "https",
    host: "registry.ollama.ai",
    repository: "a/b/c",
    tag: "t",
  });
  assert.equal(parseReference("localhostx/m").host, "registry.ollama.ai");
  assert.equal(parseReference("localhostx/m").repository, "localhostx/m");
});

Deno.test("parseReference() applies the default namespace on any host", () => {
  assert.equal(parseReference("localhost:5000/m").repository, "library/m");
});

Deno.test("parseReference() accepts deep OCI paths", () => {
  const ref = parseReference("ghcr.io/a/b/c/d:1.0");
  assert.equal(ref.host, "ghcr.io");
  assert.equal(ref.repository, "a/b/c/d");
  assert.equal(ref.tag, "1.0");
});

Deno.test("parseReference() pins a digest and keeps a written tag", () => {
  assert.deepEqual(parseReference(`m@${DIGEST}`), {
    scheme: "https",
    host: "registry.ollama.ai",
    repository: "library/m",
    digest: DIGEST,
  });
  const both = parseReference(`m:v1@${DIGEST}`);
  assert.equal(both.tag, "v1");
  assert.equal(both.digest, DIGEST);
  assert.equal(parseReference(`m@sha256:${HEX.toUpperCase()}`).digest, DIGEST);
});

Deno.test("parseReference() honours a scheme prefix", () => {
  assert.equal(parseReference("http://localhost:5000/a/b").scheme, "http");
  assert.equal(parseReference("HTTPS://example.com/a/b").scheme, "https");
  // With a scheme the first component is the host even without '.' or ':'.
  const ref = parseReference("http://myregistry/a/b:t");
  assert.equal(ref.host, "myregistry");
  assert.equal(ref.repository, "a/b");
});

Deno.test("parseReference() honours custom defaults", () => {
  assert.deepEqual(
    parseReference("m", { defaultHost: "reg.local:5000", defaultNamespace: "x", defaultTag: "v" }),
    { scheme: "https", host: "reg.local:5000", repository: "x/m", tag: "v" },
  );
  assert.throws(() => parseReference("m", { defaultTag: "-bad" }), RangeError);
  assert.throws(() => parseReference("m", { defaultHost: "bad host" }), RangeError);
  assert.throws(() => parseReference("m", { defaultNamespace: "a/b" }), RangeError);
});

Deno.test("parseReference() rejects empty input and whitespace", () => {
  rejects("", /empty/);
  rejects(" llama3", /whitespace/);
  rejects("llama 3", /whitespace/);
  rejects("llama3\t", /whitespace/);
});

Deno.test("parseReference() takes mixed-case repositories as Ollama does, keeping the case (hf.co)", () => {
  const hf = parseReference("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M");
  assert.equal(hf.host, "hf.co");
  assert.equal(hf.repository, "bartowski/Llama-3.2-1B-Instruct-GGUF");
  assert.equal(hf.tag, "Q4_K_M");
  assert.equal(parseReference("user/Model:tag").repository, "user/Model");
  rejects("user/Model-:tag", /path component "Model-"/);
});

Deno.test("parseReference() rejects bad path components", () => {
  rejects("a//b", /empty path component/);
  rejects("a/b-/c", /path component "b-"/);
  rejects("a/_b", /path component "_b"/);
  rejects("a/b..c", /path component "b\.\.c"/);
  rejects("a/b:t/c", /must be letters|path component/);
  assert.equal(parseReference("a/b__c.d-e---f").repository, "a/b__c.d-e---f");
});

Deno.test("parseReference() rejects anything that could escape a directory", () => {
  rejects("../x", /"\.\."/);
  rejects("a/../../b", /"\.\."/);
  rejects("./a", /"\."/);
  rejects("a/./b", /"\."/);
  rejects("a\\b", /backslash/);
  rejects("a\u0000b", /control character/);
  rejects("a%2fb", /percent/);
  rejects("%2e%2e/x", /percent/);
  rejects("a/b/", /trailing '\/'/);
  rejects("localhost:5000/", /trailing '\/'/);
  rejects("/a", /empty path component/);
});

Deno.test("parseReference() rejects bad tags", () => {
  rejects("m:", /empty tag/);
  rejects("m:-x", /tag "-x"/);
  rejects("m:.x", /tag "\.x"/);
  rejects("m:a+b", /tag "a\+b"/);
  rejects(`m:${"t".repeat(81)}`, /longer than 80/);
  assert.equal(parseReference(`m:${"T".repeat(80)}`).tag, "T".repeat(80));
  assert.equal(parseReference("m:_V1.0-rc").tag, "_V1.0-rc");
});

Deno.test("parseReference() rejects bad digests", () => {
  rejects(`m@sha512:${HEX}${HEX}`, /algorithm "sha512"/);
  rejects(`m@md5:${HEX}`, /algorithm "md5"/);
  rejects(`m@sha256:${HEX.slice(1)}`, /63 hex digits/);
  rejects(`m@sha256:${HEX}0`, /65 hex digits/);
  rejects(`m@sha256:${"g".repeat(64)}`, /not hexadecimal/);
  rejects(`m@${HEX}`, /sha256:<64 hex digits>/);
  rejects(`m@`, /sha256:<64 hex digits>/);
  rejects(`m@${DIGEST}@${DIGEST}`, /more than one '@'/);
});

Deno.test("parseReference() enforces length limits", () => {
  rejects(`${"a".repeat(81)}`, /longer than 80/);
  rejects(`ns/${"a".repeat(81)}`, /longer than 80/);
  assert.equal(parseReference(`${"a".repeat(80)}/${"b".repeat(80)}`).repository.length, 161);
  const deep = Array.from({ length: 4 }, () => "c".repeat(80)).join("/");
  rejects(deep, /longer than 255/);
  const label = "h".repeat(60);
  const longHost = Array.from({ length: 6 }, () => label).join(".");
  assert.ok(longHost.length > 350);
  rejects(`${longHost}/a/b`, /host is longer than 350/);
});

Deno.test("parseReference() rejects other schemes and bad hosts", () => {
  rejects("ftp://example.com/a/b", /scheme "ftp"/);
  rejects("oci://example.com/a/b", /scheme "oci"/);
  rejects("https://", /no repository/);
  rejects("https://example.com", /no repository/);
  rejects("localhost:0/a", /port "0" must be 1-65535/);
  rejects("localhost:65536/a", /port "65536"/);
  rejects("localhost:x/a", /port "x"/);
  rejects("localhost:/a", /port ""/);
  rejects("bad..host/a", /not a valid host name/);
  rejects("-bad.com/a", /not a valid host name/);
  rejects("[::1/a", /unclosed/);
  rejects("[zz::1]:5000/a", /IPv6/);
  rejects("[::1]x/a", /malformed/);
  assert.equal(parseReference("localhost:65535/a").host, "localhost:65535");
});

Deno.test("formatReference() writes host/repository:tag@digest without scheme", () => {
  assert.equal(
    formatReference(parseReference("llama3.2")),
    "registry.ollama.ai/library/llama3.2:latest",
  );
  assert.equal(
    formatReference(parseReference(`http://localhost:5000/a/b:v1@${DIGEST}`)),
    `localhost:5000/a/b:v1@${DIGEST}`,
  );
  assert.equal(
    formatReference(parseReference(`m@${DIGEST}`)),
    `registry.ollama.ai/library/m@${DIGEST}`,
  );
});

Deno.test("formatReference() round-trips through parseReference()", () => {
  for (const s of ["llama3.2", "a/b/c:t", `x.io:1/a/b@${DIGEST}`, "[::1]:5000/a/b:c"]) {
    const ref = parseReference(s);
    assert.deepEqual(parseReference(formatReference(ref)), ref);
  }
});

Deno.test("shortName() drops the default host and namespace, keeps the tag", () => {
  assert.equal(shortName(parseReference("llama3.2")), "llama3.2:latest");
  assert.equal(shortName(parseReference("user/m:v1")), "user/m:v1");
  assert.equal(shortName(parseReference("a/b/c:t")), "a/b/c:t");
  assert.equal(shortName(parseReference(`m@${DIGEST}`)), `m@${DIGEST}`);
  assert.equal(shortName(parseReference("localhost:5000/x:v1")), "localhost:5000/library/x:v1");
  assert.equal(
    shortName(parseReference("ollama.example.com/m"), { defaultHost: "ollama.example.com" }),
    "m:latest",
  );
});

Deno.test("shortName() keeps the host when the name would read as one", () => {
  const ref = parseReference("registry.ollama.ai/my.ns/model:t");
  assert.equal(shortName(ref), "registry.ollama.ai/my.ns/model:t");
  for (const s of ["llama3.2", "user/m:v1", "a/b/c", "registry.ollama.ai/my.ns/model:t"]) {
    const r = parseReference(s);
    assert.deepEqual(parseReference(shortName(r)), r);
  }
});

Deno.test("manifestTag() returns the tag, else sha256-<hex>", () => {
  assert.equal(manifestTag(parseReference("m:v1")), "v1");
  assert.equal(manifestTag(parseReference(`m:v1@${DIGEST}`)), "v1");
  assert.equal(manifestTag(parseReference(`m@${DIGEST}`)), `sha256-${HEX}`);
  const bare: Reference = { scheme: "https", host: "h.io", repository: "a/b" };
  assert.throws(() => manifestTag(bare), TypeError);
});
