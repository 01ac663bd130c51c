// Compiled (never run) by test/types.test.js: the Fonana app's calls, written as its
// routes write them, type-check against the switch-over's two entry points (the app's
// lib/services/websocket-client.ts re-exporting the first, app-websocket-client.ts).
import {
  notifyNewComment,
  notifyNewPost,
  notifyNewSubscription,
  sendNotification,
  updatePostLikes,
} from "./app-websocket-client.js";

export async function routes(userId: string, creatorId: string, postId: string, notification: {
  id: string; type: string; title: string; message: string; metadata: unknown; isRead: boolean; createdAt: Date;
}): Promise<boolean> {
  // app/api/posts/[id]/like/route.ts
  await updatePostLikes(postId, 5, userId);
  await sendNotification(creatorId, { type: "LIKE_POST", title: "t", message: "m", metadata: { postId, userId } });
  // app/api/posts/[id]/comments/route.ts
  await notifyNewComment(postId, { id: "c1", userId, content: "x", createdAt: new Date().toISOString(), replies: [] });
  // app/api/tips/route.ts, app/api/user/notifications/route.ts
  await sendNotification(creatorId, {
    type: notification.type, title: notification.title, message: notification.message,
    metadata: { ...(notification.metadata as any), id: notification.id, isRead: notification.isRead,
      createdAt: notification.createdAt },
  });
  // app/api/user/notifications/[id]/read/route.ts, app/api/user/notifications/clear/route.ts
  await sendNotification(userId, { type: "notification_read", title: "t", message: "", metadata: { notificationId: "n1" } });
  await sendNotification(userId, { type: "notifications_cleared", title: "t", message: "m", metadata: { count: 2 } });
  // app/api/subscriptions/process-payment/route.ts
  await notifyNewSubscription(creatorId, { userId, plan: "basic", userInfo: { id: userId, nickname: "" } });
  // app/api/posts/route-original.ts
  const result = await notifyNewPost({ id: postId, title: "t", type: "text", creatorId }, [userId]);
  if (!result.success) console.error(result.error);
  // app/api/posts/route.ts
  const { notifyPostAuthor } = await import("@fonana/realtime-client/websocket-server");
  const sent: boolean = await notifyPostAuthor({ id: postId, title: "t" }, creatorId);
  return sent && result.success;
}
