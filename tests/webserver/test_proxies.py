"""Web nodes behind a load balancer: the client's address behind trusted proxies
(``listener/webserver/proxies.py``), the per-address cap and logs using it, the
``trusted_proxies`` setting and ``--trusted-proxy``, and ``/livez``, which answers
while Redis, the listener and the bus are all gone.

Through a real haproxy and several web processes: ``tests/ha/test_balancer.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from listener.core.config import Config
from listener.storage.store import Store
from listener.webserver.proxies import (
    MAX_HOPS,
    client_address,
    parse_address,
    parse_networks,
)
from listener.webserver.server import WebServer
from tests.helpers.common import TIMEOUT_FACTOR, run_cli
from tests.helpers.redis import RedisServer
from tests.helpers.rigs import write_config

T = TIMEOUT_FACTOR

LB = parse_networks(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "lines", "expected"),
    [
        # no proxy trusted, or an untrusted peer: the header is ignored
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
        # a trusted peer: the right-most address that is not a trusted proxy
        ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1", ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1", ["1.1.1.1, 198.51.100.1, 10.1.2.3"], "198.51.100.1"),
        # a client's own header line comes first; haproxy's line last
        ("127.0.0.1", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1", ["6.6.6.6, 10.0.0.2", "10.0.0.1"], "6.6.6.6"),
        # every hop trusted: the left-most of them
        ("127.0.0.1", ["10.0.0.7, 10.0.0.1"], "10.0.0.7"),
        # no header from a trusted peer: the peer
        ("127.0.0.1", [], "127.0.0.1"),
        # garbage stops the walk at the last trusted hop
        ("127.0.0.1", ["garbage"], "127.0.0.1"),
        ("127.0.0.1", ["1.2.3.4, unknown, 10.0.0.1"], "10.0.0.1"),
        ("127.0.0.1", ["198.51.100.1:4711"], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.1,"], "127.0.0.1"),
        ("127.0.0.1", [""], "127.0.0.1"),
        ("127.0.0.1", ["x" * 100_000], "127.0.0.1"),
        # IPv6, and IPv4-mapped IPv6 read as IPv4
        ("fd00::1", ["2001:db8::5"], "2001:db8::5"),
        ("::ffff:127.0.0.1", ["::ffff:198.51.100.1"], "198.51.100.1"),
        ("::ffff:203.0.113.9", [], "203.0.113.9"),
        # a socket without a peer address
        ("?", ["198.51.100.1"], "?"),
    ],
)
def test_client_address(peer: str, lines: list[str], expected: str) -> None:
    assert client_address(peer, lines, LB) == expected


def test_nothing_trusted_means_the_peer() -> None:
    assert client_address("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


def test_long_chains_are_bounded() -> None:
    """More trusted hops than :data:`MAX_HOPS`: the walk stops at the last one read
    (from the right), whatever a client put further left."""
    hops = [f"10.0.0.{i}" for i in range(1, 200)]
    line = ", ".join(["198.51.100.1", *hops])
    assert client_address("127.0.0.1", [line], LB) == hops[-MAX_HOPS]
    many_lines = ["198.51.100.1"] + [f"10.0.1.{i}" for i in range(100)]
    assert client_address("127.0.0.1", many_lines, LB) == f"10.0.1.{100 - MAX_HOPS}"
    # within the bound, the client is found
    short = ", ".join(["198.51.100.1", *hops[: MAX_HOPS - 1]])
    assert client_address("127.0.0.1", [short], LB) == "198.51.100.1"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=20))
def test_hostile_headers_never_crash(lines: list[str]) -> None:
    """Any header lines: an address comes back, the peer or one of the header's."""
    got = client_address("127.0.0.1", lines, LB)
    entries = [entry for line in lines for entry in line.split(",")]
    assert got == "127.0.0.1" or any(str(parse_address(e)) == got for e in entries)


def test_parse_networks_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="'10.0.0.5/8' is not an IP address or CIDR"):
        parse_networks(["10.0.0.5/8"])
    with pytest.raises(ValueError, match="'lb.example' is not"):
        parse_networks(["lb.example"])


def test_config_checks_trusted_proxies(tmp_path: Path) -> None:
    """A bad entry in the file is a config error (78) naming it; a bad flag a usage
    error (2); good ones pass ``check-config``."""
    cfg = write_config(tmp_path, trusted_proxies=["10.0.0.0/8", "lb.example"])
    done = run_cli("check-config", "-c", str(cfg))
    assert done.returncode == 78
    assert "trusted_proxies 'lb.example'" in done.stderr
    assert Config(trusted_proxies=("10.0.0.0/8", "::1")).trusted_proxies == ("10.0.0.0/8", "::1")
    done = run_cli("web", "--trusted-proxy", "10.0.0.1/8", "--port", "0")
    assert done.returncode == 2
    assert "--trusted-proxy: '10.0.0.1/8'" in done.stderr


# -- a real web server ---------------------------------------------------------------


def make_cfg(redis_url: str, **kw: Any) -> Config:
    return Config(redis_url=redis_url, key_prefix="t" + uuid.uuid4().hex[:8], **kw)


def open_store(cfg: Config) -> Store:
    return Store.from_url(
        cfg.redis_url, prefix=cfg.key_prefix, buckets_s=cfg.buckets_s, windows_s=cfg.windows_s
    )


async def recv_type(ws: Any, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout * T):
        while True:
            event = json.loads(await ws.recv())
            if event.get("type") == kind:
                return event


async def test_cap_counts_the_forwarded_address(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a trusted proxy (127.0.0.1), the cap of 2 applies per forwarded
    address: two clients of one address and two of another are accepted, a third
    of the first gets 429; the log names the forwarded address."""
    cfg = make_cfg(redis_url, max_clients_per_ip=2, trusted_proxies=("127.0.0.1",))
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{web.port}/ws"

    def via(client: str) -> Any:
        return connect(url, additional_headers={"X-Forwarded-For": f"6.6.6.6, {client}"})

    caplog.set_level(logging.DEBUG, logger="listener.webserver.server")
    try:
        async with via("198.51.100.1") as a, via("198.51.100.1") as b:
            async with via("198.51.100.2") as c, via("198.51.100.2") as d:
                for ws in (a, b, c, d):
                    await recv_type(ws, "snapshot")
                assert web.hub.per_address("198.51.100.1") == 2
                assert web.hub.per_address("198.51.100.2") == 2
                assert web.hub.per_address("127.0.0.1") == 0
                with pytest.raises(InvalidStatus) as exc:
                    async with via("198.51.100.1"):
                        pass
                assert exc.value.response.status_code == 429
        assert web.rejected["per_address"] == 1
        assert "websocket from 198.51.100.1" in caplog.text
        assert "websocket from 127.0.0.1" not in caplog.text
    finally:
        await web.stop()
        await store.close()


async def test_untrusted_peer_cannot_pick_its_address(redis_url: str) -> None:
    """No trusted proxy configured: a client's ``X-Forwarded-For`` changes nothing,
    its connections count under its TCP address and the cap holds."""
    cfg = make_cfg(redis_url, max_clients_per_ip=2)
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{web.port}/ws"
    try:
        headers = [{"X-Forwarded-For": f"198.51.100.{i}"} for i in range(3)]
        async with connect(url, additional_headers=headers[0]) as a:
            async with connect(url, additional_headers=headers[1]) as b:
                await recv_type(a, "snapshot")
                await recv_type(b, "snapshot")
                assert web.hub.per_address("127.0.0.1") == 2
                with pytest.raises(InvalidStatus) as exc:
                    async with connect(url, additional_headers=headers[2]):
                        pass
                assert exc.value.response.status_code == 429
    finally:
        await web.stop()
        await store.close()


async def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(30 * T):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_livez_needs_no_redis_listener_or_bus(tmp_path: Path) -> None:
    """With no listener ever run, ``/healthz`` is 503 and ``/livez`` 200; with its
    Redis stopped too, ``/livez`` still answers 200 (its clients count), while
    ``/healthz`` says Redis is down."""
    server = RedisServer(tmp_path)
    server.start()
    cfg = make_cfg(server.url, redis_timeout_s=1.0)
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    try:
        status, health = await _get(web.port, "/healthz")
        assert status == 503 and health["listener"]["ok"] is False
        status, live = await _get(web.port, "/livez")
        assert status == 200 and live["ok"] is True and live["clients"] == 0
        server.stop()
        status, health = await _get(web.port, "/healthz")
        assert status == 503 and health["redis"]["ok"] is False
        status, live = await _get(web.port, "/livez")
        assert status == 200 and live["ok"] is True
    finally:
        await web.stop()
        await store.close()
        server.stop()


async def test_hostile_forwarded_headers_at_a_real_server(redis_url: str) -> None:
    """120 ``X-Forwarded-For`` lines of about 7 KB each (thousands of hops) from a
    trusted peer: the handshake succeeds, the walk stops after :data:`MAX_HOPS`
    (the client counts under the last trusted hop read), the next request is
    served; lines of garbage count under the proxy's own address."""
    cfg = make_cfg(redis_url, trusted_proxies=("127.0.0.1", "10.0.0.0/8"))
    store = open_store(cfg)
    web = WebServer(cfg, store)
    await web.start("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{web.port}/ws"
    hops = [("X-Forwarded-For", "198.51.100.1")]
    hops += [("X-Forwarded-For", ", ".join(["10.0.0.9"] * 700))] * 120
    garbage = [("X-Forwarded-For", "unknown, _hidden, " * 400)] * 3 + [("X-Forwarded-For", ",,,")]
    try:
        async with connect(url, additional_headers=hops, max_size=None) as a:
            await recv_type(a, "snapshot")
            async with connect(url, additional_headers=garbage, max_size=None) as b:
                await recv_type(b, "snapshot")
                assert web.hub.per_address("10.0.0.9") == 1
                assert web.hub.per_address("127.0.0.1") == 1
                assert web.hub.per_address("198.51.100.1") == 0
        status, live = await _get(web.port, "/livez")
        assert status == 200 and live["ok"] is True
    finally:
        await web.stop()
        await store.close()
