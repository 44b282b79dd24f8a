"""Radar shares and daily/weekly +/-: the computed views, pure functions on counts.

The readers of the store that feed them are in :mod:`listener.storage.readers`.

**Radar** (the seed's "Radar Charts": *"querying all messages of a type, get the
total; querying just messages for that user, in that type; divide
usermessages/totalmessages"*, in Ralph Bean's and Remy DeCausemaker's grokkingfedmsg
hack session notes).  For user ``u``
and category ``c`` over one window::

    share(u, c) = count(u, c) / count(all users, c)
    count(all users, c) = sum over every user v of count(v, c)

from the per-user-per-category counters (``Counts.usercat``; a message with two
users adds 1 to each).  So a category's shares over *all* users sum to 1, and
koji/buildsys's volume does not drown the other axes.  Categories where no
message had a user (e.g. ``mailman``, ``github``) have a denominator of 0: they
are still listed (so the axes match the window's activity) with share 0 for
everyone.  Categories are sorted by ``count(all users, c)`` descending, ties by
name, so those zero categories come last.

**Diff** (the seed's "Daily +/- / weekly +/-: just the diff of topic counts").
Per topic (or category): ``current`` = messages in the latest period,
``previous`` = messages in the period before, ``delta = current - previous``,
``pct = 100 * delta / previous`` (``None`` when ``previous`` is 0).  Read from the
hourly buckets, which the store keeps for ``retention_s`` (14 d: two weeks).
**Boundaries are bucket-aligned** (hour-aligned for day and week): with
``E = bucket_start(end, 3600) + 3600`` (``end`` rounded up to the end of its
hour), ``current`` covers ``[E - period_s, E)`` and ``previous`` covers
``[E - 2 * period_s, E - period_s)``.  For ``end`` = now no message is later than
``end`` (the listener clamps future timestamps), so ``current`` is "the last
``period_s`` seconds, plus up to one hour of edge".

The JSON shapes (served unchanged by ``GET /api/radar`` and ``GET /api/diff``)::

    {"window_s": 86400, "end": 1504643081.0,
     "categories": ["buildsys", "copr", ...],
     "users": {"dvdmuckle": [0.5, 0.0, ...], ...}}

    {"period_s": 86400, "end": 1504643081.0, "by": "topic",
     "rows": [{"topic": "org...buildsys.tag", "current": 12, "previous": 4,
               "delta": 8, "pct": 200.0}, ...]}

Subcommands: ``fedmsg-wallboard radar`` and ``fedmsg-wallboard diff``
(:mod:`listener.tools.radar_diff`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from listener.core.bidi import strip_bidi, strip_bidi_all
from listener.core.windows import Counts, window_buckets

#: Named diff periods, seconds.
PERIODS_S = {"day": 86400, "week": 604800}

#: What a diff can be grouped by: the JSON row key and the bucket hash it reads.
DIFF_BY = {"topic": "t", "category": "c"}

# -- radar -------------------------------------------------------------


def category_totals(counts: Counts) -> Counter[str]:
    """``count(all users, c)`` for every category of a window.

    Args:
        counts: one window's counts.

    Returns:
        ``{category: user-messages}``: the sum over users of ``count(u, c)``
        (the radar's denominator).  Every category of ``counts.categories`` is
        present, with 0 when none of its messages had a user.
    """
    totals: Counter[str] = Counter({c: 0 for c in counts.categories})
    for (_user, category), n in counts.usercat.items():
        totals[category] += n
    return totals


def top_users(counts: Counts, top: int) -> list[str]:
    """The window's ``top`` users by messages, most first (ties by name)."""
    ranked = sorted(counts.users.items(), key=lambda kv: (-kv[1], kv[0]))
    return [name for name, _n in ranked[:top]]


def radar_from_counts(
    counts: Counts,
    window_s: int,
    end: float,
    users: Sequence[str] | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """The radar object of one window (see the module docstring for the formula).

    Args:
        counts: the window's counts (``usercat``, ``users``, ``categories`` are used).
        window_s: window length, seconds; end: window end, UNIX seconds (echoed).
        users: names to show, in this order (duplicates dropped); a name with no
            message in the window gets all zeros.  ``None``: the window's ``top``
            users by messages.
        top: how many users when ``users`` is None.

    Returns:
        ``{"window_s", "end", "categories": [category, ...], "users": {name:
        [share per category, same order]}}``; shares are floats in ``[0, 1]``;
        names without bidirectional controls (:mod:`listener.core.bidi`).

    Raises:
        ValueError: ``top`` < 0.
    """
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    totals = category_totals(counts)
    categories = sorted(totals, key=lambda c: (-totals[c], c))
    names = top_users(counts, top) if users is None else list(dict.fromkeys(users))
    shares: dict[str, list[float]] = {}
    for name in names:
        row = []
        for c in categories:
            denom = totals[c]
            row.append(counts.usercat.get((name, c), 0) / denom if denom else 0.0)
        shares[name] = row
    return {
        "window_s": int(window_s),
        "end": float(end),
        "categories": strip_bidi_all(categories),
        "users": {strip_bidi(name): row for name, row in shares.items()},
    }


# -- diff --------------------------------------------------------------


def diff_rows(
    current: Mapping[str, int], previous: Mapping[str, int], key: str = "topic"
) -> list[dict[str, Any]]:
    """Rows of a +/- table.

    Args:
        current / previous: ``{name: messages}`` of the two periods.
        key: the name's JSON key (``"topic"`` or ``"category"``).

    Returns:
        One row per name present in either period: ``{key: name, "current",
        "previous", "delta": current - previous, "pct": 100 * delta / previous
        or None when previous is 0}``, sorted by ``|delta|`` descending, then name
        (shown without bidirectional controls, :mod:`listener.core.bidi`).
    """
    ranked = []
    for name in set(current) | set(previous):
        cur = int(current.get(name, 0))
        prev = int(previous.get(name, 0))
        ranked.append((-abs(cur - prev), name, cur, prev))
    ranked.sort()
    return [
        {
            key: strip_bidi(name),
            "current": cur,
            "previous": prev,
            "delta": cur - prev,
            "pct": (100.0 * (cur - prev) / prev) if prev else None,
        }
        for _, name, cur, prev in ranked
    ]


def diff_bounds(period_s: int, end: float, bucket_s: int) -> tuple[range, range]:
    """Bucket starts of the current and the previous period.

    Args:
        period_s: period length, seconds (a multiple of ``bucket_s``).
        end: the current period's end, UNIX seconds.
        bucket_s: bucket size, seconds.

    Returns:
        ``(current, previous)``: ranges of bucket starts, oldest first.  The
        current period covers ``[E - period_s, E)`` with ``E = bucket_start(end) +
        bucket_s``; the previous one the ``period_s`` seconds before it.

    Raises:
        ValueError: ``period_s`` is not a positive multiple of ``bucket_s``.
    """
    if period_s <= 0 or period_s % bucket_s:
        raise ValueError(f"period {period_s} s is not a positive multiple of {bucket_s} s")
    current = window_buckets(end, period_s, bucket_s)
    previous = window_buckets(end - period_s, period_s, bucket_s)
    return current, previous
