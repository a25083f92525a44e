/**
 * A large blob: PATCH chunks ({@link sendChunk}), saving the session after each, then
 * commit with `PUT ?digest=` ({@link commitBlob}); what to do when a step fails (replay a
 * chunk from memory, ask where the session stands, or start over) lives here too.
 */
import type { BlobReader } from "../disk/blob_file.ts";
import { IntegrityError, RegistryError } from "../errors.ts";
import type { Blob } from "../registry/manifest.ts";
import { ReplayNeeded } from "../transport/fetch.ts";
import { commitBlob } from "./commit.ts";
import type { UploadContext } from "./context.ts";
import { checkBlob } from "./mount.ts";
import {
  garbledInTransit,
  isDigestInvalid,
  SourceDigestError,
  unwrap,
  unwrapCause,
  UploadStepError,
} from "./errors.ts";
import { pause } from "./retry.ts";
import { checkSource, type ChunkAck, type ChunkBody, sendChunk } from "./send.ts";
import { cancelSession, openSession, whereSessionStands } from "./session.ts";
import { destKey, removeState, writeState } from "./state.ts";

/** Where a large blob's upload starts: a new session at 0, or one resumed at `offset`. */
export interface ChunkedStart {
  location: string;
  offset: number;
  /** The session comes from an earlier run (its bytes may not be ours). */
  resumed: boolean;
  /** State file to save the session in after every chunk. */
  statePath?: string;
}

/**
 * Bun reads a streamed request body ahead of the socket and frees it late: a 1 GiB push
 * (scripts/bench_push.ts, tmpfs registry, medians of 3) in unranged PATCHes of 256 / 32 / 16 /
 * 8 MiB peaked at 823 / 235 / 172 / 119 MiB RSS, in 3.00 / 2.90 / 3.01 / 3.17 s (the ranged
 * Bun.file slices before: 2.90 s, 47 MiB, but a ranged body is what GHCR caps). 16 MiB there.
 */
const IN_BUN = "Bun" in globalThis;
const BUN_UNRANGED = 16 << 20;

/** Smallest chunk worth a PATCH; a registry that refuses more goes monolithic. */
const MIN_CHUNK = 64 << 10;

/** The registry takes no PATCH (or none small enough): the blob goes up in one PUT. */
export class Monolithic extends Error {
  constructor() {
    super("the registry wants monolithic uploads");
  }
}

/** The limit a "too large" answer names ("maximum permissible limit of 4.00MiB"), in bytes. */
export function parseSizeLimit(message: string): number | undefined {
  const m = /limit(?: of)?\s*([\d.]+)\s*(KiB|MiB|GiB|KB|MB|GB|B)\b/i.exec(message);
  if (!m) return undefined;
  const unit = m[2].toLowerCase();
  const mult = unit.startsWith("k")
    ? 1024
    : unit.startsWith("m")
    ? 1024 ** 2
    : unit.startsWith("g")
    ? 1024 ** 3
    : 1;
  return Math.floor(Number(m[1]) * mult);
}

/** A large blob: PATCH chunks, saving the session after each, then PUT ?digest=. */
export function sendChunked(
  ctx: UploadContext,
  b: Blob,
  reader: BlobReader,
  start: ChunkedStart,
): Promise<void> {
  return new ChunkedUpload(ctx, b, reader, start).run();
}

/** One large blob's upload: where it stands, and what it has tried. */
class ChunkedUpload {
  readonly #ctx: UploadContext;
  readonly #b: Blob;
  readonly #reader: BlobReader;
  readonly #statePath?: string;
  readonly #dest: string;
  #location: string;
  #offset: number;
  /** The session holds bytes from before this run's first chunk. */
  #fromEarlier: boolean;
  #restarted = false;
  /** A streamed chunk had to be sent again: chunks go from memory from now on. */
  #buffered = false;
  #digestRetried = false;
  #sourceRetried = false;
  /** PATCHes the registry acknowledged short, since the upload last got further. */
  #shortAcks = 0;
  /**
   * Failures are counted until the upload gets further than it ever was, so a
   * registry that loses the session every time cannot loop forever.
   */
  #furthest: number;
  #attempt = 0;
  #adaptations = 0;

  constructor(ctx: UploadContext, b: Blob, reader: BlobReader, start: ChunkedStart) {
    this.#ctx = ctx;
    this.#b = b;
    this.#reader = reader;
    this.#statePath = start.statePath;
    this.#dest = destKey(ctx.baseUrl, ctx.repository);
    this.#location = start.location;
    this.#offset = start.offset;
    this.#fromEarlier = start.resumed || start.offset > 0;
    this.#furthest = start.offset;
  }

  async run(): Promise<void> {
    await this.#save();
    for (;;) {
      try {
        while (this.#offset < this.#b.size) await this.#sendNextChunk();
        await this.#commit();
        break;
      } catch (err) {
        await this.#recover(err);
      }
    }
    if (this.#statePath) await removeState(this.#statePath);
  }

  /** PATCHes the chunk at the current offset and moves on by what the registry acknowledged. */
  async #sendNextChunk(): Promise<void> {
    const { tuning, result } = this.#ctx;
    const b = this.#b;
    // Streamed from the file when the reader can; from memory once a streamed
    // chunk had to be sent again (a redirect or a token refresh on a PATCH).
    const learned = this.#ctx.learned;
    const stream = !this.#buffered && this.#reader.stream;
    const ranged = !stream || tuning.rangedStreams || learned.noStreamed === true;
    let length = Math.min(
      stream ? (ranged || !IN_BUN ? tuning.streamChunkSize : BUN_UNRANGED) : tuning.chunkSize,
      b.size - this.#offset,
    );
    if (ranged && learned.maxChunk) length = Math.min(length, learned.maxChunk);
    if (ranged && learned.minChunk) {
      length = Math.min(Math.max(length, learned.minChunk), b.size - this.#offset);
    }
    const at = this.#offset;
    const data: ChunkBody = stream
      ? {
        stream: this.#reader.stream!(at, length, (n) => this.#ctx.progress.sent(b, at + n)),
        length,
      }
      : await this.#reader.read(at, length, this.#ctx.signal);
    result.transferred += length;
    const next = await sendChunk(this.#ctx, b, this.#location, at, data, ranged);
    this.#location = next.location;
    const expected = at + length;
    if (next.offset < expected && at > 0 && (learned.rangeUnreliable || next.offset <= at)) {
      // Taken (2xx) but the Range did not move: it sticks (ECR's stays at the end of the first
      // chunk, aws/containers-roadmap#2831). Count the bytes ourselves; the commit's digest
      // check still decides.
      learned.rangeUnreliable = true;
    } else if (next.offset < expected) return await this.#shortAck(next, expected);
    this.#offset = expected;
    if (this.#offset > this.#furthest) {
      this.#furthest = this.#offset;
      this.#attempt = 0;
      this.#shortAcks = 0;
    }
    this.#ctx.progress.sent(b, this.#offset);
    await this.#save();
  }

  /**
   * Acknowledged short. distribution appends whatever comes next and ignores
   * Content-Range, so re-sending the "missing" bytes could duplicate them: go on
   * from where the session says it stands only when that agrees, else start over.
   */
  async #shortAck(next: ChunkAck, expected: number): Promise<void> {
    const b = this.#b;
    if (++this.#shortAcks > this.#ctx.policy.maxRetries) {
      throw new IntegrityError(
        `The registry acknowledged only ${next.offset} of ${expected} bytes of ${b.digest} ` +
          `(Range: ${next.range}) ${this.#shortAcks} times; giving up`,
      );
    }
    this.#ctx.emit({
      type: "retry",
      digest: b.digest,
      attempt: this.#shortAcks,
      reason: `short acknowledgement (Range: ${next.range}, expected 0-${expected - 1})`,
      delayMs: 0,
    });
    const at = await whereSessionStands(this.#ctx, b, this.#location, next.offset);
    if (at && at.offset === next.offset) {
      this.#location = at.location;
      this.#offset = at.offset;
      this.#ctx.progress.sent(b, this.#offset);
      await this.#save();
    } else {
      await this.#restart();
    }
  }

  /** PUT ?digest=. The PUT may have landed with its answer lost: the blob is then there. */
  async #commit(): Promise<void> {
    try {
      await commitBlob(this.#ctx, this.#b, this.#location);
    } catch (err) {
      if (err instanceof UploadStepError && await checkBlob(this.#ctx, this.#b)) return;
      throw err;
    }
  }

  /** Decides how to go on after `err`: returns to try again, throws to give up. */
  async #recover(err: unknown): Promise<void> {
    const cause = unwrapCause(err);
    if (await this.#adapt(err, cause)) return;
    if (cause instanceof ReplayNeeded && !this.#buffered) {
      // Redirected or challenged before the registry took any of it: the same
      // chunk again, from memory, which the transport can replay.
      this.#buffered = true;
      this.#ctx.progress.sent(this.#b, this.#offset);
      return;
    }
    if (err instanceof SourceDigestError && !this.#sourceRetried) {
      // The source sent other bytes once (copy): send the blob again from the start.
      this.#sourceRetried = true;
      return await this.#restart();
    }
    if (isDigestInvalid(cause) && this.#fromEarlier && !this.#restarted) {
      // A resumed session held other bytes than ours: start over once.
      this.#restarted = true;
      return await this.#restart();
    }
    if (isDigestInvalid(cause)) {
      // Ours or the way's? Hash the source again: a blob that verifies goes up once more.
      const bad = await checkSource(this.#ctx, this.#b);
      if (bad) throw bad;
      if (this.#digestRetried) throw garbledInTransit(this.#b);
      this.#digestRetried = true;
      return await this.#restart();
    }
    if (
      !(err instanceof UploadStepError) || !err.retryable ||
      this.#attempt >= this.#ctx.policy.maxRetries
    ) {
      throw unwrap(err);
    }
    await pause(this.#ctx, this.#b, this.#attempt++, err);
    await this.#resync(err);
  }

  /**
   * A PATCH refused for what it is rather than for a passing fault: too large (413, or 416
   * "exceeds the maximum permissible limit of 4.00MiB" from GHCR) → smaller chunks; no PATCH
   * at all (405, 501) → monolithic. What is learnt holds for the rest of the run. True when
   * the upload goes on (from where the session stands, or in the new way).
   */
  async #adapt(err: unknown, cause: unknown): Promise<boolean> {
    if (!(err instanceof UploadStepError) || !(cause instanceof RegistryError)) return false;
    if (!err.step.startsWith("sending bytes") || this.#adaptations++ > 8) return false;
    const learned = this.#ctx.learned;
    if (cause.status === 405 || cause.status === 501) {
      learned.monolithic = true;
      throw new Monolithic();
    }
    if (cause.status !== 413 && cause.status !== 416) return false;
    const limit = parseSizeLimit(cause.message);
    // A 416 that names no limit is distribution's "Content-Range does not follow on".
    if (cause.status === 416 && limit === undefined && !/too large/i.test(cause.message)) {
      return false;
    }
    const sent = /^sending bytes (\d+)-(\d+)/.exec(err.step);
    const tried = sent ? Number(sent[2]) - Number(sent[1]) + 1 : this.#ctx.tuning.chunkSize;
    const next = Math.min(limit ?? Math.floor(tried / 2), tried - 1, learned.maxChunk ?? Infinity);
    if (next < MIN_CHUNK) {
      learned.monolithic = true;
      throw new Monolithic();
    }
    learned.maxChunk = next;
    if (!this.#buffered && !this.#ctx.tuning.rangedStreams && this.#reader.stream) {
      learned.noStreamed = true; // even an unranged stream was too large
    }
    this.#ctx.emit({
      type: "retry",
      digest: this.#b.digest,
      attempt: this.#adaptations,
      reason: `the registry takes at most ${next} bytes per PATCH (${cause.message})`,
      delayMs: 0,
    });
    await this.#resync(err);
    return true;
  }

  /** After a failure worth retrying: on in the session where it stands, or in a new one. */
  async #resync(err: UploadStepError): Promise<void> {
    const b = this.#b;
    const at = err.sessionGone
      ? undefined
      : await whereSessionStands(this.#ctx, b, this.#location, this.#offset);
    if (at && at.offset <= b.size) {
      this.#location = at.location;
      this.#fromEarlier = this.#fromEarlier || at.offset > 0;
      this.#offset = at.offset;
    } else {
      this.#location = await openSession(this.#ctx, b);
      this.#offset = 0;
      this.#fromEarlier = false;
    }
    this.#ctx.progress.sent(b, this.#offset);
    await this.#save();
  }

  /** Drops the session and starts a new one from byte 0. */
  async #restart(): Promise<void> {
    await cancelSession(this.#ctx, this.#location);
    this.#location = await openSession(this.#ctx, this.#b);
    this.#offset = 0;
    this.#fromEarlier = false;
    this.#ctx.progress.sent(this.#b, 0);
    await this.#save();
  }

  /** Saves where the session stands, when there is a state file. */
  #save(): Promise<void> {
    if (!this.#statePath) return Promise.resolve();
    return writeState(this.#statePath, {
      version: 1,
      digest: this.#b.digest,
      size: this.#b.size,
      dest: this.#dest,
      location: this.#location,
      offset: this.#offset,
    });
  }
}
