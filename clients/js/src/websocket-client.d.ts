// Declarations for src/websocket-client.js (@fonana/realtime-client/websocket-client):
// the five exports of the Fonana app's lib/services/websocket-client.ts, with its types.

/** What every call resolves to; it never rejects. `error` is what failed (no key in it). */
export type RealtimeCallResult = { success: true } | { success: false; error: unknown };

/** A notification as the app's routes pass it: a `NotificationType` (after the route wrote
 *  that row), or `notification_read` with `metadata.notificationId`, or `notifications_cleared`. */
export interface AppNotification {
  type: string;
  title: string;
  message: string;
  metadata?: any;
}

export declare function sendNotification(userId: string, notification: AppNotification): Promise<RealtimeCallResult>;
/** `subscription`: `{userId, plan, userInfo, …}`. */
export declare function notifyNewSubscription(creatorId: string, subscription: any): Promise<RealtimeCallResult>;
export declare function notifyNewPost(post: any, subscribers: string[]): Promise<RealtimeCallResult>;
export declare function updatePostLikes(postId: string, likesCount: number, userId?: string): Promise<RealtimeCallResult>;
export declare function notifyNewComment(postId: string, comment: any): Promise<RealtimeCallResult>;
