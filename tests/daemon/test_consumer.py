"""Consumer bookkeeping with a real Redis: overflow, redelivery, future timestamps."""

from __future__ import annotations

import time
import uuid
from typing import Any

from listener.core.config import Config
from listener.core.intake import Intake
from listener.daemon.consumer import Consumer
from listener.storage.store import Store


def make(redis_url: str, extractor: Any, **cfg: Any) -> Consumer:
    c = Config(redis_url=redis_url, key_prefix=f"c{uuid.uuid4().hex[:8]}", **cfg)
    store = Store.from_url(
        redis_url, prefix=c.key_prefix, buckets_s=c.buckets_s, windows_s=c.windows_s
    )
    return Consumer(c, Intake(c, extractor, time.time), store)


def body(i: int, ts: float) -> dict[str, Any]:
    return {
        "topic": "org.fedoraproject.prod.buildsys.tag",
        "msg": {
            "tag": "f40",
            "owner": f"user{i}",
            "name": "pkg",
            "version": "1",
            "release": "1",
            "build_id": i,
            "tag_id": 1,
            "instance": "primary",
        },
        "msg_id": f"ov-{i}",
        "timestamp": ts,
        "i": i,
        "username": "apache",
    }


async def test_overflowed_messages_count_when_redelivered(redis_url: str, extractor: Any) -> None:
    c = make(redis_url, extractor, max_pending=10)
    await c.warm_up()
    now = time.time()
    for i in range(15):
        assert c.intake.handle_body(body(i, now))
    assert c.stats.pending_overflow == 5 and len(c.intake.pending) == 10
    assert await c.flush() == 10  # ov-5 .. ov-14
    # the 5 dropped ones come back (AMQP requeue, a replay): they are not duplicates
    for i in range(5):
        assert c.intake.handle_body(body(i, now)), i
    # ...while one that was counted is
    assert not c.intake.handle_body(body(12, now))
    assert await c.flush() == 5
    counts = await c.store.read_window(3600, time.time())
    assert counts.messages == 15
    expected: dict[str, int] = {}
    for i in range(15):
        for u in extractor.usernames(body(i, now)):
            expected[u] = expected.get(u, 0) + 1
    assert counts.users == expected
    await c.store.close()


async def test_future_timestamps_clamped_and_old_ones_dropped(
    redis_url: str, extractor: Any
) -> None:
    c = make(redis_url, extractor, max_future_skew_s=300.0)
    await c.warm_up()
    now = time.time()
    assert c.intake.handle_body(body(1, now + 10), now=now)  # small skew: clamped, not counted
    assert c.intake.handle_body(body(2, now + 86400), now=now)  # absurd: clamped and counted
    assert not c.intake.handle_body(body(3, now - 8 * 86400), now=now)  # older than 7 d
    assert c.stats.future_clamped == 1
    assert c.stats.rejected["too_old"] == 1
    assert [m.timestamp for m in c.intake.pending] == [int(now), int(now)]
    # the live event shows the absurd one at the receive time, not a day ahead (the
    # page's "last message" would otherwise not turn stale for a day); the small
    # skew as sent
    event = c.intake.take_blink()
    assert event is not None and event["first_ts"] == now + 10
    assert [m["ts"] for m in event["msgs"]] == [now + 10, now]
    await c.store.close()


async def test_rate_counts_live_messages_not_backfill(redis_url: str, extractor: Any) -> None:
    c = make(redis_url, extractor)
    await c.warm_up()
    now = time.time()
    for i in range(30):
        c.intake.handle_body(body(100 + i, now), blink=False)  # backfill
    for i in range(7):
        c.intake.handle_body(body(200 + i, now))  # live
    event = c.intake.take_blink()
    assert event is not None and event["total"] == 7
    assert c.rate_per_min(time.time()) == 7.0
    await c.flush()
    assert c.stats.counted == 37
    await c.store.close()


async def test_backfill_beside_a_running_listener_is_picked_up(
    redis_url: str, extractor: Any
) -> None:
    live = make(redis_url, extractor)
    await live.warm_up()
    # a separate `fedmsg-wallboard backfill` process: another consumer, same namespace
    other = Consumer(
        live.cfg,
        Intake(live.cfg, extractor, time.time),
        Store.from_url(redis_url, prefix=live.cfg.key_prefix),
    )
    now = time.time()
    for i in range(12):
        other.intake.handle_body(body(300 + i, now - 100), blink=False)
    await other.flush()
    tick = await live.step()
    assert tick["windows"]["3600"]["messages"] == 0  # the running totals never saw them
    await other.store.r.hset(other.store.key("meta"), "backfill_done_at", str(now))
    tick = await live.step()
    assert tick["windows"]["3600"]["messages"] == 12
    await live.store.close()
    await other.store.close()


async def test_blink_shows_the_newest_and_bounds_the_wait_with_first_ts(
    redis_url: str, extractor: Any
) -> None:
    """Bus frames keep only their wire bytes in the blink ring; the event shows the
    newest ``blink_batch_max`` with their summaries, counts all, and ``first_ts`` is
    the first (longest-waiting) message's timestamp, shown or not."""
    import orjson

    def tagged(i: int, ts: float) -> dict[str, Any]:
        b = body(i, ts)
        b["msg"]["user"] = f"user{i}"  # koji's tag message names the tagger too
        return b

    c = make(redis_url, extractor, blink_batch_max=3)
    now = time.time()
    for i in range(5):
        b = tagged(i, now - 10 + i)
        assert c.intake.handle_frames([b["topic"].encode(), orjson.dumps(b)], now)
    event = c.intake.take_blink()
    assert event is not None
    assert [m["msg_id"] for m in event["msgs"]] == ["ov-2", "ov-3", "ov-4"]
    assert [m["users"] for m in event["msgs"]] == [["user2"], ["user3"], ["user4"]]
    assert event["total"] == 5 and event["omitted"] == 2 and event["counts"] == {"buildsys": 5}
    assert event["first_ts"] == now - 10
    expected = extractor.subtitle(orjson.loads(orjson.dumps(tagged(4, now - 6))))
    assert event["msgs"][-1]["summary"] == expected and "user4" in expected
    assert c.intake.take_blink() is None
    c.intake.handle_body(body(9, now - 1))
    event = c.intake.take_blink()
    assert event is not None and event["first_ts"] == now - 1 and event["total"] == 1


async def test_heap_trimmed_once_a_burst_is_over_not_during_it(
    redis_url: str, extractor: Any, monkeypatch: Any
) -> None:
    import listener.daemon.consumer as consumer_mod

    monkeypatch.setattr(consumer_mod, "TRIM_EVERY_MSGS", 3000)
    c = make(redis_url, extractor)
    await c.warm_up()
    now = time.time()
    for i in range(3000):
        assert c.intake.handle_body(body(i, now))
    assert await c.flush() == 3000
    assert c.stats.heap_trims == 0  # a flush of 3,000: the burst may still be going on
    assert await c.flush() == 0  # nothing pending any more: it is over
    assert c.stats.heap_trims == 1
    for i in range(3000, 6000):
        assert c.intake.handle_body(body(i, now))
        if (i + 1) % 1000 == 0:
            assert await c.flush() == 1000  # flushes of 1,000 (not < TRIM_QUIET_MSGS)
    assert c.stats.heap_trims == 1
    for i in range(6000, 6500):
        assert c.intake.handle_body(body(i, now))
    assert await c.flush() == 500  # a small flush after 3,500 messages: trimmed
    assert c.stats.heap_trims == 2
    assert await c.flush() == 0  # nothing new since: not again
    assert c.stats.heap_trims == 2
    await c.store.close()


async def test_flush_of_a_full_batch_asks_for_the_next_one_at_once(
    redis_url: str, extractor: Any
) -> None:
    c = make(redis_url, extractor, flush_batch_max=10)
    await c.warm_up()
    now = time.time()
    for i in range(25):
        assert c.intake.handle_body(body(i, now))
    got = []
    for _ in range(3):
        c.flush_wanted.clear()  # what the flush task does before each call
        got.append((await c.flush(), c.flush_wanted.is_set()))
    # 15 left (a full batch more): at once; 5 left, then none: the next tick
    assert got == [(10, True), (10, False), (5, False)]
    assert (await c.store.read_window(3600, time.time())).messages == 25
    await c.store.close()


async def test_a_standby_keeps_then_writes_and_a_fenced_writer_stands_by(
    redis_url: str, extractor: Any
) -> None:
    """Two consumers of one prefix with lease tokens: the one without the lease
    writes nothing and keeps ``standby_keep_s`` of messages; when it holds the
    lease it writes what it kept, the overlap with the old holder's flushes dropped
    by msg_id; the old holder's next flush is refused (nothing written) and makes
    it a standby."""
    import pytest

    from listener.storage.store import Fenced

    a = make(redis_url, extractor, standby_keep_s=60.0)
    cfg = a.cfg
    store_b = Store.from_url(
        redis_url, prefix=cfg.key_prefix, buckets_s=cfg.buckets_s, windows_s=cfg.windows_s
    )
    b = Consumer(cfg, Intake(cfg, extractor, time.time), store_b, lease="token-b")
    a = Consumer(cfg, a.intake, a.store, lease="token-a")
    assert not a.holding and not b.holding  # a consumer with a lease starts standing by
    now = time.time()
    assert await a.store.claim_writer("token-a", 30) is None
    await a.hold()
    assert b.intake.handle_body(body(99, now - 120))  # older than standby_keep_s
    for i in range(10):  # both read the bus
        assert a.intake.handle_body(body(i, now))
        assert b.intake.handle_body(body(i, now))
    assert await b.flush() == 0 and b.written(b.stats.accepted)  # kept, not written
    assert b.expire_kept(now) == 1 and b.stats.standby_expired == 1
    assert len(b.intake.pending) == 10
    assert await a.flush() == 10
    for i in range(10, 15):  # a freezes before writing these
        assert a.intake.handle_body(body(i, now))
        assert b.intake.handle_body(body(i, now))
    await a.store.r.delete(a.store.key("writer"))  # a's lease expired
    assert await b.store.claim_writer("token-b", 30) is None
    await b.hold()
    assert b.holding and await b.flush() == 5  # ov-10..14; ov-0..9 were counted by a
    assert b.stats.duplicates == 10
    with pytest.raises(Fenced):
        await a.flush()  # a thaws: refused
    assert a.fenced.is_set() and not a.holding and not a.unwritten()
    with pytest.raises(Fenced):
        a.holding = True
        await a.step()
    assert (await b.step())["windows"]["3600"]["messages"] == 15
    counts = await b.store.read_window(3600, time.time())
    assert counts.messages == 15
    assert (await b.store.meta())["messages_total"] == "15"
    await a.store.close()
    await b.store.close()
