"""The pipeline end to end: real ZeroMQ sockets -> consumer -> real Redis -> windows.

In-process tests drive :class:`listener.inputs.zmq.Bus` and
:class:`listener.daemon.consumer.Consumer` directly (so their counters can be
read); the subprocess tests run ``python -m listener listen`` and
``python -m listener replay`` exactly as a user would, and read the result with
``python -m listener snapshot --json``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import fedmsg.meta
import pytest
import zmq

from listener.core.config import Config
from listener.core.envelope import encode_frames
from listener.core.intake import Intake
from listener.daemon.consumer import Consumer
from listener.inputs.zmq import Bus
from listener.storage.store import Store
from listener.tools.replay import wire_body
from tests.helpers.common import CORPUS, ROOT, TIMEOUT_FACTOR, free_port, run_cli, wait_for
from tests.helpers.listener_proc import stop_listener


def rebased(examples: list[Any], now: float) -> list[dict[str, Any]]:
    out = []
    for k, ex in enumerate(examples):
        body = wire_body(ex.body)
        body["timestamp"] = now - 600 + k * 0.5
        out.append(body)
    return out


def expected_counts(
    bodies: list[dict[str, Any]], config: dict[str, Any]
) -> tuple[Counter[str], Counter[str]]:
    """Per-topic and per-user counts as fedmsg.meta gives them, message by message.

    Each body goes through JSON first, as on the wire: fedmsg_meta's tagger
    processor compares ``user is 'anonymous'`` by identity, so its answer differs
    between the shipped dict literal and the same message decoded from the bus.
    """
    topics: Counter[str] = Counter()
    users: Counter[str] = Counter()
    for b in (json.loads(json.dumps(x)) for x in bodies):
        topics[b["topic"]] += 1
        for u in fedmsg.meta.msg2usernames(b, **config):
            if u:
                users[u] += 1
    return topics, users


class Harness:
    """A Consumer + Bus on a fresh key prefix, fed by a real PUB socket."""

    def __init__(self, redis_url: str, extractor: Any, **cfg: Any) -> None:
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.cfg = Config(
            redis_url=redis_url, key_prefix=f"p{uuid.uuid4().hex[:8]}", step_s=1.0, **cfg
        )
        self.store = Store.from_url(
            redis_url,
            prefix=self.cfg.key_prefix,
            buckets_s=self.cfg.buckets_s,
            windows_s=self.cfg.windows_s,
        )
        self.consumer = Consumer(self.cfg, Intake(self.cfg, extractor, time.time), self.store)
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(self.endpoint)
        self.bus: Bus | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, probe: dict[str, Any]) -> None:
        await self.consumer.warm_up()
        self.bus = Bus(
            self.cfg, [self.endpoint], "", self.consumer.intake, self.consumer.flush_wanted.set
        )
        self.task = asyncio.create_task(self.bus.run())
        # republish one real message until the SUB is joined (no sleep-and-hope)
        deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
        while self.consumer.stats.received == 0:
            assert time.monotonic() < deadline, "SUB never joined"
            self.pub.send_multipart(encode_frames(probe))
            await asyncio.sleep(0.05)

    async def wait_received(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
        while self.consumer.stats.received < n:
            assert time.monotonic() < deadline, f"received {self.consumer.stats.received} of {n}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.bus:
            self.bus.stop()
        if self.task:
            await self.task
        if self.bus:
            self.bus.close()
        self.pub.close()
        self.ctx.term()
        await self.store.close()


async def test_replay_of_real_messages_gives_fedmsg_meta_counts(
    redis_url: str, extractor: Any, examples: list[Any]
) -> None:
    now = time.time()
    bodies = rebased(examples, now)
    h = Harness(redis_url, extractor)
    await h.start(bodies[0])
    probes = h.consumer.stats.received
    for b in bodies:
        h.pub.send_multipart(encode_frames(b))
    await h.wait_received(probes + len(bodies))
    await h.consumer.flush()
    counts = await h.store.read_window(3600, time.time())
    topics, users = expected_counts(bodies, extractor.config)
    assert counts.messages == len(bodies) == 553
    assert dict(counts.topics) == dict(topics)
    assert dict(counts.users) == dict(users)
    # the listener's own running window agrees with a fresh read of Redis
    tick = await h.consumer.step()
    assert tick["windows"]["3600"]["messages"] == 553
    # the tick, sent to every wall, holds the top_topics busiest; the count says how many
    ranked = sorted(topics.items(), key=lambda kv: (-kv[1], kv[0]))
    assert len(topics) > h.consumer.cfg.top_topics
    assert tick["windows"]["3600"]["topics"] == dict(ranked[: h.consumer.cfg.top_topics])
    assert tick["windows"]["3600"]["topics_total"] == len(topics)
    # every probe copy after the first, and bodies[0] sent again, are duplicates
    assert h.consumer.stats.duplicates == probes
    await h.close()


async def test_end_of_a_backlog_is_flushed_at_once_not_at_the_next_tick(
    redis_url: str, extractor: Any, examples: list[Any]
) -> None:
    from listener.daemon.service import _every
    from listener.inputs.zmq import DRAIN_MAX

    h = Harness(redis_url, extractor, flush_interval_s=60.0)
    bodies = rebased(examples, time.time())
    await h.start(bodies[0])
    await h.consumer.flush()
    base = h.consumer.stats.counted
    flusher = asyncio.create_task(
        _every(60.0, h.consumer.flush, "flush", wake=h.consumer.flush_wanted)
    )
    try:
        # sent while the bus cannot run (same thread): it finds them all queued
        n = 4 * DRAIN_MAX + 123
        for k in range(n):
            body = dict(bodies[k % len(bodies)], msg_id=f"backlog-{k}")
            h.pub.send_multipart(encode_frames(body))
        deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
        while h.consumer.stats.counted < base + n:
            # the flush tick is 60 s away: only the end of the backlog flushes
            assert time.monotonic() < deadline, f"counted {h.consumer.stats.counted - base}"
            await asyncio.sleep(0.02)
        assert h.consumer.stats.counted == base + n
        assert h.bus is not None and not h.bus.links[0].backlog
    finally:
        flusher.cancel()
        await h.close()


async def test_malformed_frames_are_counted_and_the_consumer_keeps_going(
    redis_url: str, extractor: Any, examples: list[Any]
) -> None:
    now = time.time()
    bodies = rebased(examples[:20], now)
    h = Harness(redis_url, extractor, max_body_bytes=1 << 20)
    await h.start(bodies[0])
    base = h.consumer.stats.received
    good_topic = bodies[1]["topic"].encode()
    bad = [
        [b"org.fedoraproject.prod.only.one.frame"],
        [good_topic, b"{}", b"three"],
        [good_topic, b"{not json"],
        [good_topic, b"[1, 2, 3]"],
        [good_topic, json.dumps({**bodies[1], "msg": None, "msg_id": "null-msg"}).encode()],
        [good_topic, json.dumps({**bodies[1], "msg": "str", "msg_id": "str-msg"}).encode()],
        [b"org.fedoraproject.prod.other.topic", json.dumps(bodies[1]).encode()],
        [good_topic, b'{"topic": "\xff\xfe"}'],
        [good_topic, json.dumps({**bodies[1], "pad": "x" * (10 * 1024 * 1024)}).encode()],
    ]
    for fs in bad:
        h.pub.send_multipart(fs)
    for b in bodies[1:]:
        h.pub.send_multipart(encode_frames(b))
    await h.wait_received(base + len(bad) + len(bodies) - 1)
    await h.consumer.flush()
    rej = h.consumer.stats.rejected
    assert rej == Counter(
        {
            "frame_count": 2,
            "bad_json": 1,
            "not_object": 1,
            "bad_msg": 2,
            "topic_mismatch": 1,
            "bad_utf8": 1,
            "too_large": 1,
        }
    )
    counts = await h.store.read_window(3600, time.time())
    assert counts.messages == 20  # every good message, nothing from the bad ones
    await h.close()


async def test_poison_message_counted_by_topic_with_no_users(
    redis_url: str, extractor: Any, examples: list[Any]
) -> None:
    now = time.time()
    probe = rebased(examples[:1], now)[0]
    h = Harness(redis_url, extractor)
    await h.start(probe)
    base = h.consumer.stats.received
    poison = {
        "topic": "org.fedoraproject.prod.bodhi.update.comment",
        "msg": {"comment": None},  # the bodhi processor expects nested keys
        "msg_id": "poison-1",
        "timestamp": now,
        "i": 1,
        "username": "apache",
    }
    h.pub.send_multipart(encode_frames(poison))
    await h.wait_received(base + 1)
    await h.consumer.flush()
    counts = await h.store.read_window(3600, time.time())
    assert counts.topics["org.fedoraproject.prod.bodhi.update.comment"] >= 1
    assert h.consumer.stats.processor_errors >= 1
    await h.close()


# -- the commands, as a user runs them -----------------------------------------


def start_listener(redis_url: str, endpoint: str, prefix: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "listener",
            "listen",
            "--redis-url",
            redis_url,
            "--endpoint",
            endpoint,
            "--key-prefix",
            prefix,
            "--step",
            "1",
        ],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def snapshot(redis_url: str, prefix: str, window: int = 3600) -> dict[str, Any]:
    res = run_cli(
        "snapshot",
        "--window",
        str(window),
        "--json",
        "--all-users",
        "--redis-url",
        redis_url,
        "--key-prefix",
        prefix,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def replay(endpoint: str, *args: str) -> None:
    res = run_cli("replay", "--endpoint", endpoint, "--wait-subscribers", "1", *args, timeout=120)
    assert res.returncode == 0, res.stderr


def stop(proc: subprocess.Popen[str]) -> str:
    out = stop_listener(proc)  # SIGTERM; killed (and failing here) if it hangs
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_listen_replay_snapshot_twice_and_restart(redis_url: str, extractor: Any) -> None:
    prefix = f"e{uuid.uuid4().hex[:8]}"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    stream = str(CORPUS / "fedmsg_sample_datanommer_stream.jsonl")
    lines = [json.loads(x) for x in Path(stream).read_text(encoding="utf-8").splitlines()]
    proc = start_listener(redis_url, endpoint, prefix)
    try:
        replay(endpoint, stream, "--rebase-time", "--rate", "200")
        snap = wait_for(
            lambda: (s := snapshot(redis_url, prefix)) and s["messages"] == 25 and s,
            30,
            interval=0.5,
            what="25 messages counted",
        )
        # per-user counts equal the corpus' recorded fedmsg.meta usernames
        users: Counter[str] = Counter(u for line in lines for u in line["usernames"])
        assert dict(snap["top_users"]) == dict(users)
        assert snap["users"] == 7
        topics = Counter(line["topic"] for line in lines)
        assert snap["topics"] == dict(topics)
        # the same replay again (same msg_ids): counted once
        replay(endpoint, stream, "--rebase-time", "--rate", "200")
        time.sleep(1.5)
        assert snapshot(redis_url, prefix)["messages"] == 25
        # --new-ids (what the demo replays with): a new run counts again, twice over
        replay(endpoint, stream, "--rebase-time", "--rate", "200", "--new-ids")
        replay(endpoint, stream, "--rebase-time", "--rate", "200", "--new-ids")
        wait_for(
            lambda: snapshot(redis_url, prefix)["messages"] == 75,
            30,
            interval=0.5,
            what="two --new-ids runs counted",
        )
    finally:
        out = stop(proc)
    assert "listener stopped" in out
    # a restart keeps the counts, and the new listener's windows start from them
    import redis

    r = redis.Redis.from_url(redis_url)
    r.delete("{" + prefix + "}:state")  # the old listener's last tick: wait for a new one
    proc = start_listener(redis_url, endpoint, prefix)
    try:

        def tick_has_75() -> bool:
            raw = r.get("{" + prefix + "}:state")
            return bool(raw) and json.loads(raw)["windows"]["3600"]["messages"] == 75

        wait_for(tick_has_75, 30, interval=0.3, what="restarted listener's tick")
        assert snapshot(redis_url, prefix)["messages"] == 75
    finally:
        stop(proc)


async def test_a_run_of_task_failures_logs_milestones_then_one_recovery_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis outage fails flush, step, blink and heartbeat on every retry: the
    journal gets the 1st and 10th failure of the run as warnings, then one INFO line."""
    import logging

    from listener.daemon.service import _every

    calls = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= 12:
            raise ConnectionError("Redis is down")
        done.set()

    caplog.set_level(logging.DEBUG, logger="listener.daemon.service")
    task = asyncio.create_task(_every(0.001, flaky, "flush", max_backoff_s=0.002))
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    failed = [r for r in caplog.records if "flush failed" in r.getMessage()]
    assert len(failed) == 12
    assert [r.levelno for r in failed].count(logging.WARNING) == 2  # the 1st and the 10th
    assert "(10 failure(s) in a row)" in failed[9].getMessage()
    back = [r for r in caplog.records if "works again" in r.getMessage()]
    assert len(back) == 1 and "after 12 failure(s)" in back[0].getMessage()
    assert back[0].levelno == logging.INFO


async def test_a_task_whose_call_swallows_cancel_still_stops() -> None:
    """redis-py's pipeline may swallow the CancelledError of ``cancel()``; the
    periodic loop must stop anyway (a 5 s stall at shutdown otherwise)."""
    from listener.daemon.service import _every

    inside = asyncio.Event()
    calls = 0

    async def swallows() -> None:
        nonlocal calls
        calls += 1
        if calls > 1:  # the loop went on after cancel(): end it, so the test fails
            raise asyncio.CancelledError()
        inside.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what redis-py's execute() may do

    task = asyncio.create_task(_every(0.01, swallows, "blink"))
    await asyncio.wait_for(inside.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert task in done and task.cancelled()
    assert calls == 1
