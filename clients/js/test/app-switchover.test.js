// The Fonana app's switch-over (docs/MIGRATING.md, docs/PROTOCOL.md 4.1), replayed call
// site by call site: each test does what one of the app's API routes does, in its order
// (the rows the route writes itself, then its realtime calls through
// `@fonana/realtime-client/websocket-client`, which the app's
// lib/services/websocket-client.ts re-exports), against a real server on PostgreSQL with
// real subscribers. It checks what each subscriber receives, with the fields the app's
// browser code reads, and that the `notifications` table holds exactly the rows the route
// wrote (none twice).
//
// Call sites (DarthNec/Fonana, `git grep websocket-client app/ lib/`):
//   app/api/posts/[id]/like/route.ts          updatePostLikes (like and unlike), sendNotification(LIKE_POST)
//   app/api/posts/[id]/comments/route.ts      notifyNewComment, sendNotification(COMMENT_POST | REPLY_COMMENT)
//   app/api/tips/route.ts                     sendNotification(TIP_RECEIVED, metadata.id)
//   app/api/user/notifications/route.ts       POST: sendNotification(metadata.id); PUT: sendNotification(notification_read)
//   app/api/user/notifications/[id]/read/route.ts   sendNotification(notification_read)
//   app/api/user/notifications/clear/route.ts       sendNotification(notifications_cleared)
//   app/api/subscriptions/process-payment/route.ts  sendNotification(NEW_SUBSCRIBER), notifyNewSubscription
//   app/api/posts/route-original.ts           notifyNewPost, sendNotification(NEW_POST_FROM_SUBSCRIPTION), no row written
//   app/api/posts/route.ts                    notifyPostAuthor from websocket-server/src/events/posts

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";

import { startAppStack } from "./support/app-env.js";
import { SocketPool } from "./support/ws.js";

// imported by the package's own name, through its `exports`, as the app imports them
const app = await import("@fonana/realtime-client/websocket-client");
const seedServer = await import("@fonana/realtime-client/websocket-server");

const ISO_MS_Z = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

let db;
let server;
let stack;
const pool = new SocketPool();

before(async () => {
  stack = await startAppStack("app-switchover");
  ({ db, server } = stack);
});

after(async () => {
  pool.closeAll();
  await stack?.stop();
});

const id = (prefix) => `${prefix}-${randomBytes(6).toString("hex")}`;

function user(nickname) {
  const uid = id("u");
  db.query('INSERT INTO "users" ("id", "wallet", "nickname", "isCreator", "updatedAt") VALUES (%s, %s, %s, true, now())',
    [uid, `wallet-${uid}`, `${nickname}-${uid}`]);
  return uid;
}

function post(creatorId, likesCount = 0) {
  const pid = id("p");
  db.query('INSERT INTO "posts" ("id", "creatorId", "title", "content", "type", "likesCount", "updatedAt") ' +
    "VALUES (%s, %s, 'A post', 'text', 'text', %s, now())", [pid, creatorId, likesCount]);
  return pid;
}

/** What the route writes itself (lib/notifications.ts createNotification, or
 *  prisma.notification.create): the row, read back as the server sends a ROW. */
function appWrites(userId, type, title, message, metadata) {
  const nid = id("n");
  return db.query('INSERT INTO "notifications" ("id", "userId", "type", "title", "message", "metadata", "createdAt") ' +
    "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s) " +
    'RETURNING "id", "userId", "type", "title", "message", "isRead", "metadata", "createdAt"',
  [nid, userId, type, title, message, JSON.stringify(metadata), new Date().toISOString()])[0];
}

function rowsOf(userId) {
  return db.query('SELECT "id", "userId", "type", "title", "message", "isRead", "metadata", "createdAt" ' +
    'FROM "notifications" WHERE "userId" = %s ORDER BY "createdAt", "id"', [userId]);
}

function open(userId) {
  return pool.open(server, userId);
}

/** The app's notification handling reads `notification.{id,type,title,message,isRead,createdAt}`
 *  (lib/services/websocket.ts types it `{type:'notification', userId, notification}`). */
async function expectNotification(socket, userId, row) {
  const frame = await socket.expectEvent({ type: "notification", userId, notification: row });
  for (const field of ["id", "type", "title", "message", "isRead", "createdAt"]) assert.ok(field in frame.notification, field);
  assert.match(frame.notification.createdAt, ISO_MS_Z);
}

/** Nothing more arrived at any of these sockets (a ping answered by the next frame). */
async function quiet(...sockets) {
  for (const socket of sockets) await socket.barrier();
}

test("app/api/posts/[id]/like/route.ts, like: the row notifyPostLike wrote is pushed once, post_liked carries the route's count", async () => {
  const creator = user("creator");
  const liker = user("liker");
  const pid = post(creator, 4);
  const creatorTab = await open(creator);
  const watcher = await open(liker);
  await watcher.subscribe({ type: "post", postId: pid });

  // lib/notifications.ts notifyPostLike(post.creatorId, likerName, postTitle, post.id)
  const row = appWrites(creator, "LIKE_POST", "New like on your post", 'Liker liked your post "A post"', { postId: pid });
  assert.deepEqual(await app.sendNotification(creator, {
    type: "LIKE_POST", title: "Новый лайк", message: 'Liker лайкнул ваш пост "A post"', metadata: { postId: pid, userId: liker },
  }), { success: true });
  assert.deepEqual(await app.updatePostLikes(pid, 5, liker), { success: true });

  await expectNotification(creatorTab, creator, row);
  // lib/hooks/useRealtimePosts.tsx reads postId, likesCount, userId
  await watcher.expectEvent({ type: "post_liked", postId: pid, userId: liker, likesCount: 5 });
  await quiet(creatorTab, watcher);
  assert.deepEqual(rowsOf(creator), [row]);
});

test("app/api/posts/[id]/like/route.ts, unlike: updatePostLikes(postId, newLikesCount, userId) pushes the lower count", async () => {
  const creator = user("creator");
  const liker = user("liker");
  const pid = post(creator, 5);
  const watcher = await open(liker);
  await watcher.subscribe({ type: "post", postId: pid });
  assert.deepEqual(await app.updatePostLikes(pid, 4, liker), { success: true });
  await watcher.expectEvent({ type: "post_liked", postId: pid, userId: liker, likesCount: 4 });
  assert.deepEqual(await app.updatePostLikes(pid, 3), { success: true });       // userId is optional
  await watcher.expectEvent({ type: "post_liked", postId: pid, userId: null, likesCount: 3 });
  await quiet(watcher);
  assert.deepEqual(rowsOf(creator), []);
});

test("app/api/posts/[id]/comments/route.ts, a comment: comment_added with the formatted comment, the COMMENT_POST row pushed once", async () => {
  const creator = user("creator");
  const commenter = user("commenter");
  const pid = post(creator);
  const creatorTab = await open(creator);
  const watcher = await open(commenter);
  await watcher.subscribe({ type: "post", postId: pid });
  const commentId = id("c");

  // lib/notifications.ts notifyNewComment(post.creatorId, commenterName, title, params.id, comment.id)
  const row = appWrites(creator, "COMMENT_POST", "New comment on your post", 'C commented on "A post"',
    { postId: pid, commentId });
  const formattedComment = {
    id: commentId, userId: commenter,
    user: { id: commenter, nickname: "c", fullName: "C", avatar: null, isVerified: false },
    content: "nice", createdAt: new Date().toISOString(), likesCount: 0, isAnonymous: false, parentId: null, replies: [],
  };
  assert.deepEqual(await app.notifyNewComment(pid, formattedComment), { success: true });
  assert.deepEqual(await app.sendNotification(creator, {
    type: "COMMENT_POST", title: "Новый комментарий", message: 'C прокомментировал "A post"', metadata: { postId: pid, commentId },
  }), { success: true });

  // useRealtimePosts reads postId (and counts the comment); the comment keeps id, userId, content, createdAt
  await watcher.expectEvent({ type: "comment_added", postId: pid, comment: formattedComment });
  await expectNotification(creatorTab, creator, row);
  await quiet(creatorTab, watcher);
  assert.deepEqual(rowsOf(creator), [row]);
});

test("app/api/posts/[id]/comments/route.ts, a reply: the REPLY_COMMENT row notifyCommentReply wrote is pushed once", async () => {
  const creator = user("creator");
  const parentAuthor = user("parent");
  const pid = post(creator);
  const parentTab = await open(parentAuthor);
  const commentId = id("c");
  const row = appWrites(parentAuthor, "REPLY_COMMENT", "New reply to your comment", 'R replied to your comment "hi..."',
    { postId: pid, commentId });
  assert.deepEqual(await app.sendNotification(parentAuthor, {
    type: "REPLY_COMMENT", title: "Новый ответ", message: "R ответил на ваш комментарий", metadata: { postId: pid, commentId },
  }), { success: true });
  await expectNotification(parentTab, parentAuthor, row);
  await quiet(parentTab);
  assert.deepEqual(rowsOf(parentAuthor), [row]);
});

test("app/api/tips/route.ts: the TIP_RECEIVED row (named by metadata.id) is pushed, not written again", async () => {
  const creator = user("creator");
  const tipper = user("tipper");
  const tabs = [await open(creator), await open(creator)];
  const notification = appWrites(creator, "TIP_RECEIVED", "New Tip Received!", "You received a 0.5 SOL tip!",
    { senderId: tipper, amount: 0.5, conversationId: null });
  assert.deepEqual(await app.sendNotification(creator, {
    type: notification.type, title: notification.title, message: notification.message,
    metadata: { ...notification.metadata, id: notification.id, isRead: notification.isRead,
      createdAt: new Date(notification.createdAt) },
  }), { success: true });
  for (const tab of tabs) await expectNotification(tab, creator, notification);
  await quiet(...tabs);
  assert.deepEqual(rowsOf(creator), [notification]);
});

test("app/api/user/notifications/route.ts POST: the row it created is pushed, not written again", async () => {
  const target = user("target");
  const tab = await open(target);
  await tab.subscribe({ type: "notifications", userId: target });
  const notification = appWrites(target, "SYSTEM_ANNOUNCEMENT", "Maintenance", "Tonight at 2", { link: "/status" });
  assert.deepEqual(await app.sendNotification(target, {
    type: notification.type, title: notification.title, message: notification.message,
    metadata: { ...notification.metadata, id: notification.id, isRead: notification.isRead, createdAt: notification.createdAt },
  }), { success: true });
  await expectNotification(tab, target, notification);
  await quiet(tab);
  assert.deepEqual(rowsOf(target), [notification]);
});

test("app/api/user/notifications/route.ts PUT and [id]/read/route.ts: notification_read after the route marked the row", async () => {
  const reader = user("reader");
  const tabs = [await open(reader), await open(reader)];
  const row = appWrites(reader, "LIKE_POST", "t", "m", { postId: "p" });
  // prisma.notification.updateMany({where: {id, userId}, data: {isRead: true}})
  db.query('UPDATE "notifications" SET "isRead" = true WHERE "id" = %s', [row.id]);
  for (const route of ["PUT /api/user/notifications", "PUT /api/user/notifications/[id]/read"]) {
    assert.deepEqual(await app.sendNotification(reader, {
      type: "notification_read", title: "Уведомление прочитано", message: "", metadata: { notificationId: row.id },
    }), { success: true }, route);
    // the app's notification handling reads notificationId
    for (const tab of tabs) await tab.expectEvent({ type: "notification_read", userId: reader, notificationId: row.id });
  }
  await quiet(...tabs);
  assert.deepEqual(rowsOf(reader), [{ ...row, isRead: true }]);
});

test("app/api/user/notifications/clear/route.ts: notifications_cleared after the route deleted the read rows", async () => {
  const owner = user("owner");
  const tab = await open(owner);
  const kept = appWrites(owner, "LIKE_POST", "t", "m", null);
  const gone = appWrites(owner, "LIKE_POST", "t2", "m2", null);
  db.query('UPDATE "notifications" SET "isRead" = true WHERE "id" = %s', [gone.id]);
  db.query('DELETE FROM "notifications" WHERE "userId" = %s AND "isRead"', [owner]);   // prisma.notification.deleteMany
  assert.deepEqual(await app.sendNotification(owner, {
    type: "notifications_cleared", title: "Уведомления очищены", message: "Удалено 1 прочитанных уведомлений",
    metadata: { count: 1 },
  }), { success: true });
  await tab.expectEvent({ type: "notifications_cleared", userId: owner });
  await quiet(tab);
  assert.deepEqual(rowsOf(owner), [kept]);
});

test("app/api/subscriptions/process-payment/route.ts: the NEW_SUBSCRIBER row pushed once, new_subscription to creator_<id>", async () => {
  const creator = user("creator");
  const subscriber = user("subscriber");
  const creatorTab = await open(creator);
  const page = await open(subscriber);       // someone on the creator's page (CreatorContext)
  await page.subscribe({ type: "creator", id: creator });
  // lib/notifications.ts notifyNewSubscriber(creatorId, subscriberName, plan)
  const row = appWrites(creator, "NEW_SUBSCRIBER", "New subscriber!", "S subscribed to your premium plan", { plan: "premium" });
  assert.deepEqual(await app.sendNotification(creator, {
    type: "NEW_SUBSCRIBER", title: "Новый подписчик", message: "S подписался на план premium",
    metadata: { userId: subscriber, plan: "premium" },
  }), { success: true });
  const userInfo = { id: subscriber, nickname: "s", fullName: "S", avatar: null };
  assert.deepEqual(await app.notifyNewSubscription(creator, { userId: subscriber, plan: "premium", userInfo }), { success: true });

  await expectNotification(creatorTab, creator, row);
  // CreatorContext reads type and creatorId
  await page.expectEvent({ type: "new_subscription", creatorId: creator, userId: subscriber, plan: "premium", userInfo });
  await quiet(creatorTab, page);
  assert.deepEqual(rowsOf(creator), [row]);
});

test("app/api/posts/route-original.ts: notifyNewPost reaches each subscriber; the notifications it never wrote are written once each", async () => {
  const creator = user("creator");
  const subscribers = [user("fan"), user("fan"), user("fan")];
  const outsider = user("outsider");
  const tabs = await Promise.all(subscribers.map(open));
  const outsiderTab = await open(outsider);
  const createdAt = new Date();
  const created = { id: id("p"), title: "Hello", content: "c", type: "text", creatorId: creator, createdAt, isLocked: false };

  assert.deepEqual(await app.notifyNewPost(created, subscribers), { success: true });
  const summary = { id: created.id, title: "Hello", type: "text", creatorId: creator, createdAt: createdAt.toISOString() };
  for (const tab of tabs) await tab.expectEvent({ type: "new_post_from_subscription", post: summary });

  const results = await Promise.all(subscribers.map((uid) => app.sendNotification(uid, {
    type: "NEW_POST_FROM_SUBSCRIPTION", title: "Новый пост", message: "C опубликовал новый пост: Hello",
    metadata: { postId: created.id, creatorId: creator },
  })));
  assert.deepEqual(results, subscribers.map(() => ({ success: true })));
  for (const [i, uid] of subscribers.entries()) {
    const rows = rowsOf(uid);
    assert.equal(rows.length, 1, `${uid}: ${JSON.stringify(rows)}`);
    assert.deepEqual(rows[0].metadata, { postId: created.id, creatorId: creator });
    await expectNotification(tabs[i], uid, rows[0]);
  }
  await quiet(...tabs, outsiderTab);
  assert.deepEqual(await app.notifyNewPost(created, []), { success: true });     // no subscriber: no request
});

test("app/api/posts/route.ts: notifyPostAuthor from websocket-server sends post_created to the author's tabs and feed once", async () => {
  const author = user("author");
  const tab = await open(author);
  const feed = await open(author);
  await feed.subscribe({ type: "feed", userId: author });
  const created = { id: id("p"), title: "Mine", content: "text", type: "image", mediaUrl: "/m.jpg", isLocked: true, price: 1,
    currency: "SOL", minSubscriptionTier: null, createdAt: new Date().toISOString(),
    creator: { id: author, nickname: "a", fullName: "A", avatar: null, isCreator: true } };
  assert.equal(await seedServer.notifyPostAuthor(created, author), true);
  for (const socket of [tab, feed]) {
    const frame = await socket.expectType("post_created");
    // useRealtimePosts reads event.post as a UnifiedPost, and the author in userId
    assert.equal(frame.userId, author);
    assert.match(frame.timestamp, ISO_MS_Z);
    assert.deepEqual(frame.post, {
      id: created.id,
      content: { title: "Mine", text: "text" },
      media: { type: "image", url: "/m.jpg", thumbnail: null },
      access: { isLocked: true, price: 1, currency: "SOL", tier: null },
      creator: created.creator,
      engagement: { likesCount: 0, commentsCount: 0, viewsCount: 0 },
      metadata: { createdAt: created.createdAt, updatedAt: created.createdAt, category: "General" },
    });
  }
  await quiet(tab, feed);
});
