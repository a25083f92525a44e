import assert from "node:assert/strict";
import * as crypto from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { Buffer } from "node:buffer";
import { execFileSync } from "node:child_process";
import {
  findOllamaKey,
  ollamaTokenUrl,
  parseOpenSshKey,
  signOllamaRequest,
} from "../../lib/auth/ollama_key.ts";
import { AuthError } from "../../lib/errors.ts";
import { startRegistry, tmpDir } from "../support/harness.ts";
import { startOllamaRegistry, verifySignedRequest } from "../support/ollama_registry.ts";

function keygen(dir: string, name: string, args: string[]): string {
  const file = path.join(dir, name);
  execFileSync("ssh-keygen", ["-q", "-f", file, "-C", "test", ...args]);
  return file;
}

Deno.test("parseOpenSshKey() reads an ssh-keygen ed25519 key and signs as Ollama's client", async () => {
  const dir = await tmpDir("haul-key");
  try {
    const file = keygen(dir, "id_ed25519", ["-t", "ed25519", "-N", ""]);
    const key = parseOpenSshKey(await fsp.readFile(file, "utf8"), file);
    const pub = (await fsp.readFile(`${file}.pub`, "utf8")).trim().split(" ").slice(0, 2).join(" ");
    assert.equal(key.publicKey, pub);
    const url = ollamaTokenUrl("http://127.0.0.1:1/token", "ollama.com", ["repository:a/b:pull"]);
    const auth = signOllamaRequest(key, url);
    // Verified independently: the emulation's verifier and node:crypto over the documented string.
    assert.equal(verifySignedRequest(url, auth), pub.split(" ")[1]);
    const empty = Buffer.from(crypto.createHash("sha256").update("").digest("hex")).toString(
      "base64",
    );
    const sig = Buffer.from(auth.split(":")[1], "base64");
    assert.ok(
      crypto.verify(
        null,
        Buffer.from(`GET,${url},${empty}`),
        crypto.createPublicKey(key.privateKey),
        sig,
      ),
    );
    assert.ok(
      !crypto.verify(
        null,
        Buffer.from(`GET,${url}x,${empty}`),
        crypto.createPublicKey(key.privateKey),
        sig,
      ),
    );
    const found = await findOllamaKey({ env: { HOME: "/nonexistent", HAUL_OLLAMA_KEY: file } });
    assert.equal(found?.path, file);
    assert.equal(await findOllamaKey({ env: { HOME: dir } }), undefined);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("parseOpenSshKey() refuses encrypted and non-ed25519 keys in one clear line", async () => {
  const dir = await tmpDir("haul-key");
  try {
    const enc = keygen(dir, "enc", ["-t", "ed25519", "-N", "secret"]);
    assert.throws(
      () => parseOpenSshKey(Deno.readTextFileSync(enc), enc),
      (e) => e instanceof AuthError && /is encrypted/.test(e.message),
    );
    const ecdsa = keygen(dir, "ec", ["-t", "ecdsa", "-N", ""]);
    assert.throws(
      () => parseOpenSshKey(Deno.readTextFileSync(ecdsa), ecdsa),
      (e) => e instanceof AuthError && /needs ed25519/.test(e.message),
    );
    assert.throws(() => parseOpenSshKey("hello", "x"), AuthError);
    await assert.rejects(findOllamaKey({ keyFile: path.join(dir, "missing") }), AuthError);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("signOllamaRequest() gets a push grant from the Ollama-registry emulation", async () => {
  const dir = await tmpDir("haul-key");
  const registry = await startRegistry();
  try {
    const file = keygen(dir, "id_ed25519", ["-t", "ed25519", "-N", ""]);
    const key = parseOpenSshKey(await fsp.readFile(file, "utf8"), file);
    const emu = await startOllamaRegistry(registry.url, { keys: { [key.publicKey]: ["alice"] } });
    try {
      const url = ollamaTokenUrl(`${emu.url}/token`, "ollama.com", [
        "repository:alice/m:pull,push",
      ]);
      const res = await fetch(url, { headers: { authorization: signOllamaRequest(key, url) } });
      assert.equal(res.status, 200);
      assert.ok((await res.json()).token);
      assert.deepEqual(emu.tokens.at(-1)?.push, ["alice"]);
      const bad = await fetch(url, {
        headers: { authorization: signOllamaRequest(key, url + "&x=1") },
      });
      assert.equal(bad.status, 401);
      await bad.body?.cancel();
    } finally {
      await emu.stop();
    }
  } finally {
    await registry.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

Deno.test("createSession() with ollamaKey signs the token request; an unowned namespace stays unauthorized", async () => {
  const { createSession } = await import("../../lib/registry/session.ts");
  const dir = await tmpDir("haul-key");
  const registry = await startRegistry();
  try {
    const file = keygen(dir, "id_ed25519", ["-t", "ed25519", "-N", ""]);
    const key = await findOllamaKey({ keyFile: file });
    assert.ok(key);
    const emu = await startOllamaRegistry(registry.url, { keys: { [key.publicKey]: ["alice"] } });
    try {
      const own = createSession(emu.url, ["repository:alice/m:pull,push"], { ollamaKey: key });
      const ok = await own.fetch(
        new Request(`${emu.url}/v2/alice/m/blobs/uploads/`, { method: "POST" }),
      );
      assert.equal(ok.status, 202);
      await ok.body?.cancel();
      assert.equal(emu.tokens.at(-1)?.key, key.publicKey.split(" ")[1]);
      const other = createSession(emu.url, ["repository:bob/m:pull,push"], { ollamaKey: key });
      const no = await other.fetch(
        new Request(`${emu.url}/v2/bob/m/blobs/uploads/`, { method: "POST" }),
      )
        .then((r) => r.status, (e) => e);
      assert.ok(no === 401 || no instanceof AuthError, String(no));
    } finally {
      await emu.stop();
    }
  } finally {
    await registry.stop();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
