// @fonana/realtime-client: push events and notifications to fonana-realtime from the
// Next.js API (route handlers, server actions) or any Node >= 18 process.
//
//   import { sendNotification, postLiked } from "@fonana/realtime-client";
//   await sendNotification(userId, { type: "LIKE_POST", title: "New like", message: "…" });
//
// The named exports use a default client made on first use from FONANA_REALTIME_URL
// and WS_API_SECRET (read then, not at import, so a late-loaded .env still counts);
// createClient({ url, apiKey, timeoutMs }) makes others.

import { createClient } from "./client.js";

export { createClient, DEFAULT_TIMEOUT_MS, DEFAULT_URL } from "./client.js";
export { RealtimeConnectionError, RealtimeError, RealtimeHttpError } from "./errors.js";
export { CATALOGUE, NOTIFICATION_TYPES } from "./catalogue.js";

let defaultClient;

/** The client behind the named exports (created from the environment on first call). */
export function getDefaultClient() {
  defaultClient ??= createClient();
  return defaultClient;
}

const call = (name) => async (...args) => getDefaultClient()[name](...args);

export const sendNotification = call("sendNotification");
export const markNotificationRead = call("markNotificationRead");
export const clearNotifications = call("clearNotifications");
export const pushNotification = call("pushNotification");
export const likesChanged = call("likesChanged");
export const publish = call("publish");
export const publishMany = call("publishMany");

export const notification = call("notification");
export const notificationRead = call("notificationRead");
export const notificationsCleared = call("notificationsCleared");
export const postLiked = call("postLiked");
export const postUnliked = call("postUnliked");
export const postCreated = call("postCreated");
export const newPostFromSubscription = call("newPostFromSubscription");
export const postDeleted = call("postDeleted");
export const commentAdded = call("commentAdded");
export const commentDeleted = call("commentDeleted");
export const creatorUpdated = call("creatorUpdated");
export const newSubscription = call("newSubscription");
export const feedUpdate = call("feedUpdate");
export const subscriptionCancelled = call("subscriptionCancelled");
export const earningsUpdated = call("earningsUpdated");
export const flashSaleCreated = call("flashSaleCreated");
export const flashSaleEnded = call("flashSaleEnded");
export const postPurchased = call("postPurchased");
export const subscriptionUpdated = call("subscriptionUpdated");
