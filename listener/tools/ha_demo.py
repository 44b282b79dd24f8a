"""``make run-ha``: the highly available topology of docs/SCALING.md on one machine.

Starts, in order (ports from ``--base-port`` B, default 6390):

* three ``redis-server`` (Debian's): a master on B and two replicas on B+1, B+2;
* three sentinels (``redis-server --sentinel``) on B+10..B+12 watching them as
  ``mymaster`` (quorum 2, ``down-after-milliseconds`` 2000, ``failover-timeout``
  10000);
* two listeners (``fedmsg-wallboard listen --redis-sentinel ...``) on one ZeroMQ
  replay: one holds the lease and writes, the other stands by;
* three web nodes on ``--web-port`` + 1..3, trusting 127.0.0.1 as their proxy;
* Debian's haproxy with the shipped ``deploy/haproxy/local.cfg`` and
  ``deploy/haproxy/fedmsg-wallboard.cfg`` on ``--web-port`` (default 8080);
* a replay of the 553 real messages shipped with fedmsg_meta_fedora_infrastructure,
  looping at ``--rate`` msgs/s with fresh msg_ids.

Prints where to look and which process to kill to try a failover.  A child that
exits (or is killed) is started again after :data:`RESTART_S`, as systemd's units
do (``Restart=on-failure``): a killed Redis master comes back as a replica of the
new one (its sentinel reconfigures it), a killed listener as the standby.  Ctrl-C
(or SIGTERM) stops every child in reverse order and exits 0.  State and logs go to
``--dir`` (default ``.demo-ha``).  Exit codes: 0 after Ctrl-C, 75 when a port is
taken, a tool is missing, or a child dies during start-up.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from listener.core.errors import EXIT_TEMPFAIL
from listener.tools.demo import port_free, wait_port

#: The master's name in the sentinels.
MASTER_NAME = "mymaster"
#: Unanswered pings for this long make the master subjectively down, milliseconds.
DOWN_AFTER_MS = 2000
#: Sentinel's failover timeout, milliseconds.
FAILOVER_TIMEOUT_MS = 10000
#: Wait before a child that exited is started again, seconds (systemd's RestartSec).
RESTART_S = 5.0
#: The repository root: deploy/ and fedmsg.d/ are read from it.
ROOT = Path(__file__).resolve().parents[2]


def _up(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """127.0.0.1:``port`` accepts connections before ``proc`` died or time ran out."""
    return wait_port("127.0.0.1", port, proc, timeout_s)


def _tool(name: str, *fallbacks: str) -> str | None:
    """A system binary: on ``PATH`` or at one of ``fallbacks`` (``/usr/sbin`` is
    not on every user's ``PATH``); Debian's ``/usr/bin/redis-server`` comes before
    a virtualenv's older bundled copy."""
    for cand in fallbacks:
        if Path(cand).is_file():
            return cand
    return shutil.which(name)


class Topology:
    """The children of the HA demo, started and stopped in order.

    Args:
        base: the state and log folder.
        redis_server: the redis-server binary; haproxy: the haproxy binary.
    """

    def __init__(self, base: Path, redis_server: str, haproxy: str) -> None:
        self.base = base
        self.logs = base / "logs"
        self.redis_server = redis_server
        self.haproxy = haproxy
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        #: how each child was started: ``{name: (argv, env)}``
        self.commands: dict[str, tuple[list[str], dict[str, str] | None]] = {}

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start one child, its output appended to ``logs/NAME.log``."""
        proc = self._popen(name, argv, env)
        self.children.append((name, proc))
        self.commands[name] = (argv, env)
        return proc

    def restart_exited(self, exited_at: dict[str, float]) -> None:
        """Start again each child that exited :data:`RESTART_S` ago or more
        (``exited_at``: when each was first seen gone, kept between calls)."""
        now = time.monotonic()
        for k, (name, proc) in enumerate(self.children):
            if proc.poll() is None:
                continue
            seen = exited_at.setdefault(name, now)
            if now - seen < RESTART_S:
                continue
            print(f"{name} exited with {proc.returncode}: starting it again", flush=True)
            del exited_at[name]
            argv, env = self.commands[name]
            self.children[k] = (name, self._popen(name, argv, env))

    def _popen(
        self, name: str, argv: list[str], env: dict[str, str] | None
    ) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=self.base,
            )

    def wallboard(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``fedmsg-wallboard ARGS`` as a child."""
        return self.spawn(name, [sys.executable, "-m", "listener", *args])

    def redis(self, n: int, port: int, master_port: int | None) -> subprocess.Popen[bytes]:
        """redis-server ``n`` on ``port``, a replica of ``master_port`` if given."""
        folder = self.base / f"redis{n}"
        folder.mkdir(exist_ok=True)
        argv = [self.redis_server, "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(folder), "--save", "", "--appendonly", "no"]
        if master_port is not None:
            argv += ["--replicaof", "127.0.0.1", str(master_port)]
        return self.spawn(f"redis{n}", argv)

    def sentinel(self, n: int, port: int, master_port: int) -> subprocess.Popen[bytes]:
        """Sentinel ``n`` on ``port`` watching the master on ``master_port``; each
        has its own file (sentinels rewrite it)."""
        folder = self.base / f"sentinel{n}"
        folder.mkdir(exist_ok=True)
        conf = folder / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n",
            encoding="utf-8",
        )
        return self.spawn(f"sentinel{n}", [self.redis_server, str(conf), "--sentinel"])

    def stop(self) -> None:
        """SIGCONT then SIGTERM to each child in reverse order, SIGKILL after 10 s."""
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen one cannot die of SIGTERM
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the HA demo until interrupted; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m listener.tools.ha_demo", description=__doc__)
    ap.add_argument("--dir", default=".demo-ha", help="state and log folder")
    ap.add_argument("--web-port", type=int, default=8080, help="haproxy's port (the page)")
    ap.add_argument("--base-port", type=int, default=6390, help="first Redis port")
    ap.add_argument("--bus", type=int, default=9950, help="the replay's ZeroMQ port")
    ap.add_argument("--rate", type=float, default=25.0, help="replay rate, msgs/s")
    args = ap.parse_args(argv)

    redis_server = _tool("redis-server", "/usr/bin/redis-server")
    haproxy = _tool("haproxy", "/usr/sbin/haproxy")
    if redis_server is None or haproxy is None:
        print("run-ha needs Debian's redis-server and haproxy (make sysdeps)", file=sys.stderr)
        return EXIT_TEMPFAIL
    redis_ports = [args.base_port + n for n in range(3)]
    sentinel_ports = [args.base_port + 10 + n for n in range(3)]
    web_ports = [args.web_port + n for n in range(1, 4)]
    busy = [
        p
        for p in (*redis_ports, *sentinel_ports, *web_ports, args.web_port, args.bus)
        if not port_free("127.0.0.1", p)
    ]
    if busy:
        print(
            f"ports {', '.join(map(str, busy))} already in use (another demo?): stop it, or "
            "choose others (make run-ha HA_WEB_PORT=... HA_BASE_PORT=... HA_BUS=...)",
            file=sys.stderr,
        )
        return EXIT_TEMPFAIL

    base = Path(args.dir).resolve()
    (base / "logs").mkdir(parents=True, exist_ok=True)
    lock = open(base / "demo.lock", "a")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"an HA demo is already running in {base}", file=sys.stderr)
        return EXIT_TEMPFAIL
    os.environ.setdefault("FEDMSG_CONFIG", str(ROOT / "fedmsg.d"))
    top = Topology(base, redis_server, haproxy)
    sentinels = [a for p in sentinel_ports for a in ("--redis-sentinel", f"127.0.0.1:{p}")]
    endpoint = f"tcp://127.0.0.1:{args.bus}"
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: stopping.set())
    try:
        for n, port in enumerate(redis_ports):
            proc = top.redis(n, port, None if n == 0 else redis_ports[0])
            if not _up(port, proc, 15):
                print(f"redis-server :{port} did not start; see {top.logs}", file=sys.stderr)
                return EXIT_TEMPFAIL
        for n, port in enumerate(sentinel_ports):
            proc = top.sentinel(n, port, redis_ports[0])
            if not _up(port, proc, 15):
                print(f"sentinel :{port} did not start; see {top.logs}", file=sys.stderr)
                return EXIT_TEMPFAIL
        for n in (1, 2):
            top.wallboard(
                f"listener{n}",
                "listen",
                *sentinels,
                "--endpoint",
                endpoint,
                "--metrics-port",
                str(args.base_port + 20 + n),
            )
        for n, port in enumerate(web_ports, 1):
            proc = top.wallboard(
                f"web{n}", "web", *sentinels, "--port", str(port), "--trusted-proxy", "127.0.0.1"
            )
            if not _up(port, proc, 30):
                print(f"web node {n} did not start; see {top.logs}", file=sys.stderr)
                return EXIT_TEMPFAIL
        env = dict(os.environ)
        env["WALLBOARD_BIND"] = f"127.0.0.1:{args.web_port}"
        env["HAPROXY_STATS_SOCKET"] = str(base / "haproxy.sock")
        for n, port in enumerate(web_ports, 1):
            env[f"WEB{n}"] = f"127.0.0.1:{port}"
        deploy = ROOT / "deploy" / "haproxy"
        proc = top.spawn(
            "haproxy",
            [
                haproxy,
                "-db",
                "-f",
                str(deploy / "local.cfg"),
                "-f",
                str(deploy / "fedmsg-wallboard.cfg"),
            ],
            env=env,
        )
        if not _up(args.web_port, proc, 15):
            print(f"haproxy did not start; see {top.logs / 'haproxy.log'}", file=sys.stderr)
            return EXIT_TEMPFAIL
        top.wallboard(
            "replay",
            "replay",
            "--builtin-examples",
            "--endpoint",
            endpoint,
            "--rate",
            str(args.rate),
            "--rebase-time",
            "--loop",
            "--new-ids",
            "--wait-subscribers",
            "2",
        )
        pids = {name: proc.pid for name, proc in top.children}
        print(
            f"\nfedmsg-wallboard HA demo running\n"
            f"  page (through haproxy): http://127.0.0.1:{args.web_port}/\n"
            f"  web nodes:  {', '.join(f'127.0.0.1:{p}' for p in web_ports)}\n"
            f"  Redis:      master :{redis_ports[0]}, replicas :{redis_ports[1]} "
            f":{redis_ports[2]}; sentinels :{sentinel_ports[0]}-{sentinel_ports[2]}\n"
            f"  listeners:  pids {pids['listener1']} and {pids['listener2']} "
            f"(one writes, one stands by)\n"
            f"  try:        kill -KILL {pids['redis0']}   (the Redis master: a sentinel "
            f"promotes a replica)\n"
            f"              kill -KILL {pids['listener1']}   (listener1: if it holds the lease, "
            f"listener2 takes over;\n"
            f"              the writer is the one whose log says 'taken: writing')\n"
            f"              kill -KILL {pids['web1']}   (a web node: its walls move)\n"
            f"  logs:       {top.logs}/\n"
            f"Ctrl-C to stop.\n",
            flush=True,
        )
        exited_at: dict[str, float] = {}
        while not stopping.wait(0.5):
            top.restart_exited(exited_at)
        return 0
    finally:
        top.stop()
        lock.close()
        print("HA demo stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
