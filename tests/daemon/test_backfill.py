"""Backfill: datagrepper (a real local HTTP server with real messages) into a real
Redis through the real consumer and its flush script."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from listener.core.config import Config
from listener.core.intake import Intake
from listener.daemon.backfill import (
    LOCK_NAME,
    BackfillRefused,
    backfill_after_gap,
    backfill_gap,
)
from listener.daemon.consumer import Consumer
from listener.inputs.datagrepper import DatagrepperClient, DatagrepperUnavailable
from listener.storage.store import Store
from tests.helpers.common import free_port, run_cli
from tests.helpers.datagrepper import FakeDatagrepper, max_per_second, spread

HOUR = 3600


def make_consumer(
    redis_url: str,
    extractor: Any,
    prefix: str,
    validator: Callable[[Any], str | None] | None = None,
    windows_s: tuple[int, ...] = (HOUR, 86400),
    dedupe_s: int | None = None,
) -> Consumer:
    cfg = Config(redis_url=redis_url, key_prefix=prefix, windows_s=windows_s)
    store = Store.from_url(
        redis_url,
        prefix=prefix,
        buckets_s=cfg.buckets_s,
        windows_s=cfg.windows_s,
        dedupe_s=dedupe_s,
    )
    return Consumer(cfg, Intake(cfg, extractor, time.time, validator), store)


#: requests a second of :func:`fast_client`: the tests check the server never saw more
RATE = 8.0


def fast_client(url: str, **kw: Any) -> DatagrepperClient:
    kw.setdefault("rate", RATE)
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 2.0)
    return DatagrepperClient(url, progress=False, **kw)


@pytest.fixture
def prefix() -> str:
    return f"bf{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def now() -> float:
    return time.time()


@pytest.fixture(scope="module")
def gap_msgs(examples: list[Any], extractor: Any, now: float) -> list[dict[str, Any]]:
    """Real messages over the last 3 h, as datagrepper serves them today: float
    timestamps and ``users`` on every other message (the rest need fedmsg.meta)."""
    msgs = json.loads(
        json.dumps(spread([ex.body for ex in examples], now - 3 * HOUR, now - 60, seed=11))
    )
    for i, m in enumerate(msgs):
        if i % 2:
            m["users"] = sorted(extractor.usernames(m))
    return msgs


def expected_users(msgs: list[dict[str, Any]], extractor: Any) -> Counter[str]:
    c: Counter[str] = Counter()
    for m in msgs:
        c.update(m["users"] if "users" in m else extractor.usernames(m))
    return c


async def test_backfill_fills_the_counters_once(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float
) -> None:
    consumer = make_consumer(redis_url, extractor, prefix)
    await consumer.warm_up()
    with FakeDatagrepper(gap_msgs) as srv:
        res = await backfill_gap(
            consumer, srv.url, 4 * HOUR, now, client=fast_client(srv.url), batch_size=100
        )
        again = await backfill_gap(consumer, srv.url, 4 * HOUR, now, client=fast_client(srv.url))
    assert res.status == "done"
    assert res.fetched == res.accepted == res.counted == len(gap_msgs)
    window = await consumer.store.read_window(86400, now)
    assert window.messages == len(gap_msgs)
    assert window.users == expected_users(gap_msgs, extractor)
    # the live window totals saw the backfill too (no restart needed)
    assert consumer.windows[86400].totals.messages == len(gap_msgs)
    # nothing twice: the second run was all duplicates
    assert again.fetched == len(gap_msgs) and again.counted == 0
    assert (await consumer.store.read_window(86400, now)).messages == len(gap_msgs)
    # no blinking: nothing for the page's ticker
    assert consumer.intake.take_blink() is None
    assert await consumer.store.recent() == []
    assert await consumer.store.r.exists(consumer.store.key(LOCK_NAME)) == 0
    await consumer.store.close()


async def test_entries_that_are_not_messages_are_counted_as_skipped(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float
) -> None:
    """``5``, ``null`` and an object without a timestamp in datagrepper's pages are
    skipped and counted (``skipped``), never silently dropped; the messages count."""
    consumer = make_consumer(redis_url, extractor, prefix)
    await consumer.warm_up()
    with FakeDatagrepper(gap_msgs) as srv:
        srv.junk = [5, None, {"msg": "a string", "msg_id": "no-ts"}]
        res = await backfill_gap(
            consumer, srv.url, 4 * HOUR, now, client=fast_client(srv.url), batch_size=100
        )
    assert res.status == "done"
    assert res.fetched == res.accepted == res.counted == len(gap_msgs)
    assert res.skipped >= 3 and res.skipped % 3 == 0  # 3 per page 1 asked for
    assert (await consumer.store.read_window(86400, now)).messages == len(gap_msgs)
    await consumer.store.close()


async def test_deduplicated_against_live_messages(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float
) -> None:
    live = make_consumer(redis_url, extractor, prefix)
    await live.warm_up()
    half = len(gap_msgs) // 2
    for m in gap_msgs[half - 50 :]:  # the listener saw the last part (and 50 more)
        live.intake.handle_body(m)
    assert await live.flush() == len(gap_msgs) - half + 50
    # a separate backfill process: its consumer remembers nothing in memory
    other = make_consumer(redis_url, extractor, prefix)
    await other.warm_up()
    with FakeDatagrepper(gap_msgs) as srv:
        res = await backfill_gap(other, srv.url, 4 * HOUR, now, client=fast_client(srv.url))
    assert res.fetched == len(gap_msgs)
    assert res.counted == half - 50
    window = await other.store.read_window(86400, now)
    assert window.messages == len(gap_msgs)
    assert window.users == expected_users(gap_msgs, extractor)
    await live.store.close()
    await other.store.close()


async def test_one_backfill_at_a_time(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float
) -> None:
    a = make_consumer(redis_url, extractor, prefix)
    b = make_consumer(redis_url, extractor, prefix)
    await a.warm_up()
    await b.warm_up()
    with FakeDatagrepper(gap_msgs) as srv:
        srv.slow_s = 0.3
        srv.faults = ["slow"] * 3
        results = await asyncio.gather(
            backfill_gap(a, srv.url, 4 * HOUR, now, client=fast_client(srv.url)),
            backfill_gap(b, srv.url, 4 * HOUR, now, client=fast_client(srv.url)),
        )
        requests_after = len(srv.requests)
        # a lock left by someone else: not started, not a single request
        await a.store.r.set(a.store.key(LOCK_NAME), "someone-else", ex=60)
        busy = await backfill_gap(a, srv.url, HOUR, now, client=fast_client(srv.url))
        assert len(srv.requests) == requests_after
    assert sorted(r.status for r in results) == ["busy", "done"]
    assert sum(r.counted for r in results) == len(gap_msgs)
    assert busy.status == "busy" and busy.fetched == 0
    assert await a.store.r.get(a.store.key(LOCK_NAME)) == b"someone-else"  # not ours to free
    await a.store.close()
    await b.store.close()


async def test_bounded_to_the_longest_window(
    redis_url: str, extractor: Any, prefix: str, now: float
) -> None:
    consumer = make_consumer(redis_url, extractor, prefix)
    await consumer.warm_up()
    with FakeDatagrepper([]) as srv:
        res = await backfill_gap(consumer, srv.url, 30 * 86400, now, client=fast_client(srv.url))
        assert float(srv.requests[0]["start"]) == now - 86400
    assert (res.start, res.end, res.fetched) == (now - 86400, now, 0)
    await consumer.store.close()


async def test_after_a_gap(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float
) -> None:
    consumer = make_consumer(redis_url, extractor, prefix)
    await consumer.warm_up()
    older = [m for m in gap_msgs if m["timestamp"] < now - 2 * HOUR]
    consumer.intake.handle_body(older[-1])  # the last message counted before the listener stopped
    await consumer.flush()
    last = float(int(older[-1]["timestamp"]))
    with FakeDatagrepper(gap_msgs) as srv:
        res = await backfill_after_gap(
            consumer, srv.url, now, margin_s=60, client=fast_client(srv.url)
        )
        short = await backfill_after_gap(
            consumer, srv.url, now, min_gap_s=HOUR, client=fast_client(srv.url)
        )
    assert res is not None and res.start == pytest.approx(last - 60)
    assert res.counted > 200  # about 2 of the 3 hours
    assert res.counted == sum(1 for m in gap_msgs if m["timestamp"] >= last - 60) - 1
    assert short is None  # the gap is now under an hour: nothing to do
    await consumer.store.close()


async def test_signature_check_skipped_unless_asked(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float
) -> None:
    # the bus's check rejects everything
    consumer = make_consumer(redis_url, extractor, prefix, lambda body: "unsigned")
    await consumer.warm_up()
    with FakeDatagrepper(gap_msgs[:50]) as srv:
        checked = await backfill_gap(
            consumer, srv.url, 4 * HOUR, now, validate=True, client=fast_client(srv.url)
        )
        trusted = await backfill_gap(consumer, srv.url, 4 * HOUR, now, client=fast_client(srv.url))
    assert (checked.accepted, checked.rejected) == (0, 50)
    assert (trusted.accepted, trusted.counted) == (50, 50)
    assert consumer.intake.validator is not None
    assert consumer.intake.validator(gap_msgs[0]) == "unsigned"  # unchanged
    await consumer.store.close()


async def test_datagrepper_down_releases_the_lock(
    redis_url: str, extractor: Any, prefix: str, now: float
) -> None:
    consumer = make_consumer(redis_url, extractor, prefix)
    await consumer.warm_up()
    with FakeDatagrepper([]) as srv:
        srv.faults = ["503"] * 20
        with pytest.raises(DatagrepperUnavailable):
            await backfill_gap(
                consumer,
                srv.url,
                HOUR,
                now,
                client=fast_client(srv.url, retries=2, min_split_s=10 * HOUR),
            )
    assert await consumer.store.r.exists(consumer.store.key(LOCK_NAME)) == 0
    meta = await consumer.store.meta()
    assert meta["backfill_status"] == "incomplete"
    assert json.loads(meta["backfill_last"])["reason"] == "unavailable"
    assert float(meta["backfill_resume_from"]) == now - HOUR
    await consumer.store.close()


def test_cli(redis_url: str, prefix: str, gap_msgs: list[Any]) -> None:
    common = ("--redis-url", redis_url, "--key-prefix", prefix)
    with FakeDatagrepper(gap_msgs) as srv:
        res = run_cli("backfill", *common, "--datagrepper", srv.url, "--since", "14400", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["status"] == "done" and out["counted"] == len(gap_msgs)
        gap = run_cli("backfill", *common, "--datagrepper", srv.url, "--gap", "--json")
        assert gap.returncode == 0, gap.stderr
        assert json.loads(gap.stdout)["status"] == "done"  # a minute since the newest
    snap = run_cli("snapshot", *common, "--window", "86400", "--json")
    assert json.loads(snap.stdout)["messages"] == len(gap_msgs)
    nobody = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    down = run_cli(
        "backfill",
        *common,
        "--datagrepper",
        nobody,
        "--since",
        "60",
        "--timeout",
        "1",
        "--retries",
        "0",
    )
    assert down.returncode == 69, down.stderr
    assert run_cli("backfill", *common, "--datagrepper", srv.url, "--since", "-5").returncode == 2
    # another backfill holds the lock: 75 (EX_TEMPFAIL, try later), not 1 (a crash)
    import redis as redis_sync

    from listener.storage.store import Store

    r = redis_sync.Redis.from_url(redis_url)
    key = Store.from_url(redis_url, prefix=prefix).key(LOCK_NAME)
    r.set(key, "someone-else", ex=60)
    try:
        busy = run_cli("backfill", *common, "--datagrepper", nobody, "--since", "60")
        assert busy.returncode == 75, busy.stderr
        assert "backfill busy: 0 fetched" in busy.stdout
    finally:
        r.delete(key)
        r.close()
    # a range datagrepper's total says is bigger than what it sends: 3, incomplete
    with FakeDatagrepper(gap_msgs) as srv:
        srv.hide = 1
        short = run_cli("backfill", *common, "--datagrepper", srv.url, "--since", "14400")
    assert short.returncode == 3, short.stderr
    assert "backfill incomplete (short)" in short.stdout and "1 missing" in short.stdout


WEEK = 7 * 86400


@pytest.mark.timeout(120)
async def test_the_whole_week_twice_after_live_counting_changes_no_count(
    redis_url: str, extractor: Any, prefix: str, examples: list[Any], now: float
) -> None:
    """The listener counted a third of a week's messages live, some 30 h and some
    6 days old; then two backfills of the whole 7-day window: every message once."""
    week = json.loads(
        json.dumps(spread([ex.body for ex in examples], now - WEEK + HOUR, now - 60, seed=5))
    )
    for m in week:
        m["users"] = sorted(extractor.usernames(m))
    live = make_consumer(redis_url, extractor, prefix, windows_s=(HOUR, 86400, WEEK))
    await live.warm_up()
    seen_live = week[::3]
    assert any(now - m["timestamp"] > 30 * HOUR for m in seen_live)
    for m in seen_live:
        live.intake.handle_body(m)
    while live.unwritten():
        await live.flush()
    other = make_consumer(redis_url, extractor, prefix, windows_s=(HOUR, 86400, WEEK))
    await other.warm_up()
    with FakeDatagrepper(week) as srv:
        first = await backfill_gap(other, srv.url, WEEK, now, client=fast_client(srv.url))
        after_first = await other.store.read_window(WEEK, now)
        second = await backfill_gap(other, srv.url, WEEK, now, client=fast_client(srv.url))
        arrivals = list(srv.arrivals)
    after_second = await other.store.read_window(WEEK, now)
    assert (first.status, second.status) == ("done", "done")
    assert first.fetched == second.fetched == len(week)
    assert first.counted == len(week) - len(seen_live) and second.counted == 0
    assert after_first.messages == after_second.messages == len(week)
    assert after_second.users == after_first.users == expected_users(week, extractor)
    assert after_second.topics == after_first.topics
    assert max_per_second(arrivals) <= RATE
    await live.store.close()
    await other.store.close()


async def test_refuses_what_it_cannot_deduplicate(
    redis_url: str, extractor: Any, prefix: str, now: float, caplog: Any
) -> None:
    """msg_ids remembered for a day (``dedupe_s``) with a 7-day window: a backfill
    of two days is refused; the start-up backfill is cut at the horizon, loudly."""
    consumer = make_consumer(
        redis_url, extractor, prefix, windows_s=(HOUR, 86400, WEEK), dedupe_s=86400
    )
    await consumer.warm_up()
    with FakeDatagrepper([]) as srv:
        with pytest.raises(BackfillRefused, match="dedupe_s"):
            await backfill_gap(consumer, srv.url, 2 * 86400, now, client=fast_client(srv.url))
        assert srv.requests == []
        res = await backfill_after_gap(consumer, srv.url, now, client=fast_client(srv.url))
    assert res is not None and res.status == "done"
    assert now - res.start <= 86400 - 600 + 5
    assert any("could be counted twice" in r.getMessage() for r in caplog.records)
    await consumer.store.close()


async def test_the_lock_outlives_a_slow_datagrepper(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float
) -> None:
    """Each answer takes longer than the lock's whole life: the heartbeat keeps
    it, a second backfill meanwhile is busy, and the first one completes."""
    a = make_consumer(redis_url, extractor, prefix)
    b = make_consumer(redis_url, extractor, prefix)
    await a.warm_up()
    await b.warm_up()
    with FakeDatagrepper(gap_msgs) as srv:
        srv.slow_s = 1.5
        srv.faults = ["slow"] * 3
        task = asyncio.create_task(
            backfill_gap(
                a, srv.url, 4 * HOUR, now, client=fast_client(srv.url, timeout_s=5), lock_ttl_s=0.6
            )
        )
        await asyncio.sleep(2.0)  # past three lifetimes of the lock
        busy = await backfill_gap(b, srv.url, 4 * HOUR, now, client=fast_client(srv.url))
        res = await task
        arrivals = list(srv.arrivals)
    assert busy.status == "busy"
    assert res.status == "done" and res.counted == len(gap_msgs)
    assert (await a.store.meta())["backfill_status"] == "done"
    assert max_per_second(arrivals) <= RATE
    await a.store.close()
    await b.store.close()


async def test_a_lost_lock_is_incomplete_and_resumed(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float
) -> None:
    consumer = make_consumer(redis_url, extractor, prefix)
    await consumer.warm_up()
    key = consumer.store.key(LOCK_NAME)
    with FakeDatagrepper(gap_msgs) as srv:
        srv.slow_s = 1.0
        srv.faults = [None, "slow", "slow"]
        task = asyncio.create_task(
            backfill_gap(
                consumer,
                srv.url,
                4 * HOUR,
                now,
                client=fast_client(srv.url, timeout_s=5),
                batch_size=50,
                lock_ttl_s=0.6,
            )
        )
        while not await consumer.store.r.exists(key):
            await asyncio.sleep(0.02)
        await consumer.store.r.set(key, "someone-else")  # e.g. it expired, another took it
        res = await task
        await consumer.store.r.delete(key)
        meta = await consumer.store.meta()
        assert res.status == "incomplete" and res.reason == "lost_lock"
        assert res.fetched < len(gap_msgs)
        assert meta["backfill_status"] == "incomplete"
        # the messages of the first page were counted, in order: it resumes after
        # them (a second before the newest), not from the start
        first_page = sorted(m["timestamp"] for m in gap_msgs)[:100]
        assert res.resume_from == pytest.approx(max(first_page[: res.fetched]) - 1.0)
        assert res.start < res.resume_from < now - HOUR
        assert float(meta["backfill_resume_from"]) == res.resume_from
        # the next start-up backfill: a recent message counted, yet it starts where
        # the incomplete one stopped, and completes
        consumer.intake.handle_body(dict(gap_msgs[-1], msg_id="recent", timestamp=now - 1))
        await consumer.flush()
        again = await backfill_after_gap(consumer, srv.url, now, client=fast_client(srv.url))
        arrivals = list(srv.arrivals)
    assert max_per_second(arrivals) <= RATE
    assert again is not None and again.start == res.resume_from and again.status == "done"
    assert (await consumer.store.read_window(86400, now)).messages == len(gap_msgs) + 1
    meta = await consumer.store.meta()
    assert meta["backfill_status"] == "done" and meta["backfill_resume_from"] == ""
    await consumer.store.close()


async def test_fewer_than_the_total_is_incomplete(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float
) -> None:
    consumer = make_consumer(redis_url, extractor, prefix)
    await consumer.warm_up()
    with FakeDatagrepper(gap_msgs) as srv:
        srv.hide = 3
        res = await backfill_gap(consumer, srv.url, 4 * HOUR, now, client=fast_client(srv.url))
        arrivals = list(srv.arrivals)
    assert max_per_second(arrivals) <= RATE
    assert res.status == "incomplete" and res.reason == "short" and res.missing == 3
    assert res.counted == len(gap_msgs) - 3
    assert consumer.store.backfill_status == "incomplete"
    # what /metrics shows
    from listener.daemon.inputs import Inputs  # the collector's input view, here only
    from listener.daemon.metrics import registry_for  # the listener's /metrics registry

    registry = registry_for(consumer, Inputs(None, None))
    value = registry.get_sample_value("fedmsg_wallboard_backfill_status", {"status": "incomplete"})
    assert value == 1.0
    await consumer.store.close()


@pytest.mark.parametrize("fault", ["stray rows past end", "newest first"])
async def test_a_misbehaving_server_still_gives_every_message(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float, fault: str
) -> None:
    consumer = make_consumer(redis_url, extractor, prefix)
    await consumer.warm_up()
    with FakeDatagrepper(gap_msgs) as srv:
        if fault == "newest first":
            srv.ignore_order = True
        else:
            srv.stray = [dict(gap_msgs[0], msg_id="stray", timestamp=now + HOUR)]
        res = await backfill_gap(consumer, srv.url, 4 * HOUR, now, client=fast_client(srv.url))
        arrivals = list(srv.arrivals)
    assert res.status == "done" and res.counted == len(gap_msgs)
    assert (await consumer.store.read_window(86400, now)).messages == len(gap_msgs)
    assert max_per_second(arrivals) <= RATE
    await consumer.store.close()


async def test_an_empty_answer_where_messages_were_counted_warns(
    redis_url: str, extractor: Any, prefix: str, gap_msgs: list[Any], now: float, caplog: Any
) -> None:
    consumer = make_consumer(redis_url, extractor, prefix)
    await consumer.warm_up()
    for m in gap_msgs[:100]:
        consumer.intake.handle_body(m)
    await consumer.flush()
    with FakeDatagrepper([]) as srv:
        res = await backfill_gap(consumer, srv.url, 4 * HOUR, now, client=fast_client(srv.url))
    assert res.status == "done" and res.fetched == 0
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "no message" in r.msg]
    assert warned and "counted" in warned[0].getMessage()
    await consumer.store.close()


def test_cli_refuses_a_range_it_cannot_deduplicate(
    tmp_path: Any, prefix: str, redis_url: str
) -> None:
    conf = tmp_path / "wallboard.toml"
    conf.write_text("windows_s = [3600, 86400, 604800]\ndedupe_s = 86400\n")
    common = ("--config", str(conf), "--redis-url", redis_url, "--key-prefix", prefix)
    with FakeDatagrepper([]) as srv:
        res = run_cli("backfill", *common, "--datagrepper", srv.url, "--since", "172800")
        assert srv.requests == []
    assert res.returncode == 2, res.stderr
    assert "could be counted twice" in res.stderr and "dedupe_s" in res.stderr
