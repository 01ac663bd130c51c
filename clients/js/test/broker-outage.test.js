// The real server's own 503s: fan-out through a private Redis that the test kills and
// starts again. While Redis is down POST /api/events answers 503 broker_unavailable and
// POST /api/notifications writes the row and answers 503 with it (docs/PUBLISHING.md,
// "When Redis goes away").

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";

import { createClient } from "../src/index.js";
import { startRedis } from "./support/redis.js";
import { sqlite, startServer } from "./support/server.js";
import { SocketPool } from "./support/ws.js";

const FAN = "demo-fan";
const POST = "demo-open-post";

let redis;
let server;
const pool = new SocketPool();

before(async () => {
  redis = await startRedis();
  server = await startServer({
    name: "broker-outage",
    env: { REDIS_URL: redis.url, REDIS_PREFIX: `fonana:js:${randomBytes(6).toString("hex")}:`, WS_WORKERS: 1 },
  });
});

after(async () => {
  pool.closeAll();
  await server?.stop();
  await redis?.stop();
});

test("Redis down, then back: publish is retried through the real 503s and then accepted", async () => {
  await redis.kill();
  const seen = [];
  const retrying = createClient({
    url: server.url, apiKey: server.apiKey, timeoutMs: 15000,
    onRetry: async (info) => {
      seen.push([info.status, info.error]);
      if (seen.length === 1) await redis.start();      // the outage ends after the first refusal
    },
  });
  const result = await retrying.postLiked(POST, FAN, 3);
  assert.equal(result.published, 1);
  assert.ok(seen.length >= 1, "no 503 was seen: Redis was not down");
  for (const answer of seen) assert.deepEqual(answer, [503, "broker_unavailable"]);
});

test("Redis down: sendNotification gets the written row in the 503, does not retry, and the row arrives as unread", async () => {
  await redis.kill();
  let retried = 0;
  const once = createClient({ url: server.url, apiKey: server.apiKey, timeoutMs: 15000, onRetry: () => { retried += 1; } });
  const title = `outage-${randomBytes(4).toString("hex")}`;
  const row = await once.sendNotification(FAN, { type: "SYSTEM_ANNOUNCEMENT", title, message: "m" });
  assert.equal(retried, 0);
  assert.equal(row.title, title);
  assert.deepEqual(sqlite(server, 'SELECT "id" FROM "notifications" WHERE "title" = ?', [title]), [{ id: row.id }]);
  await redis.start();
  const socket = await pool.open(server, FAN);
  const unread = await socket.subscribe({ type: "notifications", userId: FAN });
  assert.deepEqual(unread.data.notifications[0], row);
});
