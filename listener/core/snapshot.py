"""The snapshot object: one window's state as JSON.

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

Two builders make that object.  :func:`build_snapshot` uses the seed's longtail (its
loop over ranks, exact to the seed): the study, the API and ``snapshot`` use it.
:func:`live_snapshot` is the listener's step (every ``step_s``, for every window):
the same keys, the same order of ``top_users``, ``topics`` and ``categories``, the
same head, tail, users and gini, in time linear in the number of users; its one
difference is ``longtail`` from the closed form
:func:`listener.core.longtail.longtail_closed_form` (``slope*(n-1)/2 + head - sum/n``,
no sort), which agrees with the seed's loop to about 1e-12 relative (float
rounding).  With many users per window it costs the step far less than the seed's
sort-and-loop snapshot (``docs/BENCHMARKS.md``).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping
from typing import Any

from listener.core.bidi import strip_bidi, strip_bidi_counts
from listener.core.longtail import (
    LongtailStats,
    gini_from_histogram,
    longtail_closed_form,
    rank_profile,
    stats,
)
from listener.core.windows import Counts


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
    (shared by :func:`build_snapshot` and :func:`live_snapshot`); every name from
    the bus goes through :func:`listener.core.bidi.strip_bidi`."""
    topics = strip_bidi_counts(dict(top_items(dict(counts.topics), topics_n)))
    return {
        "window_s": int(window_s),
        "end": float(end),
        "messages": int(counts.messages),
        "users": st.users,
        "topics": topics,
        "topics_total": len(counts.topics),
        "categories": strip_bidi_counts(
            dict(sorted(counts.categories.items(), key=lambda kv: (-kv[1], kv[0])))
        ),
        "top_users": [[strip_bidi(name), n] for name, n in top_users],
        "longtail": st.longtail,
        "longtail_normalized": st.longtail_normalized,
        "gini": st.gini,
        "head": [strip_bidi(st.head[0]), st.head[1]] if st.head else None,
        "tail": [strip_bidi(st.tail[0]), st.tail[1]] if st.tail else None,
        "ranks": [list(p) for p in st.ranks],
        "last_message_at": last_message_at,
    }


def live_stats(
    per_user: Mapping[str, int],
    top: list[list[Any]] | None = None,
    hist: Mapping[int, int] | None = None,
) -> LongtailStats:
    """:func:`listener.core.longtail.stats` with the closed-form longtail.

    Args:
        per_user: ``{username: messages}`` of one window; counts <= 0 are ignored.
        top: ``top_users(per_user, k)`` for some ``k >= 1`` when the caller has it:
            its first entry is the head, one pass over the users fewer.
        hist: ``Counter(per_user.values())`` when the caller has it.  Head, tail,
            sum and every metric but the tail's name come from it: user counts
            repeat a lot (~200 distinct among 10,000 Zipf-like users), so these
            cost O(distinct counts), not O(users).

    Returns:
        The same :class:`LongtailStats` as ``stats`` (head and tail ties broken by
        username, ascending), ``longtail`` within float rounding of the seed's.
    """
    if not per_user:
        return LongtailStats(0, None, None, None, None, None)
    if hist is None:
        hist = Counter(per_user.values())
    low = min(hist)
    if low <= 0:  # rare: keep only the users with messages
        per_user = {u: c for u, c in per_user.items() if c > 0}
        if not per_user:
            return LongtailStats(0, None, None, None, None, None)
        hist = Counter(per_user.values())
        low, top = min(hist), None
    n = len(per_user)
    high = max(hist)
    total = sum(c * k for c, k in hist.items())
    lt = longtail_closed_form(n, float(high), float(low), float(total))
    assert lt is not None
    if top:
        head = top[0][0]
    else:
        head = min([u for u, c in per_user.items() if c == high])
    tail = min([u for u, c in per_user.items() if c == low])
    return LongtailStats(
        users=n,
        longtail=lt,
        longtail_normalized=lt / high,
        gini=gini_from_histogram(hist),
        head=(head, high),
        tail=(tail, low),
        ranks=rank_profile(hist),
    )


def top_users(
    per_user: Mapping[str, int], n: int | None, hist: Mapping[int, int] | None = None
) -> list[list[Any]]:
    """``top_items(per_user, n)`` without sorting every user.

    The ``n``-th largest count is found from ``hist`` (``Counter(per_user.values())``)
    when given, by walking its distinct counts down, else with a heap over the
    counts; only users at or above it are sorted (count descending, then name).
    """
    if n is None or n >= len(per_user):
        return top_items(dict(per_user), n)
    if n <= 0:
        return []
    if hist is None:
        threshold = heapq.nlargest(n, per_user.values())[-1]
    else:
        seen = 0
        for threshold in sorted(hist, reverse=True):
            seen += hist[threshold]
            if seen >= n:
                break
    found = [(u, c) for u, c in per_user.items() if c >= threshold]
    found.sort(key=lambda kv: (-kv[1], kv[0]))
    return [[u, c] for u, c in found[:n]]


def live_snapshot(
    window_s: int,
    end: float,
    counts: Counts,
    last_message_at: float | None,
    top_n: int | None = 20,
    topics_n: int | None = None,
) -> dict[str, Any]:
    """The snapshot object of one window, as the listener's step builds it.

    Arguments and result as :func:`build_snapshot`; see the module docstring for the
    one (rounding-level) difference.
    """
    hist = Counter(counts.users.values())  # one pass over the users, in C
    top = top_users(counts.users, top_n if top_n is None else max(top_n, 1), hist)
    st = live_stats(counts.users, top, hist)
    return snapshot_object(
        window_s,
        end,
        counts,
        st,
        top if top_n is None else top[:top_n],
        last_message_at,
        topics_n,
    )
