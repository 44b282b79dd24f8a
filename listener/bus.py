"""The ZeroMQ bus input: SUB sockets on every fedmsg endpoint, their health, gaps.  I/O.

One SUB socket per endpoint (fedmsg's ``endpoints`` config, or ``--endpoint``),
subscribed to ``topic_prefix`` (``""`` = everything).  Socket options are set
explicitly, never left to libzmq's defaults:

* ``RCVHWM`` = ``hwm`` (fedmsg's ``high_water_mark = 0`` keeps libzmq's 1,000,
  which drops silently under a burst);
* ZMTP heartbeats (``HEARTBEAT_IVL`` / ``HEARTBEAT_TIMEOUT`` / ``HEARTBEAT_TTL``,
  ZMTP 3.1, libzmq >= 4.2): the SUB sends a PING every ``heartbeat_ivl_s`` and
  drops the connection when nothing came back within ``heartbeat_timeout_s``, so a
  peer that went silent without FIN or RST (a blackholed link, a frozen host) is
  noticed in seconds rather than after TCP keepalive's minutes;
* TCP keepalive (``TCP_KEEPALIVE*``) as a second line for old peers;
* ``HANDSHAKE_IVL`` and ``CONNECT_TIMEOUT`` bounded by ``heartbeat_timeout_s``;
* ``RECONNECT_IVL``/``RECONNECT_IVL_MAX`` for libzmq's own reconnection backoff;
* ``LINGER`` 0.

Link health.  A socket monitor (``zmq_socket_monitor``) reports
``HANDSHAKE_SUCCEEDED`` and ``DISCONNECTED``: a link is *connected* between the two.
Each link has a state (:meth:`Bus.health`):

* ``"connecting"``: no ZMTP handshake has succeeded on the link yet, for less
  than ``dead_after_s`` = ``heartbeat_ivl_s`` clamped to 2..5 s since it was
  opened: the start-up grace, not yet a failure and not yet proof of a publisher;
* ``"ok"``: connected (or reconnecting for less than ``dead_after_s``) and a
  message arrived within ``heartbeat_timeout_s``;
* ``"quiet"``: connected, heartbeats answered, but no message for longer: a quiet
  bus, not a failure;
* ``"dead"``: not connected for longer than that grace: the publisher is gone or
  the network drops everything.

A link silent for ``silence_s`` that is not proven alive by heartbeats (not
connected, or heartbeats off) has its socket closed and recreated (counted in
``bus_reconnects``); a quiet link with answered heartbeats is left alone.

Receiving: one ``await poll()`` then a non-blocking drain of what is queued
(through a synchronous shadow of the same socket), so a burst costs one await per
batch, not per message.

Gaps.  fedmsg numbers the messages of each publishing context: ``i`` starts at 1
and grows by one per ``publish`` (``fedmsg.core.FedMsgContext.publish``), and
``fedmsg.publish`` keeps one context per *thread*.  :class:`SequenceTracker`
follows these sequences per publisher identity ``(endpoint, envelope username,
certificate CN when signed)`` and counts the messages missing from them
(``stats.gaps``): messages lost to the high-water mark, a partition, or a slow
joiner.  The heuristic, and why, is in :class:`SequenceTracker`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .config import Config
from .consumer import Consumer
from .envelope import Envelope
from .webapi import LINK_STATES

log = logging.getLogger(__name__)

#: Most messages drained from one socket before yielding to the event loop.
DRAIN_MAX = 2000
#: How long one ``poll`` waits, milliseconds (the silence check and :meth:`Bus.alive`
#: run at least this often).
POLL_MS = 500
#: The bus loop is *stuck* when it has not completed an iteration for this long,
#: seconds: the listener stops feeding the systemd watchdog.
STUCK_S = 30.0
#: Characters at the end of a message's ``certificate`` field that key the
#: certificate -> CN cache (:meth:`Bus._signer`).
CERT_KEY_CHARS = 128
#: Monitor events that make a link connected / disconnected.
_UP_EVENTS = frozenset({zmq.EVENT_HANDSHAKE_SUCCEEDED})
_DOWN_EVENTS = frozenset(
    {
        zmq.EVENT_DISCONNECTED,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_CLOSED,
    }
)
_MONITOR_EVENTS = 0
for _ev in _UP_EVENTS | _DOWN_EVENTS:
    _MONITOR_EVENTS |= _ev


# -- publisher sequences (PURE) ---------------------------------------------------


@dataclass(slots=True)
class _Stream:
    last_i: int
    run: int = 0  # consecutive +1 steps seen


class SequenceTracker:
    """Counts messages missing from publishers' ``i`` sequences.  PURE.

    Each publisher identity (any hashable; the bus uses ``(endpoint, username,
    certificate CN)``) may carry several interleaved sequences: fedmsg keeps one
    context, hence one ``i`` counter, per publishing thread, and services run
    several processes under the same account and certificate.  Real traffic shows
    it: in ``shared/corpus/fedmsg_sample_datanommer_stream.jsonl`` (25 consecutive
    prod messages) koji's hub sends ``i`` = 1, 1, 1, 2, 2, 1, 3, 4, 1, ... and
    github2fedmsg 26, 27, 18; bugzilla2fedmsg jumps 5595 -> 5709.  So, for each
    message with ``i`` >= 1:

    1. a sequence of the identity already at ``i``: a duplicate, nothing counted;
    2. else the sequence whose last ``i`` is the closest below: ``i`` = last + 1
       continues it; a larger step is a **gap** of ``i - last - 1`` messages when
       that sequence is *confirmed* (it has grown by +1 at least ``confirm`` times)
       and either it is the identity's only sequence or the step is at most
       ``join_max``;
    3. otherwise ``i`` starts a new sequence, nothing counted: a restart (``i``
       back to 1, or any ``i`` below every known sequence: a publisher restart is
       never a gap) or another thread/process of the same identity.

    Gaps are therefore never counted from a backward step, nor from a forward jump
    that could be another publisher; a loss right at the start of a sequence (before
    it is confirmed) is missed.  The corpus above gives 0 gaps.

    Args:
        confirm: +1 steps before a sequence's jumps count as gaps.
        join_max: largest step counted as a gap when the identity has several
            sequences (bigger jumps start a new sequence).
        max_streams: sequences kept per identity (least recently used dropped).
        max_identities: identities kept (least recently used dropped).

    Attributes:
        gaps: messages counted missing so far.  restarts: sequences that started
        again at ``i`` = 1.  streams_started: new sequences (restarts included).
    """

    def __init__(
        self,
        confirm: int = 2,
        join_max: int = 1000,
        max_streams: int = 16,
        max_identities: int = 4096,
    ) -> None:
        self.confirm = confirm
        self.join_max = join_max
        self.max_streams = max_streams
        self.max_identities = max_identities
        self._ids: OrderedDict[Hashable, list[_Stream]] = OrderedDict()
        self.gaps = 0
        self.restarts = 0
        self.streams_started = 0

    def observe(self, identity: Hashable, i: int) -> int:
        """Record message number ``i`` of ``identity``; returns the messages missing
        just before it (0 for a continuation, a duplicate, a restart, or ``i`` < 1)."""
        if i < 1:
            return 0
        streams = self._ids.get(identity)
        if streams is None:
            self._ids[identity] = [_Stream(i)]
            self.streams_started += 1
            if len(self._ids) > self.max_identities:
                self._ids.popitem(last=False)
            return 0
        self._ids.move_to_end(identity)
        if len(streams) == 1:  # the usual case, decided as the loop below would
            s = streams[0]
            if s.last_i + 1 == i:
                s.last_i = i
                s.run += 1
                return 0
        best: _Stream | None = None
        for s in streams:
            if s.last_i == i:
                return 0
            if s.last_i < i and (best is None or s.last_i > best.last_i):
                best = s
        if best is not None:
            step = i - best.last_i
            if step == 1:
                best.last_i = i
                best.run += 1
                self._touch(streams, best)
                return 0
            if best.run >= self.confirm and (len(streams) == 1 or step <= self.join_max):
                best.last_i = i
                self._touch(streams, best)
                self.gaps += step - 1
                return step - 1
        if i == 1:
            self.restarts += 1
        self.streams_started += 1
        streams.append(_Stream(i))
        if len(streams) > self.max_streams:
            streams.pop(0)
        return 0

    @staticmethod
    def _touch(streams: list[_Stream], s: _Stream) -> None:
        if streams[-1] is not s:
            streams.remove(s)
            streams.append(s)


# -- endpoints (PURE) ---------------------------------------------------------------


#: libzmq's transports (zmq_connect(3)).
ZMQ_TRANSPORTS = ("tcp", "ipc", "inproc", "pgm", "epgm", "vmci", "tipc", "ws", "wss", "udp")


def resolve_endpoints(endpoints: Sequence[str], fedmsg_config: Mapping[str, Any]) -> list[str]:
    """The endpoints ``listen`` subscribes to: ``endpoints`` (the wallboard config or
    ``--endpoint``), else every one of fedmsg's ``endpoints`` groups, each checked
    (:func:`check_endpoint`) and listed once, in order.

    An endpoint given twice would be two SUB sockets on one publisher: every
    message twice, and the ones without a ``msg_id`` counted twice.

    Raises:
        listener.errors.ConfigError: a bad endpoint (no endpoint at all is left to
            the caller: ``--bus amqp`` needs none).
    """
    found = list(endpoints) or [
        e for group in (fedmsg_config.get("endpoints") or {}).values() for e in group
    ]
    for e in found:
        check_endpoint(e)
    unique = list(dict.fromkeys(found))
    if len(unique) < len(found):
        log.warning("the same ZeroMQ endpoint is listed more than once: subscribing once "
                    "to each of %s", ", ".join(unique))
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
        listener.errors.ConfigError: not ``transport://address``, or a host or port
            as above.
    """
    import ipaddress

    from .errors import ConfigError

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
    rest = endpoint[len("tcp://"):]
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


# -- links -------------------------------------------------------------------------


@dataclass
class Link:
    """One endpoint's SUB socket and its health.

    Attributes:
        endpoint: the ZeroMQ address (``tcp://host:port``, ``ipc://...``).
        sock / shadow: the asyncio SUB socket and its synchronous shadow.
        monitor / monitor_shadow: the socket's monitor PAIR socket and its shadow.
        last_msg_at: arrival time (UNIX s) of the newest message, or None.
        created_at: when the socket was (re)created, UNIX s.
        connected: a ZMTP handshake succeeded and no disconnect followed.
        ever_connected: a handshake has succeeded once since the listener started.
        down_since: when the link last stopped being connected (or was created).
        received: messages received on this link.
        reconnects: times the socket was recreated.
        disconnects: connections lost (heartbeat timeout, peer gone).
        gaps: messages missing by publisher sequence numbers on this link.
    """

    endpoint: str
    sock: Any = None
    shadow: Any = None
    monitor: Any = None
    monitor_shadow: Any = None
    last_msg_at: float | None = None
    created_at: float = 0.0
    connected: bool = False
    ever_connected: bool = False
    down_since: float = 0.0
    received: int = 0
    reconnects: int = 0
    disconnects: int = 0
    gaps: int = 0
    #: the last receive pass stopped at :data:`DRAIN_MAX` (more was queued)
    backlog: bool = False
    _cn_cache: OrderedDict[str, str] = field(default_factory=OrderedDict, repr=False)


class Bus:
    """Receives from every endpoint and hands frames to a :class:`Consumer`.

    Args:
        cfg: settings (``hwm``, ``heartbeat_ivl_s``, ``heartbeat_timeout_s``,
            keepalive, ``silence_s``, reconnect intervals).
        endpoints: ZeroMQ addresses to connect to.
        topic_prefix: subscription prefix; ``""`` for all topics.
        consumer: where messages go; the bus sets its ``on_envelope`` hook to
            follow publishers' sequence numbers (``consumer.stats.gaps``).

    Raises:
        listener.errors.ConfigError: no endpoint.
    """

    def __init__(
        self, cfg: Config, endpoints: list[str], topic_prefix: str, consumer: Consumer
    ) -> None:
        if not endpoints:
            from .errors import ConfigError

            raise ConfigError("no ZeroMQ endpoint: set endpoints in fedmsg.d/ or --endpoint")
        self.cfg = cfg
        self.ctx = zmq.asyncio.Context()
        for e in endpoints:
            check_endpoint(e)
        self.links = [Link(e) for e in endpoints]
        self.topic_prefix = topic_prefix
        self.consumer = consumer
        self.sequences = SequenceTracker()
        self.heartbeat_ivl_s = float(getattr(cfg, "heartbeat_ivl_s", 0.0))
        self.heartbeat_timeout_s = float(getattr(cfg, "heartbeat_timeout_s", 0.0))
        #: a link in reconnection for less than this is not yet reported dead, s
        self.dead_after_s = max(2.0, min(self.heartbeat_ivl_s, 5.0))
        #: a connected link without a message for longer than this is quiet, s
        self.quiet_after_s = self.heartbeat_timeout_s or 30.0
        #: when the receive loop last completed an iteration, UNIX s
        self.loop_at = time.time()
        self._stopping = False
        self._generation = 0
        self._current: Link | None = None
        self._gap_logs = 0
        consumer.on_envelope = self._observe
        for link in self.links:
            self._open(link)

    # -- sockets -------------------------------------------------------------

    def _open(self, link: Link) -> None:
        cfg = self.cfg
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, cfg.hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, cfg.tcp_keepalive_idle_s)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, cfg.tcp_keepalive_intvl_s)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, cfg.tcp_keepalive_cnt)
        sock.setsockopt(zmq.RECONNECT_IVL, cfg.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, cfg.reconnect_ivl_max_ms)
        if self.heartbeat_ivl_s > 0:
            timeout_ms = int(1000 * (self.heartbeat_timeout_s or 3 * self.heartbeat_ivl_s))
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(1000 * self.heartbeat_ivl_s))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
            # TTL: the publisher drops us after this much silence (deciseconds on
            # the wire, at most 6553.5 s).
            sock.setsockopt(zmq.HEARTBEAT_TTL, min(timeout_ms, 6_553_500))
            sock.setsockopt(zmq.HANDSHAKE_IVL, timeout_ms)
            sock.setsockopt(zmq.CONNECT_TIMEOUT, timeout_ms)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic_prefix.encode("utf-8"))
        monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        try:
            sock.connect(link.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            from .errors import ConfigError

            raise ConfigError(f"bad ZeroMQ endpoint {link.endpoint!r}: {exc}") from exc
        link.sock = sock
        link.shadow = zmq.Socket.shadow(sock.underlying)
        link.monitor = monitor
        link.monitor_shadow = zmq.Socket.shadow(monitor.underlying)
        link.created_at = time.time()
        if link.connected or not link.down_since:  # a recreated dead link stays down
            link.down_since = link.created_at
        link.connected = False
        self._generation += 1
        log.info(
            "SUB connecting to %s (prefix %r, hwm %d, heartbeat %.1f s)",
            link.endpoint,
            self.topic_prefix,
            cfg.hwm,
            self.heartbeat_ivl_s,
        )

    def _close(self, link: Link) -> None:
        if link.sock is None:
            return
        try:
            link.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        link.monitor.close(linger=0)
        link.sock.close(linger=0)
        link.sock = link.shadow = link.monitor = link.monitor_shadow = None

    def recreate(self, link: Link) -> None:
        """Close and reopen a link's socket (a silent or dead link); counted."""
        self._close(link)
        link.reconnects += 1
        self.consumer.stats.bus_reconnects += 1
        self._open(link)

    # -- receiving -----------------------------------------------------------

    def _drain(self, link: Link) -> int:
        n = 0
        handle = self.consumer.handle_frames
        shadow = link.shadow
        recv = shadow.recv
        noblock = zmq.NOBLOCK
        now = time.time()
        self._current = link
        try:
            while n < DRAIN_MAX:
                # frames (copy=False) and their ``more`` flag instead of
                # recv_multipart or getsockopt(RCVMORE), which builds an enum on
                # every call: ~4.2 vs ~5.3-6 us a message (issue 9).  A multipart
                # message arrives whole, so the later frames are already there once
                # the first one is.
                try:
                    frame = recv(noblock, copy=False)
                except zmq.Again:
                    break
                frames = [frame.bytes]
                while frame.more:
                    frame = recv(copy=False)
                    frames.append(frame.bytes)
                n += 1
                handle(frames, now)
        finally:
            self._current = None
        if n:
            link.received += n
            link.last_msg_at = now
        if n >= DRAIN_MAX:
            # a backlog: flushes follow one another without waiting for the tick,
            # so what is pending stays small and the burst's end is in Redis soon
            # after it is received (Consumer.flush_wanted)
            link.backlog = True
            self.consumer.flush_wanted.set()
        elif link.backlog:
            link.backlog = False  # the queue is empty: the burst's end, at once
            self.consumer.flush_wanted.set()
        return n

    def _drain_monitor(self, link: Link, now: float) -> None:
        while True:
            try:
                frames = link.monitor_shadow.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = parse_monitor_message(frames)["event"]
            except Exception:  # a malformed monitor message: ignore it
                continue
            if event in _UP_EVENTS and not link.connected:
                link.connected = link.ever_connected = True
                log.info("link %s connected (ZMTP handshake done)", link.endpoint)
            elif event in _DOWN_EVENTS and link.connected:
                link.connected = False
                link.down_since = now
                link.disconnects += 1
                log.warning(
                    "link %s disconnected (%s)", link.endpoint, zmq.Event(event).name
                )

    def _observe(self, env: Envelope) -> None:
        """The consumer's ``on_envelope`` hook: follow the publisher's ``i``."""
        link = self._current
        if link is None or env.i < 1:
            return
        try:
            identity = (link.endpoint, env.username or "", self._signer(link, env.body))
            missing = self.sequences.observe(identity, env.i)
        except Exception as exc:  # never let gap detection stop a message
            log.debug("sequence check failed on msg_id=%s: %s", env.msg_id, exc)
            return
        if missing:
            link.gaps += missing
            self.consumer.stats.gaps += missing
            self._gap_logs += 1
            if self._gap_logs <= 10 or self._gap_logs % 1000 == 0:
                log.warning(
                    "%d message(s) missing before i=%d from %s (%s, %s); %d missing so far",
                    missing,
                    env.i,
                    link.endpoint,
                    identity[1] or "-",
                    identity[2] or "unsigned",
                    self.consumer.stats.gaps,
                )

    @staticmethod
    def _signer(link: Link, body: dict[str, Any]) -> str:
        """The CN of the message's x509 certificate ("" when unsigned); cached.

        The cache is keyed by the field's last :data:`CERT_KEY_CHARS` characters
        (base64 of the PEM's end: bytes of the certificate's own signature, unique
        per certificate): hashing the whole field (~3 KB, a new string in every
        message) cost ~1 µs a message; the CN is parsed from the whole certificate.
        """
        cert = body.get("certificate")
        if not isinstance(cert, str) or not cert:
            return ""
        cache = link._cn_cache
        key = cert[-CERT_KEY_CHARS:]
        cn = cache.get(key)
        if cn is not None:
            return cn
        try:
            from cryptography import x509
            from cryptography.x509.oid import NameOID

            parsed = x509.load_pem_x509_certificate(base64.b64decode(cert))
            names = parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            cn = str(names[0].value) if names else "?"
        except Exception:
            cn = "?"
        cache[key] = cn
        if len(cache) > 256:
            cache.popitem(last=False)
        return cn

    async def run(self) -> None:
        """Receive until :meth:`stop`; never raises for a bad message."""
        poller = zmq.asyncio.Poller()
        generation = -1
        while not self._stopping:
            if generation != self._generation:
                poller = zmq.asyncio.Poller()
                for link in self.links:
                    poller.register(link.sock, zmq.POLLIN)
                    poller.register(link.monitor, zmq.POLLIN)
                generation = self._generation
            backlogged = {link.sock for link in self.links if link.backlog}
            if backlogged:
                # a link that stopped at DRAIN_MAX may have more queued, which its
                # socket's descriptor (edge-triggered) need not announce again: the
                # poll waited 10-70 ms several times a second during a backlog
                # (~11 % of a drain).  Receive from it directly instead; its next
                # pass clears ``backlog`` when it finds the queue empty.
                ready = backlogged
            else:
                events = await poller.poll(timeout=POLL_MS)
                ready = {s for s, _ in events}
            now = time.time()
            busy = False
            for link in self.links:
                if link.monitor in ready:
                    self._drain_monitor(link, now)
                if link.sock in ready and self._drain(link):
                    busy = True
            if busy:
                await asyncio.sleep(0)  # let flush/step tasks run during a burst
            now = time.time()
            self._check_silence(now)
            self.loop_at = now

    def _check_silence(self, now: float) -> None:
        silence = self.cfg.silence_s
        for link in self.links:
            last = max(link.last_msg_at or 0.0, link.created_at)
            if now - last <= silence:
                continue
            if link.connected and self.heartbeat_ivl_s > 0:
                continue  # a quiet bus: heartbeats prove the peer is there
            log.warning(
                "no message from %s for %.0f s and %s: recreating the socket",
                link.endpoint,
                now - last,
                "not connected" if not link.connected else "no heartbeats",
            )
            self.recreate(link)

    def stop(self) -> None:
        """Ask :meth:`run` to return (within ``POLL_MS``)."""
        self._stopping = True

    def close(self) -> None:
        """Close every socket and the context."""
        for link in self.links:
            self._close(link)
        # destroy, not term: a socket left open (a monitor) must not block exit
        self.ctx.destroy(linger=0)

    # -- health --------------------------------------------------------------

    def alive(self, now: float) -> bool:
        """True unless the receive loop has not completed an iteration for
        :data:`STUCK_S` seconds (the systemd watchdog is fed only while alive)."""
        return now - self.loop_at < STUCK_S

    def link_state(self, link: Link, now: float) -> str:
        """``"connecting"``, ``"ok"``, ``"quiet"`` or ``"dead"`` (module docstring)."""
        if not link.connected:
            if now - link.down_since > self.dead_after_s:
                return "dead"
            if not link.ever_connected:
                return "connecting"
        last = link.last_msg_at if link.last_msg_at is not None else link.created_at
        return "ok" if now - last <= self.quiet_after_s else "quiet"

    def health(self, now: float) -> list[dict[str, Any]]:
        """Per-link health, one dict per endpoint.

        Returns:
            ``[{"endpoint", "state" ("connecting" | "ok" | "quiet" | "dead"),
            "connected" (bool),
            "silent_s" (seconds since the last message, None before the first),
            "down_s" (seconds not connected, 0 when connected), "received",
            "reconnects", "disconnects", "gaps" (messages)}, ...]``.
        """
        return [
            {
                "endpoint": link.endpoint,
                "state": self.link_state(link, now),
                "connected": link.connected,
                "silent_s": None if link.last_msg_at is None else round(now - link.last_msg_at, 3),
                "down_s": 0.0 if link.connected else round(now - link.down_since, 3),
                "received": link.received,
                "reconnects": link.reconnects,
                "disconnects": link.disconnects,
                "gaps": link.gaps,
            }
            for link in self.links
        ]

    def state(self, now: float) -> str:
        """The bus as a whole: ``"ok"`` if any link is ok, else ``"quiet"`` if any
        link is quiet, else ``"connecting"`` if any link is in its start-up grace,
        else ``"dead"``."""
        states = {self.link_state(link, now) for link in self.links}
        for s in LINK_STATES[:-1]:
            if s in states:
                return s
        return "dead"

    def health_fields(self, now: float, max_links: int = 50) -> dict[str, Any]:
        """Fields the listener's heartbeat records in Redis ``P:meta`` (``/healthz``).

        Returns:
            ``{"listener_bus_state": one of :data:`listener.webapi.LINK_STATES`,
            "listener_links_ok", "listener_links_quiet", "listener_links_connecting",
            "listener_links_dead" (counts),
            "listener_gaps" (messages), "listener_links_json" (JSON list of at most
            ``max_links`` :meth:`health` entries)}``.
        """
        import json

        links = self.health(now)
        counts = {s: sum(1 for x in links if x["state"] == s) for s in LINK_STATES}
        return {
            "listener_bus_state": self.state(now),
            **{f"listener_links_{s}": counts[s] for s in LINK_STATES},
            "listener_gaps": self.consumer.stats.gaps,
            "listener_links_json": json.dumps(links[:max_links]),
        }
