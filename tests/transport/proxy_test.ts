/** HTTP(S)_PROXY and NO_PROXY, as curl and docker honour them, through a real forward proxy (tinyproxy). */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import {
  freePort,
  makeOllamaModel,
  pushFixture,
  runCli,
  sleep,
  startRegistry,
  tmpDir,
} from "../support/harness.ts";

const MiB = 1024 * 1024;

async function startTinyproxy(dir: string) {
  const port = await freePort();
  const log = path.join(dir, "tinyproxy.log");
  await fsp.writeFile(
    path.join(dir, "tp.conf"),
    [
      `Port ${port}`,
      "Listen 127.0.0.1",
      "Timeout 600",
      `LogFile "${log}"`,
      "LogLevel Connect",
      "MaxClients 200",
      "Allow 127.0.0.1",
    ]
      .join("\n") + "\n",
  );
  await fsp.writeFile(log, "");
  const child = spawn("tinyproxy", ["-d", "-c", path.join(dir, "tp.conf")], { stdio: "ignore" });
  for (let i = 0; i < 50; i++) {
    const up = await fetch(`http://127.0.0.1:${port}/`).then(
      (r) => r.body?.cancel().then(() => true),
      () => false,
    );
    if (up) break;
    await sleep(100);
  }
  return {
    url: `http://127.0.0.1:${port}`,
    seen: async (re: RegExp) =>
      (await fsp.readFile(log, "utf8")).split("\n").filter((l) => re.test(l)).length,
    stop: async () => {
      child.kill("SIGKILL");
      await new Promise((r) => child.once("close", r));
    },
  };
}

Deno.test("haul pull goes through HTTP_PROXY / HTTPS_PROXY and around it for NO_PROXY", async () => {
  const dir = await tmpDir("haul-proxy");
  const model = makeOllamaModel({ layerSizes: [500, 20 * MiB], seed: 41 });
  const plain = await startRegistry();
  const tls = await startRegistry({ tls: true });
  const proxy = await startTinyproxy(dir);
  try {
    await pushFixture(plain, "library/px", "latest", model);
    const tlsFetch = ((input: RequestInfo | URL, init?: RequestInit) =>
      fetch(input, {
        ...init,
        // deno-lint-ignore no-explicit-any
        client: (Deno as any).createHttpClient({ caCerts: [Deno.readTextFileSync(tls.caFile!)] }),
      } as RequestInit)) as typeof fetch;
    await pushFixture(tls, "library/px", "latest", model, undefined, { fetch: tlsFetch });

    const env = { HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url, NO_PROXY: "", no_proxy: "" };
    const a = await runCli([
      "pull",
      "--insecure",
      "--models",
      path.join(dir, "a"),
      `${plain.host}/library/px`,
    ], { env });
    assert.equal(a.code, 0, a.stderr);
    assert.ok(
      await proxy.seen(new RegExp(`GET http://${plain.host}/v2/library/px/blobs/`)) >= 2,
      "http via the proxy",
    );

    const b = await runCli([
      "pull",
      "--ca-file",
      tls.caFile!,
      "--models",
      path.join(dir, "b"),
      `${tls.host}/library/px`,
    ], { env });
    assert.equal(b.code, 0, b.stderr);
    assert.ok(
      await proxy.seen(new RegExp(`CONNECT ${tls.host.replace(/\./g, "\\.")}`)) >= 1,
      "https tunnelled with CONNECT",
    );

    const before = await proxy.seen(/Request|CONNECT/);
    const c = await runCli([
      "pull",
      "--insecure",
      "--models",
      path.join(dir, "c"),
      `${plain.host}/library/px`,
    ], {
      env: { ...env, NO_PROXY: "127.0.0.1", no_proxy: "127.0.0.1" },
    });
    assert.equal(c.code, 0, c.stderr);
    assert.equal(await proxy.seen(/Request|CONNECT/), before, "NO_PROXY bypasses the proxy");
  } finally {
    await proxy.stop();
    await plain.stop();
    await tls.stop();
    await model.cleanup?.();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
