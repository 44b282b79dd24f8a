"""The silence and burst rule on synthetic streams (pure)."""

from __future__ import annotations

import math
import random

import pytest

from listener.core.config import Config
from listener.core.silence import (
    HOUR_S,
    MAX_CATEGORIES,
    WEEK_H,
    Detector,
    Rule,
    expected,
    hour_of_week,
    poisson_sf,
    rule_of,
    trailing_baseline,
    week_baseline,
)

#: A Monday 00:00 UTC, hour-aligned.
T0 = 1_764_547_200 - 7 * 86400


def diurnal(hour_start: int, base: float) -> float:
    """Messages/h of a stream with a day (x1.5) / night (x0.5) cycle and quiet weekends."""
    h = (hour_start // HOUR_S) % 24
    day = 1.5 if 8 <= h < 20 else 0.5
    weekend = 0.4 if ((hour_start // 86400) + 3) % 7 >= 5 else 1.0  # 1970-01-01 a Thursday
    return base * day * weekend


def week_of(
    rates: dict[str, float], rng: random.Random, shape: bool = True
) -> list[dict[str, int]]:
    """168 hourly counts (Poisson draws) of each category at its rate (messages/h)."""
    hours = []
    for i in range(WEEK_H):
        start = T0 + i * HOUR_S
        hours.append(
            {c: _poisson(rng, diurnal(start, r) if shape else r) for c, r in rates.items()}
        )
    return hours


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method, in chunks (exp(-lam) underflows past ~700)
    n = 0
    while lam > 0:
        step = min(lam, 50.0)
        lam -= step
        limit, p = math.exp(-step), 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                break
            n += 1
    return n


def detector(rule: Rule | None = None, started: float | None = None) -> Detector:
    return Detector(rule or Rule(), T0 if started is None else started)


def feed_live(
    d: Detector, cat: str, rate_h: float, start: float, end: float, rng: random.Random
) -> float:
    """Live messages of ``cat`` at ``rate_h`` from ``start`` to ``end``, one flush a
    second; returns the last arrival."""
    last = start
    t = start
    while t < end:
        t += rng.expovariate(rate_h / HOUR_S)
        if t < end:
            d.seen("category", {cat: 1}, t)
            last = t
    return last


def test_poisson_tail_matches_the_sum() -> None:
    mu = 4.0
    exact = 1 - sum(math.exp(-mu) * mu**i / math.factorial(i) for i in range(10))
    assert poisson_sf(10, mu) == pytest.approx(exact, rel=1e-9)
    assert poisson_sf(2, mu) == pytest.approx(1 - math.exp(-mu) * (1 + mu), rel=1e-9)
    assert poisson_sf(0, mu) == 1.0 and poisson_sf(3, 0) == 0.0


def test_expected_integrates_hour_by_hour() -> None:
    profile = [0.0] * WEEK_H
    profile[hour_of_week(T0)] = 60.0
    profile[hour_of_week(T0 + HOUR_S)] = 120.0
    # last 30 min of the first hour (30) + first 15 min of the next (30)
    assert expected(profile, T0 + 1800, T0 + HOUR_S + 900) == pytest.approx(60.0)
    assert expected(profile, 10, 5) == 0.0
    flat = [6.0] * WEEK_H
    assert expected(flat, T0, T0 + 8 * 86400) == pytest.approx(6 * 24 * 8)


def test_week_baseline_takes_the_cautious_profile_each_way() -> None:
    counts = [10] * WEEK_H
    counts[5] = 40  # one busy hour: 5 o'clock of day 0
    b = week_baseline(T0, counts)
    w = hour_of_week(T0 + 5 * HOUR_S)
    assert b.low[w] == pytest.approx(10 + 30 / 7)  # the hour-of-day mean, not 40
    assert b.high[w] == 40
    assert b.count == sum(counts) and b.dispersion == 1.0  # one busy hour: not clustered
    rng = random.Random(4)
    clustered = week_baseline(T0, [rng.choice((0, 20)) for _ in range(WEEK_H)])  # 20 at once
    assert clustered.dispersion > 5  # var/mean of 0-or-20: 10
    with pytest.raises(ValueError):
        week_baseline(T0, [1, 2])


def test_trailing_baseline_is_flat_and_dispersion_at_least_one() -> None:
    b = trailing_baseline([30, 30, 30, 30], HOUR_S)
    assert b.low == [30.0] * WEEK_H and b.dispersion == 1.0
    assert trailing_baseline([0, 100, 0, 100], HOUR_S).dispersion > 10


def _weekly(rates: dict[str, float], seed: int = 1, rule: Rule | None = None) -> Detector:
    rng = random.Random(seed)
    d = detector(rule, started=T0 + WEEK_H * HOUR_S)
    d.history(T0, week_of(rates, rng), [{} for _ in range(WEEK_H)], T0 + WEEK_H * HOUR_S)
    assert d.mode == "week"
    return d


def test_steady_category_is_not_flagged() -> None:
    rng = random.Random(2)
    d = _weekly({"koji": 40.0})
    now = T0 + WEEK_H * HOUR_S
    t = now
    for _ in range(6 * 12):  # six hours, judged every 5 minutes
        feed_live(d, "koji", diurnal(int(t), 40.0), t, t + 300, rng)
        t += 300
        report = d.evaluate(t)
        assert report["alerts"] == [], report
    assert d.states[("category", "koji")] == "ok"


def test_stopped_category_is_silent_when_the_rule_says() -> None:
    d = _weekly({"koji": 40.0})
    now = T0 + WEEK_H * HOUR_S + 10 * HOUR_S  # a Monday, 10:00: day rate
    d.seen("category", {"koji": 1}, now)
    b = d.baselines[("category", "koji")]
    # the gap after which exp(-E/D) < 0.001, E integrated over the low profile
    t_star = now
    while expected(b.low, now, t_star) / b.dispersion < -math.log(0.001):
        t_star += 1
    t_star = max(t_star, now + 300)
    assert d.evaluate(t_star - 2)["alerts"] == []
    alerts = d.evaluate(t_star + 1)["alerts"]
    assert [(a["name"], a["state"]) for a in alerts] == [("koji", "silent")]
    assert alerts[0]["p"] < 0.001 and alerts[0]["gap_s"] == pytest.approx(t_star + 1 - now)
    assert alerts[0]["usual_per_h"] == pytest.approx(b.low[hour_of_week(t_star + 1)], abs=1e-3)
    assert d.states[("category", "koji")] == "silent"


def test_rare_category_is_never_flagged() -> None:
    d = _weekly({"koji": 40.0, "fas": 0.2})  # a few a day
    now = T0 + WEEK_H * HOUR_S
    report = d.evaluate(now + 5 * 86400)  # five days without a fas message
    assert ("category", "fas") not in {(a["kind"], a["name"]) for a in report["alerts"]}
    assert d.states[("category", "fas")] == "rare"


def test_burst_is_flagged_and_a_busy_hour_is_not() -> None:
    rng = random.Random(3)
    d = _weekly({"bodhi": 30.0})
    now = T0 + WEEK_H * HOUR_S + 12 * HOUR_S
    t = feed_live(d, "bodhi", 45.0, now - 600, now, rng)  # busier than usual: fine
    assert d.evaluate(max(t, now))["alerts"] == []
    for i in range(300):  # 300 messages in five minutes: ~30x the usual
        d.seen("category", {"bodhi": 1}, now + i)
    report = d.evaluate(now + 300)
    assert [(a["name"], a["state"]) for a in report["alerts"]] == [("bodhi", "bursting")]
    assert report["alerts"][0]["recent"] >= 300 and report["alerts"][0]["p"] < 0.001


def test_diurnal_night_gap_is_not_a_silence_but_a_day_gap_is() -> None:
    d = _weekly({"copr": 12.0}, seed=5)  # ~18/h by day, ~6/h at night (weekdays)
    b = d.baselines[("category", "copr")]
    day = T0 + WEEK_H * HOUR_S + 10 * HOUR_S
    night = T0 + WEEK_H * HOUR_S + 1 * HOUR_S
    gap = 50 * 60
    assert expected(b.low, day, day + gap) > expected(b.low, night, night + gap) * 2
    d.seen("category", {"copr": 1}, night)
    assert d.evaluate(night + gap)["alerts"] == []  # ~5 expected at night: usual enough
    d.seen("category", {"copr": 1}, day)
    alerts = d.evaluate(day + gap)["alerts"]  # ~15 expected by day: silent
    assert [(a["name"], a["state"]) for a in alerts] == [("copr", "silent")]


def test_nothing_is_judged_while_warming_up_or_with_the_bus_down() -> None:
    rule = Rule(warmup_s=600, min_count=5, min_gap_s=0)
    d = detector(rule, started=T0)
    for i in range(300):
        d.seen("category", {"koji": 1}, T0 + i)  # 1/s for 5 minutes
    assert d.evaluate(T0 + 400)["mode"] == "warming_up"
    report = d.evaluate(T0 + 700)  # run 700 s: memory trailing rate 300/700 s
    assert report["mode"] == "trailing_memory"
    assert [a["state"] for a in report["alerts"]] == ["silent"]
    assert d.evaluate(T0 + 700, bus_ok=False) == {
        "mode": "bus_down",
        "time": T0 + 700,
        "judged": 0,
        "window_s": 600,
        "alerts": [],
    }


def test_short_redis_history_gives_a_trailing_baseline() -> None:
    rule = Rule(warmup_s=6 * HOUR_S)
    d = detector(rule, started=T0 + WEEK_H * HOUR_S)
    hours: list[dict[str, int]] = [{} for _ in range(WEEK_H)]
    for i in range(WEEK_H - 10, WEEK_H):  # 10 hours of data; the first may be partial
        hours[i] = {"koji": 40}
    d.history(T0, hours, [{} for _ in range(WEEK_H)], T0 + WEEK_H * HOUR_S)
    assert d.mode == "trailing"
    b = d.baselines[("category", "koji")]
    assert b.low[0] == 40 and b.count == 9 * 40
    hours_short = [{} for _ in range(WEEK_H - 3)] + [{"koji": 40}] * 3
    d.history(T0, hours_short, [{} for _ in range(WEEK_H)], T0 + WEEK_H * HOUR_S)
    assert d.mode == "warming_up" and d.evaluate(T0 + WEEK_H * HOUR_S)["judged"] == 0


def test_busiest_topics_are_judged_too() -> None:
    rng = random.Random(7)
    d = detector(Rule(topics=1), started=T0 + WEEK_H * HOUR_S)
    cats = week_of({"buildsys": 60.0}, rng)
    topics = [
        {
            "org.fedoraproject.prod.buildsys.tag": c["buildsys"] - c["buildsys"] // 4,
            "org.fedoraproject.prod.buildsys.rpm.sign": c["buildsys"] // 4,
        }
        for c in cats
    ]
    now = T0 + WEEK_H * HOUR_S
    d.history(T0, cats, topics, now)
    assert d.topics == {"org.fedoraproject.prod.buildsys.tag"}
    d.seen("topic", {"org.fedoraproject.prod.buildsys.rpm.sign": 3}, now)  # not followed
    assert ("topic", "org.fedoraproject.prod.buildsys.rpm.sign") not in d.seen_
    report = d.evaluate(now + 8 * HOUR_S)
    assert {(a["kind"], a["state"]) for a in report["alerts"]} == {
        ("category", "silent"),
        ("topic", "silent"),
    }
    # the busiest topic changes: the old one is forgotten, the new one starts from
    # its history's last hour, not from a stale time
    swapped = [dict(zip(h.keys(), reversed(list(h.values())), strict=True)) for h in topics]
    d.history(T0 + HOUR_S, cats[1:] + cats[:1], swapped[1:] + swapped[:1], now + HOUR_S)
    assert d.topics == {"org.fedoraproject.prod.buildsys.rpm.sign"}
    assert ("topic", "org.fedoraproject.prod.buildsys.tag") not in d.seen_
    assert d.seen_[("topic", "org.fedoraproject.prod.buildsys.rpm.sign")].last == now + HOUR_S


def test_rule_of_the_settings_and_the_poisson_tail_below_the_mean() -> None:
    rule = rule_of(Config(alert_silence_p=0.01, alert_topics=3, alert_burst_window_s=300))
    assert (rule.p_silent, rule.topics, rule.burst_window_s) == (0.01, 3, 300)
    assert poisson_sf(3, 10.0) == pytest.approx(1 - math.exp(-10) * (1 + 10 + 50))


def test_categories_beyond_the_cap_are_counted_not_followed() -> None:
    d = detector(Rule(topics=0))
    for k in range(MAX_CATEGORIES + 5):
        d.seen("category", {f"c{k}": 1}, T0)
    assert d.ignored == 5 and len(d.seen_) == MAX_CATEGORIES
