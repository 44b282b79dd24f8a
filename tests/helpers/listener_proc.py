"""The listener as a real process (``python -m listener listen``): start it, stop it
(its thread stacks dumped on SIGUSR1 if it hangs), read its ``/metrics``.

Shared by the test modules that run a listener process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.common import ROOT, TIMEOUT_FACTOR

#: A ``sitecustomize`` that dumps every thread's stack on SIGUSR1 (a hung process
#: explains itself before it is killed).
_DUMP_DIR = tempfile.mkdtemp(prefix="fwb-dump-")
atexit.register(shutil.rmtree, _DUMP_DIR, True)
Path(_DUMP_DIR, "sitecustomize.py").write_text(
    "import faulthandler, signal\nfaulthandler.register(signal.SIGUSR1, all_threads=True)\n",
    encoding="utf-8",
)


def start_listener(
    redis_url: str,
    endpoint: str,
    prefix: str,
    config: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """``python -m listener listen`` as a user runs it (log on stdout)."""
    env = {"PYTHONPATH": _DUMP_DIR, **(env or {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "listener",
            "listen",
            "-c",
            str(config),
            "--redis-url",
            redis_url,
            "--endpoint",
            endpoint,
            "--key-prefix",
            prefix,
            *extra,
        ],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop_listener(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30 * TIMEOUT_FACTOR)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # stacks into the log, then kill
        time.sleep(1)
        proc.kill()
        out, _ = proc.communicate()
    finally:
        if proc.stdout is not None:  # communicate() closes it, unless it was interrupted
            proc.stdout.close()
    return out


def metrics(port: int) -> dict[str, float]:
    """The listener's ``/metrics`` as ``{sample name{labels}: value}``."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                if s.labels
                else ""
            )
            out[key] = s.value
    return out
