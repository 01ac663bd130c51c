"""SQL both stores run, written once. Placeholders are `{name}`: each store fills in its
own parameter style (`%(name)s` for psycopg2, `:name` for sqlite3)."""

# Who may subscribe to post_<id> (PROTOCOL.md 2.3), and until when: the author, anyone
# when the post is open (not locked, no tier) and a COMPLETED purchase hold for good
# (`lasting`); an active COMPLETED subscription to its creator still valid at {now} (UTC,
# passed in: never the session's clock) holds until its "validUntil" (`until`; the schema
# allows one per user and creator). A missing post is no row: simply "no".
POST_ACCESS = """
SELECT
  (p."creatorId" = {user}
   OR (NOT p."isLocked" AND COALESCE(p."minSubscriptionTier", '') = '')
   OR EXISTS (
     SELECT 1 FROM "post_purchases" pp
     WHERE pp."postId" = p."id" AND pp."userId" = {user}
       AND pp."paymentStatus" = 'COMPLETED')) AS lasting,
  (SELECT MAX(s."validUntil") FROM "subscriptions" s
   WHERE s."creatorId" = p."creatorId" AND s."userId" = {user}
     AND s."isActive" AND s."paymentStatus" = 'COMPLETED'
     AND s."validUntil" > {now}) AS until
FROM "posts" p
WHERE p."id" = {post}
"""


# One of the user's notifications by id (a row the app wrote and now pushes).
NOTIFICATION_OF = """
SELECT "id", "userId", "type", "title", "message", "isRead", "metadata", "createdAt"
FROM "notifications" WHERE "id" = {id} AND "userId" = {user}
"""

# The user's notifications of one type written at or after {since} (naive UTC), oldest
# first: the candidates a push without an id may name (PROTOCOL.md 4.1). CAST: the
# column is an enum on PostgreSQL, TEXT on SQLite; the (userId, createdAt) walk is short.
RECENT_NOTIFICATIONS = """
SELECT "id", "userId", "type", "title", "message", "isRead", "metadata", "createdAt"
FROM "notifications"
WHERE "userId" = {user} AND CAST("type" AS TEXT) = {type} AND "createdAt" >= {since}
ORDER BY "createdAt", "id"
LIMIT 50
"""

# A post's like count as the app keeps it (the seed's updatePostLikes read it the same way).
POST_LIKES = 'SELECT "likesCount" FROM "posts" WHERE "id" = {post}'


def in_style(sql: str, style: str) -> str:
    """`sql` with each `{name}` written as a `style` placeholder, e.g. style=':{}'."""
    names = ("post", "user", "now", "id", "type", "since")
    return sql.format(**{n: style.format(n) for n in names})
