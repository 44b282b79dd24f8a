"""A real haproxy (Debian's) running the shipped config in front of web nodes.

``deploy/haproxy/fedmsg-wallboard.cfg`` reads its addresses from the environment
(``WALLBOARD_BIND``, ``WEB1``..``WEB3``), ``deploy/haproxy/local.cfg`` adds a
global section with a stats socket (``HAPROXY_STATS_SOCKET``): the tests run the
files as shipped, nothing rendered.  :meth:`Haproxy.servers` reads each
backend server's state from the stats socket (``show stat``, CSV).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.helpers.common import ROOT, TIMEOUT_FACTOR, free_port, wait_for

CONFIG = ROOT / "deploy" / "haproxy" / "fedmsg-wallboard.cfg"
LOCAL = ROOT / "deploy" / "haproxy" / "local.cfg"
#: The backend the config defines.
BACKEND = "wallboard_web"


def haproxy_binary() -> str:
    """Debian's haproxy (``/usr/sbin``, which is not on every user's PATH)."""
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def environment(bind: str, backends: Sequence[str], stats_socket: Path) -> dict[str, str]:
    """The variables the shipped config reads: ``WALLBOARD_BIND``, ``WEB1``..."""
    env = dict(os.environ)
    env["WALLBOARD_BIND"] = bind
    env["HAPROXY_STATS_SOCKET"] = str(stats_socket)
    for i, address in enumerate(backends, 1):
        env[f"WEB{i}"] = address
    return env


def check(env: dict[str, str], *files: Path) -> subprocess.CompletedProcess[str]:
    """``haproxy -c`` on ``files`` (default: the local global and the shipped config)."""
    return subprocess.run(
        [haproxy_binary(), "-c", *(a for f in files or (LOCAL, CONFIG) for a in ("-f", str(f)))],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


class Haproxy:
    """haproxy in the foreground (``-db``) on 127.0.0.1:<free port>, its log in
    ``tmp/haproxy.log``, in front of ``backends`` (``host:port``, three)."""

    def __init__(self, tmp: Path, backends: Sequence[str]) -> None:
        self.port = free_port()
        self.stats_socket = tmp / "haproxy.sock"
        self.log_path = tmp / "haproxy.log"
        env = environment(f"127.0.0.1:{self.port}", backends, self.stats_socket)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(LOCAL), "-f", str(CONFIG)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(tmp),
            )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited: {self.log_path.read_text()}")
            if not self.stats_socket.exists():
                return False  # the stats socket may come up after the frontend
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        try:
            wait_for(up, 15, what="haproxy listening")
        except BaseException:
            self.stop()
            raise

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The websocket URL through the balancer."""
        return f"ws://127.0.0.1:{self.port}/ws"

    def command(self, line: str) -> str:
        """One stats-socket command's answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10 * TIMEOUT_FACTOR)
            s.connect(str(self.stats_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, str]:
        """``{server name: status}`` of the backend (``UP``, ``DOWN``, ``UP 1/2``...)."""
        text = self.command("show stat").lstrip("# ")
        return {
            row["svname"]: row["status"]
            for row in csv.DictReader(text.splitlines())
            if row.get("pxname") == BACKEND and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
