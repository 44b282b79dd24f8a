"""The silence and burst rule: is a category (or a busy topic) quiet or bursting
beyond what its usual rate explains?  Pure: counts and times in, verdicts out.

The model (docs/SILENCE.md has the derivation and the measured false-alarm rate):
messages of a subject arrive as a Poisson process of *clusters* (a koji build
sends its messages together) whose rate follows the hour of the week.

* **Usual rate.**  From the hourly buckets of the last 7 days (168 complete hours
  before the current one), per hour of the week ``w``: the count of that hour
  ``c_w`` and the mean of the 7 hours of the same hour of the day ``m_d``.  The
  silence test uses ``low_w = min(c_w, m_d)`` and the burst test ``high_w =
  max(c_w, m_d)``: each test takes the profile that makes it harder to fire.
  While the history is shorter than 7 days, the rate is the *trailing* one: the mean
  of the complete hours Redis holds, once they span ``warmup_s``, else the
  messages seen since the detector started, once it has run ``warmup_s``; before
  that, nothing is judged (``warming_up``).
* **Clusters.**  The dispersion ``D >= 1`` (variance over mean of the hourly counts
  around a day x hour-of-day model in the weekly mode, around their mean in the
  trailing one; estimated from the median Pearson term, so that a storm or an
  outage hour in the history does not inflate it) estimates the messages per
  cluster from above (for a compound Poisson process ``D = E[S^2] / E[S] >= E[S]``):
  the cluster rate is taken as ``rate / D``, conservative for both tests.
* **Silent** when no message came for ``gap >= min_gap_s`` and
  ``P(no cluster in the gap) = exp(-E / D) < p_silent``, ``E`` the usual
  messages expected in the gap (``low`` integrated hour by hour).  With the
  default ``p_silent = 0.001`` that is ``E / D >= 6.91``.
* **Bursting** when the ``k`` messages of the last ``burst_window_s`` are at least
  ``min_burst``, at least ``burst_factor`` times the expected ``mu`` (``high``
  integrated) and ``P(X >= k / D | Poisson(mu / D)) < p_burst`` (the Poisson upper
  tail, summed in log space).
* **Rare** subjects, whose baseline rests on fewer than ``min_count`` messages,
  are never judged; nor is anything while the bus link is down (the integrity
  panel says so) or while warming up.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from listener.core.config import Config

HOUR_S = 3600
#: Hours in the weekly profile.
WEEK_H = 168
#: Subject kinds.
KINDS = ("category", "topic")
#: Verdicts, in the order alerts are listed.
STATES = ("silent", "bursting", "ok", "rare")
#: Degrees of freedom of the weekly dispersion: 168 cells less 7 + 24 - 1 fitted.
DOF_WEEK = WEEK_H - (7 + 24 - 1)
#: Most categories followed (a bus with more is mislabelled: the rest are ignored).
MAX_CATEGORIES = 1000


@dataclass(frozen=True)
class Rule:
    """The rule's parameters (``silence_*`` and ``burst_*`` settings, docs/CONFIG.md).

    Attributes:
        p_silent: a gap less likely than this is a silence (probability).
        p_burst: a count less likely than this is a burst (probability).
        burst_factor: a burst is at least this many times the usual count.
        min_count: messages a baseline must rest on for its subject to be judged.
        min_gap_s: shortest silence, seconds.
        burst_window_s: the window of the burst test, seconds (whole minutes).
        min_burst: fewest messages in that window for a burst.
        warmup_s: history (or run time) needed before anything is judged, seconds.
        topics: the busiest topics judged besides the categories.
    """

    p_silent: float = 0.001
    p_burst: float = 1e-6
    burst_factor: float = 3.0
    min_count: int = 50
    min_gap_s: float = 300.0
    burst_window_s: int = 600
    min_burst: int = 20
    warmup_s: float = 21600.0
    topics: int = 10


@dataclass
class Baseline:
    """One subject's usual rate.

    Attributes:
        low / high: messages per hour, per hour of the week (index
            ``(start // 3600) % 168``), for the silence / burst tests.
        count: messages the baseline rests on.
        dispersion: ``D >= 1``, messages per cluster (from above).
    """

    low: list[float]
    high: list[float]
    count: int
    dispersion: float


def hour_of_week(t: float) -> int:
    """The profile index of UNIX time ``t``: ``(t // 3600) % 168`` (UTC hours)."""
    return int(t // HOUR_S) % WEEK_H


def expected(profile: Sequence[float], a: float, b: float) -> float:
    """Messages expected in ``[a, b]`` under a per-hour-of-week ``profile``
    (messages/h), integrated hour by hour; at most a week is integrated (then
    extended at the same mean rate)."""
    if b <= a:
        return 0.0
    total, t = 0.0, a
    end = min(b, a + WEEK_H * HOUR_S)
    while t < end:
        nxt = min(end, (math.floor(t / HOUR_S) + 1) * HOUR_S)
        total += profile[hour_of_week(t)] * (nxt - t) / HOUR_S
        t = nxt
    if b > end:
        total += sum(profile) / WEEK_H * (b - end) / HOUR_S
    return total


def poisson_sf(k: float, mu: float) -> float:
    """``P(X >= k)`` for ``X ~ Poisson(mu)`` (``k`` rounded up), summed from ``k``
    up in log space (terms fall geometrically once ``i > mu``)."""
    k = math.ceil(k)
    if k <= 0:
        return 1.0
    if mu <= 0:
        return 0.0
    if k <= mu:  # the burst test never asks this; 1 - cdf is exact enough here
        return max(
            0.0, 1.0 - sum(math.exp(-mu + i * math.log(mu) - math.lgamma(i + 1)) for i in range(k))
        )
    total, i = 0.0, k
    while True:
        term = math.exp(-mu + i * math.log(mu) - math.lgamma(i + 1))
        total += term
        if term < total * 1e-12 or i > k + 100_000:
            return min(1.0, total)
        i += 1


#: The median of a chi-square variable with one degree of freedom.
CHI2_1_MEDIAN = 0.45494


def _dispersion(counts: Sequence[float], means: Sequence[float], dof_factor: float) -> float:
    """The dispersion ``D >= 1``: the median of the cells' Pearson terms
    ``(c - m)^2 / m`` over the median of a chi-square(1) (so that an hour of storm
    or of outage in the history does not inflate it, as the mean would), times
    ``cells / dof``."""
    terms = sorted((c - m) ** 2 / m for c, m in zip(counts, means, strict=True) if m > 0)
    if not terms:
        return 1.0
    n = len(terms)
    median = terms[n // 2] if n % 2 else (terms[n // 2 - 1] + terms[n // 2]) / 2
    return max(1.0, median / CHI2_1_MEDIAN * dof_factor)


def week_baseline(first_hour: int, counts: Sequence[int]) -> Baseline:
    """The weekly baseline from 168 hourly counts, the first hour starting at
    ``first_hour`` (UNIX s, a multiple of 3600).

    Raises:
        ValueError: not 168 counts.
    """
    if len(counts) != WEEK_H:
        raise ValueError(f"a week is {WEEK_H} hourly counts, got {len(counts)}")
    by_day: dict[int, list[int]] = {}
    for i, c in enumerate(counts):
        by_day.setdefault((first_hour // HOUR_S + i) % 24, []).append(c)
    day_mean = {d: sum(v) / len(v) for d, v in by_day.items()}
    low = [0.0] * WEEK_H
    high = [0.0] * WEEK_H
    for i, c in enumerate(counts):
        m = day_mean[(first_hour // HOUR_S + i) % 24]
        w = (first_hour // HOUR_S + i) % WEEK_H
        low[w], high[w] = min(c, m), max(c, m)
    # dispersion around a day x hour-of-day model (7 x 24 table, expected
    # row total x column total / total: a quiet weekend is not clustering)
    total = sum(counts)
    rows = [sum(counts[k * 24 : k * 24 + 24]) for k in range(7)]
    cols = [sum(counts[d::24]) for d in range(24)]
    means = [rows[i // 24] * cols[i % 24] / total if total else 0.0 for i in range(WEEK_H)]
    return Baseline(low, high, total, _dispersion(counts, means, WEEK_H / DOF_WEEK))


def trailing_baseline(counts: Sequence[float], period_s: float) -> Baseline:
    """A flat baseline from counts of equal periods of ``period_s`` seconds (the
    complete hours Redis holds, or the minutes seen since start): their mean rate,
    their dispersion (sample variance over mean)."""
    n = len(counts)
    total = sum(counts)
    rate_h = total / (n * period_s) * HOUR_S if n else 0.0
    mean = total / n if n else 0.0
    disp = 1.0
    if n > 1 and mean > 0:
        disp = _dispersion(counts, [mean] * n, n / (n - 1))
    return Baseline([rate_h] * WEEK_H, [rate_h] * WEEK_H, int(total), disp)


@dataclass
class _Seen:
    last: float | None = None
    since_start: int = 0
    minutes: Counter[int] = field(default_factory=Counter)  # minute start -> messages


class Detector:
    """Follows every category (and the busiest topics) and judges them.

    The shell feeds it: :meth:`seen` with each flush's new counts, :meth:`history`
    with the hourly counts of the last week (once an hour), and asks
    :meth:`evaluate` every step.

    Args:
        rule: the parameters.
        started: when the detector started observing, UNIX s.

    Attributes:
        mode: ``"week"``, ``"trailing"`` (Redis hours), ``"trailing_memory"``
            (since start), ``"warming_up"``; :meth:`evaluate` may report
            ``"bus_down"`` instead.
        states: the latest verdict of every judged subject, ``{(kind, name): state}``.
        ignored: categories not followed (beyond :data:`MAX_CATEGORIES`).
    """

    def __init__(self, rule: Rule, started: float) -> None:
        self.rule = rule
        self.started = started
        self.seen_: dict[tuple[str, str], _Seen] = {}
        self.baselines: dict[tuple[str, str], Baseline] = {}
        self.topics: set[str] = set()
        self.mode = "warming_up"
        self.states: dict[tuple[str, str], str] = {}
        self.ignored = 0

    # -- input --------------------------------------------------------------

    def seen(self, kind: str, counts: Mapping[str, int], at: float) -> None:
        """Messages of subjects of ``kind`` counted as new, arrived at ``at`` (UNIX s;
        the shell gives ``min(now, end of their bucket)``).  Topics are followed only
        when among the busiest (:meth:`history` chooses them)."""
        minute = int(at // 60) * 60
        for name, n in counts.items():
            if n <= 0:
                continue
            if kind == "topic" and name not in self.topics:
                continue
            key = (kind, name)
            s = self.seen_.get(key)
            if s is None:
                if kind == "category" and len(self.seen_) >= MAX_CATEGORIES + self.rule.topics:
                    self.ignored += 1
                    continue
                s = self.seen_[key] = _Seen()
            if s.last is None or at > s.last:
                s.last = at
            if at >= self.started:
                s.since_start += n
            s.minutes[minute] += n

    def history(
        self,
        first_hour: int,
        categories: Sequence[Mapping[str, int]],
        topics: Sequence[Mapping[str, int]],
        now: float,
    ) -> None:
        """The hourly counts of the complete hours before the current one, oldest
        first, the first starting at ``first_hour``; the current (partial) hour may be
        given last, for the last-seen times only.

        The complete hours are all of them when the oldest holds messages (the
        history covers them), else those after the first hour that holds any (it may
        be partial).  168 complete hours: weekly baselines; fewer that span
        ``warmup_s``: trailing ones; else the detector falls back to what it saw
        since it started.
        """
        n = min(len(categories), WEEK_H)
        totals = [sum(categories[i].values()) for i in range(n)]
        first_data = next((i for i, t in enumerate(totals) if t > 0), None)
        if first_data is None:
            complete = range(0)
        elif first_data == 0:
            complete = range(0, n)
        else:
            complete = range(first_data + 1, n)
        # last seen, for subjects not seen live: the end of the newest hour holding
        # them (the latest their last message can have been; never later than now)
        hist_last: dict[tuple[str, str], float] = {}
        for kind, hours in (("category", categories), ("topic", topics)):
            for i, counts in enumerate(hours):
                end = min(now, first_hour + (i + 1) * HOUR_S)
                for name, c in counts.items():
                    if c > 0:
                        hist_last[(kind, name)] = end
        self.baselines = {}
        if len(complete) == WEEK_H:
            self.mode = "week"
        elif len(complete) * HOUR_S >= self.rule.warmup_s:
            self.mode = "trailing"
        else:
            self.mode = "warming_up"
            return
        topic_totals: Counter[str] = Counter()
        for i in complete:
            if i < len(topics):
                topic_totals.update(topics[i])
        before = self.topics
        self.topics = {t for t, _ in topic_totals.most_common(self.rule.topics)}
        for t in before - self.topics:  # no longer followed: forgotten
            self.seen_.pop(("topic", t), None)
        for t in self.topics - before:  # not followed until now: its live times are stale
            s = self.seen_.setdefault(("topic", t), _Seen())
            s.last, s.minutes = hist_last.get(("topic", t), now), Counter()
        for kind, hours, names in (
            ("category", categories, _names(categories[i] for i in complete)),
            ("topic", topics, sorted(self.topics)),
        ):
            for name in names[:MAX_CATEGORIES]:
                series = [hours[i].get(name, 0) if i < len(hours) else 0 for i in complete]
                if self.mode == "week":
                    b = week_baseline(first_hour + complete[0] * HOUR_S, series)
                else:
                    b = trailing_baseline(series, HOUR_S)
                self.baselines[(kind, name)] = b
                s = self.seen_.setdefault((kind, name), _Seen())
                if s.last is None:
                    s.last = hist_last.get((kind, name), now)

    # -- verdicts -------------------------------------------------------------

    def _memory_baselines(self, now: float) -> dict[tuple[str, str], Baseline]:
        """Trailing baselines from the minutes seen since start (categories only:
        which topics are the busiest needs the Redis history)."""
        first = int(max(self.started, now - HOUR_S) // 60) * 60 + 60
        last = int(now // 60) * 60  # the current minute is partial
        span = now - self.started
        out = {}
        for (kind, name), s in self.seen_.items():
            if kind != "category":
                continue
            # up to the minute of its last message: the gap is what the test judges
            upto = last if s.last is None else min(last, int(s.last // 60) * 60)
            minutes = [float(s.minutes.get(m, 0)) for m in range(first, upto, 60)]
            b = trailing_baseline(minutes, 60) if minutes else None
            rate_h = s.since_start / span * HOUR_S
            out[(kind, name)] = Baseline(
                [rate_h] * WEEK_H,
                [rate_h] * WEEK_H,
                s.since_start,
                b.dispersion if b else 1.0,
            )
        return out

    def evaluate(self, now: float, bus_ok: bool = True) -> dict[str, Any]:
        """Judge every subject at ``now``.

        Args:
            bus_ok: False while no bus link is up: silences are not judged then.

        Returns:
            ``{"mode", "time", "judged" (subjects judged), "window_s" (the burst
            test's window, s), "alerts": [{"kind",
            "name", "state" ("silent" | "bursting"), "last_seen" (UNIX s or None),
            "gap_s", "usual_per_h" (the rate the test used, messages/h, this hour),
            "expected" (usual messages in the gap or the burst window), "p" (the
            test's probability), "recent" (messages in the burst window),
            "dispersion"}, ...]}``, silences first, each group least likely first.
            :attr:`states` holds every judged subject's verdict.
        """
        r = self.rule
        self._forget_minutes(now)
        baselines = self.baselines
        mode = self.mode
        if mode == "warming_up" and now - self.started >= r.warmup_s:
            mode = "trailing_memory"
            baselines = self._memory_baselines(now)
        if mode != "warming_up" and not bus_ok:
            mode = "bus_down"
        alerts: list[dict[str, Any]] = []
        states: dict[tuple[str, str], str] = {}
        if mode in ("warming_up", "bus_down"):
            self.states = states
            return {
                "mode": mode,
                "time": now,
                "judged": 0,
                "window_s": r.burst_window_s,
                "alerts": alerts,
            }
        threshold = -math.log(r.p_silent)
        # the burst window: the whole minutes overlapping the last burst_window_s
        win_start = math.floor((now - r.burst_window_s) / 60) * 60
        for key, b in baselines.items():
            if b.count < r.min_count:
                states[key] = "rare"
                continue
            s = self.seen_.get(key) or _Seen()
            state = "ok"
            row: dict[str, Any] = {}
            last = s.last if s.last is not None else self.started
            gap = max(0.0, now - last)
            e = expected(b.low, last, now)
            if gap >= r.min_gap_s and e / b.dispersion >= threshold:
                state = "silent"
                row = {
                    "usual_per_h": b.low[hour_of_week(now)],
                    "expected": e,
                    "p": math.exp(-e / b.dispersion),
                }
            else:
                k = sum(n for m, n in s.minutes.items() if m >= win_start)
                mu = expected(b.high, win_start, now)
                if k >= r.min_burst and k >= r.burst_factor * mu:
                    p = poisson_sf(k / b.dispersion, mu / b.dispersion)
                    if p < r.p_burst:
                        state = "bursting"
                        row = {"usual_per_h": b.high[hour_of_week(now)], "expected": mu, "p": p}
            states[key] = state
            if state != "ok":
                recent = sum(n for m, n in s.minutes.items() if m >= win_start)
                alerts.append(
                    {
                        "kind": key[0],
                        "name": key[1],
                        "state": state,
                        "last_seen": s.last,
                        "gap_s": round(gap, 3),
                        "recent": recent,
                        "dispersion": round(b.dispersion, 3),
                        **{f: round(v, 6) if f == "p" else round(v, 3) for f, v in row.items()},
                    }
                )
        alerts.sort(key=lambda a: (STATES.index(a["state"]), a["p"], a["kind"], a["name"]))
        self.states = states
        judged = sum(1 for v in states.values() if v != "rare")
        return {
            "mode": mode,
            "time": now,
            "judged": judged,
            "window_s": r.burst_window_s,
            "alerts": alerts,
        }

    def _forget_minutes(self, now: float) -> None:
        """Drop per-minute counts older than an hour (the burst window and the
        memory baseline's dispersion read at most that far)."""
        keep_from = int((now - max(HOUR_S, self.rule.burst_window_s)) // 60) * 60
        for s in self.seen_.values():
            if s.minutes and min(s.minutes) < keep_from:
                for m in [m for m in s.minutes if m < keep_from]:
                    del s.minutes[m]


def _names(hours: Iterable[Mapping[str, int]]) -> list[str]:
    """The names found in hourly counts, the busiest first (ties by name)."""
    total: Counter[str] = Counter()
    for h in hours:
        total.update(h)
    return [n for n, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))]


def rule_of(cfg: Config) -> Rule:
    """The rule of the ``alert_*`` settings."""
    return Rule(
        p_silent=cfg.alert_silence_p,
        p_burst=cfg.alert_burst_p,
        burst_factor=cfg.alert_burst_factor,
        min_count=cfg.alert_min_count,
        min_gap_s=cfg.alert_min_gap_s,
        burst_window_s=cfg.alert_burst_window_s,
        min_burst=cfg.alert_burst_min,
        warmup_s=cfg.alert_warmup_s,
        topics=cfg.alert_topics,
    )
