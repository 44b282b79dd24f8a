"""The snapshot object: one window's state as JSON.  PURE.

Served identically by ``fedmsg-wallboard snapshot --json``, ``GET /api/snapshot``
and inside the websocket ``snapshot``/``tick`` events (docs/PROTOCOL.md)::

    {"window_s": 3600, "end": 1504643081.0, "messages": 25, "users": 7,
     "topics": {topic: messages},   # the busiest first; all, or the top topics_n
     "topics_total": 120,           # distinct topics in the window
     "categories": {category: messages},
     "top_users": [[name, messages], ...],          # top 20, or all
     "longtail": 1.2, "longtail_normalized": 0.2, "gini": 0.3,   # null when empty
     "head": [name, messages], "tail": [name, messages],          # null when empty
     "ranks": [[rank, messages], ...],  # the ranked curve, sampled (longtail.rank_profile)
     "last_message_at": 1504643075.0}                              # null if never
"""

from __future__ import annotations

from typing import Any

from .longtail import LongtailStats, stats
from .windows import Counts


def top_items(counter: dict[str, int], n: int | None) -> list[list[Any]]:
    """``[[key, count], ...]`` sorted by count descending, then key; all when n is None."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    if n is not None:
        items = items[:n]
    return [[k, v] for k, v in items]


def build_snapshot(
    window_s: int,
    end: float,
    counts: Counts,
    last_message_at: float | None,
    top_n: int | None = 20,
    topics_n: int | None = None,
) -> dict[str, Any]:
    """Build the snapshot object of one window.

    Args:
        window_s: window length, seconds; end: window end, UNIX seconds.
        counts: the window's counts.
        last_message_at: newest message timestamp ever counted, or None.
        top_n: users in ``top_users`` (None: all).
        topics_n: topics kept in ``topics`` (None: all; the rest are dropped).

    Returns:
        The dict described in the module docstring (JSON-serialisable).
    """
    st = stats(counts.users)
    return snapshot_object(
        window_s, end, counts, st, top_items(dict(counts.users), top_n), last_message_at, topics_n
    )


def snapshot_object(
    window_s: int,
    end: float,
    counts: Counts,
    st: LongtailStats,
    top_users: list[list[Any]],
    last_message_at: float | None,
    topics_n: int | None = None,
) -> dict[str, Any]:
    """Assemble the snapshot dict from a window's counts, its metrics and top users
    (shared by :func:`build_snapshot` and ``livesnapshot.live_snapshot``)."""
    topics = dict(top_items(dict(counts.topics), topics_n))
    return {
        "window_s": int(window_s),
        "end": float(end),
        "messages": int(counts.messages),
        "users": st.users,
        "topics": topics,
        "topics_total": len(counts.topics),
        "categories": dict(sorted(counts.categories.items(), key=lambda kv: (-kv[1], kv[0]))),
        "top_users": top_users,
        "longtail": st.longtail,
        "longtail_normalized": st.longtail_normalized,
        "gini": st.gini,
        "head": list(st.head) if st.head else None,
        "tail": list(st.tail) if st.tail else None,
        "ranks": [list(p) for p in st.ranks],
        "last_message_at": last_message_at,
    }
