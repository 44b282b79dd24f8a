"""Hourly history written straight into Redis, in the key layout
:mod:`listener.storage.store` documents (``P:b:3600:<start>:n|c|t``): a week of
counts in milliseconds, for the silence detector's tests (the flush script would
need every message of the week)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

HOUR_S = 3600


def seed_hours(
    redis_url: str,
    prefix: str,
    first_hour: int,
    hours: Sequence[Mapping[str, int]],
    topics: Mapping[str, str],
    retention_s: int = 14 * 86400,
) -> None:
    """Write hourly buckets: ``hours[i]`` is ``{category: messages}`` of the hour
    starting at ``first_hour + i * 3600``; each category's messages go to the topic
    ``topics[category]``.  Keys expire as the store's do."""
    client = redis.Redis.from_url(redis_url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for i, counts in enumerate(hours):
                start = first_hour + i * HOUR_S
                base = f"{{{prefix}}}:b:{HOUR_S}:{start}"
                for cat, n in counts.items():
                    if n <= 0:
                        continue
                    pipe.hincrby(base + ":n", "messages", n)
                    pipe.hincrby(base + ":c", cat, n)
                    pipe.hincrby(base + ":t", topics[cat], n)
                for kind in ("n", "c", "t"):
                    pipe.expireat(f"{base}:{kind}", start + HOUR_S + retention_s)
            pipe.execute()
    finally:
        client.close()
