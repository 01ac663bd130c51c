-- The Fonana tables for the embedded SQLite default: the same table and quoted
-- camelCase column names as schema/postgres.sql, so both stores run the same
-- queries up to placeholder style.
-- Differences, all forced by SQLite:
--   * enum columns are TEXT with a CHECK listing the enum values;
--   * BOOLEAN is INTEGER 0/1;
--   * TIMESTAMP(3) is TEXT 'YYYY-MM-DD HH:MM:SS.fff' in UTC (fixed width, so
--     string comparison is time comparison); defaults use strftime('%f');
--   * JSONB is TEXT holding JSON (validated by the store, not by a CHECK,
--     so SQLite builds without JSON1 work too).

CREATE TABLE IF NOT EXISTS "users" (
  "id"             TEXT NOT NULL PRIMARY KEY,
  "wallet"         TEXT NOT NULL UNIQUE,
  "nickname"       TEXT UNIQUE,
  "fullName"       TEXT,
  "avatar"         TEXT,
  "name"           TEXT,
  "email"          TEXT,
  "isVerified"     INTEGER NOT NULL DEFAULT 0 CHECK ("isVerified" IN (0, 1)),
  "isCreator"      INTEGER NOT NULL DEFAULT 0 CHECK ("isCreator" IN (0, 1)),
  "token"          TEXT,
  "tokenExpiresAt" TEXT,
  "createdAt"      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  "updatedAt"      TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS "posts" (
  "id"                  TEXT NOT NULL PRIMARY KEY,
  "creatorId"           TEXT NOT NULL REFERENCES "users"("id") ON DELETE CASCADE,
  "title"               TEXT NOT NULL,
  "content"             TEXT NOT NULL,
  "type"                TEXT NOT NULL,
  "isLocked"            INTEGER NOT NULL DEFAULT 0 CHECK ("isLocked" IN (0, 1)),
  "isPremium"           INTEGER NOT NULL DEFAULT 0 CHECK ("isPremium" IN (0, 1)),
  "price"               REAL,
  "currency"            TEXT NOT NULL DEFAULT 'SOL',
  "minSubscriptionTier" TEXT,            -- free text: 'basic' | 'premium' | 'vip'
  "likesCount"          INTEGER NOT NULL DEFAULT 0,
  "commentsCount"       INTEGER NOT NULL DEFAULT 0,
  "createdAt"           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  "updatedAt"           TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS "subscriptions" (
  "id"            TEXT NOT NULL PRIMARY KEY,
  "userId"        TEXT NOT NULL REFERENCES "users"("id") ON DELETE CASCADE,
  "creatorId"     TEXT NOT NULL REFERENCES "users"("id") ON DELETE CASCADE,
  "plan"          TEXT NOT NULL,
  "price"         REAL NOT NULL,
  "currency"      TEXT NOT NULL DEFAULT 'SOL',
  "subscribedAt"  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  "validUntil"    TEXT NOT NULL,
  "isActive"      INTEGER NOT NULL DEFAULT 1 CHECK ("isActive" IN (0, 1)),
  "paymentStatus" TEXT NOT NULL DEFAULT 'PENDING'
    CHECK ("paymentStatus" IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'REFUNDED')),
  UNIQUE ("userId", "creatorId")
);

CREATE TABLE IF NOT EXISTS "post_purchases" (
  "id"            TEXT NOT NULL PRIMARY KEY,
  "postId"        TEXT NOT NULL REFERENCES "posts"("id") ON DELETE CASCADE,
  "userId"        TEXT NOT NULL REFERENCES "users"("id") ON DELETE CASCADE,
  "price"         REAL NOT NULL,
  "currency"      TEXT NOT NULL DEFAULT 'SOL',
  "purchasedAt"   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  "paymentStatus" TEXT NOT NULL DEFAULT 'PENDING'
    CHECK ("paymentStatus" IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'REFUNDED')),
  UNIQUE ("userId", "postId")
);

CREATE TABLE IF NOT EXISTS "notifications" (
  "id"        TEXT NOT NULL PRIMARY KEY,
  "userId"    TEXT NOT NULL,
  "type"      TEXT NOT NULL CHECK ("type" IN (
    'LIKE_POST', 'LIKE_COMMENT', 'COMMENT_POST', 'REPLY_COMMENT', 'NEW_SUBSCRIBER',
    'POST_PURCHASE', 'MESSAGE_PURCHASE', 'SUBSCRIPTION_PURCHASE', 'TIP_RECEIVED',
    'POST_SALE', 'SYSTEM_ANNOUNCEMENT', 'NEW_MESSAGE', 'NEW_POST_FROM_SUBSCRIPTION')),
  "title"     TEXT NOT NULL,
  "message"   TEXT NOT NULL,
  "isRead"    INTEGER NOT NULL DEFAULT 0 CHECK ("isRead" IN (0, 1)),
  "metadata"  TEXT,
  "createdAt" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE INDEX IF NOT EXISTS "notifications_userId_isRead_idx" ON "notifications"("userId", "isRead");
