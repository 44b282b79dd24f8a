"""The ZeroMQ bus input: SUB sockets on every fedmsg endpoint.  I/O.

One SUB socket per endpoint (fedmsg's ``endpoints`` config, or ``--endpoint``),
subscribed to ``topic_prefix`` (``""`` = everything).  Socket options are set
explicitly, never left to libzmq's defaults:

* ``RCVHWM`` = ``hwm`` (fedmsg's ``high_water_mark = 0`` keeps libzmq's 1,000,
  which drops silently under a burst);
* TCP keepalive (``TCP_KEEPALIVE*``) so a dead peer is noticed by the kernel;
* ``RECONNECT_IVL``/``RECONNECT_IVL_MAX`` for backoff;
* ``LINGER`` 0.

Receiving: one ``await poll()`` then a non-blocking drain of what is queued
(through a synchronous shadow of the same socket), so a burst costs one await per
batch, not per message.  A link that stays silent for ``silence_s`` is recreated
(counted in ``bus_reconnects``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from .config import Config
from .consumer import Consumer

log = logging.getLogger(__name__)

#: Most messages drained from one socket before yielding to the event loop.
DRAIN_MAX = 2000


@dataclass
class Link:
    """One endpoint's SUB socket and its health.

    Attributes:
        endpoint: the ZeroMQ address (``tcp://host:port``, ``ipc://...``).
        last_msg_at: arrival time (UNIX s) of the newest message, or None.
        created_at: when the socket was (re)created, UNIX s.
        received: messages received on this link.
        reconnects: times the socket was recreated.
        last_i: newest publisher sequence number ``i`` seen (gap detection).
    """

    endpoint: str
    sock: Any = None
    shadow: Any = None
    last_msg_at: float | None = None
    created_at: float = 0.0
    received: int = 0
    reconnects: int = 0
    last_i: int = 0


class Bus:
    """Receives from every endpoint and hands frames to a :class:`Consumer`.

    Args:
        cfg: settings (``hwm``, keepalive, ``silence_s``, reconnect intervals).
        endpoints: ZeroMQ addresses to connect to.
        topic_prefix: subscription prefix; ``""`` for all topics.
        consumer: where messages go.
    """

    def __init__(
        self, cfg: Config, endpoints: list[str], topic_prefix: str, consumer: Consumer
    ) -> None:
        if not endpoints:
            from .errors import ConfigError

            raise ConfigError("no ZeroMQ endpoint: set endpoints in fedmsg.d/ or --endpoint")
        self.cfg = cfg
        self.ctx = zmq.asyncio.Context()
        self.links = [Link(e) for e in endpoints]
        self.topic_prefix = topic_prefix
        self.consumer = consumer
        self._stopping = False
        for link in self.links:
            self._open(link)

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
        sock.setsockopt(zmq.SUBSCRIBE, self.topic_prefix.encode("utf-8"))
        sock.connect(link.endpoint)
        link.sock = sock
        link.shadow = zmq.Socket.shadow(sock.underlying)
        link.created_at = time.time()
        log.info("SUB connected to %s (prefix %r, hwm %d)", link.endpoint, self.topic_prefix, cfg.hwm)

    def recreate(self, link: Link) -> None:
        """Close and reopen a link's socket (a silent or dead link)."""
        link.sock.close(linger=0)
        link.reconnects += 1
        self.consumer.stats.bus_reconnects += 1
        self._open(link)

    def _drain(self, link: Link) -> int:
        n = 0
        handle = self.consumer.handle_frames
        shadow = link.shadow
        now = time.time()
        while n < DRAIN_MAX:
            try:
                frames = shadow.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            handle(frames, now)
        if n:
            link.received += n
            link.last_msg_at = now
        return n

    async def run(self) -> None:
        """Receive until :meth:`stop`; never raises for a bad message."""
        poller = zmq.asyncio.Poller()
        registered = {}
        while not self._stopping:
            for link in self.links:
                if registered.get(id(link)) is not link.sock:
                    old = registered.get(id(link))
                    if old is not None:
                        try:
                            poller.unregister(old)
                        except KeyError:
                            pass
                    poller.register(link.sock, zmq.POLLIN)
                    registered[id(link)] = link.sock
            events = await poller.poll(timeout=500)
            ready = {s for s, _ in events}
            for link in self.links:
                if link.sock in ready:
                    self._drain(link)
            if any(link.sock in ready for link in self.links):
                await asyncio.sleep(0)  # let flush/step tasks run during a burst
            self._check_silence(time.time())

    def _check_silence(self, now: float) -> None:
        silence = self.cfg.silence_s
        for link in self.links:
            last = link.last_msg_at or link.created_at
            if now - max(last, link.created_at) > silence:
                log.warning(
                    "no message from %s for %.0f s: recreating the socket", link.endpoint, silence
                )
                self.recreate(link)

    def stop(self) -> None:
        """Ask :meth:`run` to return (within 0.5 s)."""
        self._stopping = True

    def close(self) -> None:
        """Close every socket and the context."""
        for link in self.links:
            if link.sock is not None:
                link.sock.close(linger=0)
        self.ctx.term()

    def health(self, now: float) -> list[dict[str, Any]]:
        """Per-link health: endpoint, received, reconnects, seconds since last message."""
        return [
            {
                "endpoint": link.endpoint,
                "received": link.received,
                "reconnects": link.reconnects,
                "silent_s": None if link.last_msg_at is None else now - link.last_msg_at,
            }
            for link in self.links
        ]
