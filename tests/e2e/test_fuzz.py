"""Poison messages and fuzzing of the frame decoder and the message handler.

Hypothesis drives :func:`listener.core.envelope.decode_frames` with arbitrary frames and
:meth:`listener.core.intake.Intake.handle_frames` with arbitrary JSON, fedmsg-like
bodies and mutated real Fedora messages (the examples shipped with
fedmsg_meta_fedora_infrastructure, so the real processors run on them).  For every
input: no exception escapes, and the message is either accepted (and later counted
in a real Redis) or rejected with a named reason (or skipped as a duplicate).

The poison tests use real messages broken the ways the issue names (missing
nested keys, ``msg`` null, a string body, None in a usernames set); the watchdog
test floods a real listener process with poison through a real ZeroMQ socket and a
real ``NOTIFY_SOCKET``, then makes a processor hang for real.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener.core.config import Config
from listener.core.envelope import REJECT_REASONS, Envelope, Rejected, decode_frames, encode_frames
from listener.core.intake import Intake
from listener.daemon.consumer import Consumer
from listener.inputs.signatures import SIGNATURE_REASONS
from listener.storage.store import Store
from tests.helpers.common import ROOT, TIMEOUT_FACTOR, free_port, wait_for

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: Reasons a consumer may give (envelope, signatures, and its own catch-all).
KNOWN_REASONS = set(REJECT_REASONS) | set(SIGNATURE_REASONS) | {"internal_error"}

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


def real_topics() -> list[str]:
    from listener.tools.examples import builtin_examples

    return sorted({e.body["topic"] for e in builtin_examples()})


def wire(body: Any) -> bytes:
    """JSON as a publisher might send it (``NaN``/``Infinity`` allowed, as Python's
    json writes them: not JSON, so the decoder must reject them)."""
    return json.dumps(body, allow_nan=True).encode("utf-8")


def fresh_consumer(redis_url: str, extractor: Any) -> tuple[Consumer, Store]:
    cfg = Config(redis_url=redis_url, key_prefix=f"z{uuid.uuid4().hex[:8]}", max_pending=10**6)
    store = Store.from_url(redis_url, prefix=cfg.key_prefix)
    return Consumer(cfg, Intake(cfg, extractor, time.time), store), store


class Ledger:
    """Checks that each handled message was accepted, rejected or a duplicate."""

    def __init__(self, consumer: Consumer) -> None:
        self.c = consumer
        self.accepted = 0

    def handle(self, frames: list[bytes], now: float) -> None:
        s = self.c.stats
        before = (s.received, sum(s.rejected.values()), s.duplicates, len(self.c.intake.pending))
        ok = self.c.intake.handle_frames(frames, now)  # must not raise
        after = (s.received, sum(s.rejected.values()), s.duplicates, len(self.c.intake.pending))
        assert after[0] == before[0] + 1
        assert set(s.rejected) <= KNOWN_REASONS, s.rejected
        if ok:
            self.accepted += 1
            assert after[3] == before[3] + 1 and after[1:3] == before[1:3]
        else:
            assert (after[1] - before[1]) + (after[2] - before[2]) == 1
            assert after[3] == before[3]


# -- the frame decoder ------------------------------------------------------------


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_decode_frames_never_raises(frames: list[bytes]) -> None:
    out = decode_frames(frames, max_body_bytes=200)
    assert isinstance(out, (Envelope, Rejected))
    if isinstance(out, Rejected):
        assert out.reason in REJECT_REASONS
    else:
        assert math.isfinite(out.timestamp) and isinstance(out.msg, dict)


@FUZZ
@given(json_values, st.booleans())
def test_decode_frames_of_any_json(value: Any, topic_matches: bool) -> None:
    topic = value.get("topic") if isinstance(value, dict) else None
    head = b"t"
    if topic_matches and isinstance(topic, str):
        head = topic.encode("utf-8", "surrogatepass")
    out = decode_frames([head, wire(value)])
    assert isinstance(out, (Envelope, Rejected))
    if isinstance(out, Rejected):
        assert out.reason in REJECT_REASONS
        assert out.msg_id is None or isinstance(out.msg_id, str)


# -- the message handler, then Redis -------------------------------------------------


async def test_handler_counts_or_rejects_any_input(redis_url: str, extractor: Any) -> None:
    """Arbitrary frames and fedmsg-shaped bodies of arbitrary JSON, through the real
    consumer (real fedmsg.meta processors), then flushed to Redis."""
    consumer, store = fresh_consumer(redis_url, extractor)
    await consumer.warm_up()
    ledger = Ledger(consumer)
    now = time.time()
    topics = st.sampled_from(real_topics()) | st.text(max_size=40)
    bodies = st.fixed_dictionaries(
        {},
        optional={
            "topic": topics | json_values,
            "msg": st.dictionaries(st.text(max_size=12), json_values, max_size=6) | json_values,
            "msg_id": st.uuids().map(str) | json_values,
            "timestamp": st.floats(now - 4000, now + 1000) | st.integers(0, 2**40) | json_values,
            "i": st.integers(-5, 2**40) | json_values,
            "username": st.text(max_size=10) | json_values,
            "certificate": json_values,
        },
    )
    # valid by construction: the loose bodies above are valid only rarely (a run of
    # 300 of them alone produced none in 2 of 12 runs), and the Redis checks below
    # need some messages counted
    valid = st.fixed_dictionaries(
        {
            "topic": st.sampled_from(real_topics()),
            "msg": st.dictionaries(st.text(max_size=12), json_values, max_size=6),
            "msg_id": st.uuids().map(str),
            "timestamp": st.floats(now - 4000, now + 1000),
        },
        optional={"i": st.integers(-5, 2**40), "username": st.text(max_size=10)},
    )

    @FUZZ
    @given(bodies | valid, st.booleans(), st.lists(st.binary(max_size=50), max_size=3))
    def run(body: dict[str, Any], framed: bool, junk: list[bytes]) -> None:
        if framed:
            topic = body.get("topic")
            head = topic.encode("utf-8", "surrogatepass") if isinstance(topic, str) else b""
            ledger.handle([head, wire(body)], now)
        else:
            ledger.handle(junk, now)

    run()
    assert ledger.accepted > 0, "the strategy must produce some valid messages"
    while consumer.intake.pending:
        await consumer.flush()
    assert consumer.stats.counted == ledger.accepted
    meta = await store.meta()
    assert int(meta["messages_total"]) == ledger.accepted
    await store.close()


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(obj, list):
        for k, v in enumerate(obj[:3]):
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    return out


async def test_mutated_real_messages_are_counted_by_topic(
    redis_url: str, extractor: Any, examples: list[Any]
) -> None:
    """Real Fedora messages with a nested key deleted, set to None, or given another
    type: the processors may raise, but every message is counted under its topic."""
    consumer, store = fresh_consumer(redis_url, extractor)
    await consumer.warm_up()
    ledger = Ledger(consumer)
    now = time.time()
    topics: Counter[str] = Counter()
    # a new list per draw: st.just([None]) handed out one list, which a later mutation
    # could set inside itself (a cycle orjson refuses: "Circular reference detected")
    fresh_list = st.builds(lambda: [None])
    replacements = st.none() | st.just("") | fresh_list | st.integers() | st.text(max_size=5)

    @FUZZ
    @given(st.sampled_from(examples), st.data())
    def run(example: Any, data: st.DataObject) -> None:
        body = copy.deepcopy(example.body)
        body.update(msg_id=str(uuid.uuid4()), timestamp=now - 60)
        paths = _paths(body["msg"])
        for path in data.draw(st.lists(st.sampled_from(paths), max_size=3)) if paths else []:
            parent = body["msg"]
            try:
                for k in path[:-1]:
                    parent = parent[k]
                if data.draw(st.booleans()):
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = data.draw(replacements)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation removed the path
        ok_before = ledger.accepted
        ledger.handle([body["topic"].encode(), wire(body)], now)
        assert ledger.accepted == ok_before + 1, consumer.stats.rejected
        topics[body["topic"]] += 1

    run()
    while consumer.intake.pending:
        await consumer.flush()
    counts = await store.read_window(3600, time.time())
    assert dict(counts.topics) == dict(topics)
    assert all(isinstance(u, str) and u for u in counts.users)
    await store.close()


# -- poison messages, one by one -------------------------------------------------------


def _records_with(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_poison_messages_are_counted_or_rejected_and_logged_once(
    redis_url: str, extractor: Any, examples: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # repeats of a reason go to DEBUG
    consumer, store = fresh_consumer(redis_url, extractor)
    await consumer.warm_up()
    now = time.time()
    by_topic = {e.body["topic"]: e.body for e in examples}

    def poison(topic: str, msg: Any, tag: str) -> dict[str, Any]:
        return {
            "topic": topic,
            "msg": msg,
            "msg_id": f"poison-{tag}",
            "timestamp": now,
            "i": 1,
            "username": "apache",
        }

    bodhi = "org.fedoraproject.prod.bodhi.update.comment"
    # 1. missing nested keys: the bodhi processor raises (KeyError/TypeError)
    missing = poison(bodhi, {"comment": None}, "missing")
    # 2. None in a usernames set: askbot's processor returns {None, ...} without agent
    askbot = copy.deepcopy(by_topic["org.fedoraproject.stg.askbot.post.edit"])
    askbot["msg"]["agent"] = None
    askbot.update(msg_id="poison-none-user", timestamp=now)
    # 3. msg null, and a string msg: not a fedmsg payload
    null_msg = poison(bodhi, None, "null")
    str_msg = poison(bodhi, "a string", "str")
    results = {
        name: consumer.intake.handle_frames(encode_frames(body), now)
        for name, body in (
            ("missing", missing),
            ("none-user", askbot),
            ("null", null_msg),
            ("str", str_msg),
        )
    }
    # 4. a string body (valid JSON, not an object) and bytes that are not JSON
    handle = consumer.intake.handle_frames
    results["string-body"] = handle([bodhi.encode(), b'"just a string"'], now)
    results["not-json"] = handle([bodhi.encode(), b"\x00\xff{"], now)
    assert results == {
        "missing": True,
        "none-user": True,
        "null": False,
        "str": False,
        "string-body": False,
        "not-json": False,
    }
    assert consumer.stats.processor_errors >= 1
    assert consumer.stats.rejected == Counter({"bad_msg": 2, "not_object": 1, "bad_utf8": 1})
    await consumer.flush()
    counts = await store.read_window(3600, time.time())
    assert counts.topics[bodhi] == 1 and counts.topics[askbot["topic"]] == 1
    assert all(u for u in counts.users) and None not in counts.users
    # logged once each, with the msg_id
    assert len(_records_with(caplog, "poison-missing")) == 1
    assert len(_records_with(caplog, "poison-null")) == 1
    assert len(_records_with(caplog, "poison-str")) == 1
    await store.close()


# -- the watchdog: fed through a poison flood, not fed when really stuck -------------


#: Makes bodhi's processor hang for real on a message carrying ``"hang": true``.
HANG = """
import time
import fedmsg_meta_fedora_infrastructure.bodhi as bodhi
_usernames = bodhi.BodhiProcessor.usernames
def usernames(self, msg, **config):
    if isinstance(msg.get("msg"), dict) and msg["msg"].get("hang"):
        time.sleep(3600)
    return _usernames(self, msg, **config)
bodhi.BodhiProcessor.usernames = usernames
"""


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fwb-notify-", dir="/tmp")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.log: list[tuple[float, str]] = []

    def drain(self, for_s: float) -> None:
        end = time.monotonic() + for_s
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            for line in data.splitlines():
                self.log.append((time.monotonic(), line))

    def watchdogs(self, since: float = 0.0) -> list[float]:
        return [t for t, line in self.log if line == "WATCHDOG=1" and t >= since]

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def test_watchdog_fed_through_poison_and_not_when_stuck(redis_url: str, tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    prefix = f"d{uuid.uuid4().hex[:8]}"
    mport = free_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HANG, encoding="utf-8")
    notify = NotifySocket()
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000", PYTHONPATH=str(site))
    ctx: zmq.Context[Any] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    # a log file, as a pipe nobody reads would block it; the child keeps its own copy
    # of the descriptor, ours is closed at once
    with open(tmp_path / "listener.log", "w") as logfile:
        proc = subprocess.Popen(
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
                "--metrics-port",
                str(mport),
            ],
            cwd=str(ROOT),
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
    bodhi = "org.fedoraproject.prod.bodhi.update.comment"

    def body(k: int, **msg: Any) -> dict[str, Any]:
        return {
            "topic": bodhi,
            "msg": msg or {"comment": None},
            "msg_id": f"w-{k}",
            "timestamp": time.time(),
            "i": k,
            "username": "apache",
        }

    try:
        notify.drain(0)
        wait_for(
            lambda: notify.drain(0.2) or any(x == "READY=1" for _, x in notify.log),
            30,
            what="READY=1",
        )
        from tests.helpers.listener_proc import metrics

        k = 0

        def joined() -> bool:
            nonlocal k
            k += 1
            pub.send_multipart(encode_frames(body(k)))
            notify.drain(0.1)
            return metrics(mport)["fedmsg_wallboard_received_total"] > 0

        wait_for(joined, 20, what="listener receiving")
        # 5 s of poison (~160/s processor errors + ~160/s non-JSON frames)
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < 5:
            for _ in range(20):
                k += 1
                pub.send_multipart(encode_frames(body(k)))
                pub.send_multipart([bodhi.encode(), b"[1, 2"])
                sent += 1
            notify.drain(0.1)
        flood = notify.watchdogs(since=t0)
        gaps = [b - a for a, b in zip(flood, flood[1:], strict=False)]
        m = wait_for(
            lambda: (m := metrics(mport))["fedmsg_wallboard_counted_total"] >= sent and m,
            20,
            what="poison counted",
        )
        assert m["fedmsg_wallboard_processor_errors_total"] >= sent
        assert m["fedmsg_wallboard_rejected_total{reason=bad_json}"] >= sent
        assert len(flood) >= 8 and max(gaps) < 1.5, gaps  # every 0.5 s, through the flood
        # now a processor hangs for real: the loop is stuck, the watchdog starves
        pub.send_multipart(encode_frames(body(k + 1, hang=True)))
        t1 = time.monotonic()
        notify.drain(4 * TIMEOUT_FACTOR)
        late = [t for t in notify.watchdogs(since=t1) if t > t1 + 1.0]
        assert late == [], "WATCHDOG=1 sent while the loop was stuck"
        from urllib.error import HTTPError
        from urllib.request import urlopen

        with pytest.raises(HTTPError) as err:  # the monitoring thread still answers
            urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=10)
        assert err.value.code == 503
        assert json.loads(err.value.read())["live"] is False
        print(
            "watchdog",
            json.dumps(
                {
                    "poison_sent": sent,
                    "watchdogs_in_flood": len(flood),
                    "max_gap_s": round(max(gaps), 2),
                }
            ),
        )
    finally:
        proc.kill()
        proc.wait(10)
        pub.close()
        ctx.destroy(linger=0)
        notify.close()


async def test_a_flood_of_bad_messages_is_counted_but_logged_at_milestones(
    redis_url: str, fedmsg_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from listener.core.users import UserExtractor

    caplog.set_level(logging.WARNING)
    # its own extractor: the session's has seen processor failures already
    consumer, store = fresh_consumer(redis_url, UserExtractor(fedmsg_config))
    await consumer.warm_up()
    now = time.time()
    topic = "org.fedoraproject.prod.bodhi.update.comment"
    for k in range(1200):
        assert not consumer.intake.handle_frames([topic.encode(), b"{not json %d" % k], now)
    # the bodhi processor raises on this shape (KeyError): counted, users empty
    for k in range(300):
        body = {
            "topic": topic,
            "msg": {"comment": None},
            "msg_id": f"flood-{k}",
            "timestamp": now,
            "i": 1,
            "username": "apache",
        }
        assert consumer.intake.handle_frames(encode_frames(body), now)
    assert consumer.stats.rejected["bad_json"] == 1200
    assert consumer.stats.processor_errors == 300
    rejected = _records_with(caplog, "rejected msg_id=")
    # the 1st, 10th, 100th and 1,000th
    assert [r.getMessage().rsplit("; ", 1)[1] for r in rejected] == [
        f"{n} rejected as bad_json so far" for n in (1, 10, 100, 1000)
    ]
    failed = [r for r in _records_with(caplog, "processor failed") if "flood-" in r.getMessage()]
    # the first (on this topic, and the 1st of all), the 10th and the 100th
    assert [r.getMessage().rsplit("; ", 1)[1] for r in failed] == [
        f"{n} processor failures so far" for n in (1, 10, 100)
    ]
    await consumer.flush()
    assert (await store.read_window(3600, time.time())).topics[topic] == 300
    await store.close()
