import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const child = fileURLToPath(new URL("./block_writer_child.ts", import.meta.url));

Deno.test("a block writer released with a write in flight still lets the process exit", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "haul-bw-"));
  try {
    const file = path.join(dir, "f");
    // The child asks for the Worker (asyncIo: false; under Deno writes go to its I/O
    // threads otherwise).
    const cmd = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", child, file],
      stdout: "piped",
      stderr: "piped",
    });
    const proc = cmd.spawn();
    // A Worker left running would keep the child alive: it must end on its own.
    const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
    const out = await proc.output();
    clearTimeout(timer);
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.signal, null, `the child had to be killed: ${text}`);
    assert.equal(out.code, 0, text);
    assert.match(text, /written 8388608 via worker/);
    assert.equal(fs.statSync(file).size, 8 << 20);
    assert.equal(fs.readFileSync(file)[5 << 20], 7);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("the default writer under Deno: concurrent writes at their offsets, the buffer lent back, the process exits", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "haul-bw-"));
  try {
    const file = path.join(dir, "f");
    const cmd = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", child, file, "--concurrent"],
      env: { HAUL_DIRECT_IO: "0" },
      stdout: "piped",
      stderr: "piped",
    });
    const proc = cmd.spawn();
    const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
    const out = await proc.output();
    clearTimeout(timer);
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.signal, null, `the child had to be killed: ${text}`);
    assert.equal(out.code, 0, text);
    assert.match(text, /concurrent: 8 blocks of 1048576 lent back/);
    const got = fs.readFileSync(file);
    assert.equal(got.byteLength, 8 << 20);
    // Buffer i (filled with i + 1) went to block 7 - i.
    for (let j = 0; j < 8; j++) {
      assert.equal(got[(j << 20) + 12345], 8 - j, `block ${j}`);
      assert.equal(got[(j << 20) + (1 << 20) - 1], 8 - j, `end of block ${j}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("writeChunks through the Worker and the default writer: chunks in order at the offset, shared buffers copied, own ones taken over by the Worker", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "haul-bw-"));
  try {
    // Under Bun (when on PATH) the Worker writes the chunks with writev on a descriptor.
    const bun = ["/usr/bin/bun", "/usr/local/bin/bun"].find((b) => fs.existsSync(b));
    const runs: [string, string[]][] = [
      ["--chunks", ["run", "-A", child]],
      ["--chunks-async", ["run", "-A", child]],
      ...(bun ? [["--chunks", [child]] as [string, string[]]] : []),
    ];
    for (const [mode, args] of runs) {
      const file = path.join(dir, `${mode}-${args.length}`);
      const out = await new Deno.Command(args.length > 1 ? Deno.execPath() : bun!, {
        args: [...args, file, mode],
        env: { HAUL_DIRECT_IO: "0" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, text);
      // The Worker takes each chunk's own buffer over (detached here); the default writer lends.
      assert.match(text, mode === "--chunks" ? /7 written, 3 taken over/ : /7 written, 0 taken/);
      const got = fs.readFileSync(file);
      const want = [
        ...Array(4096).fill(0),
        ...[3, 200_000, 70_001].flatMap((n, i) => Array(n).fill(i + 1)),
        ...[0, 1, 2].flatMap((i) => Array(100_000).fill(4 + i)),
        ...Array(500_000).fill(9),
      ];
      assert.equal(got.byteLength, 8 << 20, mode);
      const head = got.subarray(0, want.length);
      assert.ok(head.every((b, i) => b === want[i]), `${mode}: bytes differ from the chunks`);
      assert.equal(got[want.length], 0, `${mode}: nothing written past the chunks`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
