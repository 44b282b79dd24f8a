"""The wall as real processes for browser tests: ``python -m listener listen`` and
``python -m listener web`` on a real Redis (a key prefix of their own), fed by
``python -m listener replay`` looping over the real messages shipped with
fedmsg_meta_fedora_infrastructure; and chromium pages on it (Playwright).

Shared by the browser test modules that need a stack of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.common import ROOT, free_port, wait_for

#: Debian's chromium (``make sysdeps``); never a downloaded browser.
CHROMIUM = "/usr/bin/chromium"


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium launched by Playwright (no sandbox: tests run as root),
    closed on exit."""
    # imported once chromium is known to be there (the browser modules skip otherwise)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def new_page(browser: Any, width: int = 1920, height: int = 1080, **context: Any) -> Any:
    """A page in a context of its own (``context``: Playwright's ``new_context``
    options, e.g. ``reduced_motion="reduce"``, ``timezone_id``).  ``bypass_csp``:
    Playwright's polling predicates are evaluated strings, which the page's CSP
    (no eval) would refuse; it also makes the hostile-username tests rely on
    textContent alone."""
    ctx = browser.new_context(
        viewport={"width": width, "height": height}, bypass_csp=True, **context
    )
    return ctx.new_page()


def get_json(url: str) -> tuple[int, Any]:
    """``(status, decoded JSON body)`` of a GET; ``(0, None)`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, body.decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


class WallStack:
    """Listener, web process and publishers of one test module.

    Args:
        redis_url: the session's real Redis.
        tmp: a folder for the logs and settings.

    Attributes:
        prefix: the Redis key prefix.  bus: the replay's ZeroMQ endpoint.
        port: the web process's port (the same after each restart).
    """

    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.redis_url = redis_url
        self.tmp = tmp
        self.prefix = "k" + uuid.uuid4().hex[:8]
        self.bus = f"tcp://127.0.0.1:{free_port()}"
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The page's address, straight to the web process."""
        return f"http://127.0.0.1:{self.port}/"

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``python -m listener ARGS`` with its output in ``<tmp>/<name>.log``."""
        # the child has its own copy of the log's descriptor: ours is closed at once
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "listener", *args],
                cwd=str(ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def start_listener(self) -> None:
        """The listener on :attr:`bus`, ticking every second."""
        # each replay binds the endpoint anew: reconnect quickly (libzmq backoff)
        (self.tmp / "wallboard.toml").write_text("reconnect_ivl_max_ms = 300\n")
        self.spawn(
            "listener",
            "listen",
            "--config",
            str(self.tmp / "wallboard.toml"),
            "--redis-url",
            self.redis_url,
            "--key-prefix",
            self.prefix,
            "--endpoint",
            self.bus,
            "--step",
            "1",
        )

    def start_web(self, *extra: str) -> None:
        """The web process on :attr:`port` (``extra``: more flags, e.g. ``--web-root``);
        returns once it answers ``/healthz``."""
        self.spawn(
            "web",
            "web",
            "--redis-url",
            self.redis_url,
            "--key-prefix",
            self.prefix,
            "--port",
            str(self.port),
            "--step",
            "1",
            *extra,
        )
        wait_for(lambda: get_json(self.url + "healthz")[0] in (200, 503), 30, 0.1, "web up")

    def replay_loop(self, name: str, rate: int) -> subprocess.Popen[bytes]:
        """The shipped examples at ``rate`` msgs/s on :attr:`bus`, looping with new
        ids, until :meth:`stop`'d."""
        return self.spawn(
            name,
            "replay",
            "--builtin-examples",
            "--endpoint",
            self.bus,
            "--rebase-time",
            "--rate",
            str(rate),
            "--loop",
            "--new-ids",
            "--wait-timeout",
            "30",
        )

    def stop(self, name: str) -> None:
        """SIGTERM one process and reap it (SIGKILL after 15 s)."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        """Stop every process started here."""
        for name in list(self.procs):
            self.stop(name)

    def logs(self) -> str:
        """The tail of every process's log, for a failing test's report."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp.glob("*.log")
        )
