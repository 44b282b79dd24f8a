"""The hot path's shortcuts keep behaviour: flush state, windows, snapshots.

The flush script takes increments aggregated in Python and skips keys that would
expire at once; :data:`REFERENCE_FLUSH_LUA` is the straightforward script (per
message increments in Lua), kept here as the reference: both must leave Redis in
exactly the same state (every key, field, value and expiry time) and return the
same flags, over batches with duplicates inside and across batches, messages
without msg_id, neighbouring hours, and timestamps up to 8 days old.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis

from listener.core.counting import Counted, aggregate
from listener.core.windows import Counts
from listener.storage.store import ID_SHARDS, Store, id_hash

REFERENCE_FLUSH_LUA = r"""
local p = ARGV[1]
local cfg = cjson.decode(ARGV[2])
local msgs = cjson.decode(ARGV[3])
local bk = p .. ':batch:' .. cfg.batch
local prev = redis.call('GET', bk)
if prev then
  return {-1, prev}
end
local acc = {}
local expire_at = {}
local id_keys = {}
local flags = {}
local last_ts = 0
local new_count = 0
local function inc(key, field, at)
  local h = acc[key]
  if not h then
    h = {}
    acc[key] = h
    expire_at[key] = at
  end
  h[field] = (h[field] or 0) + 1
end
for idx, m in ipairs(msgs) do
  local id, ts, topic, cat, users, sh = m[1], m[2], m[3], m[4], m[5], m[6]
  local new = 1
  if id ~= '' then
    local ib = ts - (ts % cfg.ids_bucket)
    local ik = p .. ':ids:' .. ib .. ':' .. sh
    if redis.call('SISMEMBER', p .. ':ids:' .. (ib - cfg.ids_bucket) .. ':' .. sh, id) == 1
        or redis.call('SISMEMBER', p .. ':ids:' .. (ib + cfg.ids_bucket) .. ':' .. sh, id) == 1
        or redis.call('SADD', ik, id) == 0 then
      new = 0
    else
      id_keys[ik] = ib + cfg.ids_bucket + cfg.ids_ttl
    end
  end
  flags[idx] = new
  if new == 1 then
    new_count = new_count + 1
    if ts > last_ts then last_ts = ts end
    for _, spec in ipairs(cfg.buckets) do
      local size, keep = spec[1], spec[2]
      local b = ts - (ts % size)
      local base = p .. ':b:' .. size .. ':' .. b
      local at = b + size + keep
      inc(base .. ':n', 'messages', at)
      inc(base .. ':t', topic, at)
      inc(base .. ':c', cat, at)
      for _, u in ipairs(users) do
        inc(base .. ':u', u, at)
        inc(base .. ':uc', u .. '\031' .. cat, at)
      end
    end
  end
end
for key, h in pairs(acc) do
  for f, n in pairs(h) do
    redis.call('HINCRBY', key, f, n)
  end
  redis.call('EXPIREAT', key, expire_at[key])
end
for key, at in pairs(id_keys) do
  redis.call('EXPIREAT', key, at)
end
if new_count > 0 then
  redis.call('HINCRBY', p .. ':meta', 'messages_total', new_count)
  local prev = tonumber(redis.call('HGET', p .. ':meta', 'last_message_at') or '0')
  if last_ts > prev then
    redis.call('HSET', p .. ':meta', 'last_message_at', last_ts)
  end
end
redis.call('SET', bk, table.concat(flags), 'EX', cfg.batch_ttl)
return flags
"""


async def run_reference(
    r: aioredis.Redis, store: Store, batch: list[Counted], batch_id: str
) -> list[bool]:
    """The reference flush: per-message increments in Lua (the same arguments)."""
    script = r.register_script(REFERENCE_FLUSH_LUA)
    cfg = {
        "batch": batch_id,
        "batch_ttl": 86400,
        "ids_bucket": 3600,
        "ids_ttl": store.dedupe_s,
        "buckets": [[b, store.keep_s[b]] for b in store.buckets_s],
    }
    msgs = [
        [
            str(id_hash(m.msg_id)) if m.msg_id else "",
            int(m.timestamp),
            m.topic,
            m.category,
            list(m.users),
            id_hash(m.msg_id) % ID_SHARDS,
        ]
        for m in batch
    ]
    res = await script(
        keys=[store.key("meta")], args=[store.p, orjson.dumps(cfg), orjson.dumps(msgs)]
    )
    if res and res[0] == -1:
        return [c == "1" for c in res[1].decode()]
    return [bool(x) for x in res]


async def dump(r: aioredis.Redis, prefix: str) -> dict[str, Any]:
    """Every key of a namespace (prefix stripped): value and expiry time."""
    out: dict[str, Any] = {}
    async for raw in r.scan_iter(match="{" + prefix + "}:*", count=1000):
        key = raw.decode()
        kind = (await r.type(raw)).decode()
        if kind == "hash":
            value: Any = {k.decode(): v.decode() for k, v in (await r.hgetall(raw)).items()}
        elif kind == "set":
            value = sorted(m.decode() for m in await r.smembers(raw))
        else:
            value = (await r.get(raw)).decode()
        short = key.split("}", 1)[1]
        if short.startswith(":meta"):
            value.pop("epoch", None)
        at = await r.expiretime(raw)
        if short.startswith(":batch:"):  # EX 86400: relative, may straddle a second
            at = "1 day" if 86000 < at - time.time() <= 86402 else at
        out[short] = (kind, value, at)
    return out


def random_batches(now: int, seed: int) -> list[list[Counted]]:
    rng = random.Random(seed)
    users = [f"u{k}" for k in range(40)] + ["ralph", "kevin", "nobody"]
    topics = [
        ("org.fedoraproject.prod.buildsys.build.state.change", "buildsys"),
        ("org.fedoraproject.prod.copr.build.end", "copr"),
        ("org.fedoraproject.prod.git.receive", "git"),
        ("org.fedoraproject.prod.bodhi.update.comment", "bodhi"),
        ("/topic/VirtualTopic.eng.ci.x", "ci"),
    ]
    ages = [0, 1, 59, 61, 300, 3599, 3601, 7200, 86399, 90000, 6 * 86400, 8 * 86400]
    hour = now - now % 3600
    ids = [f"2017-{k}" for k in range(120)]
    batches = []
    for _ in range(8):
        batch = []
        for _ in range(rng.randint(1, 60)):
            topic, cat = rng.choice(topics)
            if rng.random() < 0.3:
                ts = hour - rng.choice([1, 2, 3599, 3600, 3601]) + rng.randint(-1, 1)
            else:
                ts = now - rng.choice(ages) - rng.randint(0, 30)
            msg_id = "" if rng.random() < 0.1 else rng.choice(ids)
            k = rng.choice([0, 1, 1, 1, 2, 3])
            batch.append(Counted(msg_id, ts, topic, cat, tuple(sorted(rng.sample(users, k)))))
        batches.append(batch)
    return batches


async def test_flush_leaves_exactly_the_state_of_the_reference_script(redis_url: str) -> None:
    now = int(time.time())
    for seed in range(6):
        p_ref, p_new = f"ref{uuid.uuid4().hex[:6]}", f"new{uuid.uuid4().hex[:6]}"
        ref = Store.from_url(redis_url, prefix=p_ref)
        new = Store.from_url(redis_url, prefix=p_new)
        dup_seen = 0
        for k, batch in enumerate(random_batches(now, seed)):
            flags_ref = await run_reference(ref.r, ref, batch, f"b{k}")
            if seed % 2:  # as the consumer calls it: counts given, expired buckets left out
                counts = aggregate(batch, new.buckets_s, new.oldest_starts(time.time()))
                flags_new = await new.flush(batch, f"b{k}", counts)
            else:
                flags_new = await new.flush(batch, f"b{k}")
            assert flags_new == flags_ref
            dup_seen += flags_new.count(False)
            if k == 3:  # a retried batch id: no change, the recorded flags
                assert await new.flush(batch, f"b{k}") == flags_ref
                assert await run_reference(ref.r, ref, batch, f"b{k}") == flags_ref
        assert dup_seen > 0  # the batches did exercise the duplicate path
        assert await dump(new.r, p_new) == await dump(ref.r, p_ref)
        await ref.close()
        await new.close()


async def test_flush_of_large_batches_matches_the_reference_script(redis_url: str) -> None:
    # batches past the script's chunks of 1,000 ids (SMISMEMBER, SADD), with
    # duplicates inside a batch, across batches and across neighbouring hours
    now = int(time.time())
    hour = now - now % 3600
    rng = random.Random(9)
    p_ref, p_new = f"ref{uuid.uuid4().hex[:6]}", f"new{uuid.uuid4().hex[:6]}"
    ref = Store.from_url(redis_url, prefix=p_ref)
    new = Store.from_url(redis_url, prefix=p_new)
    ids = [f"big-{k}" for k in range(2600)]
    for k, size in enumerate((1500, 3000, 2200)):
        batch = [
            Counted(
                rng.choice(ids),
                hour - rng.choice([7201, 3601, 3599, 1, 0]) + rng.randint(0, 1),
                "org.fedoraproject.prod.git.receive",
                "git",
                (f"u{rng.randrange(50)}",),
            )
            for _ in range(size)
        ]
        flags_ref = await run_reference(ref.r, ref, batch, f"big{k}")
        assert await new.flush(batch, f"big{k}") == flags_ref
        assert 0 < flags_ref.count(False) < size
    assert await dump(new.r, p_new) == await dump(ref.r, p_ref)
    await ref.close()
    await new.close()


async def test_flush_skips_keys_that_would_expire_at_once(redis_url: str) -> None:
    st = Store.from_url(redis_url, prefix=f"x{uuid.uuid4().hex[:6]}")
    now = int(time.time())
    old = now - 3 * 3600  # its 60 s bucket is kept 1 h: already gone
    assert await st.flush([Counted("a", old, "org.fedoraproject.prod.git.receive", "git", ("u",))])
    assert await st.r.exists(st.key("b", 60, old - old % 60, "u")) == 0
    hour = old - old % 3600
    assert await st.r.hget(st.key("b", 3600, hour, "u"), "u") == b"1"
    await st.close()


def test_aggregate_equals_counting_message_by_message() -> None:
    now = int(time.time())
    batch = [m for b in random_batches(now, 7) for m in b]
    agg = aggregate(batch, (60, 3600))
    expected: dict[tuple[int, int], Counts] = {}
    for m in batch:
        for b in (60, 3600):
            key = (b, int(m.timestamp // b) * b)
            expected.setdefault(key, Counts()).add_message(m.topic, m.category, m.users)
    assert agg == expected


def _reference_decode_reason(frames: list[bytes]) -> str | None:
    """The reference decoding of bad bytes (UTF-8 checked first, then JSON)."""
    try:
        frames[0].decode("utf-8")
        frames[1].decode("utf-8")
    except UnicodeDecodeError:
        return "bad_utf8"
    try:
        orjson.loads(frames[1])
    except orjson.JSONDecodeError:
        return "bad_json"
    return None


def test_decode_frames_names_bad_bytes_as_before() -> None:
    from listener.core.envelope import Rejected, decode_frames

    topic = b"org.fedoraproject.prod.git.receive"
    bodies = [
        b'{"a": "\xff"}',  # valid JSON shape, invalid UTF-8
        b'{"a": "\xff"',  # invalid UTF-8 and invalid JSON
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate: invalid UTF-8
        b'{"a": "\\ud800"}',  # an escaped lone surrogate: ASCII
        b"{not json",
        b"\xc3\xa9",  # valid UTF-8, not JSON
        b"",
    ]
    for body in bodies:
        res = decode_frames([topic, body])
        expected = _reference_decode_reason([topic, body])
        got = res.reason if isinstance(res, Rejected) else None
        if expected is None:  # decodes: later checks (not_object, bad_msg) decide
            assert got not in ("bad_utf8", "bad_json"), body
        else:
            assert got == expected, body


def test_category_of_is_cached_and_unchanged() -> None:
    from listener.core.envelope import category_of

    cases = {
        "org.fedoraproject.prod.buildsys.tag": "buildsys",
        "/topic/VirtualTopic.eng.ci.x": "ci",
        "org.fedoraproject": "Unclassified",
        "": "Unclassified",
    }
    for _ in range(2):
        assert {t: category_of(t) for t in cases} == cases
    assert category_of.cache_info().hits >= len(cases)


def _window(rng: random.Random, n_users: int, kind: str) -> Counts:
    c = Counts()
    for k in range(n_users):
        if kind == "zipf":
            m = max(1, 1000 // (k + 1))
        elif kind == "flat":
            m = 7
        elif kind == "ties":
            m = rng.choice([1, 1, 2, 3, 3])
        else:
            m = rng.randint(1, 10_000)
        name = f"user{rng.randrange(10**6):06d}"
        c.users[name] += m
        c.usercat[(name, "git")] += m
        c.topics[f"org.fedoraproject.prod.t{k % 13}"] += m
        c.categories[rng.choice(["git", "copr", "buildsys"])] += m
        c.messages += m
    return c


def test_live_snapshot_equals_build_snapshot_but_for_rounding() -> None:
    import math

    from listener.core.snapshot import build_snapshot, live_snapshot

    rng = random.Random(9)
    cases = [Counts()]
    for n in (1, 2, 3, 19, 20, 21, 200, 5000):
        for kind in ("zipf", "flat", "ties", "random"):
            cases.append(_window(rng, n, kind))
    odd = _window(rng, 50, "ties")
    odd.users["gone"] = 0  # ignored, as by longtail.stats
    cases.append(odd)
    for counts in cases:
        for top_n in (None, 0, 1, 20):
            want = build_snapshot(3600, 1.5e9, counts, 1.4e9, top_n)
            got = live_snapshot(3600, 1.5e9, counts, 1.4e9, top_n)
            assert list(got) == list(want)
            for key in want:
                if key in ("longtail", "longtail_normalized") and want[key] is not None:
                    scale = (
                        abs(want[key])
                        if key == "longtail_normalized"
                        else max(abs(want[key]), want["head"][1])
                    )
                    assert math.isclose(got[key], want[key], rel_tol=1e-9, abs_tol=1e-12 * scale)
                    if abs(want[key]) > 1e-6 * want["head"][1]:
                        assert math.isclose(got[key], want[key], rel_tol=1e-9)
                else:
                    assert got[key] == want[key], key


def test_top_users_from_the_histogram_equals_the_heap() -> None:
    """The n-th largest count found by walking ``Counter(values)`` down is the
    heap's: same users, same order, ties at the threshold included."""
    from collections import Counter

    from listener.core.snapshot import top_users

    rng = random.Random(4)
    for n in (1, 2, 21, 200, 5000):
        for kind in ("zipf", "flat", "ties", "random"):
            users = _window(rng, n, kind).users
            hist = Counter(users.values())
            for k in (1, 2, 5, 20, n - 1):
                if k >= 1:
                    assert top_users(users, k, hist) == top_users(users, k), (n, kind, k)


async def test_consumer_windows_with_duplicates_and_old_messages_match_redis(
    redis_url: str, extractor: Any
) -> None:
    """The consumer's running windows equal a fresh read of Redis after flushes
    mixing duplicates, messages without msg_id and week-old messages."""
    from listener.core.config import Config
    from listener.core.intake import Intake
    from listener.daemon.consumer import Consumer

    now = time.time()
    cfg = Config(redis_url=redis_url, key_prefix=f"w{uuid.uuid4().hex[:6]}")
    store = Store.from_url(redis_url, prefix=cfg.key_prefix)
    consumer = Consumer(cfg, Intake(cfg, extractor, time.time), store)
    await consumer.warm_up(now)
    for batch in random_batches(int(now), 11):
        for m in batch:
            body = {
                "topic": m.topic,
                "msg_id": m.msg_id or None,
                "timestamp": float(m.timestamp),
                "msg": {},
                "i": 1,
            }
            consumer.intake.handle_body(body, now=now, users=m.users)
        consumer.intake.forget_seen()  # let duplicates reach Redis, as after a restart
        await consumer.flush(now)
    assert consumer.stats.duplicates > 0
    for w, win in consumer.windows.items():
        fresh = await store.read_window(w, now, usercat=False)  # not kept by windows
        assert win.totals == fresh, w
        assert fresh.messages > 0 and fresh.users
    await store.close()


def test_envelope_from_dict_builds_the_same_frozen_envelope() -> None:
    import pytest

    from listener.core.envelope import Envelope, envelope_from_dict

    body = {
        "topic": "org.fedoraproject.prod.git.receive",
        "msg_id": "2017-x",
        "i": 3,
        "timestamp": 1504643081,
        "username": "apache",
        "msg": {"a": 1},
    }
    env = envelope_from_dict(body)
    assert isinstance(env, Envelope)
    assert env == Envelope(
        "org.fedoraproject.prod.git.receive", "2017-x", 1504643081.0, 3, "apache", {"a": 1}, body
    )
    assert env.body is body and isinstance(env.timestamp, float)
    assert env._asdict()["msg"] == {"a": 1} and "body" not in repr(env)
    with pytest.raises(AttributeError):
        env.topic = "x"  # type: ignore[misc]


def test_clean_usernames_unchanged() -> None:
    from listener.core.users import clean_usernames

    def reference(raw: Any) -> frozenset[str]:
        if not raw:
            return frozenset()
        try:
            return frozenset(u.strip() for u in raw if isinstance(u, str) and u.strip())
        except TypeError:
            return frozenset()

    cases: list[Any] = [
        None,
        [],
        set(),
        {"ralph"},
        {"ralph", None, ""},
        [" kevin ", "kevin"],
        ["\t", 3, b"x", "a b"],
        7,
        "ab",
        ("\u2003x\u2003",),
        {"x": 1},
    ]
    for raw in cases:
        assert clean_usernames(raw) == reference(raw), raw


def test_trim_heap_returns_freed_memory() -> None:
    import ctypes.util
    import os

    import pytest

    from listener.daemon.memory import trim_heap

    if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or "") or not ctypes.util.find_library(
        "c"
    ):
        pytest.skip("malloc_trim is glibc's")

    def rss_kib() -> int:
        with open(f"/proc/{os.getpid()}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))

    trim_heap()
    blocks = [bytes(4000) for _ in range(30_000)]  # ~120 MiB from malloc (> 512 B each)
    kept = blocks[::16]  # the rest freed: holes below the heap's top stay resident
    del blocks
    before = rss_kib()
    assert trim_heap() is True
    assert rss_kib() < before - 50_000  # KiB given back
    del kept


async def test_record_tick_writes_what_the_three_calls_wrote(redis_url: str) -> None:
    a = Store.from_url(redis_url, prefix=f"a{uuid.uuid4().hex[:6]}")
    b = Store.from_url(redis_url, prefix=f"b{uuid.uuid4().hex[:6]}")
    tick = {"type": "tick", "end": 5.0, "windows": {"3600": {"messages": 3}}}
    points = {3600: [5.0, 1.5, 0.5, 0.2, 3, 2], 86400: [5.0, None, None, None, 0, 0]}
    pubsub = b.r.pubsub()
    await pubsub.subscribe(b.events_channel)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    for _ in range(3):
        for w, p in points.items():
            await a.append_history(w, p, maxlen=2)
        await a.set_state(tick)
        await b.record_tick(points, 2, tick)
    for w in points:
        assert await b.history(w) == await a.history(w) == [points[w]] * 2
    assert await b.state() == await a.state() == tick
    msg = None
    for _ in range(20):
        msg = await pubsub.get_message(timeout=1.0)
        if msg and msg["type"] == "message":
            break
    assert msg is not None and orjson.loads(msg["data"]) == tick
    e1, created = await b.ensure_epoch(1.0)
    e2, again = await b.ensure_epoch(2.0)
    assert created and not again and e1 == e2
    await pubsub.aclose()
    await a.close()
    await b.close()


def test_aggregate_of_a_one_bucket_batch_gives_independent_equal_counts() -> None:
    now = 1_700_000_000 - 1_700_000_000 % 3600 + 120  # 2 minutes into an hour
    batch = [
        Counted(
            f"m{k}",
            now + k % 50,
            "org.fedoraproject.prod.git.receive",
            "git",
            ("ralph",) if k % 3 else (),
        )
        for k in range(200)
    ]
    agg = aggregate(batch, (60, 3600))
    minute, hour = agg[(60, now - now % 60)], agg[(3600, now - now % 3600)]
    assert minute == hour and minute is not hour
    assert hour.users["ralph"] == sum(1 for k in range(200) if k % 3)
    minute.merge(minute.copy(), -1)  # what the consumer does for duplicates
    assert hour.messages == 200 and minute.messages == 0


def test_tune_gc_freezes_start_up_and_raises_the_young_threshold() -> None:
    """In a process of its own: the thresholds and the frozen heap are process-wide."""
    import json
    import subprocess
    import sys

    code = (
        "import gc, json, listener.core.users\n"
        "from listener.daemon.memory import GC_GEN0_THRESHOLD, tune_gc\n"
        "before = tune_gc()\n"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count(),"
        " GC_GEN0_THRESHOLD]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    before, after, frozen, gen0 = json.loads(out.stdout.strip().splitlines()[-1])
    assert after == [gen0, before[1], before[2]] and gen0 > before[0]
    assert frozen > 10_000  # the interpreter and the imported modules


def test_hold_heap_keeps_freed_memory_until_trim_heap() -> None:
    import ctypes.util
    import os
    import subprocess
    import sys

    import pytest

    if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or "") or not ctypes.util.find_library(
        "c"
    ):
        pytest.skip("mallopt and malloc_trim are glibc's")
    # in a fresh interpreter: the malloc options are process-wide
    script = r"""
import os, sys
from listener.daemon.memory import hold_heap, trim_heap
def rss():
    with open(f"/proc/{os.getpid()}/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS"))
def cycle():
    blocks = [bytes(4000) for _ in range(25_000)]  # ~100 MiB at the heap's top
    peak = rss()
    del blocks
    return peak - rss()  # KiB handed back by free() itself
auto = cycle()
assert hold_heap() is True
held = cycle()
before = rss()
assert trim_heap() is True
print(auto, held, before - rss())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    auto, held, trimmed = (int(x) for x in out)
    assert auto > 50_000  # by default glibc trims the top of the heap at once
    assert held < 10_000  # held: free() gives nothing back...
    assert trimmed > 50_000  # ...until trim_heap
