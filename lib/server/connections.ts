/**
 * The open connections of one listener and the limits on them: how long a connection may take
 * to send a request head, how long a response may sit with a client that reads nothing, and how
 * many connections may be open at once. The runtimes' `node:http` servers implement Node's own
 * `headersTimeout` / `keepAliveTimeout` / `timeout` unevenly (Deno and Bun each skip some of
 * them, and none applies to a socket handed over by a `tls.Server`), so the limits are kept here,
 * the same under every runtime, by one sweep over the table.
 */

/** What the table needs of a socket. */
export interface TrackedSocket {
  readonly remoteAddress?: string;
  readonly remotePort?: number;
  destroy(): void;
}

/** Options for {@link ConnectionTable}; every time is in milliseconds, 0 turns a limit off. */
export interface ConnectionLimits {
  /**
   * Longest wait for a complete request head: from accept (a TLS handshake included) and, on a
   * kept-alive connection, from the end of the previous response.
   * @default 20_000
   */
  headerTimeoutMs?: number;
  /**
   * A response blocked on a client that reads nothing is cut after this long; a kept-alive
   * connection waits at most the shorter of this and `headerTimeoutMs` for its next request.
   * @default 60_000
   */
  idleTimeoutMs?: number;
  /** Connections open at once; one more is closed as soon as it is accepted. @default 1024 */
  maxConnections?: number;
  /** Told when the cap is reached, and when the open connections are back under 90% of it. */
  onLimit?: (event: ConnectionLimitEvent) => void;
}

/** What {@link ConnectionLimits.onLimit} receives. */
export interface ConnectionLimitEvent {
  /** True when the cap was just reached, false when the connections fell back under it. */
  reached: boolean;
  open: number;
  max: number;
  /** Connections refused while at the cap (on `reached: false`). */
  refused: number;
}

/** The limits' defaults (haul serve documents the same). */
export const CONNECTION_DEFAULTS = {
  headerTimeoutMs: 20_000,
  idleTimeoutMs: 60_000,
  maxConnections: 1024,
} as const;

/** One open connection. */
export interface Connection {
  readonly socket: TrackedSocket;
  /** Remote address and port, read at accept (some runtimes forget them once closed). */
  readonly key: string;
  /** `head`: waiting for a request head since `since`; `busy`: answering a request. */
  phase: "head" | "busy";
  /** Requests being answered (more than one only when a client pipelines). */
  active: number;
  since: number;
  /** Responses finished on this connection (after one, `head` waits {@link ConnectionTable.keepAliveMs}). */
  served: number;
  /** Since when the response has waited for the client to take bytes (unset: not waiting). */
  blockedSince?: number;
}

/** Checks a limit option: a non-negative integer. @throws {RangeError} */
export function checkLimit(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative integer, got ${value}`);
  }
  return value;
}

/** The connection table of one listener. */
export class ConnectionTable {
  readonly headerTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly maxConnections: number;
  #onLimit?: (event: ConnectionLimitEvent) => void;
  #open = new Map<string, Connection>();
  #atLimit = false;
  #refused = 0;
  #draining = false;
  #timer?: ReturnType<typeof setInterval>;
  #onEmpty: (() => void)[] = [];

  constructor(limits: ConnectionLimits = {}) {
    const d = CONNECTION_DEFAULTS;
    this.headerTimeoutMs = checkLimit(
      "headerTimeoutMs",
      limits.headerTimeoutMs ?? d.headerTimeoutMs,
    );
    this.idleTimeoutMs = checkLimit("idleTimeoutMs", limits.idleTimeoutMs ?? d.idleTimeoutMs);
    this.maxConnections = checkLimit("maxConnections", limits.maxConnections ?? d.maxConnections);
    this.#onLimit = limits.onLimit;
    const shortest = Math.min(...[this.headerTimeoutMs, this.idleTimeoutMs].filter((t) => t > 0));
    // A deadline is met within a tenth of itself (at most 1 s late).
    if (Number.isFinite(shortest)) {
      this.#timer = setInterval(() => this.sweep(), Math.min(1000, Math.max(20, shortest / 10)));
    }
  }

  /** Open connections. */
  get size(): number {
    return this.#open.size;
  }

  /** True once {@link drain} was called: responses end their connection. */
  get draining(): boolean {
    return this.#draining;
  }

  /** How long a kept-alive connection waits for its next request head (0: no limit). */
  get keepAliveMs(): number {
    const limits = [this.headerTimeoutMs, this.idleTimeoutMs].filter((t) => t > 0);
    return limits.length ? Math.min(...limits) : 0;
  }

  /**
   * Takes a freshly accepted socket into the table; undefined (and the socket destroyed) when
   * the cap is reached or the table is draining. The caller removes it on `close`
   * ({@link remove}).
   */
  admit(socket: TrackedSocket): Connection | undefined {
    const key = keyOf(socket);
    const full = this.maxConnections > 0 && this.#open.size >= this.maxConnections;
    if (key === undefined || full || this.#draining) {
      socket.destroy();
      if (full) {
        this.#refused++;
        if (!this.#atLimit) {
          this.#atLimit = true;
          this.#onLimit?.({
            reached: true,
            open: this.#open.size,
            max: this.maxConnections,
            refused: 0,
          });
        }
      }
      return undefined;
    }
    const conn: Connection = {
      socket,
      key,
      phase: "head",
      since: performance.now(),
      active: 0,
      served: 0,
    };
    this.#open.set(key, conn);
    return conn;
  }

  /** The connection a request arrived on (its socket, or the TLS socket over it). */
  lookup(socket: TrackedSocket): Connection | undefined {
    const key = keyOf(socket);
    return key === undefined ? undefined : this.#open.get(key);
  }

  /** Forgets a connection that closed. */
  remove(conn: Connection): void {
    if (this.#open.get(conn.key) !== conn) return;
    this.#open.delete(conn.key);
    if (this.#atLimit && this.#open.size <= Math.floor(this.maxConnections * 0.9)) {
      this.#atLimit = false;
      const refused = this.#refused;
      this.#refused = 0;
      this.#onLimit?.({ reached: false, open: this.#open.size, max: this.maxConnections, refused });
    }
    if (this.#open.size === 0) { for (const f of this.#onEmpty.splice(0)) f(); }
  }

  /** A request head arrived on `conn`. */
  busy(conn: Connection): void {
    conn.active++;
    conn.phase = "busy";
    conn.since = performance.now();
    conn.blockedSince = undefined;
  }

  /** `conn`'s response ended; while draining, its connection is closed. */
  idle(conn: Connection): void {
    conn.served++;
    if (--conn.active > 0) return;
    conn.phase = "head";
    conn.since = performance.now();
    conn.blockedSince = undefined;
    if (this.#draining) conn.socket.destroy();
  }

  /** The response on `conn` waits for its client to take bytes (true) or moved on (false). */
  blocked(conn: Connection, waiting: boolean): void {
    conn.blockedSince = waiting ? performance.now() : undefined;
  }

  /** Closes every connection past a deadline; runs on the table's own timer. */
  sweep(now = performance.now()): void {
    const keepAlive = this.keepAliveMs;
    for (const c of this.#open.values()) {
      let late: boolean;
      if (c.phase === "head") {
        const limit = c.served > 0 ? keepAlive : this.headerTimeoutMs;
        late = limit > 0 && now - c.since > limit;
      } else {
        late = this.idleTimeoutMs > 0 && c.blockedSince !== undefined &&
          now - c.blockedSince > this.idleTimeoutMs;
      }
      if (late) c.socket.destroy();
    }
  }

  /** Refuses new connections and closes those not answering a request. */
  drain(): void {
    this.#draining = true;
    for (const c of this.#open.values()) if (c.phase === "head") c.socket.destroy();
  }

  /** Closes every connection. */
  closeAll(): void {
    for (const c of this.#open.values()) c.socket.destroy();
  }

  /** Resolves once no connection is open. */
  empty(): Promise<void> {
    if (this.#open.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#onEmpty.push(resolve));
  }

  /** Stops the sweep timer (the listener is closed and empty). */
  stop(): void {
    clearInterval(this.#timer);
  }
}

function keyOf(socket: TrackedSocket): string | undefined {
  const { remoteAddress: a, remotePort: p } = socket;
  return a === undefined || p === undefined ? undefined : `${a}|${p}`;
}
