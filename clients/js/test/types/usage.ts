// Compiled (never run) by test/types.test.js: the declarations accept what a Next.js
// route writes and refuse what the server would refuse. Imported by the package's own
// name, through its `exports`, as the Fonana app imports it.
import {
  CATALOGUE,
  createClient,
  postLiked,
  publishMany,
  RealtimeConnectionError,
  RealtimeHttpError,
  sendNotification,
  type CatalogueEventType,
  type NotificationRow,
  type PublishResult,
} from "@fonana/realtime-client";
import { NOTIFICATION_TYPES } from "@fonana/realtime-client/catalogue";

export async function route(userId: string): Promise<string> {
  const row: NotificationRow = await sendNotification(userId, { type: "LIKE_POST", title: "t", message: "m" });
  const withMeta = await sendNotification(userId, { type: "TIP_RECEIVED", title: "t", message: "m", metadata: { amount: 1 } });
  const liked: PublishResult = await postLiked("p1", userId, 5);
  const positions: Array<Record<string, number>> = liked.positions;
  const many = await publishMany([{ type: "post_deleted", postId: "p1" }], { channel: { type: "post", postId: "p1" } });
  const client = createClient({ url: "http://127.0.0.1:3002", apiKey: "k", timeoutMs: 2000, onRetry: (i) => void i.delayMs });
  await client.publish({ type: "custom", x: 1 }, { channel: "post_p1", userId });
  await client.newPostFromSubscription(userId, { id: "p2", title: "New" });
  const cleared: number = (await client.clearNotifications(userId)).cleared;
  const kind: CatalogueEventType = "post_liked";
  const required: readonly string[] = CATALOGUE[kind].required;
  const types: readonly string[] = NOTIFICATION_TYPES;
  try {
    await client.markNotificationRead(userId, row.id);
  } catch (error) {
    if (error instanceof RealtimeHttpError) {
      const status: number = error.status;
      return `${status} ${error.error} ${error.reason} ${error.index}`;
    }
    if (error instanceof RealtimeConnectionError) return String(error.attempts);
    throw error;
  }
  return [withMeta.id, positions, many.published, cleared, required, types].join();
}

export async function refused(userId: string) {
  // @ts-expect-error: not a NotificationType
  await sendNotification(userId, { type: "LIKE", title: "t", message: "m" });
  // @ts-expect-error: title is required
  await sendNotification(userId, { type: "LIKE_POST", message: "m" });
  // @ts-expect-error: likesCount is a number
  await postLiked("p1", userId, "5");
  // @ts-expect-error: an event needs a type
  await publishMany([{ postId: "p1" }]);
  // @ts-expect-error: not a channel
  await createClient().publish({ type: "x" }, { channel: { type: "room", id: "r" } });
  // @ts-expect-error: not a catalogue type
  const kind: CatalogueEventType = "post_likes";
  return kind;
}
