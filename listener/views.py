"""Radar shares and daily/weekly +/-: the computed views of issue 5.

Two views, each a pure function on counts plus a thin async reader of the store:

**Radar** (the seed's "Radar Charts": *"querying all messages of a type, get the
total; querying just messages for that user, in that type; divide
usermessages/totalmessages"*, ``shared/seeds/grokkingfedmsg.txt``).  For user ``u``
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

Subcommands: ``fedmsg-wallboard radar`` and ``fedmsg-wallboard diff``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .windows import UC_SEP, Counts, bucket_start, choose_bucket, window_buckets

log = logging.getLogger(__name__)

#: Named diff periods, seconds.
PERIODS_S = {"day": 86400, "week": 604800}

#: What a diff can be grouped by: the JSON row key and the bucket hash it reads.
DIFF_BY = {"topic": "t", "category": "c"}

#: Buckets read in one Redis pipeline.
PIPELINE_BUCKETS = 50


# -- pure: radar -------------------------------------------------------------


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
        [share per category, same order]}}``; shares are floats in ``[0, 1]``.

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
        "categories": categories,
        "users": shares,
    }


# -- pure: diff --------------------------------------------------------------


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
        or None when previous is 0}``, sorted by ``|delta|`` descending, then name.
    """
    ranked = []
    for name in set(current) | set(previous):
        cur = int(current.get(name, 0))
        prev = int(previous.get(name, 0))
        ranked.append((-abs(cur - prev), name, cur, prev))
    ranked.sort()
    return [
        {
            key: name,
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


# -- I/O: the store ------------------------------------------------------------


async def read_field_sums(
    store: Any, bucket_s: int, starts: Sequence[int], kind: str
) -> Counter[str]:
    """Sum one counter hash over several buckets, reading nothing else.

    ``store.read_buckets`` reads all five hashes of a bucket; a week of hourly
    buckets with a realistic user count is ~10^5-10^6 user and user/category fields,
    when a diff only needs the topic (or category) hash.  This reads one hash per
    bucket, at the key the store documents (``listener.store``'s key layout:
    ``P:b:<bucket_s>:<start>:<kind>``).

    Args:
        store: a :class:`listener.store.Store`.
        bucket_s: bucket size, seconds; starts: bucket starts, UNIX seconds.
        kind: ``"t"`` (topic), ``"c"`` (category), ``"u"`` (username) or ``"uc"``
            (``username\x1fcategory``).

    Returns:
        ``{field: messages}`` summed over the buckets (missing buckets are empty).

    Raises:
        redis.exceptions.RedisError: Redis failed.
    """
    total: Counter[str] = Counter()
    for i in range(0, len(starts), PIPELINE_BUCKETS):
        async with store.r.pipeline(transaction=False) as pipe:
            for start in starts[i : i + PIPELINE_BUCKETS]:
                pipe.hgetall(f"{store.key('b', bucket_s, start)}:{kind}")
            replies = await pipe.execute()
        for reply in replies:
            for field, value in reply.items():
                total[field.decode()] += int(value)
    return total


async def read_radar_counts(store: Any, window_s: int, end: float) -> Counts:
    """A window's ``usercat``, ``categories`` and ``users`` (derived) counts.

    Reads only the category and user/category hashes of the window's buckets
    (chosen as :meth:`listener.store.Store.read_window` does).  ``users`` is
    ``sum over c of usercat[(u, c)]``, equal to the ``:u`` hash since each message
    has one category; ``messages`` and ``topics`` are left empty.

    Raises:
        ValueError: no bucket size fits ``window_s``.
        redis.exceptions.RedisError: Redis failed.
    """
    bucket_s = store.bucket_for(window_s)
    starts = list(window_buckets(end, window_s, bucket_s))
    counts = Counts()
    counts.categories.update(await read_field_sums(store, bucket_s, starts, "c"))
    for key, n in (await read_field_sums(store, bucket_s, starts, "uc")).items():
        user, _, category = key.partition(UC_SEP)
        counts.usercat[(user, category)] += n
        counts.users[user] += n
    return counts


async def radar(
    store: Any,
    window_s: int,
    end: float,
    users: list[str] | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """The radar object of the window of ``window_s`` seconds ending at ``end``.

    Args:
        store: a :class:`listener.store.Store`.
        window_s: window length, seconds (read like any window: see
            :func:`listener.windows.window_buckets`).
        end: window end, UNIX seconds.
        users: names to show (``None``: the window's top ``top`` users).
        top: users shown when ``users`` is None.

    Returns:
        See :func:`radar_from_counts`.

    Raises:
        ValueError: no bucket size fits ``window_s``, or ``top`` < 0.
        redis.exceptions.RedisError: Redis failed.
    """
    counts = await read_radar_counts(store, window_s, end)
    return radar_from_counts(counts, window_s, end, users, top)


async def diff(
    store: Any, period_s: int, end: float, by: str = "topic", limit: int | None = None
) -> dict[str, Any]:
    """Daily/weekly +/- per topic or category, from the store's buckets.

    Args:
        store: a :class:`listener.store.Store`.
        period_s: period, seconds (``PERIODS_S``: day 86400, week 604800); read
            from the finest bucket size dividing it into at most 200 buckets
            (3600 s for a day or a week).  Two periods must fit in that bucket
            size's retention (``retention_s``, 14 d, for the 3600 s buckets), or the
            previous period reads as partly empty.
        end: the current period's end, UNIX seconds (hour-aligned as described in
            the module docstring).
        by: ``"topic"`` or ``"category"``.
        limit: keep only the first ``limit`` rows (``None``: all).

    Returns:
        ``{"period_s", "end", "by", "rows": [{by: name, "current", "previous",
        "delta", "pct"}, ...]}`` (see :func:`diff_rows`).

    Raises:
        ValueError: unknown ``by``, or no bucket size fits ``period_s``.
        redis.exceptions.RedisError: Redis failed.
    """
    if by not in DIFF_BY:
        raise ValueError(f"by must be one of {sorted(DIFF_BY)}, got {by!r}")
    bucket_s = choose_bucket(period_s, store.buckets_s)
    cur_starts, prev_starts = diff_bounds(period_s, end, bucket_s)
    kind = DIFF_BY[by]
    current = await read_field_sums(store, bucket_s, list(cur_starts), kind)
    previous = await read_field_sums(store, bucket_s, list(prev_starts), kind)
    rows = diff_rows(current, previous, by)
    if limit is not None:
        rows = rows[:limit]
    return {"period_s": int(period_s), "end": float(end), "by": by, "rows": rows}


# -- CLI -----------------------------------------------------------------------


def parse_period(text: str) -> int:
    """``day``, ``week`` or a number of seconds -> seconds.

    Raises:
        argparse.ArgumentTypeError: anything else, or not positive.
    """
    if text in PERIODS_S:
        return PERIODS_S[text]
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"period must be day, week or seconds, not {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("period must be > 0 seconds")
    return value


def add_parser(sub: Any) -> None:
    """Register the ``radar`` and ``diff`` subcommands."""
    from .cli import add_common, epoch_seconds, positive_int

    p = sub.add_parser(
        "radar",
        help="per-user share of each category in a window (radar chart data)",
        description="share(u, c) = count(u, c) / count(all users, c) over the window.",
    )
    add_common(p)
    p.add_argument("--window", type=positive_int, default=86400, help="window, seconds")
    p.add_argument("--end", type=epoch_seconds, help="window end, UNIX seconds (default now)")
    p.add_argument("--users", help="comma-separated names (default: the top --top users)")
    p.add_argument("--top", type=positive_int, default=5, help="users when --users is absent")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_radar)

    p = sub.add_parser(
        "diff",
        help="daily/weekly +/- of message counts per topic or category",
        description="current period minus the one before, from hour-aligned buckets.",
    )
    add_common(p)
    p.add_argument(
        "--period", type=parse_period, default=86400, help="day, week or seconds (default day)"
    )
    p.add_argument("--by", choices=sorted(DIFF_BY), default="topic", help="group by")
    p.add_argument("--end", type=epoch_seconds, help="period end, UNIX seconds (default now)")
    p.add_argument("--limit", type=positive_int, help="show only the first N rows")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_diff)


async def _with_store(args: argparse.Namespace, fn: Any) -> Any:
    from .cli import load_config
    from .service import open_store

    cfg = load_config(args)
    store, handle = await open_store(cfg)
    try:
        return await fn(store, cfg)
    finally:
        await store.close()
        del handle


def _fmt_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def run_radar(args: argparse.Namespace) -> int:
    """Run ``radar``; returns 0, or 2 for a window no bucket size fits or a
    ``--users`` list that names nobody (``,,,``) or a name longer than any counted
    (:data:`listener.users.MAX_USERNAME_LEN`).  Unlike ``/api/radar``, a name with
    control characters is taken: the bus may carry one, and the output escapes it."""
    from .users import MAX_USERNAME_LEN

    end = args.end if args.end is not None else time.time()
    users = None
    if args.users is not None:
        users = list(dict.fromkeys(u.strip() for u in args.users.split(",") if u.strip()))
        if not users:
            log.error("--users %r names no user (comma-separated names)", args.users)
            return 2
        if any(len(u) > MAX_USERNAME_LEN for u in users):
            log.error("--users: a name longer than %d characters is never counted",
                      MAX_USERNAME_LEN)
            return 2

    async def go(store: Any, cfg: Any) -> Any:
        counts = await read_radar_counts(store, args.window, end)
        return counts, radar_from_counts(counts, args.window, end, users, args.top)

    try:
        counts, result = asyncio.run(_with_store(args, go))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    # one row per category (the radar's axes), one column per user
    from .cli import printable

    totals = category_totals(counts)
    names = list(result["users"])
    shown = {n: printable(n) for n in names}
    print(f"radar: window {result['window_s']} s ending {_fmt_time(end)} UTC")
    print("share(u, c) = count(u, c) / count(all users, c), in percent")
    if not result["categories"]:
        print("(no message in this window)")
        return 0
    width = max(8, *(len(printable(c)) for c in result["categories"]))
    cols = [max(7, len(shown[n])) for n in names]
    print(
        f"{'category':<{width}} {'all users':>9}"
        + "".join(f" {shown[n]:>{w}}" for n, w in zip(names, cols, strict=True))
    )
    for i, c in enumerate(result["categories"]):
        shares = [result["users"][n][i] for n in names]
        print(
            f"{printable(c):<{width}} {totals[c]:>9}"
            + "".join(f" {100 * s:>{w - 1}.1f}%" for s, w in zip(shares, cols, strict=True))
        )
    return 0


#: Marks of the readable diff table.
UP, DOWN, SAME = "\u25b2", "\u25bc", "="


def run_diff(args: argparse.Namespace) -> int:
    """Run ``diff``; returns 0, or 2 for a period no bucket size fits."""
    end = args.end if args.end is not None else time.time()

    async def go(store: Any, cfg: Any) -> Any:
        if 2 * args.period > cfg.retention_s:
            log.warning(
                "two periods (%d s) exceed retention_s (%d s): the previous period is "
                "partly expired",
                2 * args.period,
                cfg.retention_s,
            )
        bucket_s = choose_bucket(args.period, store.buckets_s)
        return bucket_s, await diff(store, args.period, end, args.by, args.limit)

    try:
        bucket_s, result = asyncio.run(_with_store(args, go))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    top = bucket_start(end, bucket_s) + bucket_s
    p = result["period_s"]
    print(
        f"{args.by} +/-: [{_fmt_time(top - p)}, {_fmt_time(top)}) vs "
        f"[{_fmt_time(top - 2 * p)}, {_fmt_time(top - p)}) UTC"
    )
    if not result["rows"]:
        print("(no messages in either period)")
        return 0
    from .cli import printable

    print(f"  {'':1} {'current':>9} {'previous':>9} {'delta':>8} {'pct':>8}  {args.by}")
    for r in result["rows"]:
        mark = UP if r["delta"] > 0 else DOWN if r["delta"] < 0 else SAME
        pct = "new" if r["pct"] is None else f"{r['pct']:+.1f}%"
        print(
            f"  {mark} {r['current']:>9} {r['previous']:>9} {r['delta']:>+8} {pct:>8}"
            f"  {printable(r[args.by])}"
        )
    return 0
