"""Ingest end to end: publisher -> ZeroMQ -> listener (or the naive loop) -> Redis.  I/O.

Everything is a real process: a redis-server on a free port, ``python -m
bench.publisher`` (the realistic mix, :mod:`bench.workload`), and the subject:
``python -m listener listen --redis-url ... --endpoint ... --key-prefix ...``
exactly as in production, or ``python -m bench.naive``.  A message counts as
delivered when Redis says so (``{prefix}:meta messages_total``, which the
listener's flush script and the naive loop both increment once per message).

Measures, per repetition:

* **sustained rate**: the highest publish rate (msgs/s, paced, ``duration_s``
  long) at which every message is counted and the last one is counted within
  ``settle_s`` of its send (the subject keeps up; it does not just buffer).  Rates
  go up by ``factor`` (listener: from half its drain rate) until one fails, then
  are bisected ``refine`` times.
* **burst**: ``burst`` messages at the publisher's full speed (a mass rebuild);
  messages lost and the time until all are counted.
* **hwm burst**: ``hwm_burst`` messages at ``hwm_burst_rate`` from a publisher at
  libzmq's default send high-water mark (1,000, what fedmsg's ``high_water_mark =
  0`` leaves): a subscriber that falls behind makes the publisher drop.
* **drain** (listener only): the listener is stopped (SIGSTOP), ``drain``
  messages are queued, it is resumed (SIGCONT); messages / seconds until all are
  counted = its own ceiling, publisher idle; and its CPU time per message.
  ``drains`` times per repetition (a drain lasts ~2-3 s, so one slow moment of a
  shared host moves one sample a lot): the repetition's figure is the median one.
* **backfill** (listener only): ``backfill`` messages with timestamps spread over
  the last 7 days, every one of ``n_users`` users at least once, at full speed:
  fills the 7 d window with 10,000 active users before the rest is measured.
* **RSS**: the listener's resident memory 3 s after the backfill, and its peak
  (``VmHWM``) at the end, MiB.

Everywhere else the publisher's send high-water mark is 0 (unlimited): a Python
publisher at full speed outruns its own libzmq I/O thread and would drop at the
source with 1,000 (measured: ~25 % of 100,000 with a SUB that only receives), so
any loss seen is the subject's.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import (
    OUT,
    BenchError,
    Publisher,
    RedisServer,
    cpu_seconds,
    free_port,
    proc_status,
    spawn,
    stop_process,
)

#: Span of the 7 d backfill, seconds: a week minus 2 h, so every message is inside the
#: 7 d window (read bucket by bucket: its oldest hour may start up to 1 h late).
WEEK_S = 7 * 86400 - 2 * 3600


@dataclass
class Trial:
    """One paced run.

    Attributes:
        rate: target msgs/s; pub_rate: what the publisher achieved, msgs/s.
        sent / counted: messages published / counted in Redis.
        lag_s: seconds from the last send until all were counted (None: never).
        ok: no loss, ``lag_s <= settle_s`` and the publisher reached the rate.
    """

    rate: float
    sent: int
    counted: int
    pub_rate: float
    lag_s: float | None
    ok: bool


@dataclass
class Profile:
    """Sizes of one ingest benchmark (``quick`` for the smoke test)."""

    reps: int = 3
    duration_s: float = 5.0
    settle_s: float = 1.0
    listener_start: float = 1_000
    naive_start: float = 500
    factor: float = 1.25
    naive_factor: float = 1.5
    refine: int = 1
    max_rate: float = 200_000
    burst: int = 100_000
    hwm_burst: int = 12_000
    hwm_burst_rate: float = 10_000
    drain: int = 100_000
    drains: int = 3
    backfill: int = 100_000
    n_users: int = 10_000
    listener_dir: str | None = None


QUICK = Profile(
    reps=1,
    duration_s=1.0,
    listener_start=1_000,
    naive_start=300,
    refine=0,
    max_rate=2_000,
    burst=3_000,
    hwm_burst=2_000,
    hwm_burst_rate=2_000,
    drain=3_000,
    drains=1,
    backfill=3_000,
    n_users=500,
)


@dataclass
class Rep:
    """Results of one repetition for one subject (listener or naive)."""

    subject: str
    trials: list[Trial] = field(default_factory=list)
    sustained: float = 0.0
    burst: dict[str, Any] = field(default_factory=dict)
    hwm_burst: dict[str, Any] = field(default_factory=dict)
    #: the median (by rate) of ``drains``
    drain: dict[str, Any] = field(default_factory=dict)
    drains: list[dict[str, Any]] = field(default_factory=list)
    backfill: dict[str, Any] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)


def wait_counted(
    redis: RedisServer, prefix: str, target: int, stable_s: float = 5.0, cap_s: float = 180.0
) -> tuple[int, float | None]:
    """Poll Redis until ``target`` messages are counted, or the count stops moving.

    Returns:
        ``(counted, completed_at)``: ``completed_at`` is the UNIX time the target
        was first seen, None when it never was (loss).
    """
    start = time.time()
    last, last_change = -1, start
    while True:
        now = time.time()
        got = redis.counted(prefix)
        if got >= target:
            return got, now
        if got != last:
            last, last_change = got, now
        if now - last_change > stable_s or now - start > cap_s:
            return got, None
        time.sleep(0.02)


class Session:
    """One subject process with its publisher and key prefix.

    Args:
        redis: the server; pub: the publisher (already bound).
        subject: ``"listener"`` or ``"naive"``.
    """

    def __init__(
        self,
        redis: RedisServer,
        pub: Publisher,
        subject: str,
        tag: str,
        listener_dir: str | None = None,
        expect_dir: Path | None = None,
    ) -> None:
        self.redis = redis
        self.pub = pub
        self.subject = subject
        #: when set, every batch's expected counts are kept there (:meth:`expected`)
        self.expect_dir = expect_dir
        self.prefix = f"bench{uuid.uuid4().hex[:8]}"
        self.runs = 0
        #: seconds without progress that mean loss (the listener may spend seconds
        #: in one flush of a backlog; the naive loop counts message by message)
        self.stall_s = 15.0 if subject == "listener" else 5.0
        if subject == "listener":
            args = [
                "-m",
                "listener",
                "listen",
                "--redis-url",
                redis.url,
                "--endpoint",
                pub.endpoint,
                "--key-prefix",
                self.prefix,
            ]
        else:
            args = [
                "-m",
                "bench.naive",
                "--redis-url",
                redis.url,
                "--endpoint",
                pub.endpoint,
                "--key-prefix",
                self.prefix,
            ]
        self.proc = spawn(args, f"{subject}-{tag}.log", cwd=listener_dir)
        got = pub.cmd(cmd="wait_sub", timeout_s=90, wait_s=100)
        if not got["got"]:
            stop_process(self.proc)
            raise BenchError(f"{subject} never subscribed; see bench/out/{subject}-{tag}.log")
        # warm-up: messages must flow end to end before anything is timed
        deadline = time.monotonic() + 60
        while True:
            base, _ = self._batch(20)
            self.pub.cmd(cmd="go", rate=0)
            got, _ = wait_counted(redis, self.prefix, base + 20, stable_s=1.0, cap_s=10)
            if got > base:
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                stop_process(self.proc)
                raise BenchError(f"nothing reaches Redis through {subject} ({tag})")
        wait_counted(redis, self.prefix, base + 20, stable_s=1.0, cap_s=10)

    def counted(self) -> int:
        """Messages counted so far in this session's namespace."""
        return self.redis.counted(self.prefix)

    def idle(self, quiet_s: float = 1.0, cap_s: float = 120.0) -> int:
        """Wait until the count has not moved for ``quiet_s`` (a previous run's
        backlog is in); returns the count."""
        start = time.monotonic()
        last, since = self.counted(), time.monotonic()
        while time.monotonic() - since < quiet_s and time.monotonic() - start < cap_s:
            time.sleep(0.05)
            now = self.counted()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def _batch(self, count: int, rate: float = 0.0, **kw: Any) -> tuple[int, dict[str, Any]]:
        base = self.idle()
        self.runs += 1
        if self.expect_dir is not None:
            kw["expect_path"] = str(self.expect_dir / f"{self.prefix}-{self.runs}.json")
        self.pub.cmd(
            cmd="prepare", count=count, rate=rate, run_id=f"{self.prefix}-{self.runs}", **kw
        )
        return base, kw

    def expected(self) -> tuple[Counter[str], Counter[str]]:
        """``(users, topics)``: messages per user and per topic of every batch sent so
        far (needs ``expect_dir``)."""
        users: Counter[str] = Counter()
        topics: Counter[str] = Counter()
        assert self.expect_dir is not None
        for path in sorted(self.expect_dir.glob(f"{self.prefix}-*.json")):
            data = json.loads(path.read_text())
            users.update(data["users"])
            topics.update(data["topics"])
        return users, topics

    def trial(self, rate: float, duration_s: float, settle_s: float) -> Trial:
        """Publish at ``rate`` for ``duration_s``; see :class:`Trial`."""
        count = max(1, int(rate * duration_s))
        base, _ = self._batch(count, rate)
        sent = self.pub.cmd(cmd="go", rate=rate, wait_s=duration_s * 4 + 60)
        # a flush of a backlog may hold the count still for seconds: loss only
        # when nothing moves for 15 s
        got, done_at = wait_counted(self.redis, self.prefix, base + count, stable_s=self.stall_s)
        pub_rate = count / max(1e-6, sent["end"] - sent["start"]) if count > 1 else rate
        lag = None if done_at is None else max(0.0, done_at - sent["end"])
        ok = lag is not None and lag <= settle_s and pub_rate >= 0.97 * rate
        return Trial(rate, count, got - base, round(pub_rate), lag, ok)

    def burst(self, count: int) -> dict[str, Any]:
        """``count`` messages at full speed: lost, seconds to count them all, msgs/s."""
        base, _ = self._batch(count)
        sent = self.pub.cmd(cmd="go", rate=0, wait_s=120)
        got, done_at = wait_counted(self.redis, self.prefix, base + count, stable_s=self.stall_s)
        n = got - base
        return {
            "sent": count,
            "counted": n,
            "lost": count - n,
            "publish_rate": round(count / max(1e-6, sent["end"] - sent["start"])),
            "seconds": None if done_at is None else round(done_at - sent["start"], 3),
            "rate": None if done_at is None else round(count / (done_at - sent["start"])),
        }

    def drain(self, count: int) -> dict[str, Any]:
        """Queue ``count`` messages while the subject is stopped, then time the drain."""
        base, _ = self._batch(count)
        cpu0 = cpu_seconds(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            self.pub.cmd(cmd="go", rate=0, wait_s=120)
            time.sleep(0.5)
        finally:
            t0 = time.time()
            os.kill(self.proc.pid, signal.SIGCONT)
        got, done_at = wait_counted(self.redis, self.prefix, base + count, stable_s=self.stall_s)
        cpu = cpu_seconds(self.proc.pid) - cpu0
        n = got - base
        return {
            "queued": count,
            "counted": n,
            "seconds": None if done_at is None else round(done_at - t0, 3),
            "rate": None if done_at is None else round(count / (done_at - t0)),
            "cpu_us_per_msg": round(cpu / max(1, n) * 1e6, 1),
        }

    def hwm_burst(self, count: int, rate: float, hwm: int = 1000) -> dict[str, Any]:
        """``count`` messages at ``rate`` from a publisher with send high-water mark
        ``hwm`` (libzmq's default, as fedmsg leaves it): what a slow subscriber loses."""
        self._rebind(hwm)
        try:
            base, _ = self._batch(count, rate)
            sent = self.pub.cmd(cmd="go", rate=rate, wait_s=120)
            got, _ = wait_counted(self.redis, self.prefix, base + count, stable_s=self.stall_s)
        finally:
            self._rebind(0)
        n = got - base
        return {
            "sent": count,
            "publisher_hwm": hwm,
            "publish_rate": round(count / max(1e-6, sent["end"] - sent["start"])),
            "counted": n,
            "lost": count - n,
            "lost_pct": round(100.0 * (count - n) / count, 1),
        }

    def _rebind(self, hwm: int) -> None:
        self.pub.cmd(cmd="rebind", hwm=hwm)
        self.pub.cmd(cmd="wait_sub", timeout_s=30, wait_s=40)
        time.sleep(0.3)

    def backfill(self, count: int) -> dict[str, Any]:
        """``count`` messages spread over the last 7 days, every user at least once."""
        base, _ = self._batch(count, spread_s=WEEK_S, cover_users=True)
        sent = self.pub.cmd(cmd="go", rate=0, wait_s=120)
        got, done_at = wait_counted(self.redis, self.prefix, base + count, stable_s=self.stall_s)
        return {
            "sent": count,
            "counted": got - base,
            "seconds": None if done_at is None else round(done_at - sent["start"], 3),
            "rate": None if done_at is None else round(count / (done_at - sent["start"])),
        }

    def close(self) -> int | None:
        """Stop the subject (SIGTERM) and return its exit code."""
        return stop_process(self.proc, 20)


def find_max_rate(
    trial: Any, start: float, factor: float, refine: int, max_rate: float
) -> tuple[float, list[Trial]]:
    """Raise the rate by ``factor`` until a trial fails, then bisect ``refine`` times.

    Returns:
        ``(highest rate that passed (0 if none), every trial in order)``.
    """
    trials: list[Trial] = []
    lo, hi = 0.0, None
    rate = start
    while rate <= max_rate:
        t = trial(rate)
        trials.append(t)
        if t.ok:
            lo = rate
            rate = round(rate * factor, -2)
        else:
            hi = rate
            break
    if lo == 0.0 and hi is not None:  # the start already failed: come down
        rate = hi
        while rate > 50 and lo == 0.0:
            rate = round(rate / factor, -1)
            t = trial(rate)
            trials.append(t)
            if t.ok:
                lo = rate
            else:
                hi = rate
    for _ in range(refine):
        if hi is None or lo == 0.0:
            break
        mid = round(math.sqrt(lo * hi), -2)
        if mid <= lo or mid >= hi:
            break
        t = trial(mid)
        trials.append(t)
        if t.ok:
            lo = mid
        else:
            hi = mid
    return lo, trials


def listener_rep(redis: RedisServer, pub: Publisher, prof: Profile, tag: str) -> Rep:
    """One repetition against the real listener."""
    rep = Rep("listener")
    s = Session(redis, pub, "listener", tag, prof.listener_dir)
    try:
        rep.backfill = s.backfill(prof.backfill)
        time.sleep(3.0)  # a flush or two later: the backlog's memory is handed back
        st = proc_status(s.proc.pid)
        rep.rss_mib["after_backfill"] = round(st["VmRSS"] / 1024, 1)
        rep.drains = [s.drain(prof.drain) for _ in range(max(1, prof.drains))]
        ranked = sorted(rep.drains, key=lambda d: d.get("rate") or 0)
        rep.drain = ranked[(len(ranked) - 1) // 2]
        # the paced ladder starts at half the listener's own ceiling just measured
        start = max(prof.listener_start, round(0.5 * (rep.drain.get("rate") or 0), -2))
        start = min(start, prof.max_rate)
        rep.sustained, rep.trials = find_max_rate(
            lambda r: s.trial(r, prof.duration_s, prof.settle_s),
            start,
            prof.factor,
            prof.refine,
            prof.max_rate,
        )
        rep.burst = s.burst(prof.burst)
        rep.hwm_burst = s.hwm_burst(prof.hwm_burst, prof.hwm_burst_rate)
        st = proc_status(s.proc.pid)
        rep.rss_mib["peak"] = round(st["VmHWM"] / 1024, 1)
        rep.rss_mib["end"] = round(st["VmRSS"] / 1024, 1)
        rep.load = os.getloadavg()
    finally:
        rep.exit_code = s.close()
    return rep


def naive_rep(redis: RedisServer, pub: Publisher, prof: Profile, tag: str) -> Rep:
    """One repetition against the naive loop."""
    rep = Rep("naive")
    s = Session(redis, pub, "naive", tag)
    try:
        rep.sustained, rep.trials = find_max_rate(
            lambda r: s.trial(r, prof.duration_s, prof.settle_s),
            prof.naive_start,
            prof.naive_factor,
            prof.refine,
            prof.max_rate,
        )
        rep.hwm_burst = s.hwm_burst(prof.hwm_burst, prof.hwm_burst_rate)
        rep.load = os.getloadavg()
    finally:
        rep.exit_code = s.close()
    return rep


def run(prof: Profile | None = None, log: Any = print) -> dict[str, Any]:
    """Run every repetition (listener and naive interleaved); returns the raw results.

    Returns:
        ``{"profile": {...}, "templates": n, "listener": [Rep...], "naive": [Rep...]}``
        (as dicts).

    Raises:
        BenchError: a process died or never subscribed.
    """
    prof = prof or Profile()
    redis = RedisServer(OUT / "redis-ingest")
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", hwm=0, n_users=prof.n_users)
    out: dict[str, Any] = {
        "profile": asdict(prof),
        "templates": pub.info.get("templates"),
        "templates_dropped": pub.info.get("dropped"),
        "listener": [],
        "naive": [],
    }
    try:
        for k in range(prof.reps):
            redis.client.flushall()
            lrep = listener_rep(redis, pub, prof, str(k))
            log(
                f"  listener rep {k + 1}: sustained {lrep.sustained:.0f}/s, "
                f"drain {lrep.drain.get('rate')}/s, burst lost {lrep.burst.get('lost')}, "
                f"hwm burst lost {lrep.hwm_burst.get('lost')}, "
                f"peak RSS {lrep.rss_mib.get('peak')} MiB, load {lrep.load[0]:.2f}"
            )
            out["listener"].append(asdict(lrep))
            redis.client.flushall()
            nrep = naive_rep(redis, pub, prof, str(k))
            log(
                f"  naive rep {k + 1}: sustained {nrep.sustained:.0f}/s, "
                f"hwm burst lost {nrep.hwm_burst.get('lost')} of {prof.hwm_burst}, "
                f"load {nrep.load[0]:.2f}"
            )
            out["naive"].append(asdict(nrep))
    finally:
        pub.close()
        redis.stop()
    return out
