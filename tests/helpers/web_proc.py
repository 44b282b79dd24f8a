"""A web node as a real process (``python -m listener web``): start it (log in a
file), read its ``/healthz`` and ``/livez``, stop it (SIGTERM) or kill it (SIGKILL).

Shared by the test modules that run web processes (``tests/e2e/test_faults_ws.py``,
``tests/ha``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

from tests.helpers.common import ROOT, TIMEOUT_FACTOR, free_port, wait_for
from tests.helpers.rigs import write_config


class WebProcess:
    """``python -m listener web`` as a user runs it (log in ``tmp/web.log``).

    Args:
        redis_url: its Redis.  tmp: a folder of its own (config and log).
        prefix: the key prefix (default: a fresh one).
        args: more command-line flags.
        wait: wait until it serves (else call :meth:`wait_serving`).
        settings: written to its TOML config.
    """

    def __init__(
        self,
        redis_url: str,
        tmp: Path,
        prefix: str | None = None,
        args: Sequence[str] = (),
        wait: bool = True,
        **settings: Any,
    ) -> None:
        self.port = free_port()
        self.prefix = prefix or f"w{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        cfg = write_config(tmp, **settings)
        self.log_path = tmp / "web.log"
        # the child has its own copy of the log's descriptor: ours is closed at once
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "listener",
                    "web",
                    "-c",
                    str(cfg),
                    "--redis-url",
                    redis_url,
                    "--key-prefix",
                    self.prefix,
                    "--port",
                    str(self.port),
                    *args,
                ],
                cwd=str(ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_serving()

    def wait_serving(self) -> None:
        """Wait until its log says it serves (stopped if it never does)."""
        try:
            wait_for(
                lambda: "web: serving" in self.log_path.read_text(),
                30,
                interval=0.1,
                what="web process serving",
            )
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        """``GET path``: status and JSON body (a 503 too)."""
        try:
            with urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def healthz(self) -> tuple[int, dict[str, Any]]:
        return self.get("/healthz")

    def clients(self) -> int:
        """Its open websockets (``/livez``)."""
        return int(self.get("/livez")[1]["clients"])

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20 * TIMEOUT_FACTOR)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
