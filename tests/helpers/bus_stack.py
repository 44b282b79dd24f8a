"""A listener and a web process fed by a ZeroMQ publisher of the test: real
processes on a real Redis (a key prefix of their own), for tests that cause what
the listener sees (gaps, silences) and read what the web process reports.

Shared by ``tests/webserver/test_ops_api.py`` and ``tests/e2e/test_browser_ops.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import zmq

from tests.helpers.common import ROOT, free_port
from tests.helpers.listener_proc import start_listener, stop_listener
from tests.helpers.rigs import FAST_LINK, Sender, write_config


def get_json(port: int, path: str) -> Any:
    """The decoded JSON body of ``GET http://127.0.0.1:<port><path>``; None when
    nothing answers or the status is an error."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


class BusStack:
    """A publisher (:class:`tests.helpers.rigs.Sender` on :attr:`endpoint`), the
    listener on it (1 s step, ``FAST_LINK``) and the web process (log in
    ``<tmp>/web.log``).

    Args:
        redis_url: the real Redis.  tmp: a folder for config and logs.
        prefix: the Redis key prefix (default: a fresh one).
        settings: more listener settings for its TOML config.

    Attributes:
        prefix, endpoint, port (the web process's), pub, listener, web.
    """

    def __init__(
        self, redis_url: str, tmp: Path, prefix: str | None = None, **settings: Any
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix or "o" + uuid.uuid4().hex[:8]
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.port = free_port()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.pub = Sender(self.ctx, self.endpoint)
        config = write_config(tmp, step_s=1.0, **settings, **FAST_LINK)
        self.listener = start_listener(redis_url, self.endpoint, self.prefix, config)
        # the child has its own copy of the log's descriptor: ours is closed at once
        with open(tmp / "web.log", "wb") as log:
            self.web = subprocess.Popen(
                [sys.executable, "-m", "listener", "web", "--redis-url", redis_url,
                 "--key-prefix", self.prefix, "--port", str(self.port), "--step", "1"],
                cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def get(self, path: str) -> Any:
        """:func:`get_json` of ``path`` on the web process."""
        return get_json(self.port, path)

    def close(self) -> str:
        """Stop the web process, the listener (its output is returned) and the
        publisher."""
        self.web.terminate()
        self.web.wait(15)
        out = stop_listener(self.listener)
        self.pub.close()
        self.ctx.destroy(linger=0)
        return out
