"""A real, private RabbitMQ broker for the tests (Debian's ``rabbitmq-server``).

One broker per test session, started as a subprocess of the test run:

* its own ``epmd`` on a free port (``ERL_EPMD_PORT``), so it never touches a system
  epmd or broker on 4369/5672;
* node ``wallboard-test-<pid>@localhost``, AMQP on ``127.0.0.1:<free>``, Erlang
  distribution on another free port;
* data (``RABBITMQ_MNESIA_BASE``), logs, the enabled-plugins file (no plugin) and
  ``$HOME`` (the Erlang cookie ``rabbitmqctl`` must share) in a temp dir.

The broker keeps its data across :meth:`RabbitMQ.restart`, so durable queues and
persistent messages survive it, as on a real server.  ``guest``/``guest`` may log
in from 127.0.0.1 (RabbitMQ's default ``loopback_users``).

``fedora_broker`` is a second node, shaped like Fedora's public broker (TLS only,
client certificates; :mod:`listener.tools.fedora_broker`), also one per session.

The root ``tests/conftest.py`` registers the fixtures
(``pytest_plugins = ["tests.helpers.rabbitmq"]``).
Without ``rabbitmq-server`` installed the fixture skips, except under CI
(``$CI`` set), where it fails: ``make sysdeps`` installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.tools.fedora_broker import FedoraBroker
from tests.helpers.common import TIMEOUT_FACTOR, free_port

#: Debian's server script (the ``/usr/sbin`` wrapper would ``su`` to ``rabbitmq``).
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
#: RabbitMQ boots in ~5-10 s on 2 cores; generous for slow CI, scaled.
BOOT_TIMEOUT_S = 60.0


class RabbitMQ:
    """A RabbitMQ node run from a temp dir; start, stop and restart it at will.

    Attributes:
        port: the AMQP port on 127.0.0.1.
        node: the Erlang node name (``rabbitmqctl -n``).
        url: ``amqp://guest:guest@127.0.0.1:<port>/%2F``.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"wallboard-test-{os.getpid()}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        (tmp / "home").mkdir(exist_ok=True)
        (tmp / "enabled_plugins").write_text("[].\n")
        (tmp / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "disk_free_limit.absolute = 10MB\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def env(self) -> dict[str, str]:
        """The environment of the server and of ``rabbitmqctl`` (same cookie, epmd)."""
        env = dict(os.environ)
        env.update(
            HOME=str(self.tmp / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.tmp / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.tmp / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.tmp / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.tmp / "plugins-expand"),
            RABBITMQ_CONFIG_FILE=str(self.tmp / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.tmp / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.tmp / "rabbitmq-env.conf"),
        )
        return env

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self) -> None:
        """Start the node and wait until it accepts AMQP connections.

        Raises:
            RuntimeError: the node exited or did not boot within ``BOOT_TIMEOUT_S``.
        """
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        log = open(self.tmp / "server.out", "ab")
        self.proc = subprocess.Popen(
            [SERVER],
            env=self.env(),
            cwd=str(self.tmp),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + BOOT_TIMEOUT_S * TIMEOUT_FACTOR
        while not self._port_open():
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq-server did not start: {self.tail()}")
            time.sleep(0.2)
        self.ctl("await_startup", "--timeout", str(int(BOOT_TIMEOUT_S * TIMEOUT_FACTOR)))

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` and return its stdout.

        Raises:
            subprocess.CalledProcessError: rabbitmqctl failed.
        """
        done = subprocess.run(
            [CTL, "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout * TIMEOUT_FACTOR,
            check=True,
        )
        return done.stdout

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """``{queue name: (messages ready, messages unacknowledged)}`` in vhost ``/``."""
        out = self.ctl(
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        )
        counts = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3:
                counts[parts[0]] = (int(parts[1]), int(parts[2]))
        return counts

    def stop(self) -> None:
        """Stop the node gracefully (``rabbitmqctl stop``), else kill its process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.ctl("stop", timeout=60)
            except (subprocess.SubprocessError, OSError):
                pass
            try:
                self.proc.wait(30 * TIMEOUT_FACTOR)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop then start the node (same data: durable queues survive)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the node and its epmd."""
        self.stop()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            try:
                self.epmd.wait(10)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
                self.epmd.wait()
        self.epmd = None

    def tail(self, n: int = 2000) -> str:
        """The end of the server's output (for error messages)."""
        try:
            return (self.tmp / "server.out").read_text(errors="replace")[-n:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """One private RabbitMQ node for the session (restartable by fault tests)."""
    if not (os.path.exists(SERVER) and shutil.which("epmd")):
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server is not installed (make sysdeps installs it)")
        pytest.skip("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    broker = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture
def amqp_url(rabbitmq: RabbitMQ) -> str:
    """The session broker's URL; the broker is (re)started if a test left it down."""
    if rabbitmq.proc is None or rabbitmq.proc.poll() is not None:
        rabbitmq.start()
    return rabbitmq.url


@pytest.fixture(scope="session")
def fedora_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FedoraBroker]:
    """One RabbitMQ shaped like Fedora's public broker for the session
    (:class:`listener.tools.fedora_broker.FedoraBroker`: TLS only, a throwaway CA,
    SASL EXTERNAL, vhost ``/public_pubsub``, ``fedora`` limited to UUID queues,
    ``publisher`` limited to publishing on ``amq.topic``)."""
    if not (os.path.exists(SERVER) and shutil.which("epmd") and shutil.which("openssl")):
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server or openssl is not installed (make sysdeps)")
        pytest.skip("rabbitmq-server or openssl is not installed")
    broker = FedoraBroker(tmp_path_factory.mktemp("fedora-broker"), name="wallboard-fedora-test")
    try:
        broker.start(BOOT_TIMEOUT_S * TIMEOUT_FACTOR)
        yield broker
    finally:
        broker.close()
