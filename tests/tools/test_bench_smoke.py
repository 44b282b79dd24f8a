"""Smoke test of the benchmark harness: it counts right, at a tiny size.

Real processes as in ``make bench`` (a redis-server, ``python -m bench.publisher``,
``python -m listener listen`` and ``python -m bench.naive``); what is asserted is
that every message published reaches Redis with the users and topics the realistic
workload says it has (read back with ``fedmsg-wallboard snapshot --json``), never a
timing.  The report renders from the results.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from bench import filters as fbench
from bench import ingest, report
from bench.procs import Publisher, RedisServer, free_port
from listener.core.envelope import category_of
from listener.tools.examples import builtin_examples
from tests.helpers.common import run_cli

pytestmark = pytest.mark.slow


def snapshot(redis: RedisServer, prefix: str) -> dict[str, Any]:
    res = run_cli(
        "snapshot",
        "--json",
        "--all-users",
        "--window",
        "604800",
        "--redis-url",
        redis.url,
        "--key-prefix",
        prefix,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    snap: dict[str, Any] = json.loads(res.stdout)
    return snap


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("bench")
    redis = RedisServer(tmp / "redis")
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", hwm=0, n_users=300)
    yield redis, pub, tmp
    pub.close()
    redis.stop()


@pytest.mark.parametrize("subject", ["listener", "naive"])
def test_every_message_is_counted_with_its_users(rig: Any, subject: str) -> None:
    redis, pub, tmp = rig
    s = ingest.Session(redis, pub, subject, f"smoke-{subject}", expect_dir=tmp)
    code = None
    try:
        trial = s.trial(200, 1.0, 30.0)
        assert trial.counted == trial.sent == 200 and trial.lag_s is not None
        burst = s.burst(400)
        assert burst["lost"] == 0 and burst["counted"] == 400
        if subject == "listener":
            back = s.backfill(400)
            assert back["counted"] == 400
            drain = s.drain(300)
            assert drain["counted"] == 300 and drain["rate"] > 0
        users, topics = s.expected()
        snap = snapshot(redis, s.prefix)
        assert snap["messages"] == sum(topics.values()) == s.counted()
        assert snap["topics"] == {t: n for t, n in topics.items()}
        assert dict(map(tuple, snap["top_users"])) == dict(users)
    finally:
        code = s.close()
    if subject == "listener":
        assert code == 0  # SIGTERM: a clean shutdown


def test_the_ladder_finds_the_highest_passing_rate() -> None:
    def trial(rate: float) -> ingest.Trial:
        ok = rate <= 3000
        return ingest.Trial(rate, 10, 10 if ok else 5, rate, 0.1 if ok else None, ok)

    best, trials = ingest.find_max_rate(trial, 1000, 1.5, 2, 100_000)
    assert 2250 <= best <= 3000
    assert [t.rate for t in trials][:4] == [1000, 1500, 2200, 3300]
    best, _ = ingest.find_max_rate(trial, 10_000, 1.5, 0, 100_000)  # starts too high
    assert 0 < best <= 3000


def test_report_renders_every_section(tmp_path: Path) -> None:
    results = {
        "command": "python -m bench.run --quick",
        "machine": {
            k: "x"
            for k in (
                "cpu",
                "kernel",
                "python",
                "redis",
                "pyzmq",
                "libzmq",
                "orjson",
                "websockets",
                "commit",
                "date",
            )
        }
        | {"nproc": 2, "ram_gib": 1.0},
        "quick": True,
        "reps": 1,
        "compute": {
            "longtail": [
                {
                    "users": 100,
                    "seed_loop_ms": 1.0,
                    "closed_form_ms": 0.1,
                    "stats_ms": 1.0,
                    "live_stats_ms": 0.2,
                    "snapshot_ms": 2.0,
                    "live_snapshot_ms": 0.5,
                    "rel_diff": 1e-16,
                }
            ],
            "step": [{"users": 10_000, "shape": "all", "step_ms": 9.0, "snapshots_ms": 5.0}],
            "load_before": [1, 1, 1],
            "load_after": [1, 1, 1],
            "seconds": 1,
        },
        "page": {
            "samples": [
                {
                    "t_s": t,
                    "nodes": 1000 + n,
                    "listeners": 40,
                    "heap_bytes": h,
                    "blinks": 10 * t,
                    "ticks": 9 * t,
                    "snapshots": 1,
                }
                for t, n, h in (
                    (0, 0, 4 * 2**20),
                    (100, 20, 6 * 2**20),
                    (150, 30, 7 * 2**20),
                    (200, 10, 6 * 2**20),
                )
            ],
            "rate": 500.0,
            "step_s": 0.1,
            "minutes": 3.3,
        },
    }
    from bench.page import summary

    results["page"]["summary"] = summary(results["page"])
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# old\n\n" + report.STUDY_HEADING + "\n\nkept as it was\n")
    report.write(path, results)
    text = path.read_text()
    for heading in (
        "## Targets (issue 9)",
        "## Ingest, end to end",
        "## Window recompute",
        "## Fan-out and bus → browser latency",
        "## Page memory (a kiosk left up for weeks)",
        report.STUDY_HEADING,
    ):
        assert heading in text
    assert "kept as it was" in text  # the study's section is someone else's
    assert "| 10,000 | all | 9.0 | 5.0 |" in text
    assert "one step of all windows < 10 ms at 10,000 users | 9.0 ms" in text
    # 900, 1,350, 1,800 ticks (past the 720-point history) at 6, 7, 6 MiB: slope 0
    assert "| 200 | 2,000 | 1,800 | 2.5 h of ticks | 1,010 | 40 | 6.00 MiB |" in text
    assert "(900 → 1,800 ticks, 1,000 blinks): JS heap +0.0 KiB per 1,000 ticks" in text
    assert "the samples spread over 1024 KiB), DOM nodes -10, event listeners +0." in text


def test_filters_bench_reads_the_filtered_week(tmp_path: Path) -> None:
    """``bench/filters.py`` at a tiny size: its views' 7 d figures are the week it wrote."""
    redis = RedisServer(tmp_path / "redis")
    try:
        res = asyncio.run(fbench.measure(redis, per_hour=120, n_users=30, repeat=1))
    finally:
        redis.stop()
        redis.client.close()
    rng = random.Random(20)
    topics = sorted({e.body["topic"] for e in builtin_examples()})
    hours = [fbench.hour_counts(rng, topics, 30, 120) for _ in range(6)]
    week = [row for i in range(168) for row in hours[i % 6]]  # the 7 d window's 168 hours
    rows = {r["filter"]: r for r in res["rows"]}
    assert rows["not_category=buildsys"]["messages_7d"] == sum(
        1 for t, _ in week if category_of(t) != "buildsys"
    )
    assert rows["user=u1"]["messages_7d"] == sum(1 for _, users in week if "u1" in users)
    assert rows["topic=org.fedoraproject.prod.bodhi.*"]["messages_7d"] == sum(
        1 for t, _ in week if t.startswith("org.fedoraproject.prod.bodhi.")
    )
    assert "longtail" in rows["user=u1"]["unfiltered"]
    assert rows["not_category=buildsys"]["unfiltered"] == ["last_message_at"]
