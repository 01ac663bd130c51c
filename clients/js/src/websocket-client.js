// @fonana/realtime-client/websocket-client: the five exports of the Fonana app's
// lib/services/websocket-client.ts, same names, arguments and results (docs/PROTOCOL.md
// 4.1), so that file becomes
//
//   export * from "@fonana/realtime-client/websocket-client"
//
// Each resolves `{success: true}` or `{success: false, error}` within WS_API_TIMEOUT_MS
// (default 800 ms) and never throws: the app's API routes await them.

import { attempt, outcome, publishNewPost } from "./app-calls.js";

/**
 * The app's routes write the notification row first (lib/notifications.ts,
 * prisma.notification.create) and then call this: the server pushes that row and writes
 * none; only a call whose route wrote nothing gets a row written. The app's read and
 * clear routes call it with `notification_read` / `notifications_cleared` after changing
 * the rows themselves: those push the event alone.
 */
export async function sendNotification(userId, notification) {
  const { type, title, message, metadata } = notification ?? {};
  if (type === "notification_read") {
    return outcome(await attempt("sendNotification", (c) => c.notificationRead(userId, metadata?.notificationId)));
  }
  if (type === "notifications_cleared") {
    return outcome(await attempt("sendNotification", (c) => c.notificationsCleared(userId)));
  }
  return outcome(await attempt("sendNotification",
    (c) => c.pushNotification(userId, { type, title, message, metadata })));
}

/** `new_subscription` to `creator_<creatorId>`; `subscription` is `{userId, plan, userInfo, …}`
 *  (its fields travel with the event). */
export async function notifyNewSubscription(creatorId, subscription) {
  const { userId, ...rest } = subscription ?? {};
  return outcome(await attempt("notifyNewSubscription",
    (c) => c.publish({ ...rest, type: "new_subscription", creatorId, userId })));
}

/** `new_post_from_subscription` to every tab of each subscriber, in one request (per
 *  thousand subscribers). */
export async function notifyNewPost(post, subscribers) {
  if (!Array.isArray(subscribers) || subscribers.length === 0) return { success: true };
  return outcome(await attempt("notifyNewPost", (c) => publishNewPost(c, post, subscribers)));
}

/** Likes and unlikes alike (the app's like route calls it for both): `post_liked` with
 *  the count the route computed, to `post_<postId>`. */
export async function updatePostLikes(postId, likesCount, userId) {
  return outcome(await attempt("updatePostLikes", (c) => c.likesChanged(postId, userId, { likesCount })));
}

/** `comment_added` to `post_<postId>`, with the comment as the route formatted it
 *  (`id`, `userId`, `content`, `createdAt`, and whatever else it holds). */
export async function notifyNewComment(postId, comment) {
  return outcome(await attempt("notifyNewComment", (c) => c.commentAdded(postId, comment)));
}
