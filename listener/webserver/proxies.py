"""The client's address behind trusted proxies (``X-Forwarded-For``).  No I/O.

A web node behind a load balancer sees every client arrive from the balancer's
address, so the per-address cap (``max_clients_per_ip``) would count them all as
one.  The balancer appends the address it saw to ``X-Forwarded-For`` (haproxy's
``option forwardfor``: one more header line, after any the client sent).  That
header is believed only when the TCP peer is a **trusted proxy**
(``trusted_proxies``), and only as far as the chain of trusted hops goes: reading
the addresses from the right (the nearest hop first), the first one that is not a
trusted proxy is the client.  Everything left of it was written by the client and
is ignored, so a client cannot pick the address it is counted under.  This is the
right-most untrusted address of nginx's ``real_ip_recursive on`` and of MDN's
``X-Forwarded-For`` "Selecting an IP address".

Hostile headers are bounded, never an error: at most :data:`MAX_HOPS` hops are
read from the right (websockets' parser already limits a request to 128 header
lines of 8 KiB); an entry that is not a bare IPv4/IPv6 address (garbage, a port,
an obfuscated ``_hidden`` identifier) or a chain longer than that stops the walk,
and the last trusted hop that was reached is used (the conservative choice: those
clients share the proxy's per-address cap rather than getting one each).
IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, a dual-stack socket's view) are
read as IPv4.

Not haproxy's PROXY protocol: it would give the same address, but the websockets
server reads HTTP from the first byte, so every connection (the balancer's health
checks too) would have to go through a parser of our own in front of it, and a
node could no longer be reached without the balancer; ``X-Forwarded-For`` needs
nothing more than the request the server already parses, and chains of proxies
(a CDN in front of haproxy) work by listing them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Most ``X-Forwarded-For`` hops read, from the right.
MAX_HOPS = 16
#: Longest entry parsed as an address, characters (an IPv6 address with an IPv4
#: tail and a zone index fits).
MAX_ENTRY_CHARS = 64


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``trusted_proxies`` entries as networks: an address (``10.0.0.5``, ``::1``)
    is a one-address network, a CIDR network (``10.0.0.0/8``) itself.

    Raises:
        ValueError: an entry is neither (also a network with host bits set,
            ``10.0.0.5/8``: write ``10.0.0.0/8``); the message names it.
    """
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP address or CIDR network ({exc})") from None
    return tuple(out)


def parse_address(text: str) -> IPAddress | None:
    """A bare IPv4 or IPv6 address (IPv4-mapped IPv6 as IPv4), or None."""
    text = text.strip()
    if not text or len(text) > MAX_ENTRY_CHARS:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_trusted(addr: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    """Whether ``addr`` lies in one of the ``trusted`` networks."""
    return any(addr.version == net.version and addr in net for net in trusted)


def _hops_from_right(header_lines: Sequence[str]) -> Iterable[str]:
    """The comma-separated entries of every ``X-Forwarded-For`` line, right-most
    first, at most :data:`MAX_HOPS` + 1 (the extra one tells a chain too long)."""
    given = 0
    for line in reversed(header_lines):
        for entry in reversed(line.rsplit(",", MAX_HOPS + 1 - given)):
            yield entry
            given += 1
            if given > MAX_HOPS:
                return


def client_address(peer: str, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]) -> str:
    """The address a client is counted and logged under.

    Args:
        peer: the TCP peer's address (``"192.0.2.1"``; anything else, such as
            ``"?"`` for a socket without one, is returned as it is).
        forwarded_for: the request's ``X-Forwarded-For`` header lines, in order
            (``Headers.get_all``); each a comma-separated list of addresses.
        trusted: the trusted proxies (:func:`parse_networks`).

    Returns:
        ``peer`` (normalised) when it is not a trusted proxy or no header came;
        else the right-most ``X-Forwarded-For`` address that is not a trusted
        proxy; when every hop read is trusted, the left-most of them; when the
        walk stops (garbage, more than :data:`MAX_HOPS` hops), the last trusted
        hop reached.  Never raises.
    """
    addr = parse_address(peer)
    if addr is None:
        return peer
    if not trusted or not forwarded_for or not is_trusted(addr, trusted):
        return str(addr)
    current = addr
    for n, entry in enumerate(_hops_from_right(forwarded_for)):
        hop = parse_address(entry)
        if hop is None or n >= MAX_HOPS:
            break
        current = hop
        if not is_trusted(hop, trusted):
            break
    return str(current)


def connection_client(connection: Any, trusted: Sequence[IPNetwork]) -> str:
    """:func:`client_address` of a websockets ``ServerConnection`` (its peer and
    its opening request's ``X-Forwarded-For`` lines); ``"?"`` for a socket
    without a peer address."""
    remote = connection.remote_address
    peer = str(remote[0]) if remote else "?"
    request = connection.request
    lines = request.headers.get_all("X-Forwarded-For") if request is not None else []
    return client_address(peer, lines, trusted)
