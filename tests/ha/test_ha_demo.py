"""``make run-ha`` (``python -m listener.tools.ha_demo``): the whole topology on one
machine, the page served through haproxy, a Redis master killed under it, and
every child gone after SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers.common import TIMEOUT_FACTOR, free_port, wait_for

pytestmark = [pytest.mark.ha, pytest.mark.timeout(240 * TIMEOUT_FACTOR)]


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body
    except OSError:
        return None


def _base_port() -> int:
    """A first port whose next 20 look free (the demo takes B..B+12, B+21, B+22)."""
    for _ in range(50):
        base = free_port()
        if base < 60000 and all(_free(base + n) for n in range(23)):
            return base
    raise AssertionError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_run_ha_serves_the_page_through_haproxy_and_survives_a_master_kill(
    tmp_path: Path,
) -> None:
    web, base, bus = free_port(), _base_port(), free_port()
    log = open(tmp_path / "out.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "listener.tools.ha_demo", "--dir", str(tmp_path / "ha"),
         "--web-port", str(web), "--base-port", str(base), "--bus", str(bus), "--rate", "40"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    page = f"http://127.0.0.1:{web}"
    try:
        out = tmp_path / "out.log"
        wait_for(lambda: "HA demo running" in out.read_text(), 90, 0.5, "the demo's banner")
        # the page and the API through haproxy, counts from the replay
        assert b"fedmsg" in _get(page + "/")
        first = wait_for(
            lambda: (_get(page + "/api/snapshot?window=3600") or {}).get("messages"),
            60,
            0.5,
            "messages counted",
        )
        assert _get(page + "/livez")["ok"] is True
        # kill the Redis master it printed: a sentinel promotes a replica, counting goes on
        master = int(re.search(r"kill -KILL (\d+)\s+\(the Redis master", out.read_text())[1])
        psutil.Process(master).kill()
        wait_for(
            lambda: (
                ((_get(page + "/api/snapshot?window=3600") or {}).get("messages") or 0)
                > first + 200
            ),
            60,
            0.5,
            "counting after the master's death",
        )
        # and the killed server is started again (a replica now), as systemd would
        wait_for(
            lambda: "redis0 exited with -9: starting it again" in out.read_text(),
            30,
            0.5,
            "the killed Redis started again",
        )
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 12  # 3 redis, 3 sentinels, 2 listeners, 3 web, haproxy, replay
    finally:
        kids = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    assert code == 0
    gone, alive = psutil.wait_procs(kids, timeout=15)
    assert alive == [], [p.pid for p in alive]
