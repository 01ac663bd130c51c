// @fonana/realtime-client/websocket-server: every function the seed server's
// websocket-server/src/events/*.js export (DarthNec/Fonana), with the seed's arguments
// and meaning, against a real server on PostgreSQL with real subscribers.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";

import { startAppStack } from "./support/app-env.js";
import { SocketPool } from "./support/ws.js";

const seedServer = await import("@fonana/realtime-client/websocket-server");

// module.exports of the seed's four files, as they are in the app's repository
const SEED_EXPORTS = {
  "websocket-server/src/events/notifications.js": ["sendNotification", "markNotificationAsRead", "clearNotifications"],
  "websocket-server/src/events/posts.js": ["updatePostLikes", "notifyNewPost", "notifyPostAuthor", "notifyPostDeleted",
    "notifyNewComment", "notifyCommentDeleted"],
  "websocket-server/src/events/creators.js": ["notifyCreatorUpdate", "notifyNewSubscription"],
  "websocket-server/src/events/feed.js": ["updateUserFeed"],
};

let db;
let server;
let stack;
const pool = new SocketPool();

before(async () => {
  stack = await startAppStack("websocket-server");
  ({ db, server } = stack);
});

after(async () => {
  pool.closeAll();
  await stack?.stop();
});

const id = (prefix) => `${prefix}-${randomBytes(6).toString("hex")}`;

function user() {
  const uid = id("u");
  db.query('INSERT INTO "users" ("id", "wallet", "isCreator", "updatedAt") VALUES (%s, %s, true, now())', [uid, `w-${uid}`]);
  return uid;
}

function post(creatorId, likesCount) {
  const pid = id("p");
  db.query('INSERT INTO "posts" ("id", "creatorId", "title", "content", "type", "likesCount", "updatedAt") ' +
    "VALUES (%s, %s, 'T', 'C', 'text', %s, now())", [pid, creatorId, likesCount]);
  return pid;
}

const rowsOf = (uid) => db.query('SELECT "id", "isRead" FROM "notifications" WHERE "userId" = %s ORDER BY "createdAt"', [uid]);

test("it exports exactly the functions the seed's four event modules export", () => {
  const names = Object.values(SEED_EXPORTS).flat().sort();
  assert.deepEqual(Object.keys(seedServer).sort(), names);
  for (const name of names) assert.equal(typeof seedServer[name], "function", name);
});

test("notifications.js: sendNotification writes and pushes the row; markNotificationAsRead; clearNotifications", async () => {
  const uid = user();
  const tab = await pool.open(server, uid);
  const row = await seedServer.sendNotification(uid, { type: "SYSTEM_ANNOUNCEMENT", title: "Hi", message: "There" });
  assert.equal(row.userId, uid);
  await tab.expectEvent({ type: "notification", userId: uid, notification: row });
  const second = await seedServer.sendNotification(uid, { type: "LIKE_POST", title: "L", message: "M", metadata: { postId: "p" } });
  await tab.expectEvent({ type: "notification", userId: uid, notification: second });
  assert.deepEqual(rowsOf(uid), [{ id: row.id, isRead: false }, { id: second.id, isRead: false }]);

  assert.equal(await seedServer.markNotificationAsRead(uid, row.id), undefined);
  await tab.expectEvent({ type: "notification_read", userId: uid, notificationId: row.id });
  assert.equal(await seedServer.clearNotifications(uid), undefined);
  await tab.expectEvent({ type: "notifications_cleared", userId: uid });
  await tab.barrier();
  assert.deepEqual(rowsOf(uid), [{ id: row.id, isRead: true }, { id: second.id, isRead: true }]);
});

test("posts.js: updatePostLikes(postId, userId, isLiked) sends the likesCount read from the database", async () => {
  const creator = user();
  const liker = user();
  const pid = post(creator, 12);
  const watcher = await pool.open(server, liker);
  await watcher.subscribe({ type: "post", postId: pid });
  await seedServer.updatePostLikes(pid, liker, true);
  await watcher.expectEvent({ type: "post_liked", postId: pid, userId: liker, likesCount: 12 });
  db.query('UPDATE "posts" SET "likesCount" = 11 WHERE "id" = %s', [pid]);
  await seedServer.updatePostLikes(pid, liker, false);
  await watcher.expectEvent({ type: "post_unliked", postId: pid, userId: liker, likesCount: 11 });
  await seedServer.updatePostLikes(id("p-missing"), liker, true);      // the seed sent nothing for an unknown post
  await watcher.barrier();
});

test("posts.js: notifyNewPost, notifyPostDeleted, notifyNewComment, notifyCommentDeleted", async () => {
  const creator = user();
  const fans = [user(), user()];
  const pid = post(creator, 0);
  const tabs = await Promise.all(fans.map((uid) => pool.open(server, uid)));
  const watcher = tabs[0];
  await watcher.subscribe({ type: "post", postId: pid });
  const createdAt = "2025-07-01T12:00:00.000Z";
  await seedServer.notifyNewPost({ id: pid, title: "T", type: "text", creatorId: creator, createdAt, content: "not sent" }, fans);
  for (const tab of tabs) {
    await tab.expectEvent({ type: "new_post_from_subscription", post: { id: pid, title: "T", type: "text", creatorId: creator, createdAt } });
  }
  const comment = { id: "c-1", userId: fans[1], content: "hi", createdAt, user: { nickname: "trimmed, as the seed did" } };
  await seedServer.notifyNewComment(pid, comment);
  await watcher.expectEvent({ type: "comment_added", postId: pid, comment: { id: "c-1", userId: fans[1], content: "hi", createdAt } });
  await seedServer.notifyCommentDeleted(pid, "c-1");
  await watcher.expectEvent({ type: "comment_deleted", postId: pid, commentId: "c-1" });
  await seedServer.notifyPostDeleted(pid, creator);
  await watcher.expectEvent({ type: "post_deleted", postId: pid });
  for (const tab of tabs) await tab.barrier();
});

test("creators.js and feed.js: notifyCreatorUpdate, notifyNewSubscription, updateUserFeed", async () => {
  const creator = user();
  const fan = user();
  const page = await pool.open(server, fan);
  await page.subscribe({ type: "creator", id: creator });
  await seedServer.notifyCreatorUpdate(creator, { nickname: "new" });
  await page.expectEvent({ type: "creator_updated", creatorId: creator, data: { nickname: "new" } });
  await seedServer.notifyNewSubscription(creator, fan);
  await page.expectEvent({ type: "new_subscription", creatorId: creator, userId: fan });
  await seedServer.updateUserFeed(fan, [{ id: "p-1" }]);
  await page.expectEvent({ type: "feed_update", userId: fan, posts: [{ id: "p-1" }] });
  await page.barrier();
});
