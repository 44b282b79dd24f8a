"""The web server against a real Redis, real websockets clients and real HTTP.

The counters come from a real :class:`listener.daemon.consumer.Consumer` fed with real
Fedora messages (fedmsg_meta's shipped examples, timestamps moved to now), so the
server reads exactly what a listener writes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from listener.core.config import Config
from listener.core.intake import Intake
from listener.daemon.consumer import Consumer
from listener.storage.store import Store
from listener.webserver import api as webapi
from listener.webserver.server import WebServer
from tests.helpers.common import ROOT, TIMEOUT_FACTOR, free_port, run_cli

T = TIMEOUT_FACTOR


# -- helpers -----------------------------------------------------------------


def make_cfg(redis_url: str, **kw: Any) -> Config:
    return Config(redis_url=redis_url, key_prefix="t" + uuid.uuid4().hex[:8], **kw)


def open_store(cfg: Config) -> Store:
    return Store.from_url(
        cfg.redis_url, prefix=cfg.key_prefix, buckets_s=cfg.buckets_s, windows_s=cfg.windows_s
    )


async def feed(consumer: Consumer, examples: list[Any], n: int, now: float) -> list[dict[str, Any]]:
    """Count ``n`` real example messages with timestamps in the last minute."""
    bodies = []
    for i, ex in enumerate(examples[:n]):
        body = dict(ex.body)
        body["timestamp"] = now - 60 + i * 0.05
        bodies.append(body)
        consumer.intake.handle_body(body, now=now)
    await consumer.flush(now)
    return bodies


async def http(
    port: int, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request (the target is sent byte for byte, unnormalised).
    For ``HEAD`` the body is what arrives before the server closes (should be none)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10 * T)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in header_lines:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    if method == "HEAD":
        body = await asyncio.wait_for(reader.read(), 10 * T)  # until the server closes
    else:
        length = int(hdrs.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 10 * T)
    writer.close()
    return int(status_line.split()[1]), hdrs, body


async def recv_json(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout * T))


async def recv_type(ws: Any, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next event of type ``kind`` (others, e.g. ``status``, are skipped)."""
    deadline = time.monotonic() + timeout * T
    while True:
        ev = await recv_json(ws, max(0.1, deadline - time.monotonic()))
        if ev["type"] == kind:
            return ev


@pytest.fixture
async def stack(redis_url: str, extractor: Any) -> Any:
    """A consumer and a started web server sharing one Redis namespace."""
    cfg = make_cfg(redis_url)
    store = open_store(cfg)
    consumer = Consumer(cfg, Intake(cfg, extractor, time.time), open_store(cfg))
    await consumer.warm_up()
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    await web.wait_subscribed(10 * T)

    class Stack:
        pass

    s = Stack()
    s.cfg, s.store, s.consumer, s.web, s.port = cfg, store, consumer, web, web.port
    yield s
    await web.stop()
    await store.close()
    await consumer.store.close()


# -- pure parts ------------------------------------------------------------------


@pytest.mark.parametrize(
    "query,expected",
    [
        ({}, 3600),
        ({"window": [""]}, 3600),
        ({"window": ["86400"]}, 86400),
        ({"window": ["604800"]}, 604800),
    ],
)
def test_parse_window_ok(query: dict[str, list[str]], expected: int) -> None:
    assert webapi.parse_window(query, 3600, 14 * 86400) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        "0",
        "-5",
        "1.5",
        "1e3",
        "99999999999",
        str(15 * 86400),
        " 60",
        "\u0663\u0666\u0660\u0660",
        "3_600",
        "\u00b2",
    ],  # Arabic-Indic 3600, superscript 2
)
def test_parse_window_rejects(raw: str) -> None:
    with pytest.raises(webapi.ApiError) as exc:
        webapi.parse_window({"window": [raw]}, 3600, 14 * 86400)
    assert exc.value.status == 400


def test_parse_users_period_top_end() -> None:
    assert webapi.parse_users({"users": ["a, b,,a ,c"]}) == ["a", "b", "c"]
    assert webapi.parse_users({}) == []
    with pytest.raises(webapi.ApiError):
        webapi.parse_users({"users": [",".join(f"u{i}" for i in range(13))]})
    with pytest.raises(webapi.ApiError):
        webapi.parse_users({"users": ["x" * 65]})
    assert webapi.parse_period({"period": ["week"]}) == 604800
    assert webapi.parse_period({}) == 86400
    with pytest.raises(webapi.ApiError):
        webapi.parse_period({"period": ["month"]})
    assert webapi.parse_top({"top": ["7"]}, 5, 12) == 7
    with pytest.raises(webapi.ApiError):
        webapi.parse_top({"top": ["0"]}, 5, 12)
    assert webapi.parse_end({}, 100.0) == 100.0
    assert webapi.parse_end({"end": ["50.5"]}, 100.0) == 50.5
    assert webapi.parse_end({"end": ["5e1"]}, 100.0) == 50.0
    for bad in ("x", "nan", "-1", str(100 + 2 * 86400), "1_0", "\u0663", " 5", "inf", "0x10"):
        with pytest.raises(webapi.ApiError):
            webapi.parse_end({"end": [bad]}, 100.0)
    for bad in ("\u0663", "1_0", "99999999999999999999"):
        with pytest.raises(webapi.ApiError):
            webapi.parse_top({"top": [bad]}, 5, 12)
    with pytest.raises(webapi.ApiError):
        webapi.parse_users({"users": ["\x00"]})
    with pytest.raises(webapi.ApiError):
        webapi.parse_users({"users": ["ok,new\nline"]})
    assert webapi.parse_by({}) == "topic"
    assert webapi.parse_by({"by": ["category"]}) == "category"
    with pytest.raises(webapi.ApiError):
        webapi.parse_by({"by": ["user"]})


@pytest.mark.parametrize(
    "n,limit,expected",
    [(5, 10, [0, 1, 2, 3, 4]), (10, 4, [0, 3, 6, 9]), (10, 1, [9]), (0, 3, []), (3, 0, [])],
)
def test_thin_keeps_ends(n: int, limit: int, expected: list[int]) -> None:
    assert webapi.thin(list(range(n)), limit) == expected


def test_health_judgement() -> None:
    meta = {
        "listener_heartbeat": "100",
        "last_message_at": "40",
        "messages_total": "7",
        "listener_redis_ok": "1",
    }
    h = webapi.health(meta, 110.0, 5.0, True, True, 3)
    assert h["ok"] is True and h["listener"]["heartbeat_age_s"] == 10.0
    assert h["bus"] == {
        "state": None,
        "reported_state": None,
        "links": {"ok": 0, "quiet": 0, "connecting": 0, "dead": 0},
        "gaps": None,
        "last_message_at": 40.0,
        "lag_s": 70.0,
        "messages_total": 7,
    }
    assert h["listener"]["redis_ok"] is True and h["web"]["clients"] == 3
    # heartbeat older than max(3 * step_s, 15) s: listener down, and its last word
    # on the bus ("ok") is not today's state
    stale = webapi.health({**meta, "listener_bus_state": "ok"}, 116.0, 5.0, True, True, 0)
    assert stale["ok"] is False and stale["listener"]["ok"] is False
    assert stale["bus"]["state"] == "unknown" and stale["bus"]["reported_state"] == "ok"
    fresh = webapi.health({**meta, "listener_bus_state": "ok"}, 114.0, 5.0, True, True, 0)
    assert fresh["bus"]["state"] == fresh["bus"]["reported_state"] == "ok"
    # Redis down from the web process: not ok, whatever the listener said
    assert webapi.health(None, 110.0, 5.0, False, False, 0)["ok"] is False
    assert webapi.health({"listener_heartbeat": "junk"}, 110.0, 5.0, True, True, 0)["ok"] is False
    # a quiet bus is healthy; a dead one is not
    quiet = {**meta, "listener_bus_state": "quiet", "listener_links_quiet": "1"}
    h = webapi.health(quiet, 110.0, 5.0, True, True, 0)
    assert h["ok"] is True and h["bus"]["state"] == "quiet" and h["bus"]["links"]["quiet"] == 1
    # so is one whose links are still in their first seconds (not yet a failure)
    connecting = {**meta, "listener_bus_state": "connecting", "listener_links_connecting": "1"}
    h = webapi.health(connecting, 110.0, 5.0, True, True, 0)
    assert h["ok"] is True and h["bus"]["links"]["connecting"] == 1
    dead = {**meta, "listener_bus_state": "dead", "listener_links_dead": "1", "listener_gaps": "4"}
    h = webapi.health(dead, 110.0, 5.0, True, True, 0)
    assert h["ok"] is False and h["bus"]["gaps"] == 4


def test_state_freshness() -> None:
    assert webapi.state_is_fresh({"end": 100, "windows": {}}, 110, 5)
    assert not webapi.state_is_fresh({"end": 80, "windows": {}}, 110, 5)
    assert not webapi.state_is_fresh(None, 110, 5)
    assert not webapi.state_is_fresh({"end": "x", "windows": {}}, 110, 5)


def test_snapshot_event_gives_a_rate_only_from_a_fresh_tick() -> None:
    """A stopped listener's last tick still says 1,545 msgs/min: the rate is unknown
    (None) once the snapshot is computed from Redis instead."""
    tick = {"end": 100.0, "rate_per_min": 1545.0, "last_message_at": 99.0}
    health = webapi.health({}, 110.0, 5.0, True, True, 0)
    fresh = webapi.snapshot_event({}, {}, [], tick, health, 101.0, "tick")
    stopped = webapi.snapshot_event({}, {}, [], tick, health, 190.0, "redis")
    assert fresh["rate_per_min"] == 1545.0
    assert stopped["rate_per_min"] is None
    assert stopped["last_message_at"] == 99.0  # a time stays true


# -- HTTP ---------------------------------------------------------------------


async def test_api_snapshot_equals_cli(stack: Any, examples: list[Any]) -> None:
    now = time.time()
    await feed(stack.consumer, examples, 200, now)
    end = round(now, 3)
    for window in (3600, 86400):
        status, hdrs, body = await http(stack.port, f"/api/snapshot?window={window}&end={end}")
        assert status == 200 and hdrs["content-type"] == "application/json"
        api = json.loads(body)
        proc = await asyncio.to_thread(
            run_cli,
            "snapshot",
            "--redis-url",
            stack.cfg.redis_url,
            "--key-prefix",
            stack.cfg.key_prefix,
            "--window",
            str(window),
            "--end",
            str(end),
            "--json",
        )
        assert proc.returncode == 0, proc.stderr
        assert api == json.loads(proc.stdout)
        assert api["messages"] == 200 and api["window_s"] == window
        assert sum(api["topics"].values()) == 200


@pytest.mark.parametrize(
    "target,status",
    [
        ("/api/snapshot?window=abc", 400),
        ("/api/snapshot?window=0", 400),
        ("/api/snapshot?window=7", 400),  # no bucket size divides it
        ("/api/snapshot?window=60&window=120", 400),
        ("/api/snapshot?window=3600&end=soon", 400),
        ("/api/radar?users=" + ",".join(f"u{i}" for i in range(20)), 400),
        ("/api/diff?period=fortnight", 400),
        ("/nope", 404),
        ("/../setup.py", 404),
        ("/%2e%2e/setup.py", 404),
        ("/vendor/../../setup.py", 404),
        ("/web/index.html", 404),
        ("//etc/passwd", 404),
        ("//healthz", 404),  # not the page (200): a probe with a doubled slash
        ("//", 404),
        ("/ws", 426),
    ],
)
async def test_api_rejects(stack: Any, target: str, status: int) -> None:
    got, hdrs, body = await http(stack.port, target)
    assert got == status
    if status != 426:
        err = json.loads(body)
        assert err["status"] == status and err["error"]


async def test_only_get_and_head(stack: Any) -> None:
    """Nothing is written over HTTP: other methods get 405 (RFC 9110 15.5.6, with
    ``Allow``); HEAD gets GET's status and headers without the body."""
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, hdrs, body = await http(stack.port, "/api/state", method=method)
        assert status == 405 and hdrs["allow"] == "GET, HEAD", method
        assert json.loads(body)["status"] == 405
    page = (ROOT / "web" / "vendor" / "chart.umd.min.js").read_bytes()
    status, hdrs, body = await http(stack.port, "/vendor/chart.umd.min.js", method="HEAD")
    assert status == 200 and int(hdrs["content-length"]) == len(page) and body == b""
    status, hdrs, body = await http(stack.port, "/nope", method="HEAD")
    assert status == 404 and int(hdrs["content-length"]) > 0 and body == b""


async def test_static_files(stack: Any) -> None:
    for url, rel in webapi.STATIC_FILES.items():
        status, hdrs, body = await http(stack.port, url)
        assert status == 200, url
        assert body == (ROOT / "web" / rel).read_bytes()
        assert hdrs["x-content-type-options"] == "nosniff"
    _, hdrs, _ = await http(stack.port, "/")
    assert hdrs["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in hdrs["content-security-policy"]
    _, hdrs, _ = await http(stack.port, "/app.js")
    assert hdrs["content-type"].startswith("text/javascript")


async def test_healthz_follows_the_listener(stack: Any, examples: list[Any]) -> None:
    status, _, body = await http(stack.port, "/healthz")
    h = json.loads(body)
    assert status == 503 and h["ok"] is False and h["redis"]["ok"] is True
    assert h["listener"]["heartbeat_age_s"] is None
    now = time.time()
    await feed(stack.consumer, examples, 10, now)
    await stack.store.set_health({**stack.consumer.health(now), "listener_redis_ok": 1})
    status, _, body = await http(stack.port, "/healthz")
    h = json.loads(body)
    assert status == 200 and h["ok"] is True and h["redis"]["pubsub"] is True
    assert h["bus"]["messages_total"] == 10
    assert h["bus"]["last_message_at"] == pytest.approx(now - 60 + 9 * 0.05, abs=1)


async def test_radar_and_diff_api_call_views(stack: Any, examples: list[Any]) -> None:
    from listener.storage import readers as views

    now = time.time()
    await feed(stack.consumer, examples, 300, now)
    end = round(now, 3)
    status, _, body = await http(stack.port, f"/api/radar?window=3600&end={end}")
    assert status == 200
    want = await views.radar(stack.store, 3600, end, None, 5)
    assert json.loads(body) == want and len(want["users"]) == 5
    user = next(iter(want["users"]))
    target = f"/api/radar?window=3600&end={end}&users={user},nobody-here"
    status, _, body = await http(stack.port, target)
    got = json.loads(body)
    assert list(got["users"]) == [user, "nobody-here"]
    assert got["users"]["nobody-here"] == [0.0] * len(got["categories"])
    status, _, body = await http(stack.port, f"/api/diff?period=day&end={end}")
    assert status == 200
    got = json.loads(body)
    assert got == await views.diff(stack.store, 86400, end)
    assert sum(r["current"] for r in got["rows"]) == 300
    status, _, body = await http(stack.port, f"/api/diff?period=day&by=category&end={end}")
    assert status == 200
    got = json.loads(body)
    assert got["by"] == "category" and got == await views.diff(stack.store, 86400, end, "category")
    assert sum(r["current"] for r in got["rows"]) == 300


async def test_metrics(stack: Any) -> None:
    async with connect(f"ws://127.0.0.1:{stack.port}/ws") as ws:
        await recv_type(ws, "snapshot")
        status, hdrs, body = await http(stack.port, "/metrics")
    text = body.decode()
    assert status == 200 and hdrs["content-type"].startswith("text/plain")
    assert "fedmsg_wallboard_web_clients 1.0" in text
    assert "fedmsg_wallboard_web_connections_total 1.0" in text
    assert "fedmsg_wallboard_web_pubsub_up 1.0" in text
    # the process's own: CPU and memory, the interpreter, the collector, the build
    for name in (
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "python_gc_objects_collected_total{",
        "python_info{",
    ):
        assert name in text, name
    assert 'fedmsg_wallboard_build_info{component="web",' in text
    # OpenMetrics for a scraper that asks for it
    status, hdrs, body = await http(
        stack.port, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert hdrs["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.decode().endswith("# EOF\n")
    assert "fedmsg_wallboard_web_connections_total 1.0" in body.decode()


# -- websocket ---------------------------------------------------------------------


async def test_snapshot_then_blink_and_tick(stack: Any, examples: list[Any]) -> None:
    now = time.time()
    await feed(stack.consumer, examples, 50, now)
    await stack.consumer.publish_blink()  # fills the ticker list
    await stack.consumer.step(now)
    async with connect(f"ws://127.0.0.1:{stack.port}/ws") as ws:
        snap = await recv_json(ws)
        assert snap["type"] == "snapshot" and snap["source"] == "tick"
        assert set(snap["windows"]) == {"3600", "86400", "604800"}
        assert snap["windows"]["3600"]["messages"] == 50
        assert len(snap["history"]["3600"]) == 1
        assert [m["msg_id"] for m in snap["recent"]] == [
            m["msg_id"] for m in await stack.store.recent(stack.cfg.recent_len)
        ]
        # a live blink and a tick reach the client unchanged
        fresh = [dict(ex.body, timestamp=time.time()) for ex in examples[50:60]]
        for body in fresh:
            stack.consumer.intake.handle_body(body)
        sent = await stack.consumer.publish_blink()
        blink = await recv_type(ws, "blink")
        assert blink == json.loads(json.dumps(sent))
        assert [m["msg_id"] for m in blink["msgs"]] == [b["msg_id"] for b in fresh]
        await stack.consumer.flush()
        tick = await stack.consumer.step()
        got = await recv_type(ws, "tick")
        assert got["windows"]["3600"]["messages"] == 60 == tick["windows"]["3600"]["messages"]


async def test_snapshot_computed_from_redis_without_listener_state(
    stack: Any, examples: list[Any]
) -> None:
    await feed(stack.consumer, examples, 30, time.time())
    async with connect(f"ws://127.0.0.1:{stack.port}/ws") as ws:
        snap = await recv_json(ws)
    assert snap["source"] == "redis"
    assert snap["windows"]["3600"]["messages"] == 30
    assert snap["windows"]["604800"]["messages"] == 30


async def test_inbound_frames_ignored_and_capped(stack: Any) -> None:
    async with connect(f"ws://127.0.0.1:{stack.port}/ws") as ws:
        await recv_type(ws, "snapshot")
        await ws.send("hello")  # ignored
        await ws.send(b"x" * 100)
        await stack.store.publish(
            {"type": "blink", "msgs": [], "counts": {"a": 1}, "total": 1, "omitted": 0}
        )
        assert (await recv_type(ws, "blink"))["counts"] == {"a": 1}
        await ws.send("x" * 5000)  # over MAX_INBOUND_BYTES
        with pytest.raises(ConnectionClosed) as exc:
            for _ in range(100):
                await recv_json(ws)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009


async def test_junk_on_the_events_channel_is_counted_and_dropped(stack: Any) -> None:
    async with connect(f"ws://127.0.0.1:{stack.port}/ws") as ws:
        await recv_type(ws, "snapshot")
        await stack.store.r.publish(stack.store.events_channel, b"not json")
        await stack.store.r.publish(stack.store.events_channel, b'{"type": "<script>"}')
        await stack.store.publish({"type": "tick", "end": 1, "windows": {}})
        assert (await recv_type(ws, "tick"))["end"] == 1
    assert stack.web.bad_events == 2


async def test_per_address_cap(redis_url: str) -> None:
    cfg = make_cfg(redis_url, max_clients_per_ip=2)
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{web.port}/ws"
        async with connect(url) as a, connect(url) as b:
            await recv_type(a, "snapshot")
            await recv_type(b, "snapshot")
            with pytest.raises(InvalidStatus) as exc:
                async with connect(url):
                    pass
            assert exc.value.response.status_code == 429
        assert web.rejected["per_address"] == 1
    finally:
        await web.stop()
        await store.close()


async def test_origin_allow_list(redis_url: str) -> None:
    cfg = make_cfg(redis_url, allowed_origins=("http://wall.example",))
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{web.port}/ws"
        async with connect(url, origin="http://wall.example") as ws:
            assert (await recv_json(ws))["type"] == "snapshot"
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url, origin="http://evil.example"):
                pass
        assert exc.value.response.status_code == 403
    finally:
        await web.stop()
        await store.close()


def _raw_ws_that_never_reads(port: int) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10 * T)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_many_clients_one_never_reads(redis_url: str) -> None:
    """16 readers get every event in order; a client that never reads is cut off
    and the server's queued bytes stay under a fixed bound throughout."""
    queue_max, n_events, size, n_readers = 32, 400, 32_000, 16
    cfg = make_cfg(redis_url, client_queue_max=queue_max)
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    await web.wait_subscribed(10 * T)
    url = f"ws://127.0.0.1:{web.port}/ws"
    readers = [await connect(url, max_size=None) for _ in range(n_readers)]
    for ws in readers:
        await recv_type(ws, "snapshot")
    slow = await asyncio.to_thread(_raw_ws_that_never_reads, web.port)
    assert await asyncio.to_thread(
        lambda: _wait(lambda: len(web.hub.clients) == n_readers + 1, 10 * T)
    )
    peak = {"client_bytes": 0, "total_bytes": 0, "write_buffer": 0}

    async def sample() -> None:
        while True:
            events, total, largest = web.hub.queued()
            peak["client_bytes"] = max(peak["client_bytes"], largest)
            peak["total_bytes"] = max(peak["total_bytes"], total)
            for c in web.hub.clients:
                buf = c.websocket.transport.get_write_buffer_size()
                peak["write_buffer"] = max(peak["write_buffer"], buf)
            await asyncio.sleep(0.01)

    async def read_all(ws: Any) -> list[int]:
        seqs: list[int] = []
        while len(seqs) < n_events:
            ev = await recv_json(ws, 30)
            if ev["type"] == "blink":
                seqs.append(ev["seq"])
        return seqs

    sampler = asyncio.create_task(sample())
    reading = [asyncio.create_task(read_all(ws)) for ws in readers]
    pad = "x" * size
    try:
        for seq in range(n_events):
            await store.publish(
                {
                    "type": "blink",
                    "seq": seq,
                    "msgs": [],
                    "counts": {},
                    "total": 0,
                    "omitted": 0,
                    "pad": pad,
                }
            )
            await asyncio.sleep(0.004)
        results = await asyncio.wait_for(asyncio.gather(*reading), 60 * T)
    finally:
        sampler.cancel()
    print(
        f"peak queued bytes: per client {peak['client_bytes']}, total {peak['total_bytes']}, "
        f"write buffer {peak['write_buffer']}; broadcast {n_events * size} bytes"
    )
    for seqs in results:
        assert seqs == list(range(n_events))
    assert web.hub.stats.cut == 1  # the one that never reads, nobody else
    assert len(web.hub.clients) == n_readers
    # readers that keep up are written to at once; every frame is counted once
    assert 0 < web.hub.stats.direct <= web.hub.stats.sent
    event_bytes = size + 100
    # bound: the queue limit plus one event per client, whatever was broadcast
    assert peak["client_bytes"] <= (queue_max + 1) * event_bytes
    assert peak["total_bytes"] <= (n_readers + 1) * (queue_max + 1) * event_bytes
    assert peak["write_buffer"] <= 2**15 + 2 * event_bytes  # websockets' write_limit
    assert n_events * event_bytes > 3 * (queue_max + 1) * event_bytes  # the bound mattered
    for ws in readers:
        await ws.close()
    slow.close()
    await web.stop()
    await store.close()


async def test_keepalive_pings_drop_dead_peers_only(redis_url: str) -> None:
    """A peer that never answers pings is closed; a live client stays."""
    cfg = make_cfg(redis_url, ping_interval_s=0.3, ping_timeout_s=0.3)
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    try:
        async with connect(f"ws://127.0.0.1:{web.port}/ws") as live:
            await recv_type(live, "snapshot")
            dead = await asyncio.to_thread(_raw_ws_that_never_reads, web.port)
            assert await asyncio.to_thread(lambda: _wait(lambda: len(web.hub.clients) == 2, 5 * T))
            assert await asyncio.to_thread(lambda: _wait(lambda: len(web.hub.clients) == 1, 10 * T))
            await asyncio.sleep(1.0)  # several ping periods: the live one answers
            assert len(web.hub.clients) == 1 and web.hub.stats.cut == 0
            await store.publish({"type": "tick", "end": 7, "windows": {}})
            assert (await recv_type(live, "tick"))["end"] == 7
            dead.close()
    finally:
        await web.stop()
        await store.close()


def _wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.faults
async def test_resubscribes_after_redis_restart(redis_server: Any, redis_url: str) -> None:
    cfg = make_cfg(redis_url)
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    await web.wait_subscribed(10 * T)
    try:
        async with connect(f"ws://127.0.0.1:{web.port}/ws") as ws:
            await recv_type(ws, "snapshot")
            await asyncio.to_thread(redis_server.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis_server.start)
            snap = await recv_type(ws, "snapshot", timeout=30)
            assert snap["windows"]["3600"]["messages"] == 0
            assert web.resubscribes >= 1 and web.pubsub_ok
            await store.publish({"type": "tick", "end": 5, "windows": {}})
            assert (await recv_type(ws, "tick"))["end"] == 5
    finally:
        await web.stop()
        await store.close()


async def test_a_silent_subscription_is_made_again(redis_url: str) -> None:
    """No event for 3 x ``step_s``: the subscription is dropped and made again (a
    connection left on a server nobody publishes on after a failover would stay
    silent for ever); the clients get a fresh snapshot and the events after it."""
    cfg = make_cfg(redis_url, step_s=0.2)
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    await web.wait_subscribed(10 * T)
    try:
        async with connect(f"ws://127.0.0.1:{web.port}/ws") as ws:
            await recv_type(ws, "snapshot")
            await recv_type(ws, "snapshot", timeout=10)  # pushed after the resubscription
            assert web.silent_resubscribes >= 1 and web.resubscribes >= 1 and web.pubsub_ok
            await store.publish({"type": "tick", "end": 7, "windows": {}})
            assert (await recv_type(ws, "tick"))["end"] == 7
    finally:
        await web.stop()
        await store.close()


# -- the process ---------------------------------------------------------------------


def test_web_process_sigterm_closes_1001_and_exits_0(redis_url: str, tmp_path: Path) -> None:
    """``python -m listener web`` with a real NOTIFY_SOCKET: READY, serve, SIGTERM."""
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30 * T)
    port = free_port()
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "listener",
            "web",
            "--redis-url",
            redis_url,
            "--key-prefix",
            "sig" + uuid.uuid4().hex[:6],
            "--port",
            str(port),
        ],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        got = b""
        while b"READY=1" not in got:
            got += notify.recv(4096) + b"\n"
        assert f"serving on 127.0.0.1:{port}".encode() in got

        async def client() -> int | None:
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                assert (await recv_json(ws))["type"] == "snapshot"
                proc.send_signal(signal.SIGTERM)
                try:
                    while True:
                        await recv_json(ws, 15)
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None

        assert asyncio.run(client()) == 1001
        assert proc.wait(30 * T) == 0
        rest = b""
        while b"STOPPING=1" not in rest:
            rest += notify.recv(4096)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        notify.close()
