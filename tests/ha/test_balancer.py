"""Web nodes behind a load balancer: Debian's haproxy running the shipped
``deploy/haproxy/fedmsg-wallboard.cfg`` in front of three real web processes on one
real Redis, a real listener publishing a ``tick`` every second, fed by a real
ZeroMQ publisher.

Walls are real websocket clients (the ``websockets`` package), each from its own
loopback address (``127.0.1.x``: Linux routes all of 127/8 to ``lo``), reconnecting
the way the page does (jittered backoff from 0.25-0.5 s).  The nodes trust haproxy's
address, 127.0.0.1, and have a per-address cap of 10 (so that the figures stay
small): 60 walls through the balancer are accepted (without the forwarded address
the three nodes would hold 30), leastconn spreads them, a client's own
``X-Forwarded-For`` is ignored, and a node killed with SIGKILL, or hung with
SIGSTOP, loses its walls to the two others, which give them a fresh ``snapshot`` and
new ticks, while haproxy's ``/livez`` checks mark it down (and, hung, close its
websockets; after SIGCONT it is marked up again).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers.common import TIMEOUT_FACTOR, free_port, wait_for
from tests.helpers.haproxy import CONFIG as HAPROXY_CONFIG
from tests.helpers.haproxy import Haproxy, check, environment
from tests.helpers.listener_proc import start_listener, stop_listener
from tests.helpers.redis import RedisServer
from tests.helpers.rigs import PublisherProcess, until, write_config
from tests.helpers.web_proc import WebProcess

# the failover suite (make test-ha): web nodes behind haproxy, one of them killed
pytestmark = pytest.mark.ha

T = TIMEOUT_FACTOR
#: The nodes' per-address cap in these tests.
CAP = 10
#: The listener's (and the nodes') step: a tick every second.
STEP_S = 1.0


class Stack:
    """Redis, a publisher, a listener, three web nodes and haproxy; all stopped by
    :meth:`close` (whatever started)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis")
        self.redis.tmp.mkdir()
        self.prefix = f"ha{uuid.uuid4().hex[:8]}"
        self.webs: list[WebProcess] = []
        self.pub: PublisherProcess | None = None
        self.listener: Any = None
        self.haproxy: Haproxy | None = None

    def start(self) -> None:
        self.redis.start()
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.pub = PublisherProcess(endpoint)
        (self.tmp / "listener").mkdir()
        cfg = write_config(self.tmp / "listener", step_s=STEP_S)
        self.listener = start_listener(self.redis.url, endpoint, self.prefix, cfg)
        settings = dict(step_s=STEP_S, trusted_proxies=["127.0.0.1"], max_clients_per_ip=CAP)
        for i in range(3):  # started together, waited for together
            self.webs.append(
                WebProcess(
                    self.redis.url, self.tmp / f"web{i + 1}", self.prefix, wait=False, **settings
                )
            )
        for web in self.webs:
            web.wait_serving()
        self.haproxy = Haproxy(self.tmp, [w.address for w in self.webs])
        wait_for(
            lambda: set(self.haproxy.servers().values()) == {"UP"} if self.haproxy else False,
            20,
            0.2,
            "haproxy's checks of /livez mark every node up",
        )
        self.pub.send(200, 500)  # counted messages: snapshots with something in them

    def close(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        for web in self.webs:
            web.stop()
        if self.listener is not None:
            stop_listener(self.listener)
        if self.pub is not None:
            self.pub.kill()
        self.redis.stop()

    def clients(self) -> list[int]:
        """Open websockets per node (``/livez``; a dead node: 0)."""
        return [w.clients() if w.proc.poll() is None else 0 for w in self.webs]


@contextmanager
def running(tmp: Path) -> Iterator[Stack]:
    stack = Stack(tmp)
    try:
        stack.start()
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the tests that leave it as they found it."""
    with running(tmp_path_factory.mktemp("ha")) as s:
        yield s


class Wall:
    """A wall page's websocket, from its own loopback ``source`` address: reads
    every event, reconnects after a close like the page (jittered backoff)."""

    def __init__(self, url: str, source: str) -> None:
        self.url = url
        self.source = source
        self.connects = 0
        self.drops = 0
        self.snapshots: list[float] = []  # arrival times (monotonic)
        self.ticks: list[tuple[float, float]] = []  # (arrival, the tick's end)
        self.connected = asyncio.Event()
        self.refused: int | None = None

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                async with connect(self.url, local_addr=(self.source, 0)) as ws:
                    self.connects += 1
                    async for raw in ws:
                        event = json.loads(raw)
                        attempt = 0
                        if event["type"] == "snapshot":
                            self.snapshots.append(time.monotonic())
                            self.connected.set()
                        elif event["type"] == "tick":
                            self.ticks.append((time.monotonic(), float(event["end"])))
            except InvalidStatus as exc:
                self.refused = exc.response.status_code
                return
            except Exception:  # ConnectionClosed, OSError (reset, refused), TimeoutError
                pass
            self.drops += 1
            cap = min(30.0, 0.5 * 2 ** min(attempt, 10))
            attempt += 1
            await asyncio.sleep(cap / 2 + random.random() * cap / 2)


async def open_walls(url: str, sources: list[str]) -> tuple[list[Wall], list[asyncio.Task[None]]]:
    """Walls connected one after the other (each has its snapshot before the next
    connects: leastconn sees the counts as they are)."""
    walls, tasks = [], []
    for source in sources:
        wall = Wall(url, source)
        task = asyncio.create_task(wall.run())
        walls.append(wall)
        tasks.append(task)
        done, _ = await asyncio.wait(
            [task, asyncio.create_task(wall.connected.wait())],
            timeout=20 * T,
            return_when=asyncio.FIRST_COMPLETED,
        )
        assert done, f"wall from {source} neither connected nor refused"
    return walls, tasks


async def close_walls(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read()


# -- the config as shipped ------------------------------------------------------------


def test_shipped_config_is_valid(tmp_path: Path) -> None:
    """``haproxy -c`` accepts it with the local global section, and with Debian's own
    ``/etc/haproxy/haproxy.cfg`` in front (how docs/SCALING.md installs it), without a
    warning; the websocket tunnel timeout is above the nodes' keepalive."""
    from listener.core.config import Config  # the defaults the timeout must exceed

    env = environment("127.0.0.1:8080", ["127.0.0.1:8081"] * 3, tmp_path / "s.sock")
    done = check(env)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr and "ALERT" not in done.stderr, done.stderr
    debian = Path("/etc/haproxy/haproxy.cfg")
    if debian.exists():
        done = check(env, debian, HAPROXY_CONFIG)
        assert done.returncode == 0 and "WARNING" not in done.stderr, done.stderr
    text = HAPROXY_CONFIG.read_text()
    tunnel_s = next(
        int(line.split()[2].rstrip("s"))
        for line in text.splitlines()
        if line.split()[:2] == ["timeout", "tunnel"]
    )
    cfg = Config()
    assert tunnel_s > cfg.ping_interval_s + cfg.ping_timeout_s
    assert "balance leastconn" in text and "uri /livez" in text and "option forwardfor" in text


# -- through the balancer ----------------------------------------------------------


async def test_walls_through_haproxy_spread_and_pass_the_cap(stack: Stack) -> None:
    """The page and ``/livez`` answer through haproxy; 60 walls from 30 addresses (2
    each) are all accepted and get a snapshot, then ticks (the three nodes would
    hold 3 x 10 = 30 if they counted haproxy's address), and leastconn spreads them
    evenly."""
    assert stack.haproxy is not None
    status, page = await asyncio.to_thread(http_get, stack.haproxy.http + "/")
    assert status == 200 and b"<html" in page.lower()
    status, live = await asyncio.to_thread(http_get, stack.haproxy.http + "/livez")
    assert status == 200 and json.loads(live)["ok"] is True
    with pytest.raises(urllib.error.HTTPError) as denied:  # scraped node by node only
        await asyncio.to_thread(http_get, stack.haproxy.http + "/metrics")
    denied.value.close()
    assert denied.value.code == 403
    status, metrics = await asyncio.to_thread(http_get, f"http://{stack.webs[0].address}/metrics")
    assert status == 200 and b"fedmsg_wallboard_web_clients" in metrics
    sources = [f"127.0.1.{i}" for i in range(1, 31) for _ in range(2)]
    walls, tasks = await open_walls(stack.haproxy.url, sources)
    try:
        assert [w.refused for w in walls] == [None] * 60
        assert all(w.snapshots for w in walls)
        per_node = await asyncio.to_thread(stack.clients)
        assert sum(per_node) == 60, per_node
        assert max(per_node) - min(per_node) <= 2, per_node
        await until(lambda: all(w.ticks for w in walls), 15, "a tick at every wall")
    finally:
        await close_walls(tasks)


async def attempt(url: str, source: str, claimed: str) -> tuple[str, Any]:
    """One websocket from ``source`` claiming to forward ``claimed``: ``("accepted",
    ws)`` once its snapshot arrived (it is counted then), else ``("429", None)``
    (refused at the handshake) or ``("1008", None)`` (closed by the cap after it)."""
    try:
        ws = await connect(
            url, local_addr=(source, 0), additional_headers={"X-Forwarded-For": claimed}
        )
    except InvalidStatus as exc:
        return str(exc.response.status_code), None
    try:
        async with asyncio.timeout(20 * T):
            event = json.loads(await ws.recv())
        assert event["type"] == "snapshot"
        return "accepted", ws
    except ConnectionClosed as exc:
        await ws.close()
        return str(exc.rcvd.code if exc.rcvd else None), None


async def test_client_cannot_choose_its_address(stack: Stack) -> None:
    """An untrusted peer's ``X-Forwarded-For`` is ignored: straight to a node from
    127.0.0.5, ten connections each claiming another address fill 127.0.0.5's cap
    and the eleventh is refused (429); through haproxy, 35 walls of one address
    claiming 35 others: at most 3 x 10 are accepted, the rest refused."""
    assert stack.haproxy is not None
    held: list[Any] = []
    try:
        direct = [
            await attempt(stack.webs[0].url, "127.0.0.5", f"198.51.100.{i}") for i in range(CAP + 1)
        ]
        held += [ws for _, ws in direct if ws is not None]
        assert [outcome for outcome, _ in direct] == ["accepted"] * CAP + ["429"]
        balanced = [
            await attempt(stack.haproxy.url, "127.0.2.1", f"203.0.113.{i}") for i in range(35)
        ]
        held += [ws for _, ws in balanced if ws is not None]
        outcomes = [outcome for outcome, _ in balanced]
        assert outcomes.count("accepted") <= 3 * CAP
        assert set(outcomes) == {"accepted", "429"}
    finally:
        for ws in held:
            await ws.close()


@pytest.mark.browser
def test_page_works_through_haproxy(stack: Stack) -> None:
    """Debian's chromium opens the wall through haproxy: a snapshot, then ticks."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():  # pragma: no cover - make sysdeps installs it
        pytest.skip("Debian chromium not installed (make sysdeps)")
    # Playwright is imported only by the browser tests (slow to import)
    from playwright.sync_api import sync_playwright

    assert stack.haproxy is not None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_context(bypass_csp=True).new_page()
            page.goto(stack.haproxy.http + "/", wait_until="load")
            page.wait_for_function("wallboard.state.events.snapshot >= 1", timeout=20_000 * T)
            ticks = page.evaluate("wallboard.state.events.tick")
            page.wait_for_function(f"wallboard.state.events.tick > {ticks}", timeout=15_000 * T)
            # the badge follows the listener's heartbeat (15 s of grace): it says the
            # wall is live once the status events through haproxy say so
            page.wait_for_function(
                "['live', 'stale'].includes(document.getElementById('status-text').textContent)",
                timeout=30_000 * T,
            )
            status, body = http_get(stack.haproxy.http + "/healthz")
            assert status == 200 and json.loads(body)["listener"]["ok"] is True, body
        finally:
            browser.close()


# -- a node dies or hangs --------------------------------------------------------------


async def walls_move_off(stack: Stack, fault: str) -> dict[str, Any]:
    """30 walls spread over the three nodes; the busiest node gets ``fault``
    (``"kill"``: SIGKILL; ``"stop"``: SIGSTOP).  Every wall it held is dropped,
    reconnects through haproxy to another node, gets a fresh snapshot and then a
    tick newer than the fault, within 15 s; the other walls are not dropped;
    haproxy's ``/livez`` checks mark the node DOWN and the two others hold all 30.

    Returns:
        ``{"node", "walls_moved", "back_within_s"}`` (for the log).
    """
    assert stack.haproxy is not None
    walls, tasks = await open_walls(stack.haproxy.url, [f"127.0.1.{i}" for i in range(1, 31)])
    try:
        await until(lambda: all(w.ticks for w in walls), 15, "a tick at every wall")
        per_node = await asyncio.to_thread(stack.clients)
        assert sum(per_node) == 30, per_node
        victim = max(range(3), key=lambda i: per_node[i])
        held = per_node[victim]
        assert held >= 10
        t_fault = time.monotonic()
        wall_clock_fault = time.time()
        if fault == "kill":
            stack.webs[victim].kill()
        else:
            stack.webs[victim].proc.send_signal(signal.SIGSTOP)

        def recovered() -> list[Wall]:
            return [
                w
                for w in walls
                if w.drops
                and any(t > t_fault for t in w.snapshots)
                and any(t > t_fault and end > wall_clock_fault for t, end in w.ticks)
            ]

        deadline = t_fault + 15 * T
        while len(recovered()) < held and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        moved = recovered()
        dropped = [w for w in walls if w.drops]
        assert len(dropped) == held, (len(dropped), held)
        assert len(moved) == held, f"{len(moved)} of {held} walls back within 15 s"
        assert all(w.connects == 2 for w in moved)
        assert all(len(w.snapshots) == 1 for w in walls if not w.drops)
        name = f"web{victim + 1}"
        await until(
            lambda: stack.haproxy.servers()[name].startswith("DOWN") if stack.haproxy else 0,
            15,
            f"haproxy marking {name} down",
            0.2,
        )
        servers = stack.haproxy.servers()
        assert [servers[f"web{i + 1}"] for i in range(3) if i != victim] == ["UP", "UP"]
        survivors = [w for i, w in enumerate(stack.webs) if i != victim]
        assert sum(await asyncio.to_thread(lambda: [w.clients() for w in survivors])) == 30
        return {
            "node": name,
            "walls_moved": len(moved),
            "back_within_s": round(
                max(min(t for t in w.snapshots if t > t_fault) for w in moved) - t_fault, 2
            ),
        }
    finally:
        await close_walls(tasks)


@pytest.mark.timeout(180)
async def test_sigkill_of_a_node_moves_its_walls(tmp_path: Path) -> None:
    """A node killed (SIGKILL, as a crash or the OOM killer): its walls move to the
    others within 15 s, with a snapshot and new ticks (:func:`walls_move_off`)."""
    with running(tmp_path) as stack:
        print("sigkill of a web node:", await walls_move_off(stack, "kill"))


@pytest.mark.timeout(180)
async def test_sigstop_of_a_node_moves_its_walls_and_it_comes_back(tmp_path: Path) -> None:
    """A node that hangs (SIGSTOP: its sockets stay open, nothing answers): haproxy's
    checks time out, it is marked down and its websockets are closed
    (``on-marked-down shutdown-sessions``), so its walls move to the others within
    15 s (:func:`walls_move_off`).  After SIGCONT it is marked up again and takes
    new walls."""
    with running(tmp_path) as stack:
        assert stack.haproxy is not None
        figures = await walls_move_off(stack, "stop")
        print("sigstop of a web node:", figures)
        node = stack.webs[int(figures["node"][3:]) - 1]
        node.proc.send_signal(signal.SIGCONT)
        await until(
            lambda: stack.haproxy.servers()[figures["node"]] == "UP" if stack.haproxy else 0,
            20,
            f"haproxy marking {figures['node']} up again",
            0.2,
        )
        # leastconn: three new walls on three empty nodes, one each
        walls, tasks = await open_walls(
            stack.haproxy.url, ["127.0.1.97", "127.0.1.98", "127.0.1.99"]
        )
        try:
            per_node = await asyncio.to_thread(stack.clients)
            assert per_node == [1, 1, 1] and node.clients() == 1, per_node
        finally:
            await close_walls(tasks)
