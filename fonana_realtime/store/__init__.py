"""The database behind one small interface.

The server touches the Fonana tables through a ``Store`` only, so the handlers
do not care whether they run against the production PostgreSQL (``DATABASE_URL``
set) or the embedded SQLite default (a local file created and seeded with demo
data on first start). See ``open_store``.

Errors the server must handle:

* ``StoreUnavailable`` -- the database cannot be reached, the connection broke,
  or no pooled connection became free in time. Answer 503 / ``unavailable``;
  the store reconnects by itself on a later call.
* ``UnknownNotificationType`` -- ``create_notification`` got a type that is not
  a ``NotificationType`` enum value (checked before the database is touched).

Timestamps: the Fonana columns are ``TIMESTAMP(3)`` without time zone holding
UTC; every comparison uses a UTC "now" computed in Python and passed as a
parameter, and ``createdAt`` is written explicitly.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Any

from .rows import check_text, dump_metadata

__all__ = [
    "LASTING",
    "NOTIFICATION_TYPES",
    "Store",
    "StoreUnavailable",
    "UnknownNotificationType",
    "open_store",
]


#: ``post_access_until`` for access that does not lapse (author, open post, purchase).
LASTING = datetime.max


class StoreUnavailable(Exception):
    """The database cannot be reached, a connection broke, or the pool wait timed out."""


class UnknownNotificationType(ValueError):
    """A notification type that is not a ``NotificationType`` enum value."""


#: The values of the Fonana ``"NotificationType"`` enum.
NOTIFICATION_TYPES: frozenset[str] = frozenset(
    {
        "LIKE_POST",
        "LIKE_COMMENT",
        "COMMENT_POST",
        "REPLY_COMMENT",
        "NEW_SUBSCRIBER",
        "POST_PURCHASE",
        "MESSAGE_PURCHASE",
        "SUBSCRIPTION_PURCHASE",
        "TIP_RECEIVED",
        "POST_SALE",
        "SYSTEM_ANNOUNCEMENT",
        "NEW_MESSAGE",
        "NEW_POST_FROM_SUBSCRIPTION",
    }
)


def check_notification_type(type: Any) -> str:
    """Return ``type`` if it is a NotificationType value, else raise UnknownNotificationType."""
    if not isinstance(type, str) or type not in NOTIFICATION_TYPES:
        raise UnknownNotificationType(f"unknown notification type: {type!r}")
    return type


class Store:
    """What the server may do with the database. Both implementations follow it exactly.

    A notification ROW is ``{"id","userId","type","title","message","isRead","metadata","createdAt"}``
    (see ``fonana_realtime.store.rows``). Every method raises ``StoreUnavailable``
    (never a driver error) when the database cannot be used.
    """

    kind: str = ""  # "postgresql" | "sqlite"
    #: Each call is a round trip to a database server that parks the caller: lookups many
    #: greenlets ask for together are worth one query (batcher.py). False: answered in process.
    round_trips: bool = False

    def ping(self) -> None:
        """``SELECT 1``; raises StoreUnavailable. Used by ``/ready``."""
        raise NotImplementedError

    def user_exists(self, user_id: str) -> bool:
        """Whether a ``users`` row with this id exists (a deleted user cannot connect)."""
        raise NotImplementedError

    def existing_users(self, user_ids: list[str]) -> set[str]:
        """Which of these ids have a ``users`` row, in one query (the handshakes of one
        turn of the worker's loop ask together: batcher.py)."""
        raise NotImplementedError

    def post_access_until(self, user_id: str, post_id: str) -> datetime | None:
        """Until when ``user_id`` may hold ``post_<post_id>`` (PROTOCOL 2.3), in one query.

        None if not at all, or the post does not exist. ``LASTING`` if the user is its
        author; or it is open (not ``isLocked`` and ``minSubscriptionTier`` null or
        empty); or the user has a COMPLETED purchase of it: access that does not
        lapse. Otherwise, with an active subscription to its creator (``isActive``,
        ``paymentStatus`` COMPLETED, ``validUntil`` in the future), the latest such
        ``validUntil`` (naive UTC): the moment the access it granted ends.
        """
        raise NotImplementedError

    def can_view_post(self, user_id: str, post_id: str) -> bool:
        """Whether ``user_id`` may subscribe to ``post_<post_id>`` now."""
        return self.post_access_until(user_id, post_id) is not None

    def unread_notifications(self, user_id: str, limit: int = 20) -> tuple[list[dict], int]:
        """(the ``limit`` newest unread ROWs, newest first; the total number of unread)."""
        raise NotImplementedError

    def unread_notifications_of(self, user_ids: list[str], limit: int = 20) -> dict[str, tuple[list[dict], int]]:
        """``unread_notifications`` of each of these users, in one query: an entry for every id."""
        raise NotImplementedError

    def create_notification(
        self, user_id: str, type: str, title: str, message: str, metadata: Any = None
    ) -> dict | None:
        """Insert a notification; return its ROW, or None if the user does not exist.

        Raises UnknownNotificationType before touching the database.
        """
        raise NotImplementedError

    @staticmethod
    def _checked_notification(type: Any, title: Any, message: Any, metadata: Any) -> str | None:
        """Check a new notification before any database work (both stores accept exactly
        the same values); return its metadata as JSON text (None for no metadata)."""
        check_notification_type(type)
        check_text("title", title)
        check_text("message", message)
        return dump_metadata(metadata)

    def notification_of(self, user_id: str, notification_id: str) -> dict | None:
        """One of the user's notifications as a ROW; None if missing or not theirs."""
        raise NotImplementedError

    def recent_notifications(self, user_id: str, type: str, since: datetime) -> list[dict]:
        """The user's notifications of ``type`` written at or after ``since`` (naive UTC),
        oldest first, at most 50."""
        raise NotImplementedError

    def post_likes(self, post_id: str) -> int | None:
        """The post's ``likesCount``; None if there is no such post."""
        raise NotImplementedError

    def read_notification(self, user_id: str, notification_id: str) -> tuple[dict, bool] | None:
        """Mark one of the user's notifications read: (its ROW, whether this call changed
        it), or None if missing / not theirs. Of concurrent calls on an unread row exactly
        one says changed (the UPDATE matches only while it is unread)."""
        raise NotImplementedError

    def mark_notification_read(self, user_id: str, notification_id: str) -> dict | None:
        """Mark one of the user's notifications read; its ROW, or None if missing / not theirs."""
        answer = self.read_notification(user_id, notification_id)
        return None if answer is None else answer[0]

    def clear_notifications(self, user_id: str) -> int:
        """Mark all of the user's unread notifications read; how many were changed."""
        raise NotImplementedError

    def close(self) -> None:
        """Release every connection. Later calls raise StoreUnavailable."""
        raise NotImplementedError

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SQLITE_FILENAME = "fonana.sqlite3"


def open_store(database_url: str | None, data_dir: str, pool_size: int = 10) -> Store:
    """The store for ``DATABASE_URL``.

    ``postgresql://`` or ``postgres://`` -> PostgresStore (connects lazily, so a
    database that is down at start-up shows up as StoreUnavailable / 503, not a
    crash). None or "" -> SqliteStore at ``<data_dir>/fonana.sqlite3``; the
    directory and file are created, and the file seeded with demo rows, when new.
    Anything else -> ValueError (the URL itself is never echoed: it may hold a password).
    """
    if not database_url:
        from .sqlite import SqliteStore

        os.makedirs(data_dir, exist_ok=True)
        return SqliteStore(os.path.join(data_dir, SQLITE_FILENAME))
    if database_url.lower().startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(database_url, pool_size=pool_size)
    scheme = database_url.split("://", 1)[0] if "://" in database_url else ""
    shown = repr(scheme) if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,30}", scheme) else "(not a URL)"
    raise ValueError(
        f"unsupported DATABASE_URL scheme {shown}: expected postgresql:// or postgres://, or unset for SQLite"
    )
