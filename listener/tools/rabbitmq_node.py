"""A private Debian ``rabbitmq-server`` run from a folder (the demo's and the tests' brokers).

:class:`RabbitNode` starts, stops and drives one RabbitMQ node that shares nothing
with a system broker:

* its own ``epmd`` on a free port (``ERL_EPMD_PORT``), so it never touches a system
  epmd or broker on 4369/5672;
* node ``<name>-<pid>@localhost``, Erlang distribution on a free port;
* data (``RABBITMQ_MNESIA_BASE``), logs, the enabled-plugins file, ``rabbitmq.conf``
  and ``$HOME`` (the Erlang cookie ``rabbitmqctl`` must share) in the folder.

A subclass says its listeners, plugins and TLS (:meth:`RabbitNode.listeners`,
:attr:`RabbitNode.plugins`) and sets up users and vhosts in :meth:`RabbitNode.provision`
(:class:`listener.tools.fedora_broker.FedoraBroker`, the tests' plain broker in
``tests/helpers/rabbitmq.py``).  The node keeps its data across a stop and a start,
so durable queues and persistent messages survive it, as on a real server.

Raises :class:`BrokerError` when ``rabbitmq-server`` is missing or the node does
not boot.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

#: Debian's server script (the ``/usr/sbin`` wrapper would ``su`` to ``rabbitmq``).
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
#: RabbitMQ boots in ~5-10 s on 2 cores.
BOOT_TIMEOUT_S = 60.0


class BrokerError(RuntimeError):
    """The broker cannot be made or started (missing tools, boot failure)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_installed() -> bool:
    """Whether Debian's ``rabbitmq-server`` and ``epmd`` are on this machine."""
    return os.path.exists(SERVER) and shutil.which("epmd") is not None


class RabbitNode:
    """A RabbitMQ node run from a folder; start, stop and restart it at will.

    Args:
        folder: where its data, logs and config go (created).
        name: part of the Erlang node name (``<name>-<pid>@localhost``).
        timeout_factor: multiplies every wait (boot, ``rabbitmqctl``, stop), for
            slow machines.

    Attributes:
        port: the port of its AMQP (or AMQPS) listener on 127.0.0.1, free at creation.
        node: the Erlang node name (``rabbitmqctl -n``).
        proc / epmd: the server's and epmd's processes while they run.
    """

    def __init__(self, folder: Path, name: str, timeout_factor: float = 1.0) -> None:
        self.tmp = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.timeout_factor = timeout_factor
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"{name}-{os.getpid()}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None

    # -- what a subclass fills in ---------------------------------------------------

    #: The plugins ``enabled_plugins`` lists.
    plugins: tuple[str, ...] = ()

    def listeners(self) -> str:
        """The lines of ``rabbitmq.conf`` that say where and how clients connect
        (listeners, TLS, auth mechanisms), each ending in a newline."""
        raise NotImplementedError

    def configure(self) -> None:
        """Write ``home/``, ``enabled_plugins`` and ``rabbitmq.conf`` (:meth:`listeners`,
        a 10 MB disk limit, logs to a file only) in the folder; :meth:`start` calls it
        before the server runs."""
        (self.tmp / "home").mkdir(exist_ok=True)
        (self.tmp / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (self.tmp / "rabbitmq.conf").write_text(
            self.listeners() + "disk_free_limit.absolute = 10MB\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    def provision(self) -> None:
        """Set up vhosts and users once the node runs (called by :meth:`start`;
        idempotent across restarts).  The default leaves RabbitMQ's defaults."""

    # -- the node -------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment of the server and of ``rabbitmqctl`` (same cookie, epmd)."""
        env = dict(os.environ)
        env.update(
            HOME=str(self.tmp / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
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

    def port_open(self) -> bool:
        """Whether :attr:`port` accepts a TCP connection now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self, timeout_s: float | None = None) -> None:
        """Write the config, start epmd (if down) and the node, wait until it listens
        and ``rabbitmqctl await_startup`` returns, then :meth:`provision`.

        Args:
            timeout_s: the boot's limit (default ``BOOT_TIMEOUT_S`` x timeout_factor).

        Raises:
            BrokerError: ``rabbitmq-server`` is missing, or the node exited or did
                not boot within ``timeout_s``.
        """
        if timeout_s is None:
            timeout_s = BOOT_TIMEOUT_S * self.timeout_factor
        if not server_installed():
            raise BrokerError("needs Debian's rabbitmq-server (make sysdeps)")
        self.configure()
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        with open(self.tmp / "server.out", "ab") as log:
            self.proc = subprocess.Popen(
                [SERVER],
                env=self.env(),
                cwd=str(self.tmp),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not self.port_open():
            if self.proc.poll() is not None:
                raise BrokerError(f"rabbitmq-server exited: {self.tail()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"rabbitmq-server did not start: {self.tail()}")
            time.sleep(0.2)
        self.ctl("await_startup", "--timeout", str(int(timeout_s)))
        self.provision()

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` (``timeout`` seconds x timeout_factor)
        and return its stdout.

        Raises:
            subprocess.CalledProcessError: rabbitmqctl failed.
        """
        done = subprocess.run(
            [CTL, "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout * self.timeout_factor,
            check=True,
        )
        return done.stdout

    def queue_counts(self, vhost: str = "/") -> dict[str, tuple[int, int]]:
        """``{queue name: (messages ready, messages unacknowledged)}`` in ``vhost``."""
        out = self.ctl(
            "list_queues", "-p", vhost, "-q", "--no-table-headers",
            "name", "messages_ready", "messages_unacknowledged",
        )  # fmt: skip
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
                self.proc.wait(30 * self.timeout_factor)
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
