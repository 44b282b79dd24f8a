"""The snapshot of the live step, without sorting users.  PURE.

:func:`live_snapshot` returns the same object as
:func:`listener.snapshot.build_snapshot` (same keys, same order of ``top_users``,
``topics`` and ``categories``, same head, tail, users and gini) in time linear in
the number of users, for the listener's step (every ``step_s``, for every
window).  The one difference: ``longtail`` comes from the closed form
:func:`listener.longtail.longtail_closed_form` (``slope*(n-1)/2 + head - sum/n``,
no sort) instead of the seed's loop over ranks; the two agree to about 1e-12
relative (float rounding), and the seed's exact loop stays what the study and the
API use.  Measured in ``docs/BENCHMARKS.md``: at 10,000 users per window the
seed's sort-and-loop snapshot costs tens of ms per window, this one a few ms.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping
from typing import Any

from .longtail import LongtailStats, gini_from_histogram, longtail_closed_form, rank_profile
from .snapshot import snapshot_object, top_items
from .windows import Counts


def live_stats(
    per_user: Mapping[str, int],
    top: list[list[Any]] | None = None,
    hist: Mapping[int, int] | None = None,
) -> LongtailStats:
    """:func:`listener.longtail.stats` with the closed-form longtail.

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
    """The snapshot object of one window (``listener/snapshot.py``'s format).

    Arguments and result as :func:`listener.snapshot.build_snapshot`; see the
    module docstring for the one (rounding-level) difference.
    """
    hist = Counter(counts.users.values())  # one pass over the users, in C
    top = top_users(counts.users, top_n if top_n is None else max(top_n, 1), hist)
    st = live_stats(counts.users, top, hist)
    return snapshot_object(
        window_s, end, counts, st, top if top_n is None else top[:top_n], last_message_at,
        topics_n,
    )
