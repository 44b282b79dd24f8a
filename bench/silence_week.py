"""The silence detector's false-alarm rate on a replayed week (docs/SILENCE.md).

    python -m bench.silence_week                 # the default rule, seeds 1-3
    python -m bench.silence_week --seeds 1 --p 0.01,0.001,0.0001
    python -m bench.silence_week --redis-cost    # the listener's hourly history read
    python -m bench.silence_week --seen-cost     # what each flush adds

Two weeks of bus traffic are generated, minute by minute: the categories and topics
of real Fedora messages (the benchmark workload's templates, :mod:`bench.workload`:
fedmsg_meta's shipped examples and the corpus minute) with the workload's mix (koji
``buildsys`` 40 %, copr 20 %, dist-git 10 %, bodhi 8 %, the rest spread with a Zipf
law so the tail holds categories of a few messages a day), a day/night cycle
(x0.35 at 04:00 UTC to x1.65 at 16:00), quiet weekends (x0.5) and clusters
(a koji build or a copr chroot sends its messages together: cluster sizes
geometric, mean 4 for buildsys and copr, 2 elsewhere), plus storms: twice a week a
random busy category sends x6 for an hour (a mass rebuild).  The first week is the
history; the second is replayed through :class:`listener.core.silence.Detector` as
the listener runs it (the hourly history re-read at every hour, a verdict every 30
s), with one real outage injected: ``bodhi`` stops for 3 hours on the Wednesday at
14:00 UTC.

Every silence outside the outage is a false alarm, every burst outside a storm
too.  Printed: a Markdown table per threshold, and the outage's detection delay.
Pure computation (no Redis, no bus): a few seconds a seed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.procs import RedisServer
from bench.workload import TOPIC_MIX, template_sources
from listener.core.envelope import category_of
from listener.core.silence import HOUR_S, WEEK_H, Detector, Rule
from listener.storage.readers import read_hourly_fields
from listener.storage.store import Store

#: messages per hour of the whole bus at the weekly mean (Fedora's bus: ~100 a minute)
BUS_PER_H = 6000.0
#: a Monday 00:00 UTC: the first replayed week starts here
T0 = 1_764_547_200
EVAL_EVERY_S = 30
OUTAGE = ("bodhi", T0 + WEEK_H * HOUR_S + 2 * 86400 + 14 * HOUR_S, 3 * HOUR_S)


@dataclass
class Stream:
    """One category: its weekly mean rate (messages/h), cluster size, topics."""

    category: str
    rate_h: float
    cluster: float
    topics: list[str]


def streams(rng: random.Random) -> list[Stream]:
    """The categories of the real templates with the workload's mix."""
    topics: dict[str, set[str]] = {}
    for body in template_sources():
        t = body.get("topic")
        if isinstance(t, str):
            topics.setdefault(category_of(t), set()).add(t)
    rest = sorted(c for c in topics if c not in TOPIC_MIX)
    share_rest = 1.0 - sum(TOPIC_MIX.values())
    zipf = [1.0 / (k + 1) ** 1.3 for k in range(len(rest))]
    rng.shuffle(rest)
    out = [
        Stream(c, BUS_PER_H * s, 4.0 if c in ("buildsys", "copr") else 2.0, sorted(topics[c]))
        for c, s in TOPIC_MIX.items()
        if c in topics
    ]
    for c, z in zip(rest, zipf, strict=True):
        out.append(Stream(c, BUS_PER_H * share_rest * z / sum(zipf), 2.0, sorted(topics[c])))
    return out


def shape(t: float) -> float:
    """The day/night and weekday/weekend factor at UNIX time ``t`` (mean ~1 over a week)."""
    h = (t % 86400) / 3600
    day = 1.0 + 0.65 * math.sin(2 * math.pi * (h - 10) / 24)
    weekday = ((int(t // 86400) + 3) % 7) < 5  # 1970-01-01 was a Thursday
    return day * (1.0 if weekday else 0.5) / (5 / 7 + 0.5 * 2 / 7)


def generate(
    rng: random.Random, ss: list[Stream], weeks: int = 2
) -> tuple[dict[int, list[tuple[str, str, int]]], list[tuple[str, float, float]]]:
    """Minute -> [(category, topic, messages)], and the storms [(category, start, s)]."""
    per_min: dict[int, list[tuple[str, str, int]]] = {}
    storms = []
    busy = [s.category for s in ss[:4]]
    for w in range(weeks):
        for _ in range(2):
            start = T0 + w * WEEK_H * HOUR_S + rng.randrange(WEEK_H - 1) * HOUR_S
            storms.append((rng.choice(busy), float(start), float(HOUR_S)))
    out_cat, out_start, out_len = OUTAGE
    for minute in range(T0, T0 + weeks * WEEK_H * HOUR_S, 60):
        f = shape(minute + 30)
        rows = per_min.setdefault(minute, [])
        for s in ss:
            if s.category == out_cat and out_start <= minute < out_start + out_len:
                continue
            lam = s.rate_h * f / 60
            for c, st, ln in storms:
                if c == s.category and st <= minute < st + ln:
                    lam *= 6
            clusters = _poisson(rng, lam / s.cluster)
            for _ in range(clusters):
                size = 1 + _geometric(rng, s.cluster)
                rows.append((s.category, rng.choice(s.topics), size))
    return per_min, storms


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation, rounded, for the busy minutes
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _geometric(rng: random.Random, mean: float) -> int:
    """Extra messages of a cluster: geometric on 0, 1, ... with mean ``mean - 1``."""
    q = 1.0 - 1.0 / mean
    n = 0
    while rng.random() < q:
        n += 1
    return n


def replay(rule: Rule, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    ss = streams(rng)
    per_min, storms = generate(rng, ss)
    hours_c: list[Counter[str]] = [Counter() for _ in range(2 * WEEK_H)]
    hours_t: list[Counter[str]] = [Counter() for _ in range(2 * WEEK_H)]
    for minute, rows in per_min.items():
        i = (minute - T0) // HOUR_S
        for cat, topic, n in rows:
            hours_c[i][cat] += n
            hours_t[i][topic] += n
    start = T0 + WEEK_H * HOUR_S
    d = Detector(rule, start - WEEK_H * HOUR_S)
    prev: dict[tuple[str, str], str] = {}
    false_silent = false_burst = storm_flagged = 0
    silent_s = 0.0
    outage_flag_at: float | None = None
    judged: set[tuple[str, str]] = set()
    out_cat, out_start, out_len = OUTAGE
    t = float(start)
    history_s: list[float] = []
    evaluate_s: list[float] = []
    for minute in range(start, start + WEEK_H * HOUR_S, 60):
        if (minute - T0) % HOUR_S == 0:
            i = (minute - T0) // HOUR_S
            t_h = time.perf_counter()
            d.history(
                minute - WEEK_H * HOUR_S,
                [*hours_c[i - WEEK_H : i], Counter()],
                [*hours_t[i - WEEK_H : i], Counter()],
                minute,
            )
            history_s.append(time.perf_counter() - t_h)
        rows = per_min[minute]
        # arrivals spread over the minute; a verdict every EVAL_EVERY_S
        spread = sorted((minute + rng.random() * 60, cat, topic, n) for cat, topic, n in rows)
        j = 0
        for t_eval in range(minute + EVAL_EVERY_S, minute + 61, EVAL_EVERY_S):
            while j < len(spread) and spread[j][0] <= t_eval:
                at, cat, topic, n = spread[j]
                d.seen("category", {cat: n}, at)
                d.seen("topic", {topic: n}, at)
                j += 1
            t = float(t_eval)
            t_e = time.perf_counter()
            d.evaluate(t)
            evaluate_s.append(time.perf_counter() - t_e)
            for key, state in d.states.items():
                if state != "rare":
                    judged.add(key)
                was = prev.get(key, "ok")
                in_outage = key[1] == out_cat and out_start <= t <= out_start + out_len + 3600
                if state == "silent":
                    silent_s += EVAL_EVERY_S
                    if in_outage and outage_flag_at is None:
                        outage_flag_at = t
                    if was != "silent" and not in_outage:
                        false_silent += 1
                if state == "bursting" and was != "bursting":
                    cat = key[1] if key[0] == "category" else category_of(key[1])
                    if any(c == cat and s <= t <= s + ln + 600 for c, s, ln in storms):
                        storm_flagged += 1
                    else:
                        false_burst += 1
            prev = dict(d.states)
    week_storms = [s for s in storms if s[1] >= start]
    return {
        "judged": len(judged),
        "categories": len(ss),
        "false_silent": false_silent,
        "false_burst": false_burst,
        "storms": len(week_storms),
        "storm_flags": storm_flagged,
        "outage_delay_s": (outage_flag_at - out_start) if outage_flag_at else float("nan"),
        "silent_s": silent_s,
        "history_ms": 1000 * sorted(history_s)[len(history_s) // 2],
        "evaluate_ms": 1000 * sorted(evaluate_s)[len(evaluate_s) // 2],
    }


async def _read_cost(url: str, categories: int, topics: int, reps: int) -> float:
    """Median seconds of the listener's hourly history read (169 buckets, ``:c`` and
    ``:t``) from a real Redis holding a week of ``categories`` and ``topics`` per hour."""
    store = Store.from_url(url, prefix="cost")
    try:
        hour = int(T0 // HOUR_S) * HOUR_S
        starts = list(range(hour - WEEK_H * HOUR_S, hour + 1, HOUR_S))
        async with store.r.pipeline(transaction=False) as pipe:
            for st in starts:
                base = store.key("b", HOUR_S, st)
                pipe.hset(base + ":c", mapping={f"cat{k}": 10 + k for k in range(categories)})
                pipe.hset(
                    base + ":t",
                    mapping={f"org.fedoraproject.prod.cat{k}.x.y": 5 + k for k in range(topics)},
                )
            await pipe.execute()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            top = [f"org.fedoraproject.prod.cat{k}.x.y" for k in range(40)]
            await read_hourly_fields(store, HOUR_S, starts, ("c", "t"), only={"t": top})
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]
    finally:
        await store.close()


def redis_cost() -> None:
    """Print the hourly read's cost for a few bus sizes (a real redis-server)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        try:
            print(
                "| categories / topics an hour | history read (169 buckets: categories"
                " whole, 40 topics; median of 5) |"
            )
            print("|---|---|")
            for cats, tops in ((50, 200), (60, 1000), (100, 5000)):
                sec = asyncio.run(_read_cost(server.url, cats, tops, 5))
                print(f"| {cats} / {tops} | {sec * 1000:.0f} ms |", flush=True)
                asyncio.run(_flush(server.url))
        finally:
            server.stop()


async def _flush(url: str) -> None:
    store = Store.from_url(url)
    try:
        await store.r.flushdb()
    finally:
        await store.close()


def seen_cost(flushes: int = 20000) -> None:
    """Print what a flush adds: :meth:`Detector.seen` for a batch of 30 categories and
    210 topics (12 of them followed)."""
    d = Detector(Rule(), 0.0)
    d.topics = {f"org.fedoraproject.prod.c{k}.t{j}" for k in range(3) for j in range(4)}
    cats = Counter({f"c{k}": 5 for k in range(30)})
    topics = Counter({f"org.fedoraproject.prod.c{k}.t{j}": 2 for k in range(30) for j in range(7)})
    t = time.perf_counter()
    for i in range(flushes):
        at = 1000.0 + i * 0.2
        d.seen("category", cats, at)
        d.seen("topic", topics, at)
    per = (time.perf_counter() - t) / flushes
    print(f"a flush of 30 categories and 210 topics: {per * 1e6:.1f} µs in the detector")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    ap.add_argument("--p", default="0.001", help="comma-separated alert_silence_p values")
    ap.add_argument("--p-burst", type=float, default=Rule.p_burst, help="alert_burst_p")
    ap.add_argument("--burst-factor", type=float, default=Rule.burst_factor)
    ap.add_argument("--burst-min", type=int, default=Rule.min_burst, help="alert_burst_min")
    ap.add_argument(
        "--redis-cost", action="store_true", help="measure the hourly history read instead"
    )
    ap.add_argument("--seen-cost", action="store_true", help="measure a flush's cost instead")
    args = ap.parse_args()
    if args.seen_cost:
        seen_cost()
        return
    if args.redis_cost:
        redis_cost()
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"burst test: p < {args.p_burst:g}, >= {args.burst_factor:g} x usual, "
        f">= {args.burst_min} messages\n\n"
        "| alert_silence_p | seed | followed (ever judged) | false silences | false bursts "
        "| burst flags during the 2 storms | bodhi's 3 h outage flagged after "
        "| history / evaluate (median) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for p in (float(x) for x in args.p.split(",")):
        rule = Rule(
            p_silent=p,
            p_burst=args.p_burst,
            burst_factor=args.burst_factor,
            min_burst=args.burst_min,
        )
        for seed in seeds:
            r = replay(rule, seed)
            delay = r["outage_delay_s"]
            print(
                f"| {p:g} | {seed} | {r['categories']} cat. + {rule.topics} topics "
                f"({r['judged']}) | {r['false_silent']} | {r['false_burst']} "
                f"| {r['storm_flags']} | "
                + ("not flagged" if math.isnan(delay) else f"{delay / 60:.1f} min")
                + f" | {r['history_ms']:.1f} / {r['evaluate_ms']:.2f} ms |",
                flush=True,
            )


if __name__ == "__main__":
    main()
