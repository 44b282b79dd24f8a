"""Hostile and unlucky websocket clients against the web server.

``tests/webserver/test_web.py`` covers the limits one by one (a client that never reads is
cut off while 16 others get every event in order, 1009 on an oversize frame, the
Origin allow-list, the per-address cap).  Here the web server is put under
faults: its Redis goes silent behind a blackholing proxy (the event loop must keep
answering pings: no blocking work on it), a message split into small fragments
that add up past the inbound cap, arbitrary bytes on the events channel, and
(``-m faults``) 1,000 concurrent clients on one web *process*, and 500 half-open
handshakes (slowloris) next to a real client.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from listener.core.config import Config
from listener.storage.store import Store
from listener.webserver.server import MAX_INBOUND_BYTES, WebServer
from tests.helpers.common import TIMEOUT_FACTOR, wait_for
from tests.helpers.proxy import TcpProxy
from tests.helpers.redis import RedisServer
from tests.helpers.web_proc import WebProcess

T = TIMEOUT_FACTOR


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    """A redis-server of this test only."""
    server = RedisServer(tmp_path / "redis")
    server.tmp.mkdir()
    server.start()
    yield server
    server.stop()


def blink(seq: int, pad: int = 0) -> bytes:
    return orjson.dumps(
        {
            "type": "blink",
            "seq": seq,
            "msgs": [],
            "counts": {},
            "total": 0,
            "omitted": 0,
            "pad": "x" * pad,
        }
    )


def publish(r: redis.Redis, prefix: str, data: bytes) -> None:
    r.publish("{" + prefix + "}:events", data)


async def recv_type(ws: Any, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout * T):
        while True:
            event = json.loads(await ws.recv())
            if event.get("type") == kind:
                return event


# -- a silent Redis must not stall the websockets -----------------------------------


async def test_silent_redis_never_stalls_websockets(own_redis: RedisServer, tmp_path: Path) -> None:
    """The web process's Redis drops every packet for 6 s.  Server pings every
    0.5 s with a 1 s timeout would cut any client if the loop stalled; none is cut,
    pings from the clients come back fast, ``/healthz`` answers 503 within its
    Redis timeout, a newcomer gets a clear 1013, and after the network heals events
    flow to everyone again."""
    proxy = TcpProxy("127.0.0.1", own_redis.port).start()
    web = WebProcess(
        f"redis://127.0.0.1:{proxy.port}/0",
        tmp_path,
        ping_interval_s=0.5,
        ping_timeout_s=1.0,
        redis_timeout_s=1.0,
    )
    r = redis.Redis.from_url(own_redis.url)
    clients = []
    try:
        clients = [await connect(web.url) for _ in range(20)]
        for ws in clients:
            await recv_type(ws, "snapshot")
        publish(r, web.prefix, blink(0))
        for ws in clients:
            assert (await recv_type(ws, "blink"))["seq"] == 0
        await asyncio.sleep(1.2)  # the cached snapshot expires (SNAPSHOT_CACHE_S)
        proxy.blackhole()
        t0 = time.monotonic()
        status, health = await asyncio.to_thread(web.healthz)
        health_s = time.monotonic() - t0
        assert status == 503 and health["redis"]["ok"] is False
        t0 = time.monotonic()
        async with connect(web.url) as newcomer:
            with pytest.raises(ConnectionClosed) as closed:
                await recv_type(newcomer, "snapshot", 20)
        newcomer_s = time.monotonic() - t0
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        rtts: list[float] = []
        while time.monotonic() - t0 < 6:
            for ws in clients:
                t = time.monotonic()
                await asyncio.wait_for(await ws.ping(), 2)
                rtts.append(time.monotonic() - t)
            await asyncio.sleep(0.25)
        proxy.passthrough()
        publish(r, web.prefix, blink(1))
        for ws in clients:  # nobody was cut off; everyone gets the next event
            assert (await recv_type(ws, "blink", 30))["seq"] == 1
        figures = {
            "healthz_s": round(health_s, 2),
            "newcomer_1013_s": round(newcomer_s, 2),
            "ping_rtt_max_s": round(max(rtts), 3),
            "ping_rtt_p50_s": round(statistics.median(rtts), 4),
            "pings": len(rtts),
        }
        print("silent-redis-web", json.dumps(figures))
        assert max(rtts) < 0.3, figures
        assert health_s < 5 and newcomer_s < 10, figures
    finally:
        for ws in clients:
            await ws.close()
        web.stop()
        proxy.stop()


# -- hostile frames and events (in-process server) -----------------------------------


@pytest.fixture
async def web_server(redis_url: str) -> Any:
    cfg = Config(redis_url=redis_url, key_prefix=f"f{uuid.uuid4().hex[:8]}")
    store = Store.from_url(redis_url, prefix=cfg.key_prefix)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    await web.wait_subscribed(10 * T)
    yield web
    await web.stop()
    await store.close()


async def test_fragments_adding_up_past_the_cap_get_1009(web_server: WebServer) -> None:
    url = f"ws://127.0.0.1:{web_server.port}/ws"
    async with connect(url) as ws:
        await recv_type(ws, "snapshot")
        piece = "x" * (MAX_INBOUND_BYTES // 4)
        with pytest.raises(ConnectionClosed) as exc:
            await ws.send(iter([piece] * 8))  # each fragment small, the message not
            await recv_type(ws, "never", 10)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009
    async with connect(url) as ws:  # the server is fine
        assert (await recv_type(ws, "snapshot"))["type"] == "snapshot"


async def test_events_channel_fuzz(web_server: WebServer) -> None:
    """Arbitrary bytes on the events channel: re-broadcast only when they are a
    ``blink``/``tick`` event, else counted in ``bad_events``; never an exception."""
    counts = {"ok": 0, "bad": 0}

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        st.binary(max_size=200)
        | st.builds(
            lambda t, extra: orjson.dumps({"type": t, **extra}),
            st.sampled_from(["blink", "tick", "snapshot", "<script>", ""]) | st.text(max_size=8),
            st.dictionaries(
                st.text(max_size=5),
                st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
                max_size=3,
            ),
        )
    )
    def run(data: bytes) -> None:
        before = (web_server.bad_events, web_server.hub.stats.broadcasts)
        ok = web_server.on_event(data)
        after = (web_server.bad_events, web_server.hub.stats.broadcasts)
        assert after == ((before[0], before[1] + 1) if ok else (before[0] + 1, before[1]))
        counts["ok" if ok else "bad"] += 1

    run()
    assert counts["ok"] > 0 and counts["bad"] > 0


# -- long fault injections (make test-faults) ----------------------------------------


def _raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


@pytest.mark.faults
async def test_thousand_clients_on_one_web_process(own_redis: RedisServer, tmp_path: Path) -> None:
    """1,000 websockets on one web process (from 20 loopback addresses, 50 each: the
    default per-address cap), 20 events: every client gets every event in order."""
    import psutil

    _raise_fd_limit(4096)
    web = WebProcess(own_redis.url, tmp_path)
    r = redis.Redis.from_url(own_redis.url)
    n_addr, per_addr, n_events = 20, 50, 20
    clients: list[Any] = []
    try:
        rss0 = psutil.Process(web.proc.pid).memory_info().rss
        t0 = time.monotonic()
        for a in range(n_addr):
            batch = [
                connect(web.url, local_addr=(f"127.0.0.{a + 2}", 0), open_timeout=30)
                for _ in range(per_addr)
            ]
            clients += await asyncio.gather(*batch)
        await asyncio.gather(*(recv_type(ws, "snapshot", 60) for ws in clients))
        connect_s = time.monotonic() - t0
        with pytest.raises(InvalidStatus) as refused:  # the 51st from one address
            async with connect(web.url, local_addr=("127.0.0.2", 0)):
                pass
        assert refused.value.response.status_code == 429
        received: list[list[tuple[int, float]]] = [[] for _ in clients]

        async def read(k: int, ws: Any) -> None:
            while len(received[k]) < n_events:
                ev = await recv_type(ws, "blink", 60)
                received[k].append((ev["seq"], time.monotonic()))

        readers = [asyncio.create_task(read(k, ws)) for k, ws in enumerate(clients)]
        sent_at = []
        for seq in range(n_events):
            sent_at.append(time.monotonic())
            await asyncio.to_thread(publish, r, web.prefix, blink(seq, 2000))
            await asyncio.sleep(0.1)
        await asyncio.wait_for(asyncio.gather(*readers), 120 * T)
        for got in received:
            assert [s for s, _ in got] == list(range(n_events))
        lat = sorted(t - sent_at[s] for got in received for s, t in got)
        rss = psutil.Process(web.proc.pid).memory_info().rss
        status, health = await asyncio.to_thread(web.healthz)
        figures = {
            "clients": len(clients),
            "connect_all_s": round(connect_s, 1),
            "latency_p50_s": round(lat[len(lat) // 2], 3),
            "latency_p99_s": round(lat[int(len(lat) * 0.99)], 3),
            "latency_max_s": round(lat[-1], 3),
            "web_rss_mb": round(rss / 1e6),
            "web_rss_growth_mb": round((rss - rss0) / 1e6),
        }
        print("thousand-clients", json.dumps(figures))
        assert health["web"]["clients"] == 1000
        assert lat[-1] < 5, figures
    finally:
        await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
        web.stop()


@pytest.mark.faults
async def test_half_open_handshakes_do_not_starve_a_real_client(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """500 connections that send half an HTTP request and stall (slowloris), from one
    address: a real client from another address still gets its snapshot at once,
    and the server drops the stalled ones after websockets' open_timeout (10 s)."""
    _raise_fd_limit(4096)
    web = WebProcess(own_redis.url, tmp_path)
    stalled: list[socket.socket] = []
    try:
        for _ in range(500):
            s = socket.socket()
            s.bind(("127.0.0.40", 0))
            s.connect(("127.0.0.1", web.port))
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # never ends
            stalled.append(s)
        t0 = time.monotonic()
        async with connect(web.url) as ws:
            await recv_type(ws, "snapshot", 10)
        real_s = time.monotonic() - t0
        t1 = time.monotonic()

        def dropped() -> int:
            n = 0
            for s in stalled:
                s.settimeout(0)
                try:
                    if s.recv(4096) == b"":
                        n += 1
                except BlockingIOError:
                    pass
                except OSError:
                    n += 1
            return n

        await asyncio.to_thread(
            wait_for, lambda: dropped() == len(stalled), 30, 0.5, "stalled ones dropped"
        )
        drop_s = time.monotonic() - t1
        print(
            "slowloris",
            json.dumps(
                {
                    "stalled": len(stalled),
                    "real_client_s": round(real_s, 3),
                    "dropped_after_s": round(drop_s, 1),
                }
            ),
        )
        assert real_s < 2.0
        assert drop_s < 15
    finally:
        for s in stalled:
            s.close()
        web.stop()
