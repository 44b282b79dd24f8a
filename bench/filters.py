"""What a filtered screen costs its web process: the windows read and filtered per tick.

A filtered view's ``tick`` and ``snapshot`` (:mod:`listener.webserver.filtered`)
read its windows from the Redis buckets and filter them: the 1 h window (60
one-minute buckets), the 24 h and 7 d windows (24 and 168 hourly buckets), each
as the cached sum of its closed buckets plus its open bucket.  This fills a real
redis-server with a week of buckets shaped like the real bus and times
:meth:`FilteredViews.windows` for a few filters:

* **cold**: every bucket of the three windows read (a new view, and every
  ``REFRESH_S``, 120 s);
* **tick**: a tick within the same minute (the three open buckets read);
* **slide**: a tick one minute later (the open buckets, plus the minute bucket
  that closed and the one that left the 1 h window).

Per hour, ``--per-hour`` messages (default 10,000: 240,000 a day) on the ~380
topics of the real examples (category weights of
:data:`bench.workload.TOPIC_MIX`), each with 0-2 users drawn Zipf-like
(``P(rank k) ~ 1/k``) from ``--users`` (2,000).  Redis CPU is ``INFO cpu``'s
``used_cpu_user + used_cpu_sys`` over the reads.  Times are medians, ms.

**What a user x topic counter would hold.**  The filters need no new counter; one
per user x topic (``:ut``, ``username\x1ftopic``) would let the per-user figures
follow topic rules.  The fill also writes those hashes (nothing reads them) and
reports Redis's ``MEMORY USAGE`` of every bucket hash by suffix, so its memory is
measured against the counters kept today.

    python -m bench.filters [--per-hour N] [--users N] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from listener.core.config import Config
from listener.core.envelope import category_of
from listener.core.filters import parse_filter
from listener.core.windows import UC_SEP, bucket_start
from listener.storage.store import Store
from listener.tools.examples import builtin_examples
from listener.webserver.filtered import FilteredViews
from listener.webserver.hub import Hub

from .procs import RedisServer
from .workload import TOPIC_MIX

FILTERS = {
    "category=buildsys&category=bodhi": {"category": ["buildsys", "bodhi"]},
    "not_category=buildsys": {"not_category": ["buildsys"]},
    "topic=org.fedoraproject.prod.bodhi.*": {"topic": ["org.fedoraproject.prod.bodhi.*"]},
    "user=u1": {"user": ["u1"]},
}


def hour_counts(rng: random.Random, topics: list[str], n_users: int, per_hour: int) -> Any:
    """One hour of messages as ``(topic, users)`` rows."""
    weights = []
    by_cat = Counter(category_of(t) for t in topics)
    rest = [c for c in by_cat if c not in TOPIC_MIX]
    for t in topics:
        c = category_of(t)
        share = TOPIC_MIX.get(c, (1 - sum(TOPIC_MIX.values())) / max(1, len(rest)))
        weights.append(share / by_cat[c])
    user_w = [1 / k for k in range(1, n_users + 1)]
    rows = []
    for t in rng.choices(topics, weights, k=per_hour):
        k = rng.choice((0, 1, 1, 2))
        rows.append((t, tuple(sorted({f"u{i}" for i in rng.choices(range(n_users), user_w, k=k)}))))
    return rows


def write_bucket(pipe: Any, base: str, rows: list[tuple[str, tuple[str, ...]]], at: int) -> int:
    """The five hashes of one bucket (the store's key layout); returns its fields."""
    t: Counter[str] = Counter()
    c: Counter[str] = Counter()
    u: Counter[str] = Counter()
    uc: Counter[str] = Counter()
    ut: Counter[str] = Counter()  # the user x topic counter measured, not kept
    for topic, users in rows:
        cat = category_of(topic)
        t[topic] += 1
        c[cat] += 1
        for name in users:
            u[name] += 1
            uc[name + UC_SEP + cat] += 1
            ut[name + UC_SEP + topic] += 1
    pipe.hset(base + ":n", "messages", len(rows))
    for suffix, h in ((":t", t), (":c", c), (":u", u), (":uc", uc), (":ut", ut)):
        if h:
            pipe.hset(base + suffix, mapping=dict(h))
    for suffix in SUFFIXES:
        pipe.expireat(base + suffix, at)
    return 1 + len(t) + len(c) + len(u) + len(uc)


async def fill(store: Store, now: float, per_hour: int, n_users: int) -> dict[str, int]:
    """A week of hourly buckets and an hour of minute buckets ending at ``now``."""
    rng = random.Random(20)
    topics = sorted({e.body["topic"] for e in builtin_examples()})
    hours = [hour_counts(rng, topics, n_users, per_hour) for _ in range(6)]
    fields = {"3600": 0, "60": 0}
    last = bucket_start(now, 3600)
    at = int(now) + 30 * 86400
    async with store.r.pipeline(transaction=False) as pipe:
        for i in range(170):
            start = last - i * 3600
            fields["3600"] += write_bucket(pipe, store.key("b", 3600, start), hours[i % 6], at)
        await pipe.execute()
    minute = bucket_start(now, 60)
    async with store.r.pipeline(transaction=False) as pipe:
        for i in range(61):
            rows = hours[i % 6][i * per_hour // 60 : (i + 1) * per_hour // 60]
            fields["60"] += write_bucket(pipe, store.key("b", 60, minute - i * 60), rows, at)
        await pipe.execute()
    return fields


SUFFIXES = (":n", ":t", ":c", ":u", ":uc", ":ut")


async def memory_by_suffix(store: Store) -> dict[str, int]:
    """``MEMORY USAGE key SAMPLES 0`` (bytes, every field counted) of every bucket
    hash, summed by suffix."""
    out = dict.fromkeys(SUFFIXES, 0)
    async for key in store.r.scan_iter(match=store.key("b", "*"), count=1000):
        suffix = ":" + key.decode().rsplit(":", 1)[1]
        out[suffix] += int(await store.r.memory_usage(key, samples=0) or 0)
    return out


def redis_cpu(server: RedisServer) -> float:
    info = server.client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(server: RedisServer, per_hour: int, n_users: int, repeat: int) -> dict[str, Any]:
    cfg = Config(redis_url=server.url, key_prefix="benchfilters")
    store = Store.from_url(
        server.url, prefix=cfg.key_prefix, buckets_s=cfg.buckets_s, windows_s=cfg.windows_s
    )

    async def no_health() -> dict[str, Any]:
        return {}

    try:
        now = time.time()
        fields = await fill(store, now, per_hour, n_users)
        memory = await memory_by_suffix(store)
        rows = []
        for name, query in FILTERS.items():
            flt = parse_filter(query)
            cold, tick, slide, cpu_cold = [], [], [], []
            for _ in range(repeat):
                views = FilteredViews(cfg, store, Hub(), no_health)
                before = redis_cpu(server)
                t = time.perf_counter()
                snaps = await views.windows(flt, now)
                cold.append(time.perf_counter() - t)
                cpu_cold.append(redis_cpu(server) - before)
                t = time.perf_counter()
                await views.windows(flt, now)
                tick.append(time.perf_counter() - t)
                t = time.perf_counter()
                await views.windows(flt, now + 60)
                slide.append(time.perf_counter() - t)
            rows.append(
                {
                    "filter": name,
                    "cold_ms": round(statistics.median(cold) * 1000, 1),
                    "redis_cpu_cold_ms": round(statistics.median(cpu_cold) * 1000, 1),
                    "tick_ms": round(statistics.median(tick) * 1000, 1),
                    "slide_ms": round(statistics.median(slide) * 1000, 1),
                    "messages_7d": snaps["604800"]["messages"],
                    "unfiltered": snaps["604800"]["unfiltered"],
                }
            )
        return {
            "per_hour": per_hour,
            "users": n_users,
            "fields_hourly_buckets": fields["3600"],
            "fields_minute_buckets": fields["60"],
            "memory_bytes": memory,
            "rows": rows,
        }
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-hour", type=int, default=10_000)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        try:
            result = asyncio.run(measure(server, args.per_hour, args.users, args.repeat))
        finally:
            server.stop()
            server.client.close()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
