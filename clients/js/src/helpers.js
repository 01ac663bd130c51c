// One helper per event of the server's catalogue (src/catalogue.js, generated from
// fonana_realtime/events.py): each builds the event with the fields its type requires
// and publishes it to its default route. The names are the types in camelCase, the
// arguments those of the Python publisher (fonana_realtime/publisher.py);
// test/catalogue.test.js checks both against the catalogue.

const isoNow = () => new Date().toISOString();          // 2025-07-01T12:00:00.000Z, as the server writes

/** The helpers, bound to a `publish(event, address)`. */
export function catalogueHelpers(publish) {
  return {
    /** Push a notification ROW that is already in the database to every tab of `userId`
     *  (sendNotification writes the row and pushes it in one call). */
    notification: (userId, notification) => publish({ type: "notification", userId, notification }),
    notificationRead: (userId, notificationId) =>
      publish({ type: "notification_read", userId, notificationId }),
    notificationsCleared: (userId) => publish({ type: "notifications_cleared", userId }),
    postLiked: (postId, userId, likesCount) => publish({ type: "post_liked", postId, userId, likesCount }),
    postUnliked: (postId, userId, likesCount) => publish({ type: "post_unliked", postId, userId, likesCount }),
    /** `userId` is the author; goes to `feed_<userId>`. */
    postCreated: (post, userId, timestamp = isoNow()) => publish({ type: "post_created", post, userId, timestamp }),
    /** No default route: goes to every tab of the subscriber. */
    newPostFromSubscription: (subscriberId, post) =>
      publish({ type: "new_post_from_subscription", post }, { userId: subscriberId }),
    postDeleted: (postId) => publish({ type: "post_deleted", postId }),
    commentAdded: (postId, comment) => publish({ type: "comment_added", postId, comment }),
    commentDeleted: (postId, commentId) => publish({ type: "comment_deleted", postId, commentId }),
    creatorUpdated: (creatorId, data) => publish({ type: "creator_updated", creatorId, data }),
    newSubscription: (creatorId, userId) => publish({ type: "new_subscription", creatorId, userId }),
    feedUpdate: (userId, posts) => publish({ type: "feed_update", userId, posts }),
    subscriptionCancelled: (creatorId, userId) => publish({ type: "subscription_cancelled", creatorId, userId }),
    earningsUpdated: (creatorId, earnings) => publish({ type: "earnings_updated", creatorId, earnings }),
    flashSaleCreated: (creatorId, flashSale) => publish({ type: "flash_sale_created", creatorId, flashSale }),
    flashSaleEnded: (creatorId, flashSaleId) => publish({ type: "flash_sale_ended", creatorId, flashSaleId }),
    /** `userId` is the buyer; goes to every tab of the buyer. `amount` is optional. */
    postPurchased: (postId, userId, amount) =>
      publish({ type: "post_purchased", postId, userId, ...(amount === undefined ? {} : { amount }) }),
    /** `userId` is the subscriber; goes to every tab of the subscriber. */
    subscriptionUpdated: (creatorId, userId, tier) =>
      publish({ type: "subscription_updated", creatorId, userId, tier }),
  };
}

/** `post_liked` -> `postLiked`: the helper's name for a catalogue type. */
export const helperName = (type) => type.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
