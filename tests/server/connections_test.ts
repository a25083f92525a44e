/** The connection table's limits and the access-log record, without sockets. */
import assert from "node:assert/strict";
import {
  CONNECTION_DEFAULTS,
  type ConnectionLimitEvent,
  ConnectionTable,
} from "../../lib/server/connections.ts";
import { accessLogRecord } from "../../lib/server/access_log.ts";
import { SERVE_HELP } from "../../cli/serve.ts";

let nextPort = 40000;
function fakeSocket() {
  return {
    remoteAddress: "127.0.0.1",
    remotePort: nextPort++,
    destroyed: false,
    destroy() {
      this.destroyed = true;
    },
  };
}

Deno.test("ConnectionTable() defaults: a request head within 20 s (at most 30), idle 60 s", () => {
  const t = new ConnectionTable();
  try {
    assert.equal(t.headerTimeoutMs, CONNECTION_DEFAULTS.headerTimeoutMs);
    assert.ok(t.headerTimeoutMs <= 30_000, "a half-open connection goes within 30 s");
    assert.equal(t.headerTimeoutMs, 20_000);
    assert.equal(t.idleTimeoutMs, 60_000);
    assert.equal(t.maxConnections, CONNECTION_DEFAULTS.maxConnections);
    assert.equal(t.keepAliveMs, 20_000);
    // The help states the same defaults.
    assert.match(SERVE_HELP, /--header-timeout SECS\s.*\(default 20\)/);
    assert.match(SERVE_HELP, /--idle-timeout SECS\s.*\(default 60\)/);
    assert.match(SERVE_HELP, new RegExp(`--max-connections N\\s.*default ${t.maxConnections}`));
    assert.match(SERVE_HELP, /--shutdown-timeout SECS\s.*\(default 10\)/);
  } finally {
    t.stop();
  }
});

Deno.test("ConnectionTable() refuses bad limits with RangeError", () => {
  assert.throws(() => new ConnectionTable({ headerTimeoutMs: -1 }), RangeError);
  assert.throws(() => new ConnectionTable({ maxConnections: 1.5 }), RangeError);
});

Deno.test("ConnectionTable.sweep() closes heads past the header timeout, kept-alive ones sooner", () => {
  const t = new ConnectionTable({ headerTimeoutMs: 1000, idleTimeoutMs: 500 });
  try {
    const fresh = fakeSocket();
    const kept = fakeSocket();
    const busy = fakeSocket();
    for (const s of [fresh, kept, busy]) assert.ok(t.admit(s));
    const now = performance.now();
    t.busy(t.lookup(busy)!);
    const k = t.lookup(kept)!;
    t.busy(k);
    t.idle(k); // one response served: the next head gets min(1000, 500) ms
    t.sweep(now + 600);
    assert.deepEqual([fresh.destroyed, kept.destroyed, busy.destroyed], [false, true, false]);
    t.sweep(now + 1100);
    assert.deepEqual([fresh.destroyed, busy.destroyed], [true, false]);
  } finally {
    t.stop();
  }
});

Deno.test("ConnectionTable.sweep() cuts a response blocked on its client past the idle timeout", () => {
  const t = new ConnectionTable({ headerTimeoutMs: 1000, idleTimeoutMs: 500 });
  try {
    const slow = fakeSocket();
    const reading = fakeSocket();
    t.admit(slow);
    t.admit(reading);
    const now = performance.now();
    for (const s of [slow, reading]) t.busy(t.lookup(s)!);
    t.blocked(t.lookup(slow)!, true);
    t.blocked(t.lookup(reading)!, true);
    t.blocked(t.lookup(reading)!, false); // it took the bytes
    t.sweep(now + 5000); // a busy connection that is not blocked has no deadline
    assert.deepEqual([slow.destroyed, reading.destroyed], [true, false]);
  } finally {
    t.stop();
  }
});

Deno.test("ConnectionTable.admit() refuses beyond the cap and reports it once, then the recovery", () => {
  const events: ConnectionLimitEvent[] = [];
  const t = new ConnectionTable({ maxConnections: 20, onLimit: (e) => events.push(e) });
  try {
    const open = Array.from({ length: 20 }, fakeSocket);
    const conns = open.map((s) => t.admit(s)!);
    assert.ok(conns.every(Boolean));
    const extra = Array.from({ length: 5 }, fakeSocket);
    for (const s of extra) assert.equal(t.admit(s), undefined);
    assert.ok(extra.every((s) => s.destroyed));
    assert.deepEqual(events, [{ reached: true, open: 20, max: 20, refused: 0 }]);
    t.remove(conns[0]); // 19 open: over 90% of the cap, no new line
    assert.ok(t.admit(fakeSocket()));
    assert.equal(t.admit(fakeSocket()), undefined);
    assert.equal(events.length, 1);
    t.remove(conns[1]);
    assert.equal(events.length, 1, "19 open");
    t.remove(conns[2]);
    assert.deepEqual(events[1], { reached: false, open: 18, max: 20, refused: 6 });
  } finally {
    t.stop();
  }
});

Deno.test("ConnectionTable.drain() closes idle connections, then each as its response ends", async () => {
  const t = new ConnectionTable();
  try {
    const idle = fakeSocket();
    const busy = fakeSocket();
    const i = t.admit(idle)!;
    const b = t.admit(busy)!;
    t.busy(b);
    t.drain();
    assert.deepEqual([idle.destroyed, busy.destroyed], [true, false]);
    assert.equal(t.admit(fakeSocket()), undefined, "no new connection while draining");
    t.idle(b);
    assert.equal(busy.destroyed, true);
    t.remove(i);
    t.remove(b);
    await t.empty();
  } finally {
    t.stop();
  }
});

Deno.test("accessLogRecord() names the repository, the tag and the digest served", () => {
  const headers = new Headers({ "docker-content-digest": `sha256:${"a".repeat(64)}` });
  const base = { method: "GET", status: 200, bytes: 10, durationMs: 1.234, complete: true };
  const byTag = accessLogRecord(
    { ...base, path: "/v2/library/x/manifests/latest", headers, client: "10.0.0.2" },
    new Date(0),
  );
  assert.deepEqual(byTag, {
    time: "1970-01-01T00:00:00.000Z",
    client: "10.0.0.2",
    method: "GET",
    path: "/v2/library/x/manifests/latest",
    name: "library/x",
    tag: "latest",
    digest: `sha256:${"a".repeat(64)}`,
    status: 200,
    bytes: 10,
    durationMs: 1.2,
    complete: true,
  });
  const d = `sha256:${"b".repeat(64)}`;
  const blob = accessLogRecord({
    ...base,
    status: 404,
    path: `/v2/127.0.0.1_5000/ns/m/blobs/${d}`,
    headers: new Headers(),
    client: "::1",
  });
  assert.equal(blob.name, "127.0.0.1_5000/ns/m");
  assert.equal(blob.digest, d);
  assert.equal(blob.tag, undefined);
  const other = accessLogRecord({ ...base, path: "/v2/_catalog?n=5", headers, client: "" });
  assert.equal(other.name, undefined);
  assert.equal(
    accessLogRecord({ ...base, path: "/v2/a/b/tags/list", headers, client: "" }).name,
    "a/b",
  );
});
