/**
 * `haul serve --upstream`: blobs landing in the store, served while they land.
 *
 * A {@link BlobFill} follows one blob that the download engine is writing into its partial file
 * (the engine's `onWritten` / `onDiscarded` hooks, lib/download/download.ts `WrittenHooks`):
 * which byte ranges are on disk, whether they were discarded (a bad chunk, a digest mismatch
 * and a start over), and how it ended. {@link BlobFills} keeps one fill per digest, so however
 * many clients ask for a blob at once it is fetched once (single flight), and routes the
 * engine's hooks (and `pull()`'s `blob-start` / `blob-done` events) to the fill of each digest.
 *
 * {@link fillResponse} answers a GET or HEAD from a fill: a range already on disk at once, one
 * still coming as its bytes land. No client completes a blob with unverified bytes: the blob's
 * last byte is held until the blob is verified and has its final name (so a whole-blob 200
 * ends only then, and so does the Range part that ends the blob), and a fill that fails (or
 * discards bytes a response already sent) cuts the responses in flight, so a client sees a
 * short body, never a whole one with wrong bytes. (A middle Range part may end before a late
 * discard of its bytes: the client's digest check of the whole blob catches that, as it would
 * from any registry.) A client that arrives while
 * nothing of its range is there waits up to `headerWaitMs` for the first byte, so an upstream
 * that fails at once gets it a registry error (`502` with `{"errors":[…]}`, `404` when the
 * upstream lacks the blob), not a cut stream; past that the headers go out (stock Ollama's
 * first GET of a blob must be answered promptly) and the body follows the bytes.
 */
import { type FileHandle, open } from "node:fs/promises";
import { IntegrityError, NotFoundError } from "../errors.ts";

/** How a fill ended badly: what a waiting client is answered. */
export interface FillFailure {
  status: number;
  code: string;
  message: string;
}

/** The engine's view of a written range (lib/download/download.ts `WrittenRange`). */
export interface LandedRange {
  digest: string;
  path: string;
  offset: number;
  length: number;
}

/** One blob landing in the store; see the module comment. */
export class BlobFill {
  readonly digest: string;
  readonly size: number;
  /** Where the blob is once verified. */
  readonly finalPath: string;
  /** Merged, sorted `[start, end)` ranges on disk in the current partial file. */
  #ranges: [number, number][] = [];
  #partialPath?: string;
  /** Bumped by every discard: a file handle or a response from before it is stale. */
  #generation = 0;
  #file?: { generation: number; handle: Promise<FileHandle | undefined> };
  #stale: Promise<FileHandle | undefined>[] = [];
  #state: "filling" | "done" | "failed" = "filling";
  #failure?: FillFailure;
  #wakers = new Set<() => void>();
  #readers = 0;
  /** Resolves when the blob is in place (verified), or fails. Never rejects. */
  readonly settled: Promise<void>;
  #settle!: () => void;

  constructor(digest: string, size: number, finalPath: string) {
    this.digest = digest;
    this.size = size;
    this.finalPath = finalPath;
    this.settled = new Promise((r) => (this.#settle = r));
  }

  get state(): "filling" | "done" | "failed" {
    return this.#state;
  }
  get failure(): FillFailure | undefined {
    return this.#failure;
  }
  get generation(): number {
    return this.#generation;
  }

  /** The engine wrote `[offset, offset + length)` to `path`. */
  written(path: string, offset: number, length: number): void {
    if (this.#state !== "filling" || length <= 0) return;
    if (this.#partialPath !== path) this.#partialPath = path;
    this.#ranges = mergeRange(this.#ranges, offset, offset + length);
    this.#wake();
  }

  /** Bytes reported so far may be wrong or gone: responses that sent any are cut. */
  discarded(): void {
    if (this.#state !== "filling") return;
    this.#generation++;
    this.#ranges = [];
    if (this.#file) this.#stale.push(this.#file.handle);
    this.#file = undefined;
    this.#wake();
  }

  /** The blob is verified and at {@link finalPath}. */
  done(): void {
    if (this.#state !== "filling") return;
    this.#state = "done";
    this.#ranges = [[0, this.size]];
    this.#wake();
    this.#settle();
    this.#closeWhenUnused();
  }

  /** The fetch failed for good. */
  fail(failure: FillFailure): void {
    if (this.#state !== "filling") return;
    this.#state = "failed";
    this.#failure = failure;
    this.#wake();
    this.#settle();
    this.#closeWhenUnused();
  }

  /** End of the bytes on disk from `pos` on without a gap (`pos` when there are none). */
  availableFrom(pos: number): number {
    for (const [s, e] of this.#ranges) {
      if (s <= pos && pos < e) return e;
      if (s > pos) break;
    }
    return pos;
  }

  /** Resolves at the next change (bytes written, discarded, done, failed) or when `ms` pass. */
  changed(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wakers.delete(done);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wakers.add(done);
      signal?.addEventListener("abort", done, { once: true });
    });
  }

  /**
   * A handle on the file that holds the current generation's bytes: the partial file while it
   * fills (opened once per generation, shared by every response), the final file once done.
   * Undefined when there is none to read yet.
   */
  async file(): Promise<FileHandle | undefined> {
    if (this.#file?.generation !== this.#generation) {
      const path = this.#state === "done" ? this.finalPath : this.#partialPath;
      if (path === undefined) return undefined;
      this.#file = {
        generation: this.#generation,
        handle: open(path, "r").catch(() => undefined),
      };
    }
    const { generation, handle } = this.#file;
    const fh = await handle;
    if (!fh && this.#file?.generation === generation) this.#file = undefined; // try again
    return generation === this.#generation ? fh : undefined;
  }

  /** A response starts reading; call the result when it stops (the handles close after the last). */
  reader(): () => void {
    this.#readers++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#readers--;
      this.#closeWhenUnused();
    };
  }

  /** Once the fill is over and no response reads: closes every handle opened. */
  #closeWhenUnused(): void {
    if (this.#state === "filling" || this.#readers > 0) return;
    const all = [...this.#stale, ...(this.#file ? [this.#file.handle] : [])];
    this.#stale = [];
    this.#file = undefined;
    for (const h of all) void h.then((fh) => fh?.close()).catch(() => {});
  }

  #wake(): void {
    for (const w of [...this.#wakers]) w();
  }
}

/** `ranges` with `[start, end)` added, merged and sorted. */
function mergeRange(ranges: [number, number][], start: number, end: number): [number, number][] {
  const out: [number, number][] = [];
  let s = start;
  let e = end;
  for (const [rs, re] of ranges) {
    if (re < s || rs > e) out.push([rs, re]);
    else {
      s = Math.min(s, rs);
      e = Math.max(e, re);
    }
  }
  out.push([s, e]);
  return out.sort((a, b) => a[0] - b[0]);
}

/** What a failed fetch tells the clients waiting for it. */
export function failureOf(digest: string, err: unknown): FillFailure {
  const why = (err as Error)?.message ?? String(err);
  if (err instanceof NotFoundError) {
    return { status: 404, code: "BLOB_UNKNOWN", message: `upstream: ${why}` };
  }
  const what = err instanceof IntegrityError ? "sent bytes that do not match" : "failed";
  return {
    status: 502,
    code: "UNKNOWN",
    message: `upstream fetch of ${digest} ${what}: ${why}`.slice(0, 500),
  };
}

/** Options for {@link BlobFills}. */
export interface BlobFillsOptions {
  /** Where a verified blob lives (the store's `blobs/sha256-<hex>`). */
  blobPath: (digest: string) => string;
  /** Told of every fill that fails. */
  onFailure?: (fill: BlobFill, failure: FillFailure) => void;
}

/** One fill per digest at a time (single flight); see the module comment. */
export class BlobFills {
  #fills = new Map<string, BlobFill>();
  #options: BlobFillsOptions;

  constructor(options: BlobFillsOptions) {
    this.#options = options;
  }

  /** The fill in progress for `digest`, if any. */
  get(digest: string): BlobFill | undefined {
    return this.#fills.get(digest);
  }

  /**
   * Starts `fetch` for `digest` unless a fill of it is in progress (then returns that one).
   * `fetch` puts the blob in place, verified, and should pass {@link hooks} to the engine.
   */
  run(digest: string, size: number, fetch: () => Promise<unknown>): BlobFill {
    const running = this.#fills.get(digest);
    if (running) return running;
    const fill = this.track(digest, size);
    fetch().then(() => this.#end(fill), (err) => this.#end(fill, err));
    return fill;
  }

  /**
   * A fill for `digest` that something else drives (a `pull()` whose events and hooks come
   * through {@link pullHooks}); it ends with {@link end}.
   */
  track(digest: string, size: number): BlobFill {
    let fill = this.#fills.get(digest);
    if (!fill) {
      fill = new BlobFill(digest, size, this.#options.blobPath(digest));
      this.#fills.set(digest, fill);
    }
    return fill;
  }

  /** Ends the fill of `digest`: done, or failed with `err`. */
  end(digest: string, err?: unknown): void {
    const fill = this.#fills.get(digest);
    if (fill) this.#end(fill, err);
  }

  #end(fill: BlobFill, err?: unknown): void {
    if (this.#fills.get(fill.digest) === fill) this.#fills.delete(fill.digest);
    if (err === undefined) fill.done();
    else {
      const failure = failureOf(fill.digest, err);
      fill.fail(failure);
      this.#options.onFailure?.(fill, failure);
    }
  }

  /** The engine's hooks (download()'s `WrittenHooks`), routed to the fill of each digest. */
  readonly hooks = {
    onWritten: (r: LandedRange) => this.#fills.get(r.digest)?.written(r.path, r.offset, r.length),
    onDiscarded: (digest: string) => this.#fills.get(digest)?.discarded(),
  };

  /**
   * Hooks and an event sink for a `pull()` (see {@link PullWatch}): each blob it fetches is a
   * fill from {@link PullWatch.expect} or its `blob-start` on, so clients asking for it wait on
   * it instead of fetching it again; done at its `blob-done`.
   */
  pullWatch(): PullWatch {
    const mine = new Set<string>();
    const claim = (digest: string, size: number) => {
      if (!this.#fills.has(digest)) mine.add(digest);
      this.track(digest, size);
    };
    return {
      ...this.hooks,
      expect: (blobs) => {
        for (const b of blobs) claim(b.digest, b.size);
      },
      onEvent: (e) => {
        if (e.type === "blob-start" && e.digest && e.total !== undefined) claim(e.digest, e.total);
        else if (e.type === "blob-done" && e.digest && mine.delete(e.digest)) this.end(e.digest);
      },
      settle: (err) => {
        for (const d of mine) this.end(d, err ?? new Error("the pull ended without this blob"));
        mine.clear();
      },
    };
  }
}

/** What {@link BlobFills.pullWatch} gives a `pull()` (its hooks and `onEvent`) and its caller. */
export interface PullWatch {
  onWritten: (r: LandedRange) => void;
  onDiscarded: (digest: string) => void;
  /** `pull()`'s progress events (`blob-start`, `blob-done` are read). */
  onEvent: (e: { type: string; digest?: string; total?: number }) => void;
  /** The blobs of the manifest being pulled, before the pull reaches them. */
  expect: (blobs: { digest: string; size: number }[]) => void;
  /** The pull's outcome: the fills it left unfinished fail with `err`. */
  settle: (err?: unknown) => void;
}
