// Errors and retries over real sockets: a wrong key, 503s that end (retried) and that
// do not (an error within timeoutMs), 4xx never retried, refused connections, a server
// that does not answer; and the API key in none of it.
//
// The 503s come from a small HTTP proxy in front of the real server (test/support/proxy.js),
// as nginx or a server whose Redis is down would answer; what it forwards reaches the server.
// The server's own 503s (Redis really down) are in broker-outage.test.js.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { inspect } from "node:util";

import { createClient, RealtimeConnectionError, RealtimeError, RealtimeHttpError } from "../src/index.js";
import { MAX_DELAY_MS } from "../src/backoff.js";
import { startProxy } from "./support/proxy.js";
import { freePort, sqlite, startServer } from "./support/server.js";
import { connect } from "./support/ws.js";

const SRC = join(dirname(fileURLToPath(import.meta.url)), "..", "src");
const FAN = "demo-fan";
const POST = "demo-open-post";
const WRONG_KEY = `wrong-${randomBytes(16).toString("base64url")}`;

let server;
let watcher;       // holds post_demo-open-post
let fan;
const closers = [];

before(async () => {
  server = await startServer({ name: "errors" });
  fan = await connect(server, FAN);
  watcher = await connect(server, "demo-stranger");
  await watcher.subscribe({ type: "post", postId: POST });
});

after(async () => {
  for (const close of closers.reverse()) await close();
  fan?.close();
  watcher?.close();
  // the server never wrote either key anywhere (stdout, stderr, LOG_DIR)
  const output = server?.output() ?? "";
  await server?.stop();
  assert.ok(!output.includes(server.apiKey), "the API key is in the server's output");
  assert.ok(!output.includes(WRONG_KEY), "the wrong key is in the server's output");
});

async function proxy(plan, options) {
  const p = await startProxy(server.url, plan, options);
  closers.push(p.close);
  return p;
}

function clientVia(url, options = {}) {
  return createClient({ url, apiKey: server.apiKey, ...options });
}

/** Nothing a caller could print or log of `error` holds `secret`. */
function assertNoSecret(error, ...secrets) {
  const views = [
    error.message, error.stack, String(error), JSON.stringify(error),
    inspect(error, { depth: 10, showHidden: true }),
    inspect(error.cause, { depth: 10, showHidden: true }), String(error.cause?.stack ?? ""),
  ];
  for (const secret of secrets) {
    for (const view of views) assert.ok(!view.includes(secret), `a key is in the error: ${view.split(secret).join("<KEY>")}`);
  }
}

function notificationsTitled(title) {
  return sqlite(server, 'SELECT * FROM "notifications" WHERE "title" = ?', [title]);
}

const unavailable = { status: 503, body: { error: "broker_unavailable" } };

test("a wrong key is a clear 401 error that does not contain the key", async () => {
  const client = createClient({ url: server.url, apiKey: WRONG_KEY });
  await assert.rejects(client.postLiked(POST, FAN, 1), (error) => {
    assert.ok(error instanceof RealtimeHttpError && error instanceof RealtimeError);
    assert.equal(error.name, "RealtimeHttpError");
    assert.equal(error.status, 401);
    assert.equal(error.error, "unauthorized");
    assert.equal(error.reason, "bad_api_key");
    assert.equal(error.attempts, 1);
    assert.match(error.message, /-> 401 unauthorized: bad_api_key/);
    assert.match(error.message, /WS_API_SECRET/);
    assertNoSecret(error, WRONG_KEY, server.apiKey);
    return true;
  });
  await watcher.barrier();                        // nothing was published
});

test("a client shows no key when inspected or serialised", () => {
  const client = createClient({ url: server.url, apiKey: WRONG_KEY });
  for (const view of [inspect(client, { depth: 10, showHidden: true }), JSON.stringify(client), String(client)]) {
    assert.ok(!view.includes(WRONG_KEY), view);
  }
});

// The one exception: the switch-over's entry points log a failed call where the app's own
// lib/services/websocket-client.ts did (console.error, one line, never the key:
// test/app-outage.test.js), since they resolve instead of throwing.
const LOGS = "app-calls.js";

test("the package writes no log line of its own (but app-calls.js, one console.error per failed call)", () => {
  for (const file of readdirSync(SRC).filter((f) => f.endsWith(".js"))) {
    const text = readFileSync(join(SRC, file), "utf8");
    if (file === LOGS) {
      assert.equal(text.match(/\bconsole\.|process\.(stdout|stderr)/g)?.length, 1, `${file} writes more than its one line`);
      continue;
    }
    assert.doesNotMatch(text, /\bconsole\.|process\.(stdout|stderr)/, `${file} writes output`);
  }
});

test("503 broker_unavailable, then the server again: retried, published once", async () => {
  const front = await proxy((n) => (n <= 3 ? unavailable : "forward"));
  const retries = [];
  const client = clientVia(front.url, { onRetry: (info) => retries.push(info) });
  const result = await client.postLiked(POST, FAN, 7);
  assert.equal(result.published, 1);
  assert.equal(front.seen.length, 4);
  assert.deepEqual(retries.map((r) => [r.attempt, r.status, r.error, r.path]), [
    [1, 503, "broker_unavailable", "/api/events"],
    [2, 503, "broker_unavailable", "/api/events"],
    [3, 503, "broker_unavailable", "/api/events"],
  ]);
  for (const r of retries) {
    assert.ok(r.delayMs > 0 && r.delayMs <= MAX_DELAY_MS, `delay ${r.delayMs}`);
    assert.ok(!JSON.stringify(r).includes(server.apiKey));
  }
  await watcher.expectEvent({ type: "post_liked", postId: POST, userId: FAN, likesCount: 7 });
  await watcher.barrier();                        // once
});

test("503 draining, then the server again: sendNotification retried, one row written", async () => {
  const front = await proxy((n) => (n === 1 ? { status: 503, body: { error: "draining" } } : "forward"));
  const title = `draining-${randomBytes(4).toString("hex")}`;
  const row = await clientVia(front.url).sendNotification(FAN, { type: "SYSTEM_ANNOUNCEMENT", title, message: "m" });
  assert.equal(front.seen.length, 2);
  assert.equal(row.title, title);
  assert.deepEqual(notificationsTitled(title).map((r) => r.id), [row.id]);
  await fan.expectEvent({ type: "notification", userId: FAN, notification: row });
  await fan.barrier();
});

test("a 503 that does not end: the last answer as an error within timeoutMs, each attempt made", async () => {
  const front = await proxy(() => unavailable);
  await assert.rejects(clientVia(front.url, { timeoutMs: 600 }).postLiked(POST, FAN, 8), (error) => {
    assert.ok(error instanceof RealtimeHttpError);
    assert.equal(error.status, 503);
    assert.equal(error.error, "broker_unavailable");
    assert.ok(error.attempts > 1, `attempts ${error.attempts}`);
    assert.equal(error.attempts, front.seen.length);
    assert.match(error.message, new RegExp(`after ${error.attempts} attempts`));
    assertNoSecret(error, server.apiKey);
    return true;
  });
  await watcher.barrier();
});

test("a 4xx is never retried", async () => {
  const front = await proxy(() => "forward");
  await assert.rejects(clientVia(front.url).publish({ type: "post_liked", postId: POST }), (error) => {
    assert.equal(error.status, 400);
    assert.equal(error.reason, "post_liked needs field(s): userId, likesCount");
    assert.equal(error.attempts, 1);
    assertNoSecret(error, server.apiKey);
    return true;
  });
  await assert.rejects(createClient({ url: front.url, apiKey: WRONG_KEY }).postDeleted(POST), { status: 401 });
  assert.equal(front.seen.length, 2);
  await watcher.barrier();
});

test("a 503 api_disabled (no WS_API_SECRET on the server) is not retried", async () => {
  const keyless = await startServer({ name: "keyless", env: { WS_API_SECRET: null, NODE_ENV: "production" } });
  try {
    await assert.rejects(createClient({ url: keyless.url, apiKey: WRONG_KEY }).postDeleted(POST), (error) => {
      assert.ok(error instanceof RealtimeHttpError);
      assert.equal(error.status, 503);
      assert.equal(error.error, "api_disabled");
      assert.equal(error.reason, "WS_API_SECRET is not set");
      assert.equal(error.attempts, 1);
      assertNoSecret(error, WRONG_KEY);
      return true;
    });
  } finally {
    await keyless.stop();
  }
});

test("a proxy that echoes the key back: the error has it redacted", async () => {
  const front = await proxy((n, request) => ({
    status: 400, body: { error: "bad_request", reason: `refused ${request.headers.authorization}` },
  }));
  await assert.rejects(clientVia(front.url).postDeleted(POST), (error) => {
    assert.equal(error.reason, "refused Bearer [redacted]");
    assertNoSecret(error, server.apiKey);
    return true;
  });
});

test("a refused connection is retried until the server is there", async () => {
  const port = await freePort();             // nothing listens here yet
  let front;
  const client = clientVia(`http://127.0.0.1:${port}`, {
    onRetry: async (info) => {
      assert.equal(info.code, "ECONNREFUSED");
      front ??= await proxy(() => "forward", { port });
    },
  });
  const result = await client.postLiked(POST, FAN, 11);
  assert.equal(result.published, 1);
  assert.equal(front.seen.length, 1);
  await watcher.expectEvent({ type: "post_liked", postId: POST, userId: FAN, likesCount: 11 });
  await watcher.barrier();
});

test("a server that is never there: a connection error within timeoutMs", async () => {
  const port = await freePort();
  await assert.rejects(clientVia(`http://127.0.0.1:${port}`, { timeoutMs: 400 }).postDeleted(POST), (error) => {
    assert.ok(error instanceof RealtimeConnectionError);
    assert.equal(error.status, undefined);
    assert.equal(error.error, "network");
    assert.equal(error.reason, "ECONNREFUSED");
    assert.ok(error.attempts > 1, `attempts ${error.attempts}`);
    assert.equal(error.cause.code, "ECONNREFUSED");
    assertNoSecret(error, server.apiKey);
    return true;
  });
});

test("no answer within timeoutMs: a timeout error, and the request is not sent again", async () => {
  const front = await proxy(() => "hang");
  await assert.rejects(clientVia(front.url, { timeoutMs: 300 }).postDeleted(POST), (error) => {
    assert.ok(error instanceof RealtimeConnectionError);
    assert.equal(error.error, "timeout");
    assert.equal(error.attempts, 1);
    assert.match(error.message, /no answer within timeoutMs/);
    assertNoSecret(error, server.apiKey);
    return true;
  });
  assert.equal(front.seen.length, 1);
});

test("bad options are TypeErrors that name the option, never the key", () => {
  assert.throws(() => createClient({ url: server.url, apiKey: "" }), /no API key/);
  assert.throws(() => createClient({ url: "ws://127.0.0.1:3002/ws", apiKey: "k" }), /http: or https:/);
  assert.throws(() => createClient({ url: "not a url", apiKey: "k" }), /absolute http\(s\) URL/);
  assert.throws(() => createClient({ url: `http://u:${WRONG_KEY}@127.0.0.1:1`, apiKey: "k" }), (error) => {
    assert.match(error.message, /must not carry credentials/);
    assert.ok(!error.message.includes(WRONG_KEY));
    return true;
  });
  assert.throws(() => createClient({ url: server.url, apiKey: "k", timeoutMs: 0 }), /timeoutMs/);
  for (const key of [`${WRONG_KEY}\n`, ` ${WRONG_KEY}`, `${WRONG_KEY}\u00e9`]) {
    assert.throws(() => createClient({ url: server.url, apiKey: key }), (error) => {
      assert.ok(error instanceof TypeError);
      assert.match(error.message, /a character an HTTP header cannot carry/);
      assert.ok(!error.message.includes(WRONG_KEY));
      return true;
    });
  }
});
