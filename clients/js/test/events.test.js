// Every catalogue helper, publish and publishMany against a real server: each event
// reaches exactly the connections of its route, flat, as published.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import * as realtime from "../src/index.js";
import { CATALOGUE, createClient, RealtimeHttpError } from "../src/index.js";
import { startServer } from "./support/server.js";
import { SocketPool } from "./support/ws.js";

const CREATOR = "demo-creator";
const FAN = "demo-fan";
const STRANGER = "demo-stranger";
const POST = "demo-open-post";        // open: anyone may hold post_demo-open-post

let server;
let client;
let fan;          // FAN's connection, no channel: gets the events routed to the user
let watcher;      // STRANGER, holding post_demo-open-post and creator_demo-creator
let author;       // CREATOR, holding feed_demo-creator
const pool = new SocketPool();

before(async () => {
  server = await startServer({ name: "events" });
  client = createClient({ url: server.url, apiKey: server.apiKey });
  fan = await open(FAN);
  watcher = await open(STRANGER);
  await watcher.subscribe({ type: "post", postId: POST });
  await watcher.subscribe({ type: "creator", id: CREATOR });
  author = await open(CREATOR);
  await author.subscribe({ type: "feed", userId: CREATOR });
});

after(async () => {
  pool.closeAll();
  await server?.stop();
});

function open(userId) {
  return pool.open(server, userId);
}

/** The event reached `target` and no other connection got anything. */
async function delivered(target, event) {
  await target.expectEvent(event);
  for (const socket of [fan, watcher, author]) await socket.barrier();
}

/** The 202 answer as the server sends it: `published`, and one `{stream: offset}` per event. */
function assertPublished(result, n) {
  assert.equal(result.published, n);
  assert.ok(Array.isArray(result.positions), `no positions in ${JSON.stringify(result)}`);
  assert.equal(result.positions.length, n);
  for (const position of result.positions) {
    for (const offset of Object.values(position)) assert.ok(Number.isInteger(offset) && offset > 0, JSON.stringify(position));
  }
}

const row = { id: "n-js-1", userId: FAN, type: "LIKE_POST", title: "t", message: "m", isRead: false,
  metadata: null, createdAt: "2025-07-01T12:00:00.000Z" };
const post = { id: "p-js-1", title: "New post", type: "text", creatorId: CREATOR, createdAt: "2025-07-01T12:00:00.000Z" };
const comment = { id: "c-js-1", userId: FAN, content: "hi", createdAt: "2025-07-01T12:00:00.000Z" };

// For each catalogue type: the helper call, the event it must deliver, and who gets it.
const CASES = {
  notification: [(c) => c.notification(FAN, row), { type: "notification", userId: FAN, notification: row }, () => fan],
  notification_read: [(c) => c.notificationRead(FAN, "n-js-1"),
    { type: "notification_read", userId: FAN, notificationId: "n-js-1" }, () => fan],
  notifications_cleared: [(c) => c.notificationsCleared(FAN), { type: "notifications_cleared", userId: FAN }, () => fan],
  post_liked: [(c) => c.postLiked(POST, FAN, 5), { type: "post_liked", postId: POST, userId: FAN, likesCount: 5 }, () => watcher],
  post_unliked: [(c) => c.postUnliked(POST, FAN, 4),
    { type: "post_unliked", postId: POST, userId: FAN, likesCount: 4 }, () => watcher],
  post_created: [(c) => c.postCreated(post, CREATOR, "2025-07-01T12:00:01.000Z"),
    { type: "post_created", post, userId: CREATOR, timestamp: "2025-07-01T12:00:01.000Z" }, () => author],
  new_post_from_subscription: [(c) => c.newPostFromSubscription(FAN, post),
    { type: "new_post_from_subscription", post }, () => fan],
  post_deleted: [(c) => c.postDeleted(POST), { type: "post_deleted", postId: POST }, () => watcher],
  comment_added: [(c) => c.commentAdded(POST, comment), { type: "comment_added", postId: POST, comment }, () => watcher],
  comment_deleted: [(c) => c.commentDeleted(POST, "c-js-1"),
    { type: "comment_deleted", postId: POST, commentId: "c-js-1" }, () => watcher],
  creator_updated: [(c) => c.creatorUpdated(CREATOR, { nickname: "new" }),
    { type: "creator_updated", creatorId: CREATOR, data: { nickname: "new" } }, () => watcher],
  new_subscription: [(c) => c.newSubscription(CREATOR, FAN),
    { type: "new_subscription", creatorId: CREATOR, userId: FAN }, () => watcher],
  feed_update: [(c) => c.feedUpdate(FAN, [post]), { type: "feed_update", userId: FAN, posts: [post] }, () => fan],
  subscription_cancelled: [(c) => c.subscriptionCancelled(CREATOR, FAN),
    { type: "subscription_cancelled", creatorId: CREATOR, userId: FAN }, () => watcher],
  earnings_updated: [(c) => c.earningsUpdated(CREATOR, { total: 12.5, currency: "SOL" }),
    { type: "earnings_updated", creatorId: CREATOR, earnings: { total: 12.5, currency: "SOL" } }, () => watcher],
  flash_sale_created: [(c) => c.flashSaleCreated(CREATOR, { id: "fs-1", discount: 20 }),
    { type: "flash_sale_created", creatorId: CREATOR, flashSale: { id: "fs-1", discount: 20 } }, () => watcher],
  flash_sale_ended: [(c) => c.flashSaleEnded(CREATOR, "fs-1"),
    { type: "flash_sale_ended", creatorId: CREATOR, flashSaleId: "fs-1" }, () => watcher],
  post_purchased: [(c) => c.postPurchased(POST, FAN, 0.5),
    { type: "post_purchased", postId: POST, userId: FAN, amount: 0.5 }, () => fan],
  subscription_updated: [(c) => c.subscriptionUpdated(CREATOR, FAN, "premium"),
    { type: "subscription_updated", creatorId: CREATOR, userId: FAN, tier: "premium" }, () => fan],
};

test("this file has a case for every catalogue type", () => {
  assert.deepEqual(Object.keys(CASES).sort(), Object.keys(CATALOGUE).sort());
});

for (const [type, [call, event, receiver]] of Object.entries(CASES)) {
  test(`${type}: the helper's event reaches the subscriber of its route, and nobody else`, async () => {
    assertPublished(await call(client), 1);
    await delivered(receiver(), event);
  });
}

test("postCreated stamps the event with the current time when no timestamp is given", async () => {
  const before = Date.now();
  await client.postCreated(post, CREATOR);
  const frame = await author.next();
  assert.equal(frame.type, "post_created");
  assert.match(frame.timestamp, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  assert.ok(Date.parse(frame.timestamp) >= before - 1000, frame.timestamp);
  for (const socket of [fan, watcher, author]) await socket.barrier();
});

test("publish: a custom event to an explicit channel", async () => {
  const event = { type: "poll_closed", pollId: "x1", extra: [1, 2] };
  assertPublished(await client.publish(event, { channel: { type: "post", postId: POST } }), 1);
  await delivered(watcher, event);
  assertPublished(await client.publish(event, { channel: `post_${POST}` }), 1);   // a key works too
  await delivered(watcher, event);
});

test("publish: to a channel and a user, once per connection", async () => {
  const both = await open(FAN);
  await both.subscribe({ type: "post", postId: POST });
  const event = { type: "custom_union", n: 1 };
  assertPublished(await client.publish(event, { channel: { type: "post", postId: POST }, userId: FAN }), 1);
  await both.expectEvent(event);
  await fan.expectEvent(event);
  await watcher.expectEvent(event);
  for (const socket of [both, fan, watcher, author]) await socket.barrier();
  both.close();
});

test("publish: a custom type without an address is a 400 with the server's reason", async () => {
  await assert.rejects(client.publish({ type: "nowhere", x: 1 }), (error) => {
    assert.ok(error instanceof RealtimeHttpError);
    assert.equal(error.status, 400);
    assert.equal(error.error, "bad_request");
    assert.equal(error.reason, "nowhere has no default route: address it with channel or userId");
    assert.equal(error.attempts, 1);
    return true;
  });
  for (const socket of [fan, watcher, author]) await socket.barrier();
});

test("publishMany: every event, in order, with its position", async () => {
  const events = [1, 2, 3].map((likesCount) => ({ type: "post_liked", postId: POST, userId: FAN, likesCount }));
  const result = await client.publishMany(events);
  assertPublished(result, 3);
  const offsets = result.positions.map((p) => p[`post_${POST}`]);
  assert.deepEqual(offsets, [offsets[0], offsets[0] + 1, offsets[0] + 2]);   // consecutive in its stream
  for (const event of events) await watcher.expectEvent(event);
  for (const socket of [fan, watcher, author]) await socket.barrier();
});

test("publishMany: one address for all", async () => {
  const events = [{ type: "a_custom", n: 1 }, { type: "b_custom", n: 2 }];
  assertPublished(await client.publishMany(events, { userId: FAN }), 2);
  for (const event of events) await fan.expectEvent(event);
  for (const socket of [fan, watcher, author]) await socket.barrier();
});

test("publishMany: an invalid event is a 400 naming its index, and nothing is published", async () => {
  const events = [{ type: "post_liked", postId: POST, userId: FAN, likesCount: 1 }, { type: "post_liked", postId: POST }];
  await assert.rejects(client.publishMany(events), (error) => {
    assert.ok(error instanceof RealtimeHttpError);
    assert.equal(error.status, 400);
    assert.equal(error.index, 1);
    assert.equal(error.reason, "post_liked needs field(s): userId, likesCount");
    assert.match(error.message, /\(events\[1\]\)/);
    return true;
  });
  for (const socket of [fan, watcher, author]) await socket.barrier();
});

test("the named exports use a default client from FONANA_REALTIME_URL and WS_API_SECRET", async () => {
  delete process.env.FONANA_REALTIME_URL;
  delete process.env.WS_API_SECRET;
  await assert.rejects(realtime.postLiked(POST, FAN, 9), (error) => {
    assert.ok(error instanceof TypeError);
    assert.match(error.message, /no API key: pass apiKey or set WS_API_SECRET/);
    return true;
  });
  process.env.FONANA_REALTIME_URL = server.url;
  process.env.WS_API_SECRET = server.apiKey;
  assertPublished(await realtime.postLiked(POST, FAN, 9), 1);
  await delivered(watcher, { type: "post_liked", postId: POST, userId: FAN, likesCount: 9 });
  const created = await realtime.sendNotification(FAN, { type: "LIKE_POST", title: "Like", message: "m" });
  await delivered(fan, { type: "notification", userId: FAN, notification: created });
  assert.equal(realtime.getDefaultClient().url, server.url);
});
