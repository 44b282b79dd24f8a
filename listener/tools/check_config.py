"""``fedmsg-wallboard check-config``: validate the settings the way ``listen``
would at start, connecting to nothing, and print what they resolve to, with the
settings file read and where its name came from (``config_file``,
``config_source``: ``--config``, ``$FEDMSG_WALLBOARD_CONFIG``, ``system`` for
``/etc/fedmsg-wallboard/wallboard.toml``, ``user`` for
``$XDG_CONFIG_HOME/fedmsg-wallboard/wallboard.toml``, ``none``).

For an AMQP bus (``amqp``, ``both``, ``fedora``) it checks the URL and the TLS
files as ``listen`` does (:meth:`listener.inputs.amqp.AmqpSettings.check`: files
exist and parse, certificate dates, key matches, UUID queue on Fedora's vhost),
prints ``amqp`` (URL without password, vhost, files, queue, bindings), and warns
(stderr and ``warnings``) about a certificate that expires within 30 days."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

from listener.core.config import effective_bus
from listener.core.endpoints import resolve_endpoints
from listener.core.errors import EXIT_OK, ConfigError
from listener.core.users import UserExtractor, load_fedmsg_config
from listener.inputs.amqp.settings import AmqpSettings, redact
from listener.inputs.signatures import check_signature_setup
from listener.runtime.options import add_common, config_file, load_config
from listener.storage.store import check_redis_url

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    """Register the ``check-config`` subcommand."""
    p = sub.add_parser("check-config", help="validate the configuration and exit")
    add_common(p)
    p.add_argument(
        "--fedora",
        dest="bus",
        action="store_const",
        const="fedora",
        help="check what listen --fedora runs: Fedora's public broker, shipped certificate",
    )
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    path, source = config_file(args)
    cfg = load_config(args, bus=getattr(args, "bus", None))
    fcfg = load_fedmsg_config(cfg.fedmsg_config or None)
    check_signature_setup(fcfg)
    if cfg.bus == "auto":  # as listen resolves it
        has_endpoints = bool(resolve_endpoints(cfg.endpoints, fcfg))
        cfg = dataclasses.replace(cfg, bus=effective_bus("auto", has_endpoints))
    endpoints: list[str] = []
    if cfg.bus in ("zmq", "both"):  # what ``listen`` would refuse (listener.inputs.zmq.Bus)
        endpoints = resolve_endpoints(cfg.endpoints, fcfg)
        if not endpoints:
            raise ConfigError(
                "no ZeroMQ endpoint: set endpoints in fedmsg.d/ or --endpoint "
                "(Fedora's bus is AMQP today: listen --fedora)"
            )
    amqp: dict[str, Any] | None = None
    warnings: list[str] = []
    if cfg.bus != "zmq":  # the URL and TLS files listen's AMQP input would refuse
        settings = AmqpSettings.from_config(cfg)
        settings.parameters()
        warnings = settings.expiry_warnings()
        for line in warnings:
            log.warning("%s", line)
        amqp = {
            "url": redact(settings.url),
            "vhost": settings.vhost,
            "ca_cert": settings.ca_cert,
            "certfile": settings.certfile,
            "keyfile": settings.keyfile,
            "queue": settings.queue or "a fresh UUID per connection",
            "bindings": list(settings.bindings),
        }
    if cfg.redis_url:  # the URL's form only: check-config connects to nothing
        try:  # what listen's Store.from_url runs first: no connection is made
            check_redis_url(cfg.redis_url)
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {cfg.redis_url!r}: {exc}") from exc
    if cfg.fas_cache:  # what listen loads at start (exit 78 when unreadable)
        UserExtractor.load_fas_cache(cfg.fas_cache)
    report: dict[str, Any] = {
        "ok": True,
        "config_file": str(path) if path is not None else None,
        "config_source": source,
        "endpoints": endpoints,
        "windows_s": list(cfg.windows_s),
        "redis": (
            f"sentinels {','.join(cfg.redis_sentinels)} ({cfg.redis_master_name})"
            if cfg.redis_sentinels
            else cfg.redis_url or f"embedded in {cfg.state_dir}"
        ),
        "validate_signatures": bool(fcfg.get("validate_signatures")),
    }
    if amqp is not None:  # (a ZeroMQ-only report keeps its shape)
        report.update(bus=cfg.bus, amqp=amqp, warnings=warnings)
    print(json.dumps(report, indent=2))
    return EXIT_OK
