"""Readers of the store for the computed views (radar, diff): one counter hash per
bucket instead of all five, the key layout :mod:`listener.storage.store` documents."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from listener.core.views import DIFF_BY, diff_bounds, diff_rows, radar_from_counts
from listener.core.windows import UC_SEP, Counts, choose_bucket, window_buckets

#: Buckets read in one Redis pipeline.
PIPELINE_BUCKETS = 50


async def read_field_sums(
    store: Any, bucket_s: int, starts: Sequence[int], kind: str
) -> Counter[str]:
    """Sum one counter hash over several buckets, reading nothing else.

    ``store.read_buckets`` reads all five hashes of a bucket; a week of hourly
    buckets with a realistic user count is ~10^5-10^6 user and user/category fields,
    when a diff only needs the topic (or category) hash.  This reads one hash per
    bucket, at the key the store documents (``listener.storage.store``'s key layout:
    ``P:b:<bucket_s>:<start>:<kind>``).

    Args:
        store: a :class:`listener.storage.store.Store`.
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
    (chosen as :meth:`listener.storage.store.Store.read_window` does).  ``users`` is
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
        store: a :class:`listener.storage.store.Store`.
        window_s: window length, seconds (read like any window: see
            :func:`listener.core.windows.window_buckets`).
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
        store: a :class:`listener.storage.store.Store`.
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


async def read_kinds(
    store: Any,
    bucket_s: int,
    starts: Sequence[int],
    kinds: Sequence[str],
    chunk: int = 8,
    user: str | None = None,
) -> Counts:
    """Sum some counter hashes of several buckets (the others are not read).

    Args:
        store: a :class:`listener.storage.store.Store`.
        bucket_s: bucket size, seconds; starts: bucket starts, UNIX seconds.
        kinds: hash suffixes among ``"t"``, ``"c"``, ``"uc"`` (the store's key layout).
        chunk: buckets per pipeline; the event loop runs between two.
        user: with ``"uc"`` and ``"c"`` in ``kinds``, read only this user's fields
            of the user x category hashes (``HMGET`` of the user with each category
            of the bucket's ``"c"`` hash) instead of every user's.

    Returns:
        A :class:`Counts` with ``topics``, ``categories``, ``usercat`` and
        ``users`` (derived from ``usercat``) filled from the kinds read;
        ``messages`` is left 0.

    Raises:
        redis.exceptions.RedisError: Redis failed.
    """
    counts = Counts()
    fields = {"t": counts.topics, "c": counts.categories}
    one = user is not None and "uc" in kinds and "c" in kinds
    whole = [k for k in kinds if not (one and k == "uc")]
    for i in range(0, len(starts), chunk):
        part = starts[i : i + chunk]
        async with store.r.pipeline(transaction=False) as pipe:
            for start in part:
                for kind in whole:
                    pipe.hgetall(f"{store.key('b', bucket_s, start)}:{kind}")
            replies = await pipe.execute()
        names: list[list[str]] = []
        for n, (reply, kind) in enumerate(zip(replies, whole * len(part), strict=True)):
            if kind == "uc":
                for key, value in reply.items():
                    name, _, category = key.decode().partition(UC_SEP)
                    counts.usercat[(name, category)] += int(value)
                    counts.users[name] += int(value)
                continue
            target = fields[kind]
            for key, value in reply.items():
                target[key.decode()] += int(value)
            if kind == "c" and n % len(whole) == whole.index("c"):
                names.append([k.decode() for k in reply])
        if one and user is not None:
            async with store.r.pipeline(transaction=False) as pipe:
                for start, cats in zip(part, names, strict=True):
                    key = f"{store.key('b', bucket_s, start)}:uc"
                    pipe.hmget(key, [user + UC_SEP + c for c in cats] or [user + UC_SEP])
                replies = await pipe.execute()
            for cats, values in zip(names, replies, strict=True):
                for category, value in zip(cats, values, strict=False):
                    if value is not None:
                        counts.usercat[(user, category)] += int(value)
                        counts.users[user] += int(value)
        await asyncio.sleep(0)  # a 7 d window is 168 buckets: let the broadcasts run
    return counts


async def read_hourly_fields(
    store: Any,
    bucket_s: int,
    starts: Sequence[int],
    kinds: Sequence[str],
    only: dict[str, Sequence[str]] | None = None,
) -> dict[str, list[dict[str, int]]]:
    """One counter hash per bucket and kind, bucket by bucket (not summed): what the
    silence detector's baselines are made of (:mod:`listener.core.silence`).

    Args:
        store: a :class:`listener.storage.store.Store`.
        bucket_s: bucket size, seconds; starts: bucket starts, UNIX seconds.
        kinds: hashes read, as :func:`read_field_sums` names them (``"c"``, ``"t"``).
        only: per kind, the only fields read (``HMGET``; a bus has thousands of
            topics an hour, and parsing them all took seconds): the others whole.

    Returns:
        ``{kind: [{field: messages}, ...]}``, one dict per start, in order (a missing
        bucket is empty).

    Raises:
        redis.exceptions.RedisError: Redis failed.
    """
    out: dict[str, list[dict[str, int]]] = {k: [] for k in kinds}
    for i in range(0, len(starts), PIPELINE_BUCKETS):
        chunk = starts[i : i + PIPELINE_BUCKETS]
        async with store.r.pipeline(transaction=False) as pipe:
            for start in chunk:
                for kind in kinds:
                    key = f"{store.key('b', bucket_s, start)}:{kind}"
                    if only is not None and kind in only:
                        pipe.hmget(key, list(only[kind]) or [""])
                    else:
                        pipe.hgetall(key)
            replies = await pipe.execute()
        for j in range(len(chunk)):
            for n, kind in enumerate(kinds):
                reply = replies[j * len(kinds) + n]
                if isinstance(reply, list):  # HMGET: values in the order asked
                    names = list(only[kind]) if only else []
                    out[kind].append({f: int(v) for f, v in zip(names, reply, strict=False) if v})
                else:
                    out[kind].append({f.decode(): int(v) for f, v in reply.items()})
    return out
