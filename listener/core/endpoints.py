"""ZeroMQ endpoint addresses: which ones ``listen`` subscribes to, and which libzmq
would accept and never reach.  Pure: strings in, strings out or
:class:`~listener.core.errors.ConfigError`."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from listener.core.errors import ConfigError

log = logging.getLogger(__name__)

#: libzmq's transports (zmq_connect(3)).
ZMQ_TRANSPORTS = ("tcp", "ipc", "inproc", "pgm", "epgm", "vmci", "tipc", "ws", "wss", "udp")


def resolve_endpoints(endpoints: Sequence[str], fedmsg_config: Mapping[str, Any]) -> list[str]:
    """The endpoints ``listen`` subscribes to: ``endpoints`` (the wallboard config or
    ``--endpoint``), else every one of fedmsg's ``endpoints`` groups, each checked
    (:func:`check_endpoint`) and listed once, in order.

    An endpoint given twice would be two SUB sockets on one publisher: every
    message twice, and the ones without a ``msg_id`` counted twice.

    Raises:
        listener.core.errors.ConfigError: a bad endpoint (no endpoint at all is left to
            the caller: ``--bus amqp`` needs none).
    """
    found = list(endpoints) or [
        e for group in (fedmsg_config.get("endpoints") or {}).values() for e in group
    ]
    for e in found:
        check_endpoint(e)
    unique = list(dict.fromkeys(found))
    if len(unique) < len(found):
        log.warning(
            "the same ZeroMQ endpoint is listed more than once: subscribing once to each of %s",
            ", ".join(unique),
        )
    return unique


def check_endpoint(endpoint: str) -> None:
    """Reject an endpoint libzmq cannot use, and a ``tcp://`` one it would accept
    and never reach.

    libzmq resolves ``tcp://host:port`` when it connects, in the background: a port
    outside 1..65535 or a dotted-number host that is no IPv4 address
    (``tcp://999.1.1.1:99999``) is accepted by ``connect`` and then retried for
    ever.  An endpoint must be ``transport://address`` with one of libzmq's
    transports; other transports' addresses (``ipc://``) and host names are left to
    libzmq.

    Raises:
        listener.core.errors.ConfigError: not ``transport://address``, or a host or port
            as above.
    """
    if not isinstance(endpoint, str):
        raise ConfigError(f"bad ZeroMQ endpoint {endpoint!r}: not a string")
    transport, sep, address = endpoint.partition("://")
    if not sep or not address or transport not in ZMQ_TRANSPORTS:
        raise ConfigError(
            f"bad ZeroMQ endpoint {endpoint!r}: expected transport://address with a "
            f"transport among {', '.join(ZMQ_TRANSPORTS)} (fedmsg: tcp://host:port)"
        )
    if transport != "tcp":
        return
    rest = endpoint[len("tcp://") :]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"bad ZeroMQ endpoint {endpoint!r}: port must be 1-65535")
    host = host.split(";")[-1]  # libzmq's "source;host" form
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(
                f"bad ZeroMQ endpoint {endpoint!r}: {host} is no IPv4 address"
            ) from None
