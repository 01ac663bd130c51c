// sendNotification, markNotificationRead, clearNotifications against a real server:
// the row is in the database and every connection of the user receives the event.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { createClient, RealtimeHttpError } from "../src/index.js";
import { sqlite, startServer } from "./support/server.js";
import { SocketPool } from "./support/ws.js";

const FAN = "demo-fan";               // a demo user of the embedded default
const ISO_MS_Z = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

let server;
let client;
const pool = new SocketPool();

before(async () => {
  server = await startServer({ name: "notifications" });
  client = createClient({ url: server.url, apiKey: server.apiKey });
});

after(async () => {
  pool.closeAll();
  await server?.stop();
});

function open(userId) {
  return pool.open(server, userId);
}

function dbRow(id) {
  const rows = sqlite(server, 'SELECT * FROM "notifications" WHERE "id" = ?', [id]);
  return rows[0];
}

test("sendNotification returns the row, writes it and pushes it to every tab of the user", async () => {
  const tab = await open(FAN);
  const subscribed = await open(FAN);
  await subscribed.subscribe({ type: "notifications", userId: FAN });
  const bystander = await open("demo-stranger");
  const metadata = { postId: "demo-open-post", amount: 1.25, nested: { ok: true } };

  const row = await client.sendNotification(FAN, { type: "TIP_RECEIVED", title: "Tip!", message: "You got a tip", metadata });

  assert.deepEqual(Object.keys(row).sort(),
    ["createdAt", "id", "isRead", "message", "metadata", "title", "type", "userId"]);
  assert.equal(row.userId, FAN);
  assert.equal(row.type, "TIP_RECEIVED");
  assert.equal(row.title, "Tip!");
  assert.equal(row.message, "You got a tip");
  assert.equal(row.isRead, false);
  assert.deepEqual(row.metadata, metadata);
  assert.match(row.createdAt, ISO_MS_Z);

  const stored = dbRow(row.id);
  assert.ok(stored, "the row is not in the notifications table");
  assert.equal(stored.userId, FAN);
  assert.equal(stored.type, "TIP_RECEIVED");
  assert.equal(stored.title, "Tip!");
  assert.equal(stored.isRead, 0);
  assert.deepEqual(JSON.parse(stored.metadata), metadata);

  const event = { type: "notification", userId: FAN, notification: row };
  await tab.expectEvent(event);
  await subscribed.expectEvent(event);
  await tab.barrier();
  await subscribed.barrier();
  await bystander.barrier();            // another user's connection got nothing
});

test("a created notification is among the unread ones a new subscriber gets", async () => {
  const row = await client.sendNotification(FAN, { type: "NEW_MESSAGE", title: "Hi", message: "A message" });
  assert.equal(row.metadata, null);
  const socket = await open(FAN);
  const unread = await socket.subscribe({ type: "notifications", userId: FAN });
  assert.deepEqual(unread.data.notifications[0], row);
});

test("markNotificationRead marks the row read and pushes notification_read", async () => {
  const row = await client.sendNotification(FAN, { type: "LIKE_POST", title: "Like", message: "Someone liked it" });
  const tab = await open(FAN);
  const read = await client.markNotificationRead(FAN, row.id);
  assert.equal(read.id, row.id);
  assert.equal(read.isRead, true);
  assert.equal(dbRow(row.id).isRead, 1);
  await tab.expectEvent({ type: "notification_read", userId: FAN, notificationId: row.id });
  await tab.barrier();
});

test("markNotificationRead of another user's notification is a 404 and changes nothing", async () => {
  const row = await client.sendNotification(FAN, { type: "LIKE_POST", title: "Like", message: "m" });
  const tab = await open(FAN);
  await assert.rejects(client.markNotificationRead("demo-stranger", row.id), (error) => {
    assert.ok(error instanceof RealtimeHttpError, error);
    assert.equal(error.status, 404);
    assert.equal(error.error, "not_found");
    return true;
  });
  assert.equal(dbRow(row.id).isRead, 0);
  await tab.barrier();
});

test("clearNotifications marks every unread row read and pushes notifications_cleared", async () => {
  await client.sendNotification(FAN, { type: "SYSTEM_ANNOUNCEMENT", title: "T", message: "M" });
  const unreadBefore = sqlite(server, 'SELECT count(*) AS n FROM "notifications" WHERE "userId" = ? AND "isRead" = 0', [FAN])[0].n;
  assert.ok(unreadBefore >= 1);
  const tab = await open(FAN);
  const answer = await client.clearNotifications(FAN);
  assert.deepEqual(answer, { cleared: unreadBefore });
  const unreadAfter = sqlite(server, 'SELECT count(*) AS n FROM "notifications" WHERE "userId" = ? AND "isRead" = 0', [FAN])[0].n;
  assert.equal(unreadAfter, 0);
  await tab.expectEvent({ type: "notifications_cleared", userId: FAN });
  await tab.barrier();
});

test("an unknown user is a 404 with reason unknown_user and writes nothing", async () => {
  await assert.rejects(
    client.sendNotification("nobody-here", { type: "LIKE_POST", title: "t", message: "m" }),
    (error) => {
      assert.ok(error instanceof RealtimeHttpError);
      assert.equal(error.status, 404);
      assert.equal(error.error, "not_found");
      assert.equal(error.reason, "unknown_user");
      assert.equal(error.attempts, 1);
      return true;
    });
  assert.equal(sqlite(server, 'SELECT count(*) AS n FROM "notifications" WHERE "userId" = ?', ["nobody-here"])[0].n, 0);
});

test("a 400 surfaces the server's reason: an unknown notification type", async () => {
  const before = sqlite(server, 'SELECT count(*) AS n FROM "notifications"')[0].n;
  const tab = await open(FAN);
  await assert.rejects(
    client.sendNotification(FAN, { type: "NOT_A_TYPE", title: "t", message: "m" }),
    (error) => {
      assert.ok(error instanceof RealtimeHttpError);
      assert.equal(error.status, 400);
      assert.equal(error.error, "bad_request");
      assert.equal(error.reason, "type 'NOT_A_TYPE' is not a NotificationType");
      assert.match(error.message, /400 bad_request: type 'NOT_A_TYPE' is not a NotificationType/);
      assert.equal(error.index, undefined);
      return true;
    });
  assert.equal(sqlite(server, 'SELECT count(*) AS n FROM "notifications"')[0].n, before);
  await tab.barrier();
});

test("a 400 surfaces the server's reason: a missing title", async () => {
  await assert.rejects(client.sendNotification(FAN, { type: "LIKE_POST", message: "m" }), (error) => {
    assert.equal(error.status, 400);
    assert.equal(error.reason, "title must be a non-empty string");
    return true;
  });
});
