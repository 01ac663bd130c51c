"""Which row a push of the Fonana app names (PROTOCOL.md 4.1, `POST /api/notifications/push`).

The app's routes write the notification row themselves, then call `sendNotification`
with the same type and, often, other words: the like route writes "New like on your
post" with `{postId}` and pushes "Новый лайк" with `{postId, userId}`. So a push names
its row

1. by `metadata.id` when the app passes it (`app/api/tips/route.ts`,
   `app/api/user/notifications/route.ts`): that row of that user, or nothing;
2. else by content: the oldest row of that user and type written within the window
   (`WS_PUSH_MATCH_SECONDS`) whose metadata the push's metadata covers (every key of
   the row's metadata, with the same value) and that no push has taken yet (claims);
3. else none was written (a call site that writes no row): the row is created, as the
   seed's `sendNotification` did.

Oldest first, so two routes that each write one row and push it get their own row back
in the usual order; whichever way two pushes interleave, each row is pushed once.
"""
from __future__ import annotations

from datetime import timedelta

from .channels import valid_id
from .store import check_notification_type
from .store.rows import utc_now


class NotFound(LookupError):
    """`metadata.id` names no notification of that user."""


def covers(pushed: dict, row_metadata) -> bool:
    """Whether the push's metadata holds every key of the row's, with the same value."""
    if not row_metadata:
        return True
    if not isinstance(row_metadata, dict):
        return False
    return all(k in pushed and pushed[k] == v for k, v in row_metadata.items())


class NotificationPush:
    def __init__(self, store, claims, window_seconds: float):
        self.store = store
        self.claims = claims
        self.window = timedelta(seconds=window_seconds)

    def row_for(self, user_id: str, kind: str, title, message, metadata) -> tuple[dict, bool] | None:
        """(the ROW to push, whether it was created now); None for an unknown user.
        Raises NotFound, UnknownNotificationType, ValueError (text the database cannot hold),
        StoreUnavailable, BrokerUnavailable (a claim could not be recorded)."""
        check_notification_type(kind)
        metadata = metadata or {}
        named = metadata.get("id")
        if valid_id(named):
            row = self.store.notification_of(user_id, named)
            if row is None:
                raise NotFound(named)
            self.claims.claim(row["id"])        # taken, whatever a content match says later
            return row, False
        for row in self.store.recent_notifications(user_id, kind, utc_now() - self.window):
            if covers(metadata, row["metadata"]) and self.claims.claim(row["id"]):
                return row, False
        row = self.store.create_notification(user_id, kind, title, message, metadata or None)
        if row is None:
            return None
        self.claims.claim(row["id"])
        return row, True
