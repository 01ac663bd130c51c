// Declarations for src/websocket-server.js (@fonana/realtime-client/websocket-server):
// the exports of the seed server's websocket-server/src/events/*.js. None rejects.
import type { NotificationRow } from "./index.js";

// notifications.js
/** The row written and pushed, or null when that failed (logged). */
export declare function sendNotification(
  userId: string,
  notification: { type: string; title: string; message: string; metadata?: any },
): Promise<NotificationRow | null>;
export declare function markNotificationAsRead(userId: string, notificationId: string): Promise<void>;
export declare function clearNotifications(userId: string): Promise<void>;

// posts.js
/** The count is the post's `likesCount` in the database. */
export declare function updatePostLikes(postId: string, userId: string, isLiked: boolean): Promise<void>;
export declare function notifyNewPost(post: any, subscriberIds: string[]): Promise<void>;
/** true when the server took the event. */
export declare function notifyPostAuthor(post: any, authorId: string): Promise<boolean>;
export declare function notifyPostDeleted(postId: string, creatorId?: string): Promise<void>;
export declare function notifyNewComment(postId: string, comment: any): Promise<void>;
export declare function notifyCommentDeleted(postId: string, commentId: string): Promise<void>;

// creators.js
export declare function notifyCreatorUpdate(creatorId: string, updates: any): Promise<void>;
export declare function notifyNewSubscription(creatorId: string, userId: string): Promise<void>;

// feed.js
export declare function updateUserFeed(userId: string, posts: any[]): Promise<void>;
