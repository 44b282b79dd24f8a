"""The AMQP input against a real RabbitMQ, fed with fedora-messaging's own publish API.

The broker is Debian's ``rabbitmq-server`` started by ``tests/helpers/rabbitmq.py``; Redis is
the session's real redis-server.  Messages are real Fedora messages: the examples
shipped with fedmsg_meta_fedora_infrastructure (published bridged, or their ``msg``
as a native body), and a real bodhi schema (``bodhi-messages``) message.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import fedmsg.meta
import pytest
import zmq
from pika.adapters.utils.connection_workflow import AMQPConnectionWorkflowFailed

from listener.core.config import Config
from listener.core.envelope import Rejected, category_of, encode_frames
from listener.core.intake import Intake
from listener.daemon.consumer import Consumer
from listener.inputs.amqp import (
    DEAD_AFTER_S,
    QUIET_AFTER_S,
    AmqpInput,
    AmqpSettings,
    Backoff,
    Decoded,
    SchemaUsers,
    header_users,
    pick_users,
    sent_at_seconds,
    to_fedmsg,
    unwrap_bridged,
)
from listener.inputs.amqp.input import connect_failure
from listener.storage.store import Store
from listener.tools.amqp_replay import Pace, configure_publisher, publish_replay
from listener.tools.replay import wire_body
from tests.helpers.common import ROOT, TIMEOUT_FACTOR, demo_command, free_port, run_cli

# -- pure: AMQP message -> fedmsg body ------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2019-07-30T19:12:22+00:00", 1564513942.0),  # fedora-messaging's format
        ("2019-07-30T19:12:22Z", 1564513942.0),
        ("2019-07-30T19:12:22", 1564513942.0),  # naive: UTC
        ("2019-07-30T21:12:22+02:00", 1564513942.0),
        ("2019-07-30T19:12:22.250000+00:00", 1564513942.25),
        (b"2019-07-30T19:12:22+00:00", 1564513942.0),
        ("yesterday", None),
        ("", None),
        (None, None),
        (1564513942, None),
        (b"\xff\xfe", None),
    ],
)
def test_sent_at_header_in_unix_seconds(value: Any, expected: float | None) -> None:
    assert sent_at_seconds(value) == expected


def test_user_headers() -> None:
    headers = {
        "fedora_messaging_schema": "bodhi.update.comment.v1",
        "fedora_messaging_user_kalev": True,
        "fedora_messaging_user_mattdm": True,
        "fedora_messaging_user_off": False,
        "fedora_messaging_user_": True,
        "fedora_messaging_rpm_kernel": True,
        "sent-at": "2019-07-30T19:12:22+00:00",
    }
    assert header_users(headers) == {"kalev", "mattdm"}
    assert header_users({"fedora_messaging_rpm_kernel": True}) is None
    assert header_users(None) is None


ENVELOPE = {
    "topic": "org.fedoraproject.prod.buildsys.tag",
    "msg": {"owner": "dgilmore", "tag": "f27", "build_id": 1},
    "msg_id": "2017-6ff2a4e8-9b9b-4b55-a5b4-4b7b1bfdc7c6",
    "timestamp": 1504643075.0,
    "i": 3,
    "username": "apache",
}


def test_native_message_becomes_a_fedmsg_body() -> None:
    raw = json.dumps({"comment": {"text": "hi"}}).encode()
    d = to_fedmsg(
        "org.fedoraproject.prod.bodhi.update.comment",
        "3c0a3c0a-0000-4000-8000-000000000001",
        {"sent-at": "2019-07-30T19:12:22+00:00", "fedora_messaging_schema": "bodhi.x"},
        raw,
        arrival_s=2e9,
    )
    assert isinstance(d, Decoded) and not d.bridged and d.schema == "bodhi.x"
    assert d.body == {
        "topic": "org.fedoraproject.prod.bodhi.update.comment",
        "msg": {"comment": {"text": "hi"}},
        "msg_id": "3c0a3c0a-0000-4000-8000-000000000001",
        "timestamp": 1564513942.0,
        "i": 0,
        "username": None,
    }


def test_bridged_envelopes_are_unwrapped_to_the_innermost() -> None:
    raw = json.dumps(ENVELOPE).encode()
    d = to_fedmsg("org.fedoraproject.prod.buildsys.tag", ENVELOPE["msg_id"], {}, raw, 2e9)
    assert isinstance(d, Decoded) and d.bridged
    assert d.body["topic"] == ENVELOPE["topic"] and d.body["msg"] == ENVELOPE["msg"]
    assert d.body["msg_id"] == ENVELOPE["msg_id"]
    assert d.body["timestamp"] == ENVELOPE["timestamp"]  # no sent-at: the envelope's
    # a wrapper nesting a whole envelope under msg (corpus stream / AMQP->ZMQ->AMQP)
    wrapped = {"topic": "x.y", "msg": ENVELOPE, "timestamp": 1.0, "msg_id": "2024-abc"}
    assert unwrap_bridged(wrapped) == ENVELOPE
    assert unwrap_bridged({"topic": "a", "msg": {"k": 1}}) is None  # no id, no time
    d2 = to_fedmsg(
        "rk", None, {"sent-at": "2019-07-30T19:12:22Z"}, json.dumps(wrapped).encode(), 2e9
    )
    assert isinstance(d2, Decoded)
    assert d2.body["topic"] == ENVELOPE["topic"] and d2.body["msg"] == ENVELOPE["msg"]
    assert d2.body["msg_id"] == ENVELOPE["msg_id"]  # no AMQP id: the inner one
    assert d2.body["timestamp"] == 1564513942.0  # sent-at wins


def test_missing_id_gets_a_stable_one_and_time_falls_back() -> None:
    raw = b'{"a": 1}'
    a = to_fedmsg("t.a", None, None, raw, 123.0)
    b = to_fedmsg("t.a", "", {}, raw, 456.0, amqp_timestamp=100)
    assert isinstance(a, Decoded) and isinstance(b, Decoded)
    assert a.body["msg_id"] == b.body["msg_id"] and a.body["msg_id"].startswith("amqp-")
    assert a.body["timestamp"] == 123.0 and b.body["timestamp"] == 100.0


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe{}", "bad_utf8"),
        (b"[" + b"1," * 600_000 + b"1]", "too_large"),
    ],
)
def test_bad_bodies_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    r = to_fedmsg("t", "id-1", {}, raw, 1.0)
    assert isinstance(r, Rejected) and r.reason == reason and r.msg_id == "id-1"


def test_user_sources_in_order() -> None:
    native = to_fedmsg("t", "i", {}, b'{"a": 1}', 1.0)
    bridged = to_fedmsg("t", "i", {}, json.dumps(ENVELOPE).encode(), 1.0)
    assert isinstance(native, Decoded) and isinstance(bridged, Decoded)
    calls: list[str] = []

    def schema(d: Decoded, h: Any) -> list[str] | None:
        calls.append(d.body["msg_id"])
        return []

    assert pick_users(native, {"fedora_messaging_user_x": True}, schema) == {"x"}
    assert calls == []
    assert pick_users(native, {}, schema) == []  # a schema declaring none: no users
    assert pick_users(bridged, {}, schema) is None  # bridged: fedmsg.meta
    assert pick_users(native, {}, lambda d, h: None) is None  # unknown: fedmsg.meta
    assert pick_users(native, {}, None) is None


def bodhi_comment_body(examples: list[Any]) -> dict[str, Any]:
    """A real bodhi comment (fedmsg_meta's TestBodhi4Comment) with a mention added."""
    ex = next(e for e in examples if e.name == "TestBodhi4Comment")
    msg = json.loads(json.dumps(ex.body["msg"]))
    msg["comment"]["text"] += " -- thanks @mattdm"
    return msg


def test_installed_schema_gives_usernames(examples: list[Any]) -> None:
    schemas = SchemaUsers()
    assert "bodhi.update.comment.v1" in schemas.names  # bodhi-messages (test dep)
    body = bodhi_comment_body(examples)
    d = to_fedmsg(
        "org.fedoraproject.prod.bodhi.update.comment",
        "i-1",
        {"fedora_messaging_schema": "bodhi.update.comment.v1"},
        json.dumps(body).encode(),
        1.0,
    )
    assert isinstance(d, Decoded)
    assert schemas(d, {}) == ["kalev", "mattdm"]
    # the base schema declares no usernames; an unknown schema is not installed
    for name in ("base.message", "nobody.knows.v1", ""):
        other = to_fedmsg("t", "i", {"fedora_messaging_schema": name}, b"{}", 1.0)
        assert isinstance(other, Decoded) and schemas(other, {}) is None
    # a body that does not fit the schema: None (fedmsg.meta asked), counted
    broken = to_fedmsg(
        "t", "i", {"fedora_messaging_schema": "bodhi.update.comment.v1"}, b'{"comment": 3}', 1.0
    )
    assert isinstance(broken, Decoded) and schemas(broken, {}) is None
    assert schemas.errors == 1


def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    b = Backoff(1.0, 8.0, jitter=0.25)
    delays = [b.next() for _ in range(6)]
    for got, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert base <= got <= base * 1.25
    b.reset()
    assert 1.0 <= b.next() <= 1.25


def test_settings_tls_and_bad_files(tmp_path: Any) -> None:
    from listener.core.errors import ConfigError

    s = AmqpSettings(url="amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub")
    params = s.parameters()
    assert params.ssl_options is not None and params.host == "rabbitmq.fedoraproject.org"
    assert params.virtual_host == "/public_pubsub"
    bad = AmqpSettings(url=s.url, certfile=str(tmp_path / "no.pem"), keyfile=str(tmp_path / "k"))
    with pytest.raises(ConfigError):
        bad.parameters()
    assert AmqpSettings(url="amqp://guest:guest@127.0.0.1:5/%2F").parameters().ssl_options is None


def test_config_defaults_come_from_fedora_messaging_config(tmp_path: Any, monkeypatch: Any) -> None:
    conf = tmp_path / "fm.toml"
    conf.write_text(
        'amqp_url = "amqp://u:p@broker.example:5673/%2Fv"\n'
        '[tls]\nca_cert = "/ca.pem"\ncertfile = "/c.pem"\nkeyfile = "/k.pem"\n'
    )
    from fedora_messaging import config as fm_config

    fm_config.conf.load_config(str(conf))
    try:
        s = AmqpSettings.from_config(Config(bus="amqp", amqp_queue="q", amqp_bindings=("a.#",)))
        assert (s.url, s.ca_cert, s.certfile, s.keyfile) == (
            "amqp://u:p@broker.example:5673/%2Fv",
            "/ca.pem",
            "/c.pem",
            "/k.pem",
        )
        assert s.queue == "q" and s.bindings == ("a.#",)
        own = AmqpSettings.from_config(Config(amqp_url="amqp://other/%2F"))
        assert own.url == "amqp://other/%2F" and own.certfile == ""
    finally:
        fm_config.conf.load_config("/nonexistent/fedora-messaging.toml")


# -- against a real broker ---------------------------------------------------------


async def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class Harness:
    """A Consumer + AmqpInput on a fresh Redis key prefix."""

    def __init__(
        self,
        redis_url: str,
        extractor: Any,
        amqp_url: str,
        queue: str = "",
        prefetch: int = 500,
        bindings: tuple[str, ...] = ("#",),
        **cfg: Any,
    ) -> None:
        self.cfg = Config(
            redis_url=redis_url,
            key_prefix=f"a{uuid.uuid4().hex[:8]}",
            bus="amqp",
            amqp_url=amqp_url,
            amqp_queue=queue,
            amqp_bindings=bindings,
            **cfg,
        )
        self.store = Store.from_url(
            redis_url,
            prefix=self.cfg.key_prefix,
            buckets_s=self.cfg.buckets_s,
            windows_s=self.cfg.windows_s,
        )
        self.consumer = Consumer(self.cfg, Intake(self.cfg, extractor, time.time), self.store)
        settings = AmqpSettings(
            url=amqp_url, queue=queue, bindings=bindings, prefetch_count=prefetch
        )
        self.input = AmqpInput(
            self.cfg, self.consumer.intake, self.consumer, settings, Backoff(0.2, 1.0)
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.warm_up()
        self.task = asyncio.create_task(self.input.run())
        await until(lambda: self.input.stats.connected, 30, "AMQP connection")

    async def counts(self) -> Any:
        return await self.store.read_window(3600, time.time() + 1)

    async def wait_counted(self, n: int, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
        while True:
            c = await self.counts()
            if c.messages >= n:
                return c
            assert time.monotonic() < deadline, (
                f"counted {c.messages} of {n}; {self.input.stats}; {self.consumer.stats}"
            )
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        self.input.stop()
        for _ in range(20):
            try:
                await self.consumer.flush()
                break
            except Exception:
                await asyncio.sleep(0.2)
        await self.input.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.store.close()


def publish(amqp_url: str, messages: Iterable[Any]) -> int:
    """Publish with fedora-messaging's API (each waits for the broker's confirm)."""
    from fedora_messaging import api

    configure_publisher(amqp_url)
    n = 0
    for m in messages:
        api.publish(m)
        n += 1
    return n


def meta_users(bodies: Iterable[dict[str, Any]], fedmsg_config: dict[str, Any]) -> Counter[str]:
    """Per-user counts as fedmsg.meta gives them (each body through JSON, as on the wire)."""
    users: Counter[str] = Counter()
    for b in (json.loads(json.dumps(x)) for x in bodies):
        for u in fedmsg.meta.msg2usernames(b, **fedmsg_config):
            if u:
                users[u] += 1
    return users


def fresh(examples: list[Any], n: int) -> list[dict[str, Any]]:
    """``n`` real example envelopes with fresh msg_ids and recent timestamps."""
    tag = uuid.uuid4().hex[:8]
    now = time.time()
    out = []
    for k, ex in enumerate(examples[:n]):
        body = wire_body(ex.body)
        body["msg_id"] = f"{body['msg_id']}-{tag}"
        body["timestamp"] = now - 600 + k * 0.5
        out.append(body)
    return out


async def test_bridged_fedmsg_messages_are_counted_as_fedmsg_meta_counts_them(
    redis_url: str,
    amqp_url: str,
    extractor: Any,
    examples: list[Any],
    fedmsg_config: dict[str, Any],
    rabbitmq: Any,
) -> None:
    bodies = fresh(examples, 120)
    h = Harness(redis_url, extractor, amqp_url)
    await h.start()
    try:
        sent = await asyncio.to_thread(publish_replay, amqp_url, bodies, None)
        assert sent == 120
        c = await h.wait_counted(120)
        assert c.messages == 120
        assert c.topics == Counter(b["topic"] for b in bodies)
        assert c.categories == Counter(category_of(b["topic"]) for b in bodies)
        assert c.users == meta_users(bodies, fedmsg_config)
        assert h.input.stats.users_from == {"fedmsg.meta": 120}
        # every delivery acknowledged once counted: the queue is empty
        await until(lambda: h.input.stats.acked == 120, 10, "acks")
        await until(
            lambda: rabbitmq.queue_counts().get(h.input.queue_name) == (0, 0), 20, "empty queue"
        )
        # republished with the same AMQP ids: de-duplicated, nothing new
        await asyncio.to_thread(publish_replay, amqp_url, bodies[:10], None)
        await until(lambda: h.consumer.stats.duplicates >= 10, 20, "duplicates")
        assert (await h.counts()).messages == 120
    finally:
        await h.close()


async def test_native_messages_with_and_without_user_headers(
    redis_url: str,
    amqp_url: str,
    extractor: Any,
    examples: list[Any],
    fedmsg_config: dict[str, Any],
) -> None:
    from fedora_messaging.message import Message

    real = [e for e in examples if e.expected_usernames][:40]
    with_headers = []
    for k, ex in enumerate(real[:20]):
        users = {f"user{k % 3}", "shared"}
        headers: dict[str, Any] = {f"fedora_messaging_user_{u}": True for u in users}
        with_headers.append(Message(body=ex.body["msg"], topic=ex.body["topic"], headers=headers))
    # no user header, base schema: fedmsg.meta reads the native body
    without = [Message(body=ex.body["msg"], topic=ex.body["topic"]) for ex in real[20:]]
    h = Harness(redis_url, extractor, amqp_url)
    await h.start()
    try:
        await asyncio.to_thread(publish, amqp_url, with_headers + without)
        c = await h.wait_counted(40)
        want: Counter[str] = Counter()
        for k in range(20):
            want.update({f"user{k % 3}", "shared"})
        want.update(
            meta_users(
                [{"topic": ex.body["topic"], "msg": ex.body["msg"]} for ex in real[20:]],
                fedmsg_config,
            )
        )
        assert c.users == want
        assert c.users["shared"] == 20
        assert c.categories == Counter(category_of(ex.body["topic"]) for ex in real)
        assert h.input.stats.users_from == {"headers": 20, "fedmsg.meta": 20}
        # AMQP message ids are the msg_ids: every one counted once
        assert h.consumer.stats.counted == 40
    finally:
        await h.close()


async def test_schema_package_users_with_and_without_headers(
    redis_url: str,
    amqp_url: str,
    extractor: Any,
    examples: list[Any],
) -> None:
    from bodhi.messages.schemas.update import UpdateCommentV1

    topic = "org.fedoraproject.prod.bodhi.update.comment"
    body = bodhi_comment_body(examples)
    sent = UpdateCommentV1(body=body, topic=topic)  # fedora-messaging adds user headers
    assert sent._headers["fedora_messaging_user_mattdm"] is True
    stripped = UpdateCommentV1(body=body, topic=topic)
    for key in [k for k in stripped._headers if k.startswith("fedora_messaging_user_")]:
        del stripped._headers[key]
    h = Harness(redis_url, extractor, amqp_url, bindings=("org.fedoraproject.*.bodhi.#",))
    await h.start()
    try:
        await asyncio.to_thread(publish, amqp_url, [sent, stripped])
        c = await h.wait_counted(2)
        assert c.users == {"kalev": 2, "mattdm": 2}
        assert c.categories == {"bodhi": 2}
        assert h.input.stats.users_from == {"headers": 1, "schema": 1}
    finally:
        await h.close()


def raw_publish(amqp_url: str, items: list[tuple[str, bytes, dict[str, Any] | None]]) -> None:
    """Publish raw bodies with pika (what a misbehaving publisher sends)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for topic, raw, headers in items:
            ch.basic_publish(
                "amq.topic",
                topic,
                raw,
                pika.BasicProperties(headers=headers, message_id=str(uuid.uuid4())),
            )
    finally:
        conn.close()


async def test_bad_messages_are_counted_skipped_and_acked(
    redis_url: str,
    amqp_url: str,
    extractor: Any,
    rabbitmq: Any,
) -> None:
    h = Harness(redis_url, extractor, amqp_url)
    await h.start()
    try:
        good = json.dumps({"owner": "dgilmore", "tag": "f27"}).encode()
        await asyncio.to_thread(
            raw_publish,
            amqp_url,
            [
                ("org.fedoraproject.prod.buildsys.tag", b"{not json", None),
                ("org.fedoraproject.prod.buildsys.tag", b"\xff\xfe", None),
                ("org.fedoraproject.prod.buildsys.tag", b"[1, 2]", {}),
                ("org.fedoraproject.prod.buildsys.tag", b"null", None),
                ("org.fedoraproject.prod.buildsys.tag", good, {"sent-at": "garbage"}),
            ],
        )
        c = await h.wait_counted(1)
        await until(lambda: h.input.stats.received == 5, 10, "5 deliveries")
        assert c.messages == 1 and c.topics == {"org.fedoraproject.prod.buildsys.tag": 1}
        assert h.input.stats.rejected == {"bad_json": 1, "bad_utf8": 1}
        assert h.consumer.stats.rejected == {"bad_json": 1, "bad_utf8": 1, "bad_msg": 2}
        await until(
            lambda: rabbitmq.queue_counts().get(h.input.queue_name) == (0, 0), 20, "empty queue"
        )
    finally:
        await h.close()


async def test_zmq_and_amqp_together_are_deduplicated_by_msg_id(
    redis_url: str,
    amqp_url: str,
    extractor: Any,
    examples: list[Any],
) -> None:
    from listener.inputs.zmq import Bus

    bodies = fresh(examples, 60)
    h = Harness(redis_url, extractor, amqp_url)
    await h.start()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    bus = Bus(
        h.cfg.replace(bus="both"), [endpoint], "", h.consumer.intake, h.consumer.flush_wanted.set
    )
    bus_task = asyncio.create_task(bus.run())
    try:
        # join the SUB first with a probe that is one of the messages
        deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
        while h.consumer.stats.received == 0:
            assert time.monotonic() < deadline, "SUB never joined"
            pub.send_multipart(encode_frames(bodies[0]))
            await asyncio.sleep(0.05)
        for b in bodies:
            pub.send_multipart(encode_frames(b))
        await asyncio.to_thread(publish_replay, amqp_url, bodies, None)
        c = await h.wait_counted(60)
        await until(lambda: h.input.stats.received == 60, 20, "AMQP deliveries")
        await asyncio.sleep(0.5)
        assert (await h.counts()).messages == 60 == c.messages
        assert c.topics == Counter(b["topic"] for b in bodies)
        assert h.consumer.stats.counted == 60
        assert h.consumer.stats.duplicates >= 60  # each message seen on both buses
    finally:
        bus.stop()
        await asyncio.gather(bus_task, return_exceptions=True)
        bus.close()
        pub.close()
        ctx.term()
        await h.close()


@pytest.mark.faults
async def test_input_state_connecting_then_dead_without_a_broker(
    redis_url: str, extractor: Any
) -> None:
    """No broker on the port: ``"connecting"`` for the grace, then ``"dead"`` (what
    ``/healthz`` and the wall's badge show), while the input keeps retrying."""
    port = free_port()  # nothing listens there
    h = Harness(redis_url, extractor, f"amqp://guest:guest@127.0.0.1:{port}/%2F")
    await h.consumer.warm_up()
    t0 = time.time()
    h.task = asyncio.create_task(h.input.run())
    try:
        await until(lambda: h.input.stats.reconnects >= 2, 30, "two refused connections")
        assert h.input.stats.connected is False and h.input.stats.connects == 0
        assert h.input.state(t0 + 1.0) == "connecting"
        assert h.input.state(t0 + DEAD_AFTER_S + 1.0) == "dead"
        assert h.input.health_fields(t0 + DEAD_AFTER_S + 1.0)["listener_amqp_state"] == "dead"
    finally:
        await h.close()


async def test_input_state_ok_quiet_and_ok_again_on_a_message(
    redis_url: str, amqp_url: str, rabbitmq: Any, extractor: Any, examples: list[Any]
) -> None:
    h = Harness(redis_url, extractor, amqp_url)
    await h.start()
    try:
        now = time.time()
        assert h.input.state(now) == "ok"  # a session, its first seconds
        assert h.input.state(now + QUIET_AFTER_S + 1.0) == "quiet"
        await asyncio.to_thread(publish_replay, amqp_url, fresh(examples, 3), None)
        await until(lambda: h.input.stats.received >= 3, 20, "3 deliveries")
        later = time.time()
        assert h.input.state(later) == "ok"
        assert h.input.state(later + QUIET_AFTER_S + 1.0) == "quiet"
        assert h.input.state(later + DEAD_AFTER_S + 1.0) == "ok"  # connected: never dead
    finally:
        await h.close()


async def test_broker_restart_and_redis_outage_lose_nothing_acknowledged(
    redis_url: str,
    redis_server: Any,
    amqp_url: str,
    rabbitmq: Any,
    extractor: Any,
    examples: list[Any],
    tmp_path: Any,
) -> None:
    """Redis down: deliveries stop at the prefetch bound, none acknowledged.  The
    broker restarts with them unacknowledged: redelivered.  More messages, then Redis
    back: every published message counted exactly once, every one acknowledged."""
    bodies = fresh(examples, 300)
    first, second = bodies[:200], bodies[200:]
    later = tmp_path / "second.jsonl"
    later.write_text("".join(json.dumps(b) + "\n" for b in second))
    queue = f"wallboard-test-{uuid.uuid4().hex[:8]}"  # durable: survives the restart
    h = Harness(redis_url, extractor, amqp_url, queue=queue, prefetch=50)
    await h.start()
    try:
        redis_server.stop()
        await asyncio.to_thread(publish_replay, amqp_url, first, None)
        await until(lambda: h.input.stats.received >= 50, 20, "a prefetch window")
        await asyncio.sleep(1.0)  # time to (wrongly) ack or over-deliver
        assert h.input.stats.received == 50  # the broker stops at the prefetch bound
        assert h.input.stats.acked == 0  # nothing acknowledged before it is counted
        assert (await asyncio.to_thread(rabbitmq.queue_counts)).get(queue) == (150, 50)
        await asyncio.to_thread(rabbitmq.restart)
        assert h.input.stats.acked == 0
        await until(lambda: h.input.stats.connects >= 2, 30, "reconnect")
        await until(lambda: h.input.stats.redelivered >= 1, 20, "a redelivery")
        # a fresh fedora-messaging publisher (this process's one is backing off)
        r = await asyncio.to_thread(
            run_cli, "amqp-replay", "--amqp-url", amqp_url, "--file", str(later)
        )
        assert r.returncode == 0, r.stderr
        redis_server.start()
        await h.wait_counted(300, timeout=60)
        await until(lambda: rabbitmq.queue_counts().get(queue) == (0, 0), 30, "every message acked")
        c = await h.counts()
        assert c.messages == 300  # each exactly once
        assert c.topics == Counter(b["topic"] for b in bodies)
        assert h.input.stats.acked + h.input.stats.nacked >= 300
        assert h.input.stats.reconnects >= 1
    finally:
        if redis_server.proc is None:
            redis_server.start()
        await h.close()


# -- the CLI: listen --bus amqp, amqp-replay ------------------------------------------


@pytest.mark.slow
async def test_listen_bus_amqp_end_to_end(
    redis_url: str,
    amqp_url: str,
    rabbitmq: Any,
    examples: list[Any],
) -> None:
    """``listen --bus amqp`` as a subprocess: counts what fedora-messaging publishes,
    acknowledges it, and exits 0 on SIGTERM."""
    prefix = f"e{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "listener",
            "listen",
            "--bus",
            "amqp",
            "--amqp-url",
            amqp_url,
            "--redis-url",
            redis_url,
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
    lines: list[str] = []
    connected = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "AMQP connected" in line:
                connected.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    store = Store.from_url(redis_url, prefix=prefix)
    try:
        ok = await asyncio.to_thread(connected.wait, 90 * TIMEOUT_FACTOR)
        assert ok, "".join(lines)
        queue = next(ln for ln in lines if "AMQP connected" in ln).split("queue ")[1].split()[0]
        bodies = fresh(examples, 30)
        assert await asyncio.to_thread(publish_replay, amqp_url, bodies, Pace(rate=200.0)) == 30

        async def counted() -> int:
            return (await store.read_window(3600, time.time() + 1)).messages

        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while await counted() < 30:
            assert time.monotonic() < deadline, "".join(lines)
            await asyncio.sleep(0.2)
        await until(lambda: rabbitmq.queue_counts().get(queue) == (0, 0), 20, "acks")
        assert await counted() == 30
        # the heartbeat reports the AMQP input's state, as /healthz reads it
        deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
        while "listener_bus_state" not in (meta := await store.meta()):
            assert time.monotonic() < deadline, meta
            await asyncio.sleep(0.2)
        assert meta["listener_bus_state"] == "ok", meta
        assert meta["listener_amqp_state"] == "ok" and meta["listener_amqp_connected"] == "1"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30 * TIMEOUT_FACTOR)
        finally:
            if proc.poll() is None:  # the wait timed out: not left running
                proc.kill()
                proc.wait()
            reader.join(5)
            assert proc.stdout is not None
            proc.stdout.close()
            await store.close()
    assert proc.returncode == 0, "".join(lines)
    assert "listener stopped: counted 30 messages" in "".join(lines)


def test_amqp_replay_of_an_unreadable_file_is_a_usage_error(tmp_path: Any) -> None:
    from listener.cli import build_parser

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    args = build_parser().parse_args(
        ["amqp-replay", "--file", str(bad), "--amqp-url", "amqp://127.0.0.1:1/"]
    )
    assert args.func(args) == 2


async def test_amqp_replay_skips_a_topic_that_is_not_a_routing_key(
    redis_url: str,
    amqp_url: str,
    rabbitmq: Any,
    extractor: Any,
    examples: list[Any],
    tmp_path: Any,
) -> None:
    """A topic over 255 bytes of UTF-8 crashed amqp-replay (pika's
    ShortStringTooLong, exit 1) mid-file; it is skipped with a warning and the rest
    published.  The file is given as replay takes it (positional)."""
    good = fresh(examples, 3)
    long_topic = dict(good[0], topic="org.fedoraproject.prod." + "x" * 300, msg_id="long-1")
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(b) + "\n" for b in [good[0], long_topic, *good[1:]]))
    h = Harness(redis_url, extractor, amqp_url)
    await h.start()
    try:
        r = await asyncio.to_thread(run_cli, "amqp-replay", str(path), "--amqp-url", amqp_url)
        assert r.returncode == 0, r.stderr
        assert "skipped msg_id=long-1" in r.stderr and "Traceback" not in r.stderr
        assert "published 3 messages" in r.stderr
        c = await h.wait_counted(3)
        await asyncio.sleep(0.5)
        c = await h.counts()
        assert c.messages == 3 and c.topics == Counter(b["topic"] for b in good)
    finally:
        await h.close()


@pytest.mark.faults
@pytest.mark.timeout(240)  # a broker outage past the 30 s publish timeout
def test_amqp_demo_outlives_a_broker_outage_longer_than_the_publish_timeout(
    rabbitmq: Any, amqp_url: str, tmp_path: Any
) -> None:
    """The demo on a TV: RabbitMQ down for 40 s made amqp-replay exit 69 (its 30 s
    confirm timeout) and the demo stopped everything.  Now the replay is started
    again, and counting goes on once the broker is back."""
    import urllib.request

    port = free_port()
    # the child has its own copy of the descriptor: ours is closed at once
    with open(tmp_path / "demo.out", "wb") as out:
        demo = subprocess.Popen(
            demo_command(tmp_path / "d", port, "--amqp", "--amqp-url", amqp_url, "--rate", "20"),
            cwd=str(ROOT),
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def total() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return int(json.loads(r.read())["bus"]["messages_total"] or 0)
        except Exception as exc:  # 503 while down: its body still has the count
            body = getattr(exc, "read", lambda: b"")()
            try:
                return int(json.loads(body)["bus"]["messages_total"] or 0)
            except Exception:
                return 0

    def wait(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s * TIMEOUT_FACTOR
        while not pred():
            assert demo.poll() is None, (what, (tmp_path / "demo.out").read_text())
            assert time.monotonic() < deadline, (what, (tmp_path / "demo.out").read_text())
            time.sleep(0.5)

    try:
        wait(lambda: total() >= 20, 90, "counting before the outage")
        rabbitmq.stop()
        time.sleep(40)
        rabbitmq.start()
        text = lambda: (tmp_path / "demo.out").read_text()  # noqa: E731
        wait(lambda: "replay exited with 69" in text(), 60, "the replay's exit")
        before = total()
        wait(lambda: total() >= before + 20, 120, "counting after the outage")
        assert demo.poll() is None and "demo stopped" not in text()
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(60)
    assert "demo stopped" in (tmp_path / "demo.out").read_text()


@pytest.mark.faults
async def test_a_stuck_ack_task_does_not_keep_the_input_from_reconnecting(
    redis_url: str, amqp_url: str, rabbitmq: Any, extractor: Any, caplog: Any
) -> None:
    """Once in four broker restarts the session never ended (no reconnect for
    minutes).  The wait for the ack task is bounded: an ack task that ignores its
    cancellation (this one, on purpose) is left behind, and the input reconnects."""
    h = Harness(redis_url, extractor, amqp_url)
    stuck = asyncio.Event()

    async def ack_loop_ignoring_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stuck.set()
            await asyncio.sleep(30)  # ignores the cancellation for 30 s

    h.input._ack_loop = ack_loop_ignoring_cancel  # type: ignore[method-assign]
    await h.start()
    try:
        await asyncio.to_thread(rabbitmq.restart)
        await until(lambda: h.input.stats.connects >= 2, 60, "a reconnect")
        assert stuck.is_set()
        assert "AMQP ack task did not stop within 5 s" in caplog.text
        assert h.input.state(time.time()) == "ok"
    finally:
        await h.close()


def test_connect_failures_name_their_cause() -> None:
    dns = AMQPConnectionWorkflowFailed([socket.gaierror(-2, "Name or service not known")])
    assert connect_failure(dns).startswith(
        "the broker's host name does not resolve (Name or service not known): "
    )
    refused = connect_failure(ConnectionRefusedError(111, "Connection refused"))
    assert refused.startswith("the broker refused the connection")
    assert connect_failure(ValueError("odd")) == "ValueError('odd')"
