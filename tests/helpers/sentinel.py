"""Redis with Sentinel for the tests: three real ``redis-server`` (one master, two
replicas) and three real sentinels (``redis-server --sentinel``) on free ports,
each in a temp folder (:class:`SentinelGroup`; the ``sentinel_group`` fixture).

Sentinels: quorum 2, ``down-after-milliseconds`` :data:`DOWN_AFTER_MS`,
``failover-timeout`` :data:`FAILOVER_TIMEOUT_MS`.  :meth:`SentinelGroup.failovers`
counts the ``+switch-master`` announcements of the first sentinel (one per
failover), listened to from a thread.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers.common import free_port, wait_for
from tests.helpers.redis import redis_server_binary

#: The master's name in the sentinels.
MASTER_NAME = "mymaster"
#: Unanswered pings for this long make a master subjectively down, milliseconds.
DOWN_AFTER_MS = 1000
#: Sentinel's failover timeout, milliseconds (also how long before a retry).
FAILOVER_TIMEOUT_MS = 5000


class SentinelGroup:
    """Three redis-server (master + 2 replicas) and three sentinels watching them.

    Attributes:
        servers: ``{port: Popen}`` of the redis-server processes.
        sentinels: ``{port: Popen}`` of the sentinels.
        switches: the ``+switch-master`` messages seen (``name old_ip old_port
            new_ip new_port``).
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: dict[int, subprocess.Popen[bytes]] = {}
        self.switches: list[str] = []
        self._first_master = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- start, stop ------------------------------------------------------------

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [redis_server_binary(), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        ports = [free_port() for _ in range(3)]
        self._first_master = ports[0]
        for n, port in enumerate(ports):
            folder = self.tmp / f"redis{n}"
            folder.mkdir()
            args = [
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(folder),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]
            if n:
                args += ["--replicaof", "127.0.0.1", str(ports[0])]
            self.servers[port] = self._spawn(args)
        for port in ports:
            wait_for(lambda p=port: _pings(p), 15, what=f"redis-server :{port}")
        wait_for(lambda: self._replicas(ports[0]) == 2, 20, what="two replicas in sync")
        for n in range(3):
            port = free_port()
            folder = self.tmp / f"sentinel{n}"
            folder.mkdir()
            conf = folder / "sentinel.conf"  # sentinels rewrite their file: one each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {ports[0]} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 2\n",
                encoding="utf-8",
            )
            self.sentinels[port] = self._spawn([str(conf), "--sentinel"])
        wait_for(self._sentinels_agree, 30, interval=0.2, what="sentinels see each other")
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen one cannot die of SIGTERM
                proc.terminate()
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- what the tests read ------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """The sentinels as ``host:port`` (the ``redis_sentinels`` setting)."""
        return [f"127.0.0.1:{p}" for p in self.sentinels]

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers says."""
        for port in self.sentinels:
            try:
                with redis.Redis(port=port, socket_timeout=1) as s:
                    _, mport = s.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                return int(mport)
            except redis.RedisError:
                continue
        raise AssertionError("no sentinel answers")

    def master(self) -> redis.Redis:
        """A client of the current master (close it)."""
        return redis.Redis(port=self.master_port(), socket_timeout=2)

    def failovers(self) -> int:
        """Failovers announced so far (``+switch-master``)."""
        return len(self.switches)

    def wait_failover(self, after: int, timeout_s: float = 30) -> int:
        """Wait until more than ``after`` failovers were announced; returns the new
        master's port."""
        wait_for(lambda: self.failovers() > after, timeout_s, interval=0.1, what="a failover")
        return int(self.switches[-1].split()[4])

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Wait until the master has two replicas online (after a failover, the
        old master back as a replica or replaced)."""
        wait_for(
            lambda: self._replicas(self.master_port()) == 2,
            timeout_s,
            interval=0.2,
            what="two replicas",
        )

    # -- inside -----------------------------------------------------------------

    def _replicas(self, port: int) -> int:
        try:
            with redis.Redis(port=port, socket_timeout=1) as r:
                info = r.info("replication")
        except redis.RedisError:
            return 0
        return sum(
            1
            for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
        )

    def _sentinels_agree(self) -> bool:
        for port in self.sentinels:
            try:
                with redis.Redis(port=port, socket_timeout=1) as s:
                    m = s.sentinel_master(MASTER_NAME)
            except redis.RedisError:
                return False
            if m["num-slaves"] != 2 or m["num-other-sentinels"] != 2:
                return False
        return True

    def _watch(self) -> None:
        port = next(iter(self.sentinels))
        with redis.Redis(port=port, socket_timeout=2) as s, s.pubsub() as ps:
            ps.subscribe("+switch-master")
            while not self._stop.is_set():
                try:
                    msg = ps.get_message(timeout=0.2)
                except redis.RedisError:
                    time.sleep(0.2)
                    continue
                if msg and msg["type"] == "message":
                    self.switches.append(msg["data"].decode())


def _pings(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as r:
            return bool(r.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A :class:`SentinelGroup` of this test only."""
    group = SentinelGroup(tmp_path / "sentinel")
    group.tmp.mkdir()
    try:
        group.start()
        yield group
    finally:
        group.stop()
