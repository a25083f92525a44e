/** haul login | logout: registry credentials in Docker's config.json or its helper. */
import process from "node:process";
import { createInterface } from "node:readline";
import { Writable } from "node:stream";
import { parseArgs } from "node:util";
import { InterruptedError, UsageError } from "../lib/errors.ts";
import { login, logout } from "../lib/mod.ts";
import type { Command } from "./common.ts";
import { commandSpec, formatFlags, parseOptions } from "./commands.ts";
import { readCaFile } from "./pull.ts";

const LOGIN = commandSpec("login");
const LOGOUT = commandSpec("logout");

export const LOGIN_HELP = `Usage: haul ${LOGIN.usage}

Checks a user name and password against REGISTRY (GET /v2/ with Basic or
token auth) and saves them where docker, skopeo and haul look for them:
$DOCKER_CONFIG/config.json (default ~/.docker/config.json) as "auths", or in
the credential helper that config names in "credsStore" or "credHelpers"
(docker-credential-<name> store). Other entries of the file are kept.

On a terminal the password is prompted without echo; otherwise pass it on
stdin with --password-stdin (never as an argument, where "ps" shows it).

Options:
${formatFlags(LOGIN)}

Examples:
  haul login -u alice registry.example.com
  printf '%s' "$TOKEN" | haul login -u ci --password-stdin ghcr.io
  haul login --insecure -u alice --password-stdin 127.0.0.1:5000 < pass.txt
  haul login --ca-file corp-ca.pem -u alice registry.corp.example`;

export const LOGOUT_HELP = `Usage: haul ${LOGOUT.usage}

Removes the saved credentials for REGISTRY from Docker's config.json and, when
one is configured, from the credential helper (docker-credential-<name> erase).

Options:
${formatFlags(LOGOUT)}

Examples:
  haul logout registry.example.com`;

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

export const loginCommand: Command = async (args, signal) => {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: parseOptions(LOGIN),
  });
  if (values.help) {
    console.log(LOGIN_HELP);
    return;
  }
  if (positionals.length !== 1) {
    throw new UsageError("login: give exactly one REGISTRY (see haul login --help)");
  }
  const registry = positionals[0];
  const tty = process.stdin.isTTY === true;
  let username = str(values.username);
  let password: string;
  if (values["password-stdin"]) {
    if (username === undefined) {
      throw new UsageError("login: --password-stdin needs --username (-u)");
    }
    password = (await readStdin(signal)).replace(/\r?\n$/, "");
  } else {
    if (!tty) {
      throw new UsageError(
        "login: stdin is not a terminal: pass the password with --password-stdin",
      );
    }
    username ??= (await prompt("Username: ", false, signal)).trim();
    password = await prompt("Password: ", true, signal);
  }
  if (!username) throw new UsageError("login: the username is empty");
  if (!password) throw new UsageError("login: the password is empty");
  const r = await login(registry, { username, password }, {
    insecure: values.insecure === true,
    caCerts: await readCaFile(str(values["ca-file"])),
    signal,
  });
  if (values.json) {
    console.log(JSON.stringify({
      registry: r.registry,
      serverAddress: r.serverAddress,
      username: r.username,
      storedIn: r.storedIn,
    }));
    return;
  }
  const where = r.storedIn.kind === "helper" ? r.storedIn.helper : r.storedIn.path;
  console.log(`Login Succeeded: ${r.username} at ${r.registry} (saved in ${where})`);
};

export const logoutCommand: Command = async (args, signal) => {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: parseOptions(LOGOUT),
  });
  if (values.help) {
    console.log(LOGOUT_HELP);
    return;
  }
  if (positionals.length !== 1) {
    throw new UsageError("logout: give exactly one REGISTRY (see haul logout --help)");
  }
  const r = await logout(positionals[0], { signal });
  if (values.json) {
    console.log(JSON.stringify(r));
    return;
  }
  console.log(
    r.loggedOut ? `Removing login credentials for ${r.registry}` : `Not logged in to ${r.registry}`,
  );
};

async function readStdin(signal: AbortSignal): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    signal.throwIfAborted();
    const c = typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk as Uint8Array;
    size += c.length;
    if (size > 1 << 20) throw new UsageError("login: more than 1 MiB on stdin");
    chunks.push(c);
  }
  const all = new Uint8Array(size);
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.length;
  }
  return new TextDecoder().decode(all);
}

/**
 * Reads one line from the terminal, prompting on stderr. With `hidden`, readline's echo goes
 * to a muted stream, so nothing typed is shown.
 */
function prompt(question: string, hidden: boolean, signal: AbortSignal): Promise<string> {
  let muted = false;
  const output = new Writable({
    write(chunk, _encoding, callback) {
      if (!muted) process.stderr.write(chunk);
      callback();
    },
  });
  const rl = createInterface({ input: process.stdin, output, terminal: true });
  return new Promise<string>((resolve, reject) => {
    const done = (fn: () => void) => {
      signal.removeEventListener("abort", onAbort);
      muted = false;
      rl.close();
      if (hidden) process.stderr.write("\n");
      fn();
    };
    const onAbort = () => done(() => reject(new InterruptedError()));
    signal.addEventListener("abort", onAbort, { once: true });
    // Raw mode turns Ctrl-C into a key: readline reports it here.
    rl.on("SIGINT", () => done(() => reject(new InterruptedError())));
    rl.question(question, (answer) => done(() => resolve(answer)));
    muted = hidden;
  });
}
