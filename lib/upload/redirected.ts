/**
 * Step 4 the way Ollama's registry takes bytes (Ollama v0.32.15 server/upload.go `Prepare`,
 * `Run`, `uploadPart`). The blob is cut into parts ({@link ollamaParts}: size / 16, kept
 * within 100 MB..1000 MB). Each part is announced with `PATCH <session>` carrying
 * `X-Redirect-Uploads: 1` and `Content-Range: <start>-<end>`; the registry answers `307`
 * with `Location` = a presigned storage URL and `Docker-Upload-Location` = the session URL
 * for the next part. The part's bytes go to storage in a `PUT` without Authorization (the
 * presigned query is the credential; S3 and R2 refuse both), and the MD5 of its bytes is
 * kept. The commit is `PUT <session>?digest=<d>&etag=<md5 of the parts' md5s>-<n>`.
 *
 * Where haul differs from Ollama, by choice:
 * - the announcing PATCH has an empty body. Ollama's carries the part, which the registry
 *   answers with a 307 before reading; sending it would cost the part twice wherever it is read;
 * - {@link PARTS_IN_FLIGHT} parts go to storage at once (Ollama: 16), each PUT retried
 *   with backoff, a refused presigned URL (401/403: expired) announced again;
 * - storage's `ETag`, when it is an MD5, must equal the MD5 of what was sent: a part
 *   changed on the way goes again;
 * - the parts storage has taken are saved in the state file after each one, so a killed push
 *   goes on with the parts still missing (Ollama's starts over);
 * - a registry that answers the PATCH with 202 instead of 307 takes chunks itself: the blob
 *   then goes up as chunked.ts sends it.
 */
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { BlobReader } from "../disk/blob_file.ts";
import { IntegrityError, InterruptedError, RegistryError } from "../errors.ts";
import type { Blob } from "../registry/manifest.ts";
import { SEND_ONCE } from "../transport/fetch.ts";
import { Semaphore } from "../transport/pool.ts";
import { sendChunked } from "./chunked.ts";
import { commitBlob } from "./commit.ts";
import type { UploadContext } from "./context.ts";
import { unwrap, UploadStepError } from "./errors.ts";
import { checkBlob } from "./mount.ts";
import { pause, withRetries } from "./retry.ts";
import { openSession } from "./session.ts";
import { destKey, type DonePart, removeState, writeState } from "./state.ts";
import { OCTET } from "./target.ts";

/** Ollama's part plan (server/upload.go): 16 parts, each 100 MB to 1000 MB. */
export const OLLAMA_PART_PLAN = { parts: 16, min: 100_000_000, max: 1_000_000_000 } as const;

/** Parts PUT to storage at once, per blob. */
export const PARTS_IN_FLIGHT = 4;

/** A part in memory at most this large; a larger one is streamed (Deno then sends it chunked). */
const IN_MEMORY_PART = 128 << 20;

/** Read size while hashing or streaming a part. */
const PIECE = 4 << 20;

/** A part of the blob: where it starts and how long it is. */
export interface Part {
  offset: number;
  size: number;
}

/** The parts Ollama's client cuts a blob of `size` bytes into (blobUpload.Prepare). */
export function ollamaParts(size: number): Part[] {
  const { parts, min, max } = OLLAMA_PART_PLAN;
  const partSize = Math.min(max, Math.max(min, Math.floor(size / parts)));
  const out: Part[] = [];
  for (let offset = 0; offset < size; offset += partSize) {
    out.push({ offset, size: Math.min(partSize, size - offset) });
  }
  return out;
}

/** The commit's etag: the MD5 of the parts' MD5s, then `-<number of parts>` (blobUpload.Run). */
export function ollamaEtag(md5s: string[]): string {
  const outer = createHash("md5");
  for (const m of md5s) outer.update(Buffer.from(m, "hex"));
  return `${outer.digest("hex")}-${md5s.length}`;
}

/** Where a redirected upload starts: a session URL, the parts done by an earlier run. */
export interface RedirectedStart {
  location: string;
  done: DonePart[];
  /** The parts come from an earlier run (the registry may have forgotten them). */
  resumed: boolean;
  statePath?: string;
}

/** What the registry said to an announcing PATCH. */
type Announced =
  | { redirected: true; storage: string; next: string }
  | { redirected: false; next: string };

/** Uploads `b` by redirected parts, then commits it with the etag. */
export async function sendRedirected(
  ctx: UploadContext,
  b: Blob,
  reader: BlobReader,
  start: RedirectedStart,
): Promise<void> {
  let at = start;
  for (let restarted = false;; restarted = true) {
    try {
      await new RedirectedUpload(ctx, b, reader, at).run();
      break;
    } catch (err) {
      // An earlier run's parts the registry no longer holds: once more, from nothing.
      if (!at.resumed || restarted || !(err instanceof UploadStepError)) throw unwrap(err);
      at = {
        location: await openSession(ctx, b),
        done: [],
        resumed: false,
        statePath: at.statePath,
      };
    }
  }
  if (start.statePath) await removeState(start.statePath);
}

/** Storage refused the presigned URL (expired, or signed for another request). */
function refused(err: unknown): boolean {
  const cause = err instanceof UploadStepError ? err.cause : undefined;
  return cause instanceof RegistryError && (cause.status === 401 || cause.status === 403);
}

/** One blob's redirected upload: the parts done, the parts on the way, the next session URL. */
class RedirectedUpload {
  readonly #ctx: UploadContext;
  readonly #b: Blob;
  readonly #reader: BlobReader;
  readonly #statePath?: string;
  readonly #done = new Map<number, DonePart>();
  readonly #sending = new Map<number, number>();
  #next: string;
  #saving: Promise<void> = Promise.resolve();

  constructor(ctx: UploadContext, b: Blob, reader: BlobReader, start: RedirectedStart) {
    this.#ctx = ctx;
    this.#b = b;
    this.#reader = reader;
    this.#statePath = start.statePath;
    this.#next = start.location;
    const plan = new Set(ollamaParts(b.size).map((p) => `${p.offset}+${p.size}`));
    for (const p of start.done) if (plan.has(`${p.offset}+${p.size}`)) this.#done.set(p.offset, p);
  }

  async run(): Promise<void> {
    const parts = ollamaParts(this.#b.size).filter((p) => !this.#done.has(p.offset));
    this.#credit();
    const slots = new Semaphore(PARTS_IN_FLIGHT);
    const abort = new AbortController();
    const onOuter = () => abort.abort(this.#ctx.signal.reason);
    this.#ctx.signal.addEventListener("abort", onOuter, { once: true });
    const running: Promise<void>[] = [];
    let failed: unknown;
    try {
      for (const part of parts) {
        const release = await slots.acquire(abort.signal);
        if (failed !== undefined) {
          release();
          break;
        }
        let said: Announced;
        try {
          said = await withRetries(this.#ctx, this.#b, () => this.#announce(part));
        } catch (err) {
          release();
          throw err;
        }
        if (!said.redirected) {
          release();
          await Promise.allSettled(running);
          return await this.#notRedirected(said.next);
        }
        this.#next = said.next;
        running.push(
          this.#putPart(part, said.storage, abort.signal).catch((err) => {
            failed ??= err;
            abort.abort(err);
          }).finally(release),
        );
      }
      await Promise.all(running);
    } catch (err) {
      failed ??= err;
      abort.abort(err);
      await Promise.allSettled(running);
    } finally {
      this.#ctx.signal.removeEventListener("abort", onOuter);
    }
    if (failed !== undefined) {
      if (this.#ctx.signal.aborted) throw new InterruptedError();
      throw failed;
    }
    await this.#commit();
  }

  /** `PATCH <session>` with `X-Redirect-Uploads: 1`: where the part should go. */
  async #announce(part: Part): Promise<Announced> {
    const end = part.offset + part.size - 1;
    const step = `asking where bytes ${part.offset}-${end} of ${this.#b.digest} go`;
    const res = await this.#ctx.target.send(
      new Request(this.#next, {
        method: "PATCH",
        headers: {
          "content-type": OCTET,
          "content-length": "0",
          "content-range": `${part.offset}-${end}`,
          "x-redirect-uploads": "1",
        },
        redirect: "manual",
        signal: this.#ctx.signal,
      }),
      step,
    );
    await res.body?.cancel().catch(() => {});
    if (res.status === 307 || res.status === 308) {
      const storage = res.headers.get("location");
      if (!storage) return await this.#ctx.target.fail(res, "PATCH", this.#next, step);
      return {
        redirected: true,
        storage: new URL(storage, this.#next).toString(),
        next: this.#nextUrl(res),
      };
    }
    if (res.status === 202 || res.status === 204) {
      return { redirected: false, next: this.#nextUrl(res) };
    }
    return await this.#ctx.target.fail(res, "PATCH", this.#next, step);
  }

  /** `Docker-Upload-Location` (read first, as Ollama does), else `Location`, else the same URL. */
  #nextUrl(res: Response): string {
    const loc = res.headers.get("docker-upload-location") ??
      (res.status === 307 || res.status === 308 ? null : res.headers.get("location"));
    return loc ? new URL(loc, this.#next).toString() : this.#next;
  }

  /** PUTs the part to storage, retrying; an expired URL is announced again. */
  async #putPart(part: Part, storage: string, signal: AbortSignal): Promise<void> {
    let url = storage;
    for (let attempt = 0;; attempt++) {
      try {
        const md5 = await this.#putOnce(part, url, signal);
        this.#sending.delete(part.offset);
        this.#done.set(part.offset, { ...part, md5 });
        this.#credit();
        await this.#save();
        return;
      } catch (err) {
        this.#sending.delete(part.offset);
        this.#credit();
        if (signal.aborted) throw err;
        const expired = refused(err);
        const retryable = err instanceof UploadStepError ? err.retryable || expired : false;
        if (!retryable || attempt >= this.#ctx.policy.maxRetries) throw unwrap(err);
        await pause(this.#ctx, this.#b, attempt, err as Error);
        if (expired) {
          const said = await withRetries(this.#ctx, this.#b, () => this.#announce(part));
          if (!said.redirected) throw unwrap(err);
          url = said.storage;
        }
      }
    }
  }

  /** One PUT of the part to `url`; resolves to the MD5 of the bytes sent. */
  async #putOnce(part: Part, url: string, signal: AbortSignal): Promise<string> {
    const { body, md5 } = await this.#body(part, signal);
    const end = part.offset + part.size - 1;
    const step = `sending bytes ${part.offset}-${end} of ${this.#b.digest} to storage`;
    this.#ctx.result.transferred += part.size;
    const streamed = body instanceof ReadableStream;
    const res = await this.#ctx.target.send(
      new Request(url, {
        method: "PUT",
        headers: {
          "content-type": OCTET,
          "content-length": String(part.size),
          ...(streamed ? { [SEND_ONCE]: "1" } : {}),
        },
        body,
        redirect: "manual",
        signal,
        // deno-lint-ignore no-explicit-any
        ...(streamed ? { duplex: "half" } as any : {}),
      }),
      step,
      part.size,
    );
    if (!res.ok) return await this.#ctx.target.fail(res, "PUT", url, step);
    await res.body?.cancel().catch(() => {});
    const sum = await md5();
    const etag = res.headers.get("etag")?.replace(/^W\//, "").replaceAll('"', "").toLowerCase();
    if (etag && /^[0-9a-f]{32}$/.test(etag) && etag !== sum) {
      throw new UploadStepError(
        step,
        new IntegrityError(
          `storage stored them with MD5 ${etag}, but ${sum} was sent (changed on the way)`,
        ),
        true,
      );
    }
    return sum;
  }

  /**
   * The part's body and its MD5: a file slice where the runtime has one (Bun; hashed in a
   * read of its own), the bytes in memory up to {@link IN_MEMORY_PART}, else a stream hashed
   * as it goes.
   */
  async #body(
    part: Part,
    signal: AbortSignal,
  ): Promise<{ body: BodyInit; md5: () => Promise<string> }> {
    const onBytes = (n: number) => {
      this.#sending.set(part.offset, n);
      this.#credit();
    };
    const slice = this.#reader.stream?.(part.offset, part.size, onBytes);
    if (slice instanceof globalThis.Blob) {
      const sum = await this.#md5Of(part, signal);
      return { body: slice, md5: () => Promise.resolve(sum) };
    }
    await slice?.cancel().catch(() => {});
    if (part.size <= IN_MEMORY_PART) {
      const bytes = await this.#reader.read(part.offset, part.size, signal);
      const sum = createHash("md5").update(bytes).digest("hex");
      return { body: bytes as Uint8Array<ArrayBuffer>, md5: () => Promise.resolve(sum) };
    }
    const h = createHash("md5");
    let at = 0;
    let finished!: () => void;
    const ended = new Promise<void>((ok) => finished = ok);
    const body = new ReadableStream<Uint8Array<ArrayBuffer>>({
      pull: async (c) => {
        if (at >= part.size) {
          finished();
          return c.close();
        }
        const n = Math.min(PIECE, part.size - at);
        const piece = await this.#reader.read(part.offset + at, n, signal);
        h.update(piece);
        at += n;
        onBytes(at);
        c.enqueue(piece as Uint8Array<ArrayBuffer>);
      },
    }, { highWaterMark: 1 });
    return {
      body,
      md5: async () => {
        if (at < part.size) throw new IntegrityError(`Part ${part.offset} was not sent whole`);
        await ended;
        return h.digest("hex");
      },
    };
  }

  async #md5Of(part: Part, signal: AbortSignal): Promise<string> {
    const h = createHash("md5");
    for (let at = 0; at < part.size;) {
      const n = Math.min(PIECE, part.size - at);
      h.update(await this.#reader.read(part.offset + at, n, signal));
      at += n;
    }
    return h.digest("hex");
  }

  /** `PUT <session>?digest=&etag=`; the PUT may have landed with its answer lost. */
  async #commit(): Promise<void> {
    const parts = [...this.#done.values()].sort((a, b) => a.offset - b.offset);
    const etag = ollamaEtag(parts.map((p) => p.md5));
    try {
      await withRetries(
        this.#ctx,
        this.#b,
        () => commitBlob(this.#ctx, this.#b, this.#next, undefined, etag),
      );
    } catch (err) {
      if (await checkBlob(this.#ctx, this.#b).catch(() => false)) return;
      throw err instanceof UploadStepError ? err : unwrap(err);
    }
  }

  /** The registry took the PATCH itself: the blob goes up in chunks from byte 0. */
  async #notRedirected(location: string): Promise<void> {
    if (this.#done.size) {
      throw new IntegrityError(
        `The registry stopped redirecting the parts of ${this.#b.digest} to storage mid-upload`,
      );
    }
    await sendChunked(this.#ctx, this.#b, this.#reader, {
      location,
      offset: 0,
      resumed: false,
      statePath: this.#statePath,
    });
  }

  #credit(): void {
    let n = 0;
    for (const p of this.#done.values()) n += p.size;
    for (const s of this.#sending.values()) n += s;
    this.#ctx.progress.sent(this.#b, Math.min(n, this.#b.size));
  }

  /** Saves the parts done so far; saves run one after another, each writing the latest. */
  #save(): Promise<void> {
    this.#saving = this.#saving.then(() => this.#write());
    return this.#saving;
  }

  #write(): Promise<void> {
    if (!this.#statePath) return Promise.resolve();
    const parts = [...this.#done.values()];
    return writeState(this.#statePath, {
      version: 1,
      digest: this.#b.digest,
      size: this.#b.size,
      dest: destKey(this.#ctx.baseUrl, this.#ctx.repository),
      location: this.#next,
      offset: parts.reduce((a, p) => a + p.size, 0),
      parts,
    });
  }
}
