"""Plain helpers shared by the tests (no fixtures): paths, the corpus, timeouts,
free ports, polling, and running the command line.

* ``ROOT``: the repository root (``tests/..``).
* ``CORPUS``: ``$WALLBOARD_CORPUS``, else ``shared/corpus`` beside the checkout.
* ``TIMEOUT_FACTOR``: ``$WALLBOARD_TIMEOUT_FACTOR`` (default 1) scales every wait.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


def _find_corpus() -> Path:
    """``$WALLBOARD_CORPUS``, else ``shared/corpus`` beside the checkout (as CI lays it out)."""
    for cand in (
        os.environ.get("WALLBOARD_CORPUS"),
        ROOT.parent / "shared" / "corpus",
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


def demo_command(folder: Path, port: int, *extra: str) -> list[str]:
    """The demo (``make run``) in ``folder`` with its page on ``port``, and ``extra``
    flags (``--bus ENDPOINT``, ``--amqp``, ``--rate N``...)."""
    return [
        sys.executable,
        "-m",
        "listener.tools.demo",
        "--dir",
        str(folder),
        "--port",
        str(port),
        *extra,
    ]
