import assert from "node:assert/strict";
import {
  backoffDelay,
  DEFAULT_RETRY,
  isRetryableStatus,
  parseRetryAfter,
} from "../../lib/transport/retry.ts";
import { withRetry } from "../../lib/transport/fetch.ts";
import { NetworkError } from "../../lib/errors.ts";

Deno.test("parseRetryAfter() reads seconds and HTTP dates", () => {
  assert.equal(parseRetryAfter("3"), 3000);
  assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 4_000), 6_000);
  assert.equal(parseRetryAfter("soon"), undefined);
  assert.equal(parseRetryAfter(null), undefined);
});

Deno.test("backoffDelay() doubles with jitter, caps, and prefers Retry-After", () => {
  const p = { ...DEFAULT_RETRY, baseDelayMs: 100, maxDelayMs: 1000 };
  assert.equal(backoffDelay(1, p, undefined, () => 0.5), 100);
  assert.equal(backoffDelay(3, p, undefined, () => 0.5), 400);
  assert.equal(backoffDelay(10, p, undefined, () => 0.5), 1000);
  assert.equal(backoffDelay(1, p, undefined, () => 0), 50);
  assert.equal(backoffDelay(1, p, 700), 700);
  assert.equal(backoffDelay(1, p, 60_000), 1000);
  assert.ok(isRetryableStatus(503) && isRetryableStatus(429) && !isRetryableStatus(404));
});

Deno.test("withRetry() retries 503 honouring Retry-After, then returns the success", async () => {
  let calls = 0;
  const seen: number[] = [];
  const f = withRetry(() => {
    calls++;
    return Promise.resolve(
      calls < 3
        ? new Response("busy", { status: 503, headers: { "retry-after": "0" } })
        : new Response("ok"),
    );
  }, { baseDelayMs: 1, onRetry: (i) => seen.push(i.delayMs) });
  const res = await f(new Request("http://127.0.0.1:1/x"));
  assert.equal(await res.text(), "ok");
  assert.equal(calls, 3);
  assert.deepEqual(seen, [0, 0]);
});

Deno.test("withRetry() gives up on connection errors after maxRetries with a NetworkError", async () => {
  let calls = 0;
  const f = withRetry(() => {
    calls++;
    return Promise.reject(new TypeError("connection refused"));
  }, { maxRetries: 2, baseDelayMs: 1 });
  await assert.rejects(f(new Request("http://127.0.0.1:1/x")), NetworkError);
  assert.equal(calls, 3);
});

Deno.test("withRetry() never replays a request with a body", async () => {
  let calls = 0;
  const f = withRetry(() => {
    calls++;
    return Promise.resolve(new Response(null, { status: 503 }));
  }, { baseDelayMs: 1 });
  const res = await f(new Request("http://127.0.0.1:1/x", { method: "PUT", body: "data" }));
  assert.equal(res.status, 503);
  assert.equal(calls, 1);
});
