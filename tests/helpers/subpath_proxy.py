"""A real reverse proxy for the tests: Debian's haproxy (``make sysdeps``) mounting
a web process under a sub-path, as ops put the wall behind their front end.

:class:`SubpathProxy` serves ``http://127.0.0.1:<port><prefix>/...`` from the web
process's ``/...`` (``http-request replace-path``; websockets pass through, HTTP
mode), redirects ``<prefix>`` to ``<prefix>/`` and answers 404 to everything
outside the prefix: a page that asked for ``/ws`` or ``/api/...`` (absolute URLs)
would get nothing from it.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.helpers.common import free_port, wait_for
from tests.helpers.haproxy import haproxy_binary

HAPROXY = haproxy_binary()

CONFIG = """\
global
    maxconn 512

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h

frontend wall
    bind 127.0.0.1:{port}
    acl bare path {prefix}
    acl inside path_beg {prefix}/
    http-request redirect location {prefix}/ code 301 if bare
    http-request return status 404 content-type text/plain string "outside {prefix}/" unless inside
    default_backend web

backend web
    http-request replace-path {prefix}(/.*) \\1
    server web 127.0.0.1:{target_port}
"""


class SubpathProxy:
    """haproxy on a free port, forwarding ``prefix + "/..."`` to ``127.0.0.1:target_port``.

    Args:
        target_port: the web process.
        prefix: the sub-path, e.g. ``"/wallboard"`` (no trailing slash).
        tmp: a folder for the configuration and the log.

    Use as a context manager.
    """

    def __init__(self, target_port: int, prefix: str, tmp: Path) -> None:
        self.port = free_port()
        self.prefix = prefix
        self.config = tmp / "haproxy.cfg"
        self.config.write_text(
            CONFIG.format(port=self.port, prefix=prefix, target_port=target_port)
        )
        self.log = tmp / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The page's address through the proxy (``http://127.0.0.1:P/wallboard/``)."""
        return f"http://127.0.0.1:{self.port}{self.prefix}/"

    def __enter__(self) -> SubpathProxy:
        check = subprocess.run(
            [HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refuses its configuration: {check.stderr}")
        # -db: foreground, no daemon; its own copy of the log's descriptor
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._answers, 15, 0.05, "haproxy listening")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {self.log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
