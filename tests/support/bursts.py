"""The bursts the legacy (paced) tests publish (PROTOCOL.md 8): the issue's shape of 30
interleaved `post_liked` on 3 posts in one list publish, and notifications created through
the API one by one. `scene` is {"creator", "fan", "posts": [3 post ids]}."""
from __future__ import annotations


def like_burst(scene, per_post: int = 10, base: int = 0) -> list[dict]:
    """30 post_liked for 3 posts, interleaved, counts rising per post (base+1 .. base+per_post)."""
    return [{"type": "post_liked", "postId": scene["posts"][i % 3], "userId": scene["creator"],
             "likesCount": base + i // 3 + 1} for i in range(3 * per_post)]


def notify(srv, user_id: str, titles) -> list[str]:
    """One notification per title through POST /api/notifications; their ids, in order."""
    ids = []
    for title in titles:
        r = srv.api("/api/notifications", {"userId": user_id, "type": "SYSTEM_ANNOUNCEMENT",
                                           "title": title, "message": "hello"})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def burst(srv, scene, n: int) -> list[str]:
    """Burst n: the likes (each post ending at 10n), then 3 notifications; their ids."""
    srv.publish({"events": like_burst(scene, base=10 * (n - 1))})
    return notify(srv, scene["fan"], [f"burst {n} note {k}" for k in range(3)])
