// The switch-over's entry points while the realtime server is down or slow: the app's API
// routes await every call, so each must resolve `{success: false, error}` (websocket-client)
// or its seed value (websocket-server) within the deadline (WS_API_TIMEOUT_MS, default
// 800 ms), never throw or reject, and log the failure without the key. And the app's
// settings as it has them: WS_API_URL ends in /api.
//
// "Within the deadline" is shown by the reason each call gives up (the deadline's own
// timeout, or a refused connection retried until it) and by a guard two seconds past it
// that fails the test; how fast it gives up is not measured here.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, beforeEach, test } from "node:test";

import { APP_DEFAULT_TIMEOUT_MS, appBaseUrl } from "../src/app-calls.js";
import { appEnvironment } from "./support/app-env.js";
import { startProxy } from "./support/proxy.js";
import { freePort } from "./support/server.js";

const app = await import("@fonana/realtime-client/websocket-client");
const seedServer = await import("@fonana/realtime-client/websocket-server");

const KEY = `key-${randomBytes(12).toString("hex")}`;
let restore = () => {};
let logged = [];
const consoleError = console.error;
let hanging;

before(async () => {
  restore = appEnvironment(null);       // each test sets what it needs
  console.error = (...args) => logged.push(args.map(String).join(" "));
  // accepts every request and never answers: a server that is up but stuck
  hanging = await startProxy("http://127.0.0.1:9", () => "hang");
});

after(async () => {
  console.error = consoleError;
  await hanging?.close();
  restore();
});

beforeEach(() => {
  logged = [];
});

// every call the app's routes make (see app-switchover.test.js for where each comes from)
const CLIENT_CALLS = {
  "sendNotification(LIKE_POST)": () => app.sendNotification("u1", { type: "LIKE_POST", title: "t", message: "m", metadata: { postId: "p" } }),
  "sendNotification(notification_read)": () => app.sendNotification("u1", { type: "notification_read", title: "t", message: "", metadata: { notificationId: "n1" } }),
  "sendNotification(notifications_cleared)": () => app.sendNotification("u1", { type: "notifications_cleared", title: "t", message: "m" }),
  notifyNewSubscription: () => app.notifyNewSubscription("c1", { userId: "u1", plan: "basic" }),
  notifyNewPost: () => app.notifyNewPost({ id: "p1", title: "t", type: "text", creatorId: "c1" }, ["u1", "u2"]),
  updatePostLikes: () => app.updatePostLikes("p1", 3, "u1"),
  notifyNewComment: () => app.notifyNewComment("p1", { id: "c", userId: "u1", content: "x", createdAt: "2025-07-01T12:00:00.000Z" }),
};

/** `promise`, or a failure when it has not settled two seconds after the deadline. */
async function bounded(what, promise, deadlineMs) {
  let timer;
  const guard = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} still pending 2 s after its ${deadlineMs} ms deadline`)), deadlineMs + 2000);
  });
  try {
    return await Promise.race([promise, guard]);
  } finally {
    clearTimeout(timer);
  }
}

async function expectFailures(deadlineMs, reason) {
  for (const [name, call] of Object.entries(CLIENT_CALLS)) {
    const result = await bounded(name, call(), deadlineMs);
    assert.equal(result.success, false, name);
    assert.deepEqual(Object.keys(result).sort(), ["error", "success"], name);
    reason(name, result.error);
  }
  // the seed's functions: their own values, never a rejection
  assert.equal(await bounded("seed sendNotification", seedServer.sendNotification("u1", { type: "LIKE_POST", title: "t", message: "m" }), deadlineMs), null);
  assert.equal(await bounded("seed notifyPostAuthor", seedServer.notifyPostAuthor({ id: "p1" }, "u1"), deadlineMs), false);
  assert.equal(await bounded("seed updatePostLikes", seedServer.updatePostLikes("p1", "u1", true), deadlineMs), undefined);
  assert.equal(await bounded("seed updateUserFeed", seedServer.updateUserFeed("u1", []), deadlineMs), undefined);
  // one line per failed call, and never the key
  assert.equal(logged.length, Object.keys(CLIENT_CALLS).length + 4, logged.join("\n"));
  for (const line of logged) {
    assert.match(line, /^\[fonana-realtime\] \w+ failed: /);
    assert.ok(!line.includes(KEY), `the key is in a log line: ${line}`);
  }
}

test("server down (connection refused): every call resolves {success:false} by the default deadline, none throws", async () => {
  process.env.WS_API_URL = `http://127.0.0.1:${await freePort()}/api`;
  process.env.WS_API_SECRET = KEY;
  delete process.env.WS_API_TIMEOUT_MS;
  await expectFailures(APP_DEFAULT_TIMEOUT_MS, (name, error) => {
    // refused, retried until the deadline left no room for another attempt
    assert.equal(error.reason, "ECONNREFUSED", `${name}: ${error.message}`);
  });
});

test("server up but not answering: every call gives up at WS_API_TIMEOUT_MS with a timeout", async () => {
  process.env.WS_API_URL = `${hanging.url}/api`;
  process.env.WS_API_SECRET = KEY;
  process.env.WS_API_TIMEOUT_MS = "300";
  const before = hanging.seen.length;
  await expectFailures(300, (name, error) => {
    assert.equal(error.error, "timeout", `${name}: ${error.message}`);
  });
  assert.ok(hanging.seen.length > before, "the stuck server saw no request");
  // the app's WS_API_URL ends in /api: the requests went to /api/..., never /api/api/...
  for (const { path } of hanging.seen) assert.match(path, /^\/api\/(?!api\/)/, path);
});

test("no WS_API_SECRET: {success:false} naming the variable, nothing thrown", async () => {
  process.env.WS_API_URL = `${hanging.url}/api`;
  delete process.env.WS_API_SECRET;
  const result = await app.updatePostLikes("p1", 1, "u1");
  assert.equal(result.success, false);
  assert.match(String(result.error.message), /WS_API_SECRET/);
  assert.equal(await seedServer.notifyPostAuthor({ id: "p1" }, "u1"), false);
});

test("the app's settings: WS_API_URL with /api (its default included), else FONANA_REALTIME_URL", () => {
  assert.equal(appBaseUrl({ WS_API_URL: "http://localhost:3002/api" }), "http://localhost:3002");
  assert.equal(appBaseUrl({ WS_API_URL: "https://rt.fonana.me/api/" }), "https://rt.fonana.me");
  assert.equal(appBaseUrl({ WS_API_URL: "http://10.0.0.5:3002" }), "http://10.0.0.5:3002");
  assert.equal(appBaseUrl({ FONANA_REALTIME_URL: "http://127.0.0.1:3002" }), "http://127.0.0.1:3002");
  assert.equal(appBaseUrl({ WS_API_URL: "http://a:3002/api", FONANA_REALTIME_URL: "http://b:3002" }), "http://a:3002");
  assert.equal(appBaseUrl({}), "http://localhost:3002");
  assert.ok(APP_DEFAULT_TIMEOUT_MS < 1000);
});
