"""The longtail metric and its better-behaved companions.

Source: the seed, Ralph Bean's and Remy DeCausemaker's grokkingfedmsg hack session
notes, ``longtail-analyze.py``.  For one time window the seed

1. counts messages per user (each message adds 1 to each of its users),
2. takes the *head* (the largest count) and the *tail* (the smallest count),
3. draws the line from ``(0, head)`` to ``(n, tail)`` where ``n`` is the number of
   users (note: ``n``, not ``n - 1``: the tail point sits one rank past the last user),
4. ranks the users by count, descending, and averages ``ideal - actual`` over the
   ranks ``x = 0 .. n-1``, where ``ideal = slope * x + head``.

The result is in messages.  It is 0 for a perfectly flat distribution of one user
and grows as the counts fall below the straight line (a "long tail": a few heads
doing most of the work).  It is not scale-free: doubling every count doubles it.

Variants, documented beside it (``docs/LONGTAIL.md``):

* ``longtail_normalized`` = ``longtail / head``: dimensionless, comparable across
  windows of different volume; in ``[-1, 1)``.
* ``gini``: the standard Gini coefficient of the per-user counts, 0 (all equal) to
  ``1 - 1/n`` (one user has everything).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def longtail(counts: Iterable[float]) -> float | None:
    """The seed's longtail metric, computed exactly as ``longtail-analyze.py`` does.

    Args:
        counts: messages per user in one window (any order; one value per user,
            each > 0).  Zero counts are legal input but change the tail, exactly as
            they would in the seed.

    Returns:
        The mean of ``ideal - actual`` over the users ranked by count descending,
        in messages, with ``ideal = slope * rank + head`` and
        ``slope = (tail - head) / n``.  ``None`` for an empty window (the seed
        divides by zero there); ``0.0`` for a single user.

    The loop is the seed's own (float accumulation in rank order), so values match
    the seed bit for bit; :func:`longtail_closed_form` is the O(n) equivalent.
    """
    ranked = sorted((float(c) for c in counts), reverse=True)
    n = len(ranked)
    if n == 0:
        return None
    head, tail = ranked[0], ranked[-1]
    x1, y1 = 0, head
    x2, y2 = n, tail
    slope = (y2 - y1) / (x2 - x1)
    intercept = y1
    metric = 0.0
    for index, actual in enumerate(ranked):
        ideal = slope * index + intercept
        metric = metric + (ideal - actual)
    return metric / n


def longtail_closed_form(n: int, head: float, tail: float, total: float) -> float | None:
    """The seed's longtail without sorting: ``slope*(n-1)/2 + head - total/n``.

    Args:
        n: number of users (> 0), head/tail: the largest and smallest count,
        total: the sum of all counts (messages counted once per user).

    Returns:
        The same value as :func:`longtail` up to float rounding (about 1e-12
        relative); ``None`` when ``n == 0``.
    """
    if n <= 0:
        return None
    slope = (tail - head) / n
    return slope * (n - 1) / 2 + head - total / n


def longtail_normalized(counts: Iterable[float]) -> float | None:
    """``longtail / head``: the seed's metric in units of the head's count.

    Returns ``None`` for an empty window, 0.0 for one user.  Dimensionless, so a
    busy hour and a quiet one can be compared.
    """
    values = [float(c) for c in counts]
    lt = longtail(values)
    if lt is None:
        return None
    head = max(values)
    return lt / head if head else 0.0


def gini(counts: Iterable[float]) -> float | None:
    """The Gini coefficient of the per-user counts.

    ``G = sum_i (2i - n - 1) x_i / (n * sum x)`` with ``x`` sorted ascending and
    ``i = 1..n`` (the standard mean-absolute-difference form).  0.0 when every user
    has the same count, ``1 - 1/n`` when one user has every message.  ``None``
    for an empty window or when every count is 0.
    """
    values = sorted(float(c) for c in counts)
    n = len(values)
    total = sum(values)
    if n == 0 or total == 0:
        return None
    acc = 0.0
    for i, x in enumerate(values, start=1):
        acc += (2 * i - n - 1) * x
    return acc / (n * total)


@dataclass(frozen=True)
class LongtailStats:
    """Every metric of one window's per-user counts.

    Attributes:
        users: number of users with at least one message.
        longtail / longtail_normalized / gini: see the functions of those names;
            ``None`` when ``users == 0``.
        head / tail: ``(username, count)`` of the largest and smallest count
            (ties broken by username, ascending), ``None`` when empty.
    """

    users: int
    longtail: float | None
    longtail_normalized: float | None
    gini: float | None
    head: tuple[str, int] | None
    tail: tuple[str, int] | None
    #: the ranked curve :func:`rank_profile` samples, ``((rank, count), ...)``
    ranks: tuple[tuple[int, int], ...] = ()


#: :func:`rank_profile`'s defaults: every one of the first 16 ranks (the head
#: falls fast), then 48 ranks evenly spaced up to the last.
PROFILE_HEAD_POINTS = 16
PROFILE_POINTS = 48


def rank_profile(
    hist: Mapping[int, int],
    head_points: int = PROFILE_HEAD_POINTS,
    points: int = PROFILE_POINTS,
) -> tuple[tuple[int, int], ...]:
    """The seed's ranked curve (users by count, descending), sampled for a chart.

    The seed's longtail is the mean gap between this curve and the straight line
    from ``(0, head)`` to ``(n, tail)``; a page that draws only the top users shows
    the line's first few ranks of thousands.  This samples the whole curve.

    Args:
        hist: ``{count: number of users with that count}`` (counts > 0).
        head_points: ranks 1..head_points are all kept.
        points: this many ranks evenly spaced over 1..n are added (and n itself).

    Returns:
        ``((rank, count), ...)``, rank ascending (1 = the head, n = the tail),
        count non-increasing: at most ``head_points + points + 1`` pairs, exact at
        every rank given (the count of the user at that rank).  ``()`` when empty.
        Cost O(d log d) for d distinct counts.
    """
    runs = sorted(((c, k) for c, k in hist.items() if c > 0 and k > 0), reverse=True)
    n = sum(k for _, k in runs)
    if not n:
        return ()
    wanted = set(range(1, min(n, head_points) + 1))
    if points > 1:
        wanted.update(1 + round(i * (n - 1) / (points - 1)) for i in range(points))
    wanted.add(n)
    out: list[tuple[int, int]] = []
    it = iter(runs)
    count, k = next(it)
    last = k  # the last rank of the current run
    for rank in sorted(wanted):
        while rank > last:
            count, k = next(it)
            last += k
        out.append((rank, count))
    return tuple(out)


def gini_from_histogram(hist: Mapping[int, int]) -> float | None:
    """Gini from a histogram ``{count: number of users with that count}``.

    Equal to :func:`gini` over the expanded list, in O(d log d) for d distinct
    counts: user counts repeat a lot, so this is the cheap form for live windows.
    """
    n = sum(hist.values())
    total = sum(c * k for c, k in hist.items())
    if n == 0 or total == 0:
        return None
    acc = 0.0
    i = 0  # users placed so far (ascending)
    for c in sorted(hist):
        k = hist[c]
        # ranks i+1 .. i+k each contribute (2r - n - 1) * c
        rank_sum = k * (2 * i + k + 1)  # sum of 2r over r=i+1..i+k
        acc += (rank_sum - k * (n + 1)) * c
        i += k
    return acc / (n * total)


def stats(per_user: Mapping[str, int]) -> LongtailStats:
    """All metrics for one window.

    Args:
        per_user: ``{username: messages}`` for one window; entries with a count
            <= 0 are ignored (a user with no message is not in the window).

    Returns:
        A :class:`LongtailStats`.  ``longtail`` is the seed's value (loop form).
    """
    items = [(u, c) for u, c in per_user.items() if c > 0]
    if not items:
        return LongtailStats(0, None, None, None, None, None)
    head = min(items, key=lambda it: (-it[1], it[0]))
    tail = min(items, key=lambda it: (it[1], it[0]))
    values = [c for _, c in items]
    lt = longtail(values)
    assert lt is not None
    hist = Counter(values)
    return LongtailStats(
        users=len(items),
        longtail=lt,
        longtail_normalized=lt / head[1],
        gini=gini_from_histogram(hist),
        head=head,
        tail=tail,
        ranks=rank_profile(hist),
    )
