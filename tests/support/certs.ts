/** Keys and certificates for TLS tests and for the token server (openssl). */
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { run } from "./util.ts";

export interface KeyPair {
  keyFile: string;
  certFile: string;
}

const ecKey = (file: string) =>
  run("openssl", [
    "genpkey",
    "-algorithm",
    "EC",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-out",
    file,
  ]);

/**
 * A self-signed EC P-256 certificate and its key, for signing tokens: the registry's
 * rootcertbundle holds the certificate itself.
 */
export async function makeCert(dir: string, name = "cert"): Promise<KeyPair> {
  const keyFile = path.join(dir, `${name}.key`);
  const certFile = path.join(dir, `${name}.crt`);
  await ecKey(keyFile);
  await run("openssl", [
    "req",
    "-new",
    "-x509",
    "-key",
    keyFile,
    "-out",
    certFile,
    "-days",
    "3650",
    "-subj",
    `/CN=haul-test-${name}`,
  ]);
  return { keyFile, certFile };
}

/**
 * A server certificate (SAN 127.0.0.1, ::1, localhost) signed by a fresh CA, for `tls`.
 * Clients trust `caFile`; rustls (Deno's fetch) refuses a CA certificate used as the server's own.
 */
export async function makeTlsCert(
  dir: string,
  name = "tls",
): Promise<KeyPair & { caFile: string }> {
  const caKey = path.join(dir, `${name}-ca.key`);
  const caFile = path.join(dir, `${name}-ca.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const certFile = path.join(dir, `${name}.crt`);
  const ext = path.join(dir, `${name}.ext`);
  await ecKey(caKey);
  await run("openssl", [
    "req",
    "-new",
    "-x509",
    "-key",
    caKey,
    "-out",
    caFile,
    "-days",
    "3650",
    "-subj",
    `/CN=haul-test-${name}-ca`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  await ecKey(keyFile);
  await run("openssl", ["req", "-new", "-key", keyFile, "-out", csr, "-subj", "/CN=127.0.0.1"]);
  await fsp.writeFile(
    ext,
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth",
      "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
    ].join("\n") + "\n",
  );
  await run("openssl", [
    "x509",
    "-req",
    "-in",
    csr,
    "-CA",
    caFile,
    "-CAkey",
    caKey,
    "-CAcreateserial",
    "-out",
    certFile,
    "-days",
    "3650",
    "-extfile",
    ext,
  ]);
  return { keyFile, certFile, caFile };
}
