"""Window recompute cost: the longtail for 100 -> 100,000 users, and one step.

* **longtail**: per window size ``n`` (users), the seed's loop
  (:func:`listener.core.longtail.longtail`: sort, then accumulate over ranks), the
  closed form (:func:`listener.core.longtail.longtail_closed_form`: one pass for head,
  tail and sum, no sort), and :func:`listener.core.longtail.stats` (every metric of a
  window, what a step computes) on Zipf-like counts (user ``k`` has
  ``max(1, n // (k + 1))`` messages).
* **step**: :meth:`listener.daemon.consumer.Consumer.step` with the 1 h, 24 h and 7 d
  windows each holding ``n`` users (and their user x category counts), against a
  real redis-server: snapshots of all windows, history points, the ``tick`` event
  stored and published.  Also the pure part alone (the three snapshots).

Times are medians of ``repeat`` runs (7 and 15 by default), in milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from listener.core import longtail as lt
from listener.core.config import Config
from listener.core.intake import Intake
from listener.core.snapshot import build_snapshot, live_snapshot, live_stats
from listener.core.windows import Counts
from listener.daemon.consumer import Consumer
from listener.storage.store import Store

CATEGORIES = ("buildsys", "copr", "git", "bodhi", "pagure", "compose", "ci", "anitya")


def zipf_counts(n: int) -> dict[str, int]:
    """``{username: messages}`` for ``n`` users, user ``k`` with ``max(1, n // (k+1))``,
    in a shuffled order (a window's users are not stored sorted by count)."""
    ranks = list(range(n))
    random.Random(n).shuffle(ranks)
    return {f"fas{k:06d}": max(1, n // (k + 1)) for k in ranks}


def window_counts(n: int) -> Counts:
    """A window's :class:`Counts` with ``n`` users, categories and ~500 topics."""
    c = Counts()
    for k, (user, m) in enumerate(zipf_counts(n).items()):
        cat = CATEGORIES[k % len(CATEGORIES)]
        c.users[user] = m
        c.usercat[(user, cat)] = m
        c.categories[cat] += m
        c.topics[f"org.fedoraproject.prod.{cat}.event{k % 60}"] += m
        c.messages += m
    return c


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs, ms (GC collected before each)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 3)


def closed_form(values: list[int]) -> float | None:
    """The closed-form longtail of raw counts: one pass for head, tail and sum."""
    if not values:
        return None
    return lt.longtail_closed_form(len(values), max(values), min(values), sum(values))


def longtail_table(
    sizes: tuple[int, ...] = (100, 1000, 10_000, 100_000), repeat: int = 7
) -> list[dict[str, Any]]:
    """Longtail cost per window size.

    Returns:
        ``[{"users", "seed_loop_ms", "closed_form_ms", "stats_ms", "live_stats_ms",
        "snapshot_ms", "live_snapshot_ms", "rel_diff"}, ...]``; ``stats``/``snapshot``
        are the seed-exact :func:`listener.core.longtail.stats` and
        :func:`listener.core.snapshot.build_snapshot`, ``live_*`` the step's
        (:mod:`listener.core.snapshot`); ``rel_diff``: ``|closed - seed| / |seed|``.
    """
    rows = []
    for n in sizes:
        per_user = zipf_counts(n)
        values = list(per_user.values())
        counts = window_counts(n)
        seed = lt.longtail(values)
        closed = closed_form(values)
        assert seed is not None and closed is not None
        rows.append(
            {
                "users": n,
                "seed_loop_ms": median_ms(partial(lt.longtail, values), repeat),
                "closed_form_ms": median_ms(partial(closed_form, values), repeat),
                "stats_ms": median_ms(partial(lt.stats, per_user), repeat),
                "live_stats_ms": median_ms(partial(live_stats, per_user), repeat),
                "snapshot_ms": median_ms(
                    partial(build_snapshot, 604800, 0.0, counts, None, 20), repeat
                ),
                "live_snapshot_ms": median_ms(
                    partial(live_snapshot, 604800, 0.0, counts, None, 20), repeat
                ),
                "rel_diff": abs(closed - seed) / abs(seed) if seed else abs(closed),
            }
        )
    return rows


#: users of each window relative to the 7 d window's, in the "nested" shape (a
#: window's users are a subset of the longer one's)
NESTED = {3600: 0.1, 86400: 0.5, 604800: 1.0}


async def _step_cost(redis_url: str, n: int, repeat: int, shape: str) -> dict[str, Any]:
    cfg = Config(redis_url=redis_url, key_prefix="benchstep")
    store = Store.from_url(
        redis_url, prefix=cfg.key_prefix, buckets_s=cfg.buckets_s, windows_s=cfg.windows_s
    )

    class _NoExtractor:
        errors = 0

    intake = Intake(cfg, _NoExtractor(), time.time)  # type: ignore[arg-type]
    consumer = Consumer(cfg, intake, store)
    now = time.time()
    await consumer.warm_up(now)
    for w, win in consumer.windows.items():
        users = n if shape == "all" else max(1, int(n * NESTED.get(w, 1.0)))
        win.reset(window_counts(users), now)
    times = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        await consumer.step(now)
        times.append(time.perf_counter() - t)
    await store.r.delete(*[k async for k in store.r.scan_iter(match="{benchstep}:*")])
    await store.close()
    pure = median_ms(
        lambda: [
            live_snapshot(w, now, win.totals, None, cfg.top_users)
            for w, win in consumer.windows.items()
        ],
        repeat,
    )
    return {
        "users": n,
        "shape": shape,
        "windows": list(cfg.windows_s),
        "step_ms": round(statistics.median(times) * 1000, 3),
        "snapshots_ms": pure,
    }


def step_cost(
    redis_url: str, sizes: tuple[int, ...] = (1000, 10_000), repeat: int = 15
) -> list[dict[str, Any]]:
    """One :meth:`Consumer.step` of all windows, per ``n`` and shape.

    Shapes: ``"all"``: each window holds ``n`` users (the worst case); ``"nested"``:
    the 7 d window holds ``n``, the 24 h and 1 h windows :data:`NESTED` of them.

    Returns:
        ``[{"users", "shape", "windows", "step_ms", "snapshots_ms"}, ...]``.
    """
    return [
        asyncio.run(_step_cost(redis_url, n, repeat, shape))
        for n in sizes
        for shape in ("nested", "all")
    ]


def run(redis_url: str, quick: bool = False) -> dict[str, Any]:
    """Both tables (``quick``: small sizes, for the smoke test)."""
    if quick:
        return {
            "longtail": longtail_table((100, 1000), repeat=2),
            "step": step_cost(redis_url, (1000,), repeat=2),
        }
    return {"longtail": longtail_table(), "step": step_cost(redis_url)}
