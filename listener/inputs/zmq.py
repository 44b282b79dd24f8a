"""The ZeroMQ bus input: SUB sockets on every fedmsg endpoint, their health, gaps.

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
``fedmsg.publish`` keeps one context per *thread*.  The bus decodes each message
itself and follows these sequences per publisher identity ``(endpoint, envelope
username, certificate CN when signed)`` with a
:class:`~listener.core.sequences.SequenceTracker`, which counts the messages
missing from them (:attr:`Bus.gaps`): messages lost to the high-water mark, a
partition, or a slow joiner; then it hands the message to the intake.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from cryptography import x509
from cryptography.x509.oid import NameOID
from zmq.utils.monitor import parse_monitor_message

from listener.core.config import Config
from listener.core.endpoints import check_endpoint
from listener.core.envelope import Envelope, Rejected, decode_frames
from listener.core.errors import ConfigError
from listener.core.intake import Intake
from listener.core.linkstate import LINK_STATES, best_state
from listener.core.lograte import milestone_level
from listener.core.sequences import SequenceTracker

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
    #: certificate (its last CERT_KEY_CHARS characters) -> CN, least recently used first
    cn_cache: OrderedDict[str, str] = field(default_factory=OrderedDict, repr=False)


class Bus:
    """Receives from every endpoint, follows publishers' sequence numbers, and hands
    each message to an :class:`~listener.core.intake.Intake`.

    Args:
        cfg: settings (``hwm``, ``heartbeat_ivl_s``, ``heartbeat_timeout_s``,
            keepalive, ``silence_s``, reconnect intervals).
        endpoints: ZeroMQ addresses to connect to.
        topic_prefix: subscription prefix; ``""`` for all topics.
        intake: where decoded messages go.
        on_backlog: called when a receive pass stopped at :data:`DRAIN_MAX` (more
            is queued) and when such a backlog is drained: the writer flushes at
            once instead of at its next tick.

    Raises:
        listener.core.errors.ConfigError: no endpoint.
    """

    def __init__(
        self,
        cfg: Config,
        endpoints: list[str],
        topic_prefix: str,
        intake: Intake,
        on_backlog: Callable[[], None],
    ) -> None:
        if not endpoints:
            raise ConfigError(
                "no ZeroMQ endpoint: set endpoints in fedmsg.d/ or --endpoint "
                "(Fedora's bus is AMQP today: listen --fedora)"
            )
        self.cfg = cfg
        self.ctx = zmq.asyncio.Context()
        for e in endpoints:
            check_endpoint(e)
        self.links = [Link(e) for e in endpoints]
        self.topic_prefix = topic_prefix
        self.intake = intake
        self.on_backlog = on_backlog
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
        self._gap_logs = 0
        #: sockets recreated (silent or dead links)
        self.reconnects = 0
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
        self.reconnects += 1
        self._open(link)

    # -- receiving -----------------------------------------------------------

    def _drain(self, link: Link) -> int:
        n = 0
        intake = self.intake
        accept = intake.accept
        decode = decode_frames
        max_body = self.cfg.max_body_bytes
        recv = link.shadow.recv
        noblock = zmq.NOBLOCK
        now = time.time()
        while n < DRAIN_MAX:
            # frames (copy=False) and their ``more`` flag instead of
            # recv_multipart or getsockopt(RCVMORE), which builds an enum on every
            # call.  A multipart message arrives whole, so the later frames are
            # already there once the first one is.
            try:
                frame = recv(noblock, copy=False)
            except zmq.Again:
                break
            frames = [frame.bytes]
            while frame.more:
                frame = recv(copy=False)
                frames.append(frame.bytes)
            n += 1
            try:
                env = decode(frames, max_body)
            except Exception as exc:  # defensive: decode_frames should not raise
                env = Rejected("bad_json", f"{type(exc).__name__}: {exc}"[:120])
            if isinstance(env, Rejected):
                intake.reject(env)
                if env.body is not None:
                    self._observe_rejected(link, env.body)
                continue
            if env.i > 0:
                self._observe(link, env)
            accept(env, now, None, True, frames[1])
        if n:
            link.received += n
            link.last_msg_at = now
        if n >= DRAIN_MAX:
            # a backlog: flushes follow one another without waiting for the tick,
            # so what is pending stays small and the burst's end is in Redis soon
            # after it is received
            link.backlog = True
            self.on_backlog()
        elif link.backlog:
            link.backlog = False  # the queue is empty: the burst's end, at once
            self.on_backlog()
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
                log.warning("link %s disconnected (%s)", link.endpoint, zmq.Event(event).name)

    def _observe_rejected(self, link: Link, body: dict[str, Any]) -> None:
        """Follow the sequence of a message that arrived but was rejected (its
        topic, msg_id or timestamp unusable): its publisher's ``i`` moved on, and a
        message rejected here is counted as rejected, not also as a gap."""
        seq, user, raw_id = body.get("i"), body.get("username"), body.get("msg_id")
        if type(seq) is not int or seq < 1:
            return
        self._observe(
            link,
            Envelope(
                "",
                raw_id if isinstance(raw_id, str) else "",
                0.0,
                seq,
                user if isinstance(user, str) else None,
                {},
                body,
            ),
        )

    def _observe(self, link: Link, env: Envelope) -> None:
        """Follow the publisher's ``i`` (module docstring); never raises."""
        try:
            identity = (link.endpoint, env.username or "", self._signer(link, env.body))
            missing = self.sequences.observe(identity, env.i)
        except Exception as exc:  # never let gap detection stop a message
            log.debug("sequence check failed on msg_id=%s: %s", env.msg_id, exc)
            return
        if missing:
            link.gaps += missing
            self._gap_logs += 1
            log.log(
                milestone_level(self._gap_logs),
                "%d message(s) missing before i=%d from %s (%s, %s); %d missing so far",
                missing,
                env.i,
                link.endpoint,
                identity[1] or "-",
                identity[2] or "unsigned",
                self.sequences.gaps,
            )

    @staticmethod
    def _signer(link: Link, body: dict[str, Any]) -> str:
        """The CN of the message's x509 certificate ("" when unsigned); cached.

        The cache is keyed by the field's last :data:`CERT_KEY_CHARS` characters
        (base64 of the PEM's end: bytes of the certificate's own signature, unique
        per certificate), cheaper than hashing the whole field (~3 KB, a new string
        in every message); the CN is parsed from the whole certificate.
        """
        cert = body.get("certificate")
        if not isinstance(cert, str) or not cert:
            return ""
        cache = link.cn_cache
        key = cert[-CERT_KEY_CHARS:]
        cn = cache.get(key)
        if cn is not None:
            return cn
        try:
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
                # poll would wait tens of ms several times a second during a backlog.
                # Receive from it directly instead; its next
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

    @property
    def gaps(self) -> int:
        """Messages missing by publisher sequence numbers, every link together."""
        return self.sequences.gaps

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
        return best_state(self.link_state(link, now) for link in self.links)

    def health_fields(self, now: float, max_links: int = 50) -> dict[str, Any]:
        """Fields the listener's heartbeat records in Redis ``P:meta`` (``/healthz``).

        Returns:
            ``{"listener_bus_state": one of :data:`listener.core.linkstate.LINK_STATES`,
            "listener_links_ok", "listener_links_quiet", "listener_links_connecting",
            "listener_links_dead" (counts),
            "listener_gaps" (messages), "listener_links_json" (JSON list of at most
            ``max_links`` :meth:`health` entries)}``.
        """
        links = self.health(now)
        counts = {s: sum(1 for x in links if x["state"] == s) for s in LINK_STATES}
        return {
            "listener_bus_state": self.state(now),
            **{f"listener_links_{s}": counts[s] for s in LINK_STATES},
            "listener_gaps": self.sequences.gaps,
            "listener_links_json": json.dumps(links[:max_links]),
        }
