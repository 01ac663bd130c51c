// Declarations for src/index.js (@fonana/realtime-client).
import type { NotificationType } from "./catalogue.js";

export { CATALOGUE, NOTIFICATION_TYPES } from "./catalogue.js";
export type { CatalogueEntry, CatalogueEventType, CatalogueRoute, NotificationType } from "./catalogue.js";

export declare const DEFAULT_URL: "http://127.0.0.1:3002";
export declare const DEFAULT_TIMEOUT_MS: 5000;

export interface ClientOptions {
  /** The server's HTTP base URL. Default: FONANA_REALTIME_URL, else http://127.0.0.1:3002. */
  url?: string;
  /** The server's WS_API_SECRET. Default: the WS_API_SECRET environment variable. */
  apiKey?: string;
  /** Deadline of one call, retries of 503s included. Default 5000. */
  timeoutMs?: number;
  /** Called (and awaited) before each pause between attempts; carries no header or key. */
  onRetry?: (info: RetryInfo) => void | Promise<void>;
}

export interface RetryInfo {
  /** `/api/events`, `/api/notifications`, … */
  path: string;
  /** The attempt that just failed (1 for the first request). */
  attempt: number;
  /** How long the client waits before the next one. */
  delayMs: number;
  /** 503 when the server (or a proxy) answered so; absent for a refused connection. */
  status?: number;
  /** The answer's `error` (`broker_unavailable`, `draining`, …). */
  error?: string;
  /** The system code of a refused connection (`ECONNREFUSED`, …). */
  code?: string;
}

/** A row of `notifications` as the server sends it (createdAt: ISO-8601 UTC, ms, `Z`). */
export interface NotificationRow {
  id: string;
  userId: string;
  type: NotificationType;
  title: string;
  message: string;
  isRead: boolean;
  metadata: Record<string, unknown> | null;
  createdAt: string;
}

export interface NewNotification {
  type: NotificationType;
  title: string;
  message: string;
  metadata?: Record<string, unknown> | null;
}

/** A channel object (docs/PROTOCOL.md 2.3) or its key (`"post_p1"`). */
export type Channel =
  | { type: "post"; postId: string }
  | { type: "creator"; id: string }
  | { type: "feed"; userId: string }
  | { type: "notifications"; userId: string }
  | string;

/** Where to publish: a channel, a user (every tab), or both (the union, once per connection).
 *  Without either the event goes to its catalogue route. */
export interface Address {
  channel?: Channel;
  userId?: string;
}

/** An event as delivered to the browsers: flat, with a `type`. */
export interface RealtimeEvent {
  type: string;
  [field: string]: unknown;
}

/** The 202 answer of POST /api/events: `positions` holds one `{stream: offset}` per event,
 *  in order (empty objects when the broker keeps no history); any other field the server
 *  adds is passed through. */
export interface PublishResult {
  published: number;
  positions: Array<Record<string, number>>;
  [field: string]: unknown;
}

/** A list item with its own address (replaces the list's address for this event). */
export interface AddressedEvent extends Address {
  event: RealtimeEvent;
}

/** POST /api/notifications/push: the row pushed, and whether it was written now (no row
 *  of the route's was found). `pushed: false` when it is stored but the push failed. */
export interface PushResult {
  notification: NotificationRow;
  created: boolean;
  pushed?: false;
}

export interface LikesChange {
  /** false → `post_unliked`. Default true. */
  isLiked?: boolean;
  /** Default: the post's `likesCount` in the database. */
  likesCount?: number;
}

export interface Comment {
  id: string;
  userId: string;
  content: string;
  createdAt: string;
  [field: string]: unknown;
}

export interface PostSummary {
  id: string;
  title?: string;
  type?: string;
  creatorId?: string;
  createdAt?: string;
  [field: string]: unknown;
}

export interface RealtimeClient {
  /** The base URL this client posts to (no key in it). */
  readonly url: string;
  readonly timeoutMs: number;

  /** The old sendNotification: writes the row, pushes `notification` to every tab of
   *  the user, resolves to the ROW (also when only the push failed: 503 with the row). */
  sendNotification(userId: string, notification: NewNotification): Promise<NotificationRow>;
  /** Marks it read and pushes `notification_read`; 404 (RealtimeHttpError) when it is not the user's. */
  markNotificationRead(userId: string, notificationId: string): Promise<NotificationRow>;
  /** Marks all read and pushes `notifications_cleared`. */
  clearNotifications(userId: string): Promise<{ cleared: number }>;

  /** Push the notification ROW the app's route already wrote (by `metadata.id`, else by
   *  type and metadata within a few seconds); writes one only when none is found. */
  pushNotification(userId: string, notification: NewNotification): Promise<PushResult>;
  /** `post_liked` / `post_unliked` to `post_<postId>`; 404 for an unknown post without `likesCount`. */
  likesChanged(postId: string, userId: string | null | undefined, change?: LikesChange): Promise<PublishResult & { likesCount: number }>;

  publish(event: RealtimeEvent, address?: Address): Promise<PublishResult>;
  /** All or nothing: an invalid event is a 400 whose `index` names it, and none is published.
   *  An item `{event, userId?, channel?}` carries its own address. */
  publishMany(events: Array<RealtimeEvent | AddressedEvent>, address?: Address): Promise<PublishResult>;

  /** Push a ROW already in the database to every tab of `userId`. */
  notification(userId: string, notification: NotificationRow): Promise<PublishResult>;
  notificationRead(userId: string, notificationId: string): Promise<PublishResult>;
  notificationsCleared(userId: string): Promise<PublishResult>;
  /** → `post_<postId>` */
  postLiked(postId: string, userId: string, likesCount: number): Promise<PublishResult>;
  /** → `post_<postId>` */
  postUnliked(postId: string, userId: string, likesCount: number): Promise<PublishResult>;
  /** → `feed_<userId>` (`userId` is the author); `timestamp` defaults to now, ISO-8601. */
  postCreated(post: Record<string, unknown>, userId: string, timestamp?: string): Promise<PublishResult>;
  /** → every tab of `subscriberId` */
  newPostFromSubscription(subscriberId: string, post: PostSummary): Promise<PublishResult>;
  /** → `post_<postId>` */
  postDeleted(postId: string): Promise<PublishResult>;
  /** → `post_<postId>` */
  commentAdded(postId: string, comment: Comment): Promise<PublishResult>;
  /** → `post_<postId>` */
  commentDeleted(postId: string, commentId: string): Promise<PublishResult>;
  /** → `creator_<creatorId>` */
  creatorUpdated(creatorId: string, data: Record<string, unknown>): Promise<PublishResult>;
  /** → `creator_<creatorId>` */
  newSubscription(creatorId: string, userId: string): Promise<PublishResult>;
  /** → every tab of `userId` */
  feedUpdate(userId: string, posts: unknown[]): Promise<PublishResult>;
  /** → `creator_<creatorId>` */
  subscriptionCancelled(creatorId: string, userId: string): Promise<PublishResult>;
  /** → `creator_<creatorId>` */
  earningsUpdated(creatorId: string, earnings: unknown): Promise<PublishResult>;
  /** → `creator_<creatorId>` */
  flashSaleCreated(creatorId: string, flashSale: Record<string, unknown>): Promise<PublishResult>;
  /** → `creator_<creatorId>` */
  flashSaleEnded(creatorId: string, flashSaleId: string): Promise<PublishResult>;
  /** → every tab of `userId` (the buyer) */
  postPurchased(postId: string, userId: string, amount?: number): Promise<PublishResult>;
  /** → every tab of `userId` (the subscriber) */
  subscriptionUpdated(creatorId: string, userId: string, tier: string): Promise<PublishResult>;
}

/** @throws TypeError for a bad url or timeoutMs, or when there is no API key. */
export declare function createClient(options?: ClientOptions): RealtimeClient;
/** The client behind the named exports, made from the environment on first use. */
export declare function getDefaultClient(): RealtimeClient;

export declare class RealtimeError extends Error {
  /** HTTP status of the last answer; absent when there was none. */
  readonly status?: number;
  /** The server's `error`, or `timeout` / `network` when it did not answer. */
  readonly error?: string;
  /** The server's `reason`; for a connection error the system code (ECONNREFUSED, timeout). */
  readonly reason?: string;
  /** publishMany: the index of the refused event. */
  readonly index?: number;
  /** The decoded answer. */
  readonly body?: unknown;
  /** Requests made, retries included. */
  readonly attempts?: number;
}
/** The server answered with a 4xx, or a 5xx after retries within timeoutMs. */
export declare class RealtimeHttpError extends RealtimeError {
  readonly status: number;
}
/** No answer within timeoutMs, or the server could not be reached. */
export declare class RealtimeConnectionError extends RealtimeError {}

export declare const sendNotification: RealtimeClient["sendNotification"];
export declare const markNotificationRead: RealtimeClient["markNotificationRead"];
export declare const clearNotifications: RealtimeClient["clearNotifications"];
export declare const pushNotification: RealtimeClient["pushNotification"];
export declare const likesChanged: RealtimeClient["likesChanged"];
export declare const publish: RealtimeClient["publish"];
export declare const publishMany: RealtimeClient["publishMany"];
export declare const notification: RealtimeClient["notification"];
export declare const notificationRead: RealtimeClient["notificationRead"];
export declare const notificationsCleared: RealtimeClient["notificationsCleared"];
export declare const postLiked: RealtimeClient["postLiked"];
export declare const postUnliked: RealtimeClient["postUnliked"];
export declare const postCreated: RealtimeClient["postCreated"];
export declare const newPostFromSubscription: RealtimeClient["newPostFromSubscription"];
export declare const postDeleted: RealtimeClient["postDeleted"];
export declare const commentAdded: RealtimeClient["commentAdded"];
export declare const commentDeleted: RealtimeClient["commentDeleted"];
export declare const creatorUpdated: RealtimeClient["creatorUpdated"];
export declare const newSubscription: RealtimeClient["newSubscription"];
export declare const feedUpdate: RealtimeClient["feedUpdate"];
export declare const subscriptionCancelled: RealtimeClient["subscriptionCancelled"];
export declare const earningsUpdated: RealtimeClient["earningsUpdated"];
export declare const flashSaleCreated: RealtimeClient["flashSaleCreated"];
export declare const flashSaleEnded: RealtimeClient["flashSaleEnded"];
export declare const postPurchased: RealtimeClient["postPurchased"];
export declare const subscriptionUpdated: RealtimeClient["subscriptionUpdated"];
