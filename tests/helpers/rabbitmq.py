"""A real, private RabbitMQ broker for the tests (Debian's ``rabbitmq-server``).

One broker per test session, started as a subprocess of the test run
(:class:`listener.tools.rabbitmq_node.RabbitNode`, shared with the demo's broker):

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
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.tools.fedora_broker import FedoraBroker
from listener.tools.rabbitmq_node import BOOT_TIMEOUT_S, RabbitNode, server_installed
from tests.helpers.common import TIMEOUT_FACTOR


class RabbitMQ(RabbitNode):
    """A plain RabbitMQ node run from a temp dir (:class:`RabbitNode`: start, stop,
    restart, ctl, queue_counts, tail, close); every wait scaled by ``TIMEOUT_FACTOR``.

    Attributes:
        port: the AMQP port on 127.0.0.1.
        node: the Erlang node name (``rabbitmqctl -n``).
        url: ``amqp://guest:guest@127.0.0.1:<port>/%2F``.
    """

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, "wallboard-test", TIMEOUT_FACTOR)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def listeners(self) -> str:
        """Plain AMQP on 127.0.0.1:port."""
        return f"listeners.tcp.default = 127.0.0.1:{self.port}\n"

    def env(self) -> dict[str, str]:
        """:meth:`RabbitNode.env` with ``RABBITMQ_NODE_PORT``."""
        env = super().env()
        env["RABBITMQ_NODE_PORT"] = str(self.port)
        return env


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """One private RabbitMQ node for the session (restartable by fault tests)."""
    if not server_installed():
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
    if not (server_installed() and shutil.which("openssl")):
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server or openssl is not installed (make sysdeps)")
        pytest.skip("rabbitmq-server or openssl is not installed")
    broker = FedoraBroker(tmp_path_factory.mktemp("fedora-broker"), name="wallboard-fedora-test")
    try:
        broker.start(BOOT_TIMEOUT_S * TIMEOUT_FACTOR)
        yield broker
    finally:
        broker.close()
