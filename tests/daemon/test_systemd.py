"""The systemd units, run as written: sd_notify, watchdog, SIGTERM, SIGHUP, exit codes.

Each test reads a unit in ``systemd/`` and runs its ``ExecStart=`` command line as
parsed from the file, with two documented substitutions (there is no systemd in
CI and nothing is installed under ``/usr/bin`` or ``/etc``):

* the executable ``/usr/bin/fedmsg-wallboard`` becomes the venv's console script
  (``sys.executable``'s sibling ``fedmsg-wallboard``);
* the settings file: a unit names none, so the command reads
  ``/etc/fedmsg-wallboard/wallboard.toml``, the first default place
  (:data:`listener.core.config.SYSTEM_CONFIG`); the test puts a temp TOML file
  there instead through ``$FEDMSG_WALLBOARD_CONFIG``, pointing at the test Redis
  (``redis_url``), a free bus endpoint and free ports.

The environment is what systemd would give the unit: its ``Environment=`` lines,
``NOTIFY_SOCKET`` (a real AF_UNIX datagram socket read by the test),
``WATCHDOG_USEC``, ``STATE_DIRECTORY``.  Where the kernel allows it the process is
also started the way the unit's hardening would start it: ``UMask=0077``,
``NoNewPrivileges=`` (``PR_SET_NO_NEW_PRIVS``) and ``MemoryDenyWriteExecute=``
(``PR_SET_MDWE``, Linux >= 6.3), so a library needing writable+executable memory
fails here rather than in production.

``systemd-analyze verify`` runs on copies of the units whose ``ExecStart=`` names
the venv's script (verify insists the binary exists); ``systemd-analyze security
--offline=true`` scores them and the score must match ``systemd/README.md``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from listener.core.config import SYSTEM_CONFIG
from tests.helpers.common import CORPUS, ROOT, TIMEOUT_FACTOR, free_port, run_cli, wait_for

UNITS = ROOT / "systemd"
LISTENER_UNIT = UNITS / "fedmsg-wallboard-listener.service"
WEB_UNIT = UNITS / "fedmsg-wallboard-web.service"
TARGET = UNITS / "fedmsg-wallboard.target"
INSTALLED_BIN = "/usr/bin/fedmsg-wallboard"
INSTALLED_CONFIG = "/etc/fedmsg-wallboard/wallboard.toml"
VENV_BIN = str(Path(sys.executable).with_name("fedmsg-wallboard"))
STREAM = CORPUS / "fedmsg_sample_datanommer_stream.jsonl"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

#: WATCHDOG_USEC given to the listener in the main test: 1 s, so pings are due
#: every 0.5 s (shorter than the unit's WatchdogSec=, to check it is honoured).
WATCHDOG_USEC = 1_000_000

#: Starts the command after applying what the unit's hardening would: UMask,
#: NoNewPrivileges, MemoryDenyWriteExecute (when the kernel has PR_SET_MDWE).
HARDEN = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.umask(0o077)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
if libc.prctl(65, 1, 0, 0, 0) == 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    os.environ["WALLBOARD_TEST_MDWE"] = "1"
os.execv(sys.argv[1], sys.argv[1:])
"""


# -- unit files -----------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, value), ...]}`` of a unit file (systemd.syntax(7)):
    ``#``/``;`` comments, backslash line continuation, repeated keys kept in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path}: key outside a section: {line}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = unit_values(unit, section, key)
    assert values, f"[{section}] {key}= missing"
    return values[-1]


def exec_argv(unit: dict[str, list[tuple[str, str]]], key: str = "ExecStart") -> list[str]:
    """The command of ``key=`` without systemd's prefixes (``-@:+!``), split like
    systemd does for these simple lines (shell-style quoting)."""
    value = unit_value(unit, "Service", key)
    while value and value[0] in "-@:+!":
        value = value[1:]
    return shlex.split(value)


def substituted(argv: list[str]) -> list[str]:
    """The unit's command with the venv's script (module docstring); it names no
    settings file: the command reads the default place."""
    assert argv[0] == INSTALLED_BIN, argv
    assert "--config" not in argv and "-c" not in argv, argv
    assert str(SYSTEM_CONFIG) == INSTALLED_CONFIG
    return [VENV_BIN, *argv[1:]]


def unit_environment(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    env = {}
    for value in unit_values(unit, "Service", "Environment"):
        for item in shlex.split(value):
            k, _, v = item.partition("=")
            env[k] = v
    return env


def seconds(value: str) -> float:
    """A systemd time span such as ``30``, ``30s``, ``1min 30s``, ``500ms``."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(num) * units[unit or "s"]
    return total


# -- a real NOTIFY_SOCKET -------------------------------------------------------------


class NotifySocket:
    """An AF_UNIX datagram socket read in a thread: what systemd listens on."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fwb-notify-")  # short: sun_path <= 107 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.decode().split("\n"):
                self.messages.append((now, line))

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in list(self.messages) if m.startswith(prefix)]

    def wait(self, line: str, timeout: float = 30, after: float = 0.0) -> float:
        """Wait for an exact line received after ``after`` (monotonic); its time."""

        def seen() -> float | None:
            for t, m in list(self.messages):
                if m == line and t >= after:
                    return t
            return None

        return float(wait_for(seen, timeout, what=line))

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    ns = NotifySocket()
    yield ns
    ns.close()


class Service:
    """A unit's ExecStart= command running as a subprocess, as systemd would run it."""

    def __init__(
        self,
        unit_path: Path,
        config: Path,
        notify: NotifySocket,
        state_dir: Path,
        extra_env: dict[str, str] | None = None,
        stderr_path: Path | None = None,
        watchdog_usec: int | None = None,
    ) -> None:
        self.unit = parse_unit(unit_path)
        #: what systemd passes: WatchdogSec= in microseconds (tests may shorten it)
        self.watchdog_usec = watchdog_usec or int(
            seconds(unit_value(self.unit, "Service", "WatchdogSec")) * 1e6
        )
        self.argv = substituted(exec_argv(self.unit))
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        env.update(unit_environment(self.unit))
        env.update(
            NOTIFY_SOCKET=notify.path,
            WATCHDOG_USEC=str(self.watchdog_usec),
            STATE_DIRECTORY=str(state_dir),
            FEDMSG_CONFIG=str(ROOT / "fedmsg.d"),
            # the stand-in for /etc/fedmsg-wallboard/wallboard.toml (module docstring)
            FEDMSG_WALLBOARD_CONFIG=str(config),
        )
        env.update(extra_env or {})
        self.stderr_path = stderr_path or state_dir / "stderr.log"
        # the child has its own copy of the descriptor: ours is closed at once
        with open(self.stderr_path, "wb") as stderr:
            if "JOURNAL_STREAM" in (extra_env or {}):
                st = os.fstat(stderr.fileno())
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            self.proc = subprocess.Popen(
                [sys.executable, "-c", HARDEN, *self.argv],
                env=env,
                cwd=str(state_dir),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout * TIMEOUT_FACTOR)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def write_config(path: Path, **values: Any) -> Path:
    lines = []
    for k, v in values.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def replay(endpoint: str, *extra: str) -> None:
    r = run_cli(
        "replay",
        str(STREAM),
        "--endpoint",
        endpoint,
        "--wait-timeout",
        "20",
        *extra,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "published 25 messages" in r.stderr


def counters(port: int) -> dict[str, float]:
    """``/metrics`` parsed by prometheus-client; ``{}`` when it does not answer (yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    except OSError:
        return {}
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{label}}}" if label else "")] = s.value
    return out


@pytest.fixture
def listener_config(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "key_prefix": f"t{uuid.uuid4().hex[:8]}",
        "endpoints": [f"tcp://127.0.0.1:{free_port()}"],
        "metrics_port": free_port(),
        "step_s": 0.5,
        "fedmsg_config": str(ROOT / "fedmsg.d"),
        # each replay binds anew: keep libzmq's reconnect backoff (10 s) short
        "reconnect_ivl_max_ms": 200,
    }


# -- static checks of the units ---------------------------------------------------


HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
    "StateDirectory": "fedmsg-wallboard",
    "Type": "notify",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "78",
}


@pytest.mark.parametrize("path", [LISTENER_UNIT, WEB_UNIT], ids=lambda p: p.stem)
def test_unit_settings(path: Path) -> None:
    unit = parse_unit(path)
    for key, want in HARDENING.items():
        assert unit_value(unit, "Service", key) == want, key
    assert "@system-service" in unit_values(unit, "Service", "SystemCallFilter")
    assert seconds(unit_value(unit, "Service", "WatchdogSec")) > 0
    for key in ("Wants", "After"):
        deps = " ".join(unit_values(unit, "Unit", key)).split()
        assert "network-online.target" in deps
        assert "redis-server.service" in deps and "redis.service" in deps
    assert unit_value(unit, "Unit", "PartOf") == "fedmsg-wallboard.target"
    assert path.name in unit_value(parse_unit(TARGET), "Unit", "Wants").split()


@pytest.mark.parametrize("path", [LISTENER_UNIT, WEB_UNIT], ids=lambda p: p.name)
def test_reload_is_sighup(path: Path) -> None:
    unit = parse_unit(path)
    assert exec_argv(unit, "ExecReload") == ["/bin/kill", "-HUP", "$MAINPID"]


def _installed_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart= naming the venv's script (verify needs it to exist)."""
    out = []
    for src in sorted(UNITS.glob("fedmsg-wallboard*")):
        dst = tmp_path / src.name
        dst.write_text(src.read_text(encoding="utf-8").replace(INSTALLED_BIN, VENV_BIN))
        out.append(dst)
    return out


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (Debian: systemd)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    copies = _installed_copies(tmp_path)
    assert {p.name for p in copies} >= {LISTENER_UNIT.name, WEB_UNIT.name, TARGET.name}
    r = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", *map(str, copies)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert not [ln for ln in r.stderr.splitlines() if "fedmsg-wallboard" in ln], r.stderr
    # the check can fail: a misspelt setting is reported
    bad = tmp_path / "bad" / LISTENER_UNIT.name
    bad.parent.mkdir()
    listener = next(p for p in copies if p.name == LISTENER_UNIT.name)
    bad.write_text(listener.read_text().replace("ProtectHome=", "ProtectHomes="))
    r = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=bad.parent,
    )
    assert "ProtectHomes" in r.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze (Debian: systemd)")
@pytest.mark.parametrize("path", [LISTENER_UNIT, WEB_UNIT], ids=lambda p: p.stem)
def test_systemd_analyze_security_score_is_ok_and_recorded(tmp_path: Path, path: Path) -> None:
    copy = next(p for p in _installed_copies(tmp_path) if p.name == path.name)
    r = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    score = float(m.group(1))
    assert score <= 2.5 and m.group(2) == "OK", m.group(0)
    readme = (UNITS / "README.md").read_text(encoding="utf-8")
    recorded = re.search(rf"`{re.escape(path.name)}` \| \*\*(\d+\.\d+) OK\*\*", readme)
    assert recorded, f"systemd/README.md must record the score of {path.name}"
    assert float(recorded.group(1)) == score


# -- the listener unit, run ---------------------------------------------------------


def test_listener_unit_ready_watchdog_status_stopping(
    tmp_path: Path, notify: NotifySocket, listener_config: dict[str, Any]
) -> None:
    cfg = write_config(tmp_path / "wallboard.toml", **listener_config)
    svc = Service(LISTENER_UNIT, cfg, notify, tmp_path, watchdog_usec=WATCHDOG_USEC)
    try:
        ready_at = notify.wait("READY=1", timeout=30)
        assert svc.proc.poll() is None
        # periodic WATCHDOG=1 from the running loop: at least 3 within 2.5 s,
        # never more than WATCHDOG_USEC apart
        wait_for(lambda: len(notify.lines("WATCHDOG=1")) >= 4, 5, what="watchdog pings")
        pings = [t for t, _ in notify.lines("WATCHDOG=1")]
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
        assert pings[0] - ready_at < WATCHDOG_USEC / 1e6
        # STATUS= carries the rate and the lag
        replay(listener_config["endpoints"][0], "--rebase-time")
        status = wait_for(
            lambda: [m for _, m in notify.lines("STATUS=") if "counted 25" in m],
            30,
            what="STATUS with 25 counted",
        )[-1]
        assert re.match(
            r"STATUS=\d+ msgs/min, counted 25, pending 0, last message \d+ s ago, redis ok$",
            status,
        ), status
        # SIGTERM (systemd's KillSignal): STOPPING=1, then exit 0 within TimeoutStopSec
        t0 = time.monotonic()
        svc.signal(signal.SIGTERM)
        notify.wait("STOPPING=1", timeout=10, after=t0)
        rc = svc.wait(seconds(unit_value(svc.unit, "Service", "TimeoutStopSec")))
        assert rc == 0, svc.stderr
        assert time.monotonic() - t0 < 15
        assert "listener stopped: counted 25 messages" in svc.stderr
    finally:
        svc.kill()
    # what it wrote is in Redis
    r = run_cli(
        "snapshot",
        "--redis-url",
        listener_config["redis_url"],
        "--key-prefix",
        listener_config["key_prefix"],
        "--window",
        "3600",
        "--json",
        timeout=60,
    )
    assert json.loads(r.stdout)["messages"] == 25


def test_listener_unit_sigterm_writes_pending_counts(
    tmp_path: Path, notify: NotifySocket, listener_config: dict[str, Any]
) -> None:
    """SIGTERM while messages wait for their Redis flush: they are written, exit 0."""
    values = dict(listener_config, flush_interval_s=3600.0)
    cfg = write_config(tmp_path / "wallboard.toml", **values)
    svc = Service(LISTENER_UNIT, cfg, notify, tmp_path)
    try:
        notify.wait("READY=1", timeout=30)
        replay(values["endpoints"][0], "--rebase-time")
        m = wait_for(
            lambda: (
                (c := counters(values["metrics_port"])).get("fedmsg_wallboard_accepted_total") == 25
                and c
            ),
            30,
            what="25 accepted",
        )
        assert m["fedmsg_wallboard_pending"] == 25 and m["fedmsg_wallboard_counted_total"] == 0
        svc.signal(signal.SIGTERM)
        assert svc.wait(30) == 0, svc.stderr
    finally:
        svc.kill()
    assert "listener stopped: counted 25 messages" in svc.stderr
    r = run_cli(
        "snapshot",
        "--redis-url",
        values["redis_url"],
        "--key-prefix",
        values["key_prefix"],
        "--json",
        timeout=60,
    )
    assert json.loads(r.stdout)["messages"] == 25


def test_listener_unit_runs_without_writable_executable_memory(
    tmp_path: Path, notify: NotifySocket, listener_config: dict[str, Any]
) -> None:
    """MemoryDenyWriteExecute=yes: the listener must start and count under PR_SET_MDWE."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            HARDEN,
            sys.executable,
            "-c",
            "import os, mmap\n"
            "assert os.environ['WALLBOARD_TEST_MDWE'] == '1'\n"
            "try:\n"
            "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
            "except PermissionError:\n"
            "    print('refused')\n",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.stdout.strip() == "refused", probe.stderr  # the emulation is in force
    cfg = write_config(tmp_path / "wallboard.toml", **listener_config)
    svc = Service(LISTENER_UNIT, cfg, notify, tmp_path)
    try:
        notify.wait("READY=1", timeout=30)
        replay(listener_config["endpoints"][0], "--rebase-time")
        wait_for(
            lambda: (
                counters(listener_config["metrics_port"]).get("fedmsg_wallboard_counted_total")
                == 25
            ),
            30,
            what="25 counted",
        )
        svc.signal(signal.SIGTERM)
        assert svc.wait(30) == 0, svc.stderr
    finally:
        svc.kill()


def test_listener_unit_bad_config_exits_78_without_ready(
    tmp_path: Path, notify: NotifySocket, redis_url: str
) -> None:
    cfg = write_config(tmp_path / "wallboard.toml", redis_url=redis_url, windows=[3600])
    svc = Service(LISTENER_UNIT, cfg, notify, tmp_path)
    try:
        rc = svc.wait(60)
    finally:
        svc.kill()
    assert rc == 78, svc.stderr
    assert "78" in unit_value(svc.unit, "Service", "RestartPreventExitStatus").split()
    assert "unknown config key(s) windows" in svc.stderr
    assert "valid keys: redis_url" in svc.stderr
    assert not notify.lines("READY=1")


@pytest.mark.slow
def test_listener_unit_redis_down_exits_69_and_is_restarted(
    tmp_path: Path, notify: NotifySocket
) -> None:
    cfg = write_config(
        tmp_path / "wallboard.toml",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        endpoints=[f"tcp://127.0.0.1:{free_port()}"],
        redis_timeout_s=0.5,
        fedmsg_config=str(ROOT / "fedmsg.d"),
    )
    svc = Service(LISTENER_UNIT, cfg, notify, tmp_path)
    try:
        rc = svc.wait(60)
    finally:
        svc.kill()
    assert rc == 69, svc.stderr
    assert "69" not in unit_value(svc.unit, "Service", "RestartPreventExitStatus").split()
    assert unit_value(svc.unit, "Service", "Restart") == "on-failure"
    assert not notify.lines("READY=1")


def test_listener_unit_sighup_reloads(
    tmp_path: Path, notify: NotifySocket, listener_config: dict[str, Any]
) -> None:
    """ExecReload= (kill -HUP $MAINPID): log_level and fas_cache apply at once, other
    changes are reported as needing a restart, an invalid file changes nothing.
    Also checks the journald format: with JOURNAL_STREAM naming stderr, each line
    starts with its ``<N>`` syslog priority."""
    cfg_values = dict(listener_config, log_level="INFO")
    cfg = write_config(tmp_path / "wallboard.toml", **cfg_values)
    svc = Service(LISTENER_UNIT, cfg, notify, tmp_path, extra_env={"JOURNAL_STREAM": "x"})
    endpoint = listener_config["endpoints"][0]
    port = listener_config["metrics_port"]
    try:
        notify.wait("READY=1", timeout=30)
        # 2017 timestamps, not rebased: every message is too old (rejected at DEBUG)
        replay(endpoint)
        wait_for(
            lambda: counters(port).get("fedmsg_wallboard_rejected_total{reason=too_old}") == 25,
            30,
            what="25 too_old",
        )
        assert "too old msg_id" not in svc.stderr
        fas = tmp_path / "fas.json"
        fas.write_text(json.dumps({"ralph@example.org": "ralph"}))
        write_config(cfg, **dict(cfg_values, log_level="DEBUG", step_s=2.0, fas_cache=str(fas)))
        reload_argv = [
            str(svc.proc.pid) if a == "$MAINPID" else a for a in exec_argv(svc.unit, "ExecReload")
        ]
        t0 = time.monotonic()
        subprocess.run(reload_argv, check=True, timeout=10)
        notify.wait("RELOADING=1", timeout=10, after=t0)
        notify.wait("READY=1", timeout=10, after=t0)
        wait_for(
            lambda: "SIGHUP: step_s changed; restart to apply" in svc.stderr,
            10,
            what="restart warning",
        )
        assert f"fas_cache {fas} (1 entries)" in svc.stderr
        replay(endpoint)
        wait_for(lambda: svc.stderr.count("too old msg_id") >= 25, 30, what="DEBUG records")
        # an invalid file: logged, nothing changes, still running and reloadable
        cfg.write_text(cfg.read_text() + "bogus = 1\n")
        t1 = time.monotonic()
        svc.signal(signal.SIGHUP)
        notify.wait("READY=1", timeout=10, after=t1)
        wait_for(lambda: "configuration not reloaded" in svc.stderr, 10, what="reload error")
        assert svc.proc.poll() is None
        status, body = http_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["ready"] is True
        svc.signal(signal.SIGTERM)
        assert svc.wait(30) == 0, svc.stderr
    finally:
        svc.kill()
    text = svc.stderr
    assert re.search(r"^<6>INFO listener\.daemon\.service: listener ready", text, re.M), text
    assert re.search(r"^<4>WARNING listener\.runtime\.systemd: SIGHUP: step_s changed", text, re.M)
    assert re.search(r"^<7>DEBUG listener\.core\.intake: too old msg_id=", text, re.M)
    assert re.search(
        r"^<3>ERROR listener\.runtime\.systemd: SIGHUP: configuration not reloaded", text, re.M
    )
    assert not re.search(r"^\d{4}-\d\d-\d\d", text, re.M)  # no timestamps for journald


# -- the web unit, run ----------------------------------------------------------------


def test_web_unit_ready_watchdog_close_1001_stopping(
    tmp_path: Path, notify: NotifySocket, redis_url: str
) -> None:
    import asyncio

    import websockets

    port = free_port()
    cfg = write_config(
        tmp_path / "wallboard.toml",
        redis_url=redis_url,
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        web_host="127.0.0.1",
        web_port=port,
    )
    svc = Service(WEB_UNIT, cfg, notify, tmp_path)
    try:
        ready_at = notify.wait("READY=1", timeout=30)
        # WATCHDOG_USEC is the unit's WatchdogSec=: pings due every half of it
        half_s = svc.watchdog_usec / 2e6
        wait_for(lambda: len(notify.lines("WATCHDOG=1")) >= 2, 2 * half_s, what="watchdog")
        pings = [t for t, _ in notify.lines("WATCHDOG=1")]
        assert pings[1] - pings[0] <= half_s and pings[0] - ready_at <= half_s
        status, body = http_get(f"http://127.0.0.1:{port}/healthz")
        assert status in (200, 503)
        assert "redis" in json.loads(body) or "redis_ok" in json.loads(body)
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"# TYPE" in body

        async def client() -> tuple[int | None, float]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await asyncio.wait_for(ws.recv(), 10)  # the snapshot
                m = await asyncio.to_thread(counters, port)
                assert m["fedmsg_wallboard_web_clients"] == 1
                t0 = time.monotonic()
                svc.signal(signal.SIGTERM)
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 15)
                except websockets.ConnectionClosed as exc:
                    return (exc.rcvd.code if exc.rcvd else None), t0
            return None, 0.0

        code, t0 = asyncio.run(client())
        assert code == 1001
        notify.wait("STOPPING=1", timeout=10, after=t0)
        assert svc.wait(seconds(unit_value(svc.unit, "Service", "TimeoutStopSec"))) == 0
        assert time.monotonic() - t0 < 15
    finally:
        svc.kill()


def test_web_unit_reload_applies_the_log_level(
    tmp_path: Path, notify: NotifySocket, redis_url: str
) -> None:
    """ExecReload= (kill -HUP $MAINPID) on the web unit: the new log_level applies at
    once, another changed setting is reported as needing a restart."""
    values = {
        "redis_url": redis_url,
        "key_prefix": f"t{uuid.uuid4().hex[:8]}",
        "web_host": "127.0.0.1",
        "web_port": free_port(),
        "log_level": "INFO",
    }
    cfg = write_config(tmp_path / "wallboard.toml", **values)
    svc = Service(WEB_UNIT, cfg, notify, tmp_path)
    try:
        notify.wait("READY=1", timeout=30)
        write_config(cfg, **{**values, "log_level": "DEBUG", "step_s": 2.0})
        reload_argv = [
            str(svc.proc.pid) if a == "$MAINPID" else a for a in exec_argv(svc.unit, "ExecReload")
        ]
        subprocess.run(reload_argv, check=True, timeout=10)
        wait_for(lambda: "SIGHUP: reloaded log level DEBUG" in svc.stderr, 10, what="reload")
        wait_for(lambda: "SIGHUP: step_s changed; restart to apply" in svc.stderr, 10)
        notify.wait("RELOADING=1", timeout=10)
        assert svc.proc.poll() is None
    finally:
        svc.kill()


def test_web_unit_bad_config_exits_78(tmp_path: Path, notify: NotifySocket) -> None:
    cfg = write_config(tmp_path / "wallboard.toml", web_port=70000)
    svc = Service(WEB_UNIT, cfg, notify, tmp_path)
    try:
        rc = svc.wait(60)
    finally:
        svc.kill()
    assert rc == 78, svc.stderr
    assert "web_port out of range" in svc.stderr
    assert not notify.lines("READY=1")


@pytest.mark.parametrize(
    ("command", "sig"),
    [("listen", signal.SIGTERM), ("web", signal.SIGTERM), ("web", signal.SIGINT)],
)
def test_a_stop_during_the_start_up_wait_for_redis_exits_0_at_once(
    command: str, sig: signal.Signals
) -> None:
    # listen and web wait up to 10 s for Redis at start-up; a stop request (systemctl
    # stop, Ctrl-C) during that wait must not wait it out and then exit 69
    port = free_port()  # nothing listens there
    extra = (
        ["--endpoint", f"tcp://127.0.0.1:{free_port()}"]
        if command == "listen"
        else ["--port", str(free_port())]
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "listener",
            command,
            "--redis-url",
            f"redis://127.0.0.1:{port}/0",
            *extra,
        ],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(2.0)  # imports done, waiting for Redis
        assert proc.poll() is None
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()  # communicate() closed it, unless it timed out
    assert proc.returncode == 0, out  # it was 69, once the 10 s had passed
    assert "stopped before Redis was reachable" in out
    assert "not reachable" not in out


def test_second_listener_on_one_prefix_stands_by_then_takes_over(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = f"w{uuid.uuid4().hex[:8]}"
    args = [
        sys.executable,
        "-m",
        "listener",
        "listen",
        "--redis-url",
        redis_url,
        "--endpoint",
        f"tcp://127.0.0.1:{free_port()}",
        "--key-prefix",
        prefix,
    ]
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("a", "b"):
            with open(logs[name], "wb") as fh:
                procs[name] = subprocess.Popen(
                    args, cwd=str(ROOT), stdout=fh, stderr=subprocess.STDOUT
                )
            if name == "a":
                wait_for(
                    lambda: "taken: writing" in logs["a"].read_text(),
                    60,
                    what="first listener writing",
                )
        # the second one sees the first's lease and stands by instead of counting too
        wait_for(
            lambda: "holds Redis prefix" in logs["b"].read_text(),
            60,
            what="second listener standing by",
        )
        assert "taken: writing" not in logs["b"].read_text()
        procs["a"].send_signal(signal.SIGTERM)
        assert procs["a"].wait(30) == 0
        # the first released its lease on a clean stop: the second takes over
        wait_for(
            lambda: "taken: writing" in logs["b"].read_text(), 30, what="second listener writing"
        )
        procs["b"].send_signal(signal.SIGTERM)
        assert procs["b"].wait(30) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def test_an_inherited_journal_stream_that_is_not_stderr_keeps_timestamps(tmp_path: Path) -> None:
    """``$JOURNAL_STREAM`` naming another file (inherited by a process whose stderr
    is a pipe) is not the journal: lines keep their timestamp and get no ``<N>``."""
    import re

    r = run_cli(
        "check-config",
        "--config",
        str(tmp_path / "missing.toml"),
        env={"JOURNAL_STREAM": "1:1"},
        timeout=60,
    )
    assert r.returncode == 78
    line = r.stderr.strip().splitlines()[-1]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR listener\.cli: ", line), line
