// @fonana/realtime-client/websocket-server: every function the seed server's own
// modules export (websocket-server/src/events/{notifications,posts,creators,feed}.js in
// the Fonana repository), with their names, arguments and meaning (docs/PROTOCOL.md 4.1).
// The app imports one of them in app/api/posts/route.ts:
//
//   const { notifyPostAuthor } = await import("@fonana/realtime-client/websocket-server")
//
// Like the seed's, they resolve to nothing (notifyPostAuthor: true/false;
// sendNotification: the row), log a failure and never throw; unlike the seed's
// sendNotification, which threw, a failure resolves null: an API route must not fail
// because realtime is down. Same settings and deadline as websocket-client.

import { attempt, publishNewPost } from "./app-calls.js";

const nothing = async (name, work) => {
  await attempt(name, work);
};

// -- notifications.js -------------------------------------------------------------------

/** Writes the row and pushes `notification` to every tab of the user; the ROW, or null. */
export async function sendNotification(userId, notification) {
  const result = await attempt("sendNotification", (c) => c.sendNotification(userId, notification ?? {}));
  return result.success ? result.value : null;
}

/** Marks it read and pushes `notification_read` (when it was unread). */
export const markNotificationAsRead = (userId, notificationId) =>
  nothing("markNotificationAsRead", (c) => c.markNotificationRead(userId, notificationId));

/** Marks all read and pushes `notifications_cleared` (when any was unread). */
export const clearNotifications = (userId) => nothing("clearNotifications", (c) => c.clearNotifications(userId));

// -- posts.js ---------------------------------------------------------------------------

/** `post_liked` / `post_unliked` to `post_<postId>` with the post's current `likesCount`,
 *  read from the database by the server (as the seed read it); an unknown post: nothing. */
export const updatePostLikes = (postId, userId, isLiked) =>
  nothing("updatePostLikes", (c) => c.likesChanged(postId, userId, { isLiked: Boolean(isLiked) }));

/** `new_post_from_subscription` to each subscriber. */
export const notifyNewPost = (post, subscriberIds) =>
  nothing("notifyNewPost", (c) => publishNewPost(c, post, Array.isArray(subscriberIds) ? subscriberIds : []));

/** The seed's shape of a post for the author's own feed (`post_created`). */
function authorPost(post, authorId, now = new Date().toISOString()) {
  return {
    id: post.id,
    content: { title: post.title || "", text: post.content || "" },
    media: { type: post.type || "text", url: post.mediaUrl || null, thumbnail: post.thumbnail || null },
    access: {
      isLocked: post.isLocked || false,
      price: post.price || null,
      currency: post.currency || null,
      tier: post.minSubscriptionTier || null,
    },
    creator: post.creator || { id: authorId, nickname: "Unknown", fullName: "Unknown", avatar: null, isCreator: true },
    engagement: { likesCount: 0, commentsCount: 0, viewsCount: 0 },
    metadata: {
      createdAt: post.createdAt || now,
      updatedAt: post.updatedAt || post.createdAt || now,
      category: post.category || "General",
    },
  };
}

/** `post_created` with the post as the seed normalised it, to every tab of the author and
 *  to `feed_<authorId>` (once per connection); true when the server took it. */
export async function notifyPostAuthor(post, authorId) {
  const result = await attempt("notifyPostAuthor", (c) => {
    const timestamp = new Date().toISOString();
    const event = { type: "post_created", post: authorPost(post ?? {}, authorId, timestamp), userId: authorId, timestamp };
    return c.publish(event, { channel: { type: "feed", userId: authorId }, userId: authorId });
  });
  return result.success;
}

/** `post_deleted` to `post_<postId>` (`creatorId` is accepted, as the seed's was, and unused). */
export const notifyPostDeleted = (postId, _creatorId) => nothing("notifyPostDeleted", (c) => c.postDeleted(postId));

/** `comment_added` to `post_<postId>` with the comment's `id`, `userId`, `content`, `createdAt`. */
export const notifyNewComment = (postId, comment) =>
  nothing("notifyNewComment", (c) => c.commentAdded(postId, {
    id: comment?.id, userId: comment?.userId, content: comment?.content, createdAt: comment?.createdAt,
  }));

/** `comment_deleted` to `post_<postId>`. */
export const notifyCommentDeleted = (postId, commentId) =>
  nothing("notifyCommentDeleted", (c) => c.commentDeleted(postId, commentId));

// -- creators.js ------------------------------------------------------------------------

/** `creator_updated` with `data: updates` to `creator_<creatorId>`. */
export const notifyCreatorUpdate = (creatorId, updates) =>
  nothing("notifyCreatorUpdate", (c) => c.creatorUpdated(creatorId, updates));

/** `new_subscription` to `creator_<creatorId>`. */
export const notifyNewSubscription = (creatorId, userId) =>
  nothing("notifyNewSubscription", (c) => c.newSubscription(creatorId, userId));

// -- feed.js ----------------------------------------------------------------------------

/** `feed_update` to every tab of the user. */
export const updateUserFeed = (userId, posts) => nothing("updateUserFeed", (c) => c.feedUpdate(userId, posts));
