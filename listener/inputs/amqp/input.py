"""The AMQP input: a pika ``AsyncioConnection`` on the listener's event loop.

Manual acknowledgements, ``basic.qos`` prefetch bounded by
:data:`listener.inputs.amqp.settings.PREFETCH_COUNT`.  A message is acknowledged only
after a Redis flush that included it (acks are sent every ``flush_interval_s``,
``multiple=True`` up to the newest counted delivery tag), so a crash or a broker
restart can only cause a redelivery, never a loss of an acknowledged message;
redeliveries are de-duplicated by msg_id (memory, then Redis).  Connection
failures are retried with exponential backoff.  Queues: ``amqp_queue = ""`` makes
a fresh UUID queue per connection (non-durable, exclusive, auto-deleted: the
public broker requires UUID names, and a shared queue would split the traffic
between its consumers); a named queue is durable and survives disconnects.

fedmsg x509 signatures belong to the ZeroMQ bus: on AMQP the broker
authenticates publishers, so ``validate_signatures`` is not applied here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from listener.core.config import Config
from listener.core.envelope import Rejected
from listener.core.errors import ConfigError
from listener.core.intake import Intake, Writer
from listener.inputs.amqp.schemas import SchemaUsers
from listener.inputs.amqp.settings import (
    AmqpSettings,
    Backoff,
    diagnose,
    login_problem,
    redact,
)
from listener.inputs.amqp.wire import Decoded, header_users, pick_users, to_fedmsg

log = logging.getLogger(__name__)

#: The exchange every Fedora message is published to (fedora-messaging default).
EXCHANGE = "amq.topic"
#: Longest wait for one AMQP handshake step (open, declare, bind), seconds.
OP_TIMEOUT_S = 30.0
#: Without a session for longer than this (since the start or since it was lost),
#: the input's state is ``"dead"``, seconds (a broker restart takes a few seconds;
#: the ZeroMQ links' grace is 2-5 s).
DEAD_AFTER_S = 10.0
#: Longest wait for the ack task to stop when a session ends, seconds.
ACK_STOP_S = 5.0
#: Connected but no message for longer than this: ``"quiet"``, seconds (as the
#: ZeroMQ links' default ``heartbeat_timeout_s``).
QUIET_AFTER_S = 30.0


@dataclass
class AmqpStats:
    """Counters of one AMQP input (messages unless noted).

    Attributes:
        received: deliveries handled (redeliveries included).
        redelivered: deliveries flagged ``redelivered`` by the broker.
        accepted: handed to the intake and accepted (new, valid).
        acked / nacked: acknowledged after counting / returned to the queue
            (the intake's pending buffer overflowed).
        rejected: by reason, before the intake (``bad_json``...).
        connects: sessions opened; ``reconnects``: retries after a failure.
        users_from: where users came from (``headers``, ``schema``, ``fedmsg.meta``).
        connected: a session is open now.
    """

    received: int = 0
    redelivered: int = 0
    accepted: int = 0
    acked: int = 0
    nacked: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    reconnects: int = 0
    users_from: Counter[str] = field(default_factory=Counter)
    connected: bool = False


def connect_failure(exc: BaseException) -> str:
    """pika's connection failure in a line ops read: the address that could not be
    resolved or reached first, then pika's own text (``AMQPConnectionWorkflowFailed``
    wraps the socket's error in its repr)."""
    text = repr(exc)
    if "gaierror" in text:
        why = re.search(r"gaierror\(-?\d+, '([^']+)'\)", text)
        return f"the broker's host name does not resolve ({why[1] if why else 'DNS'}): {text}"
    if "ConnectionRefusedError" in text or "Connection refused" in text:
        return f"the broker refused the connection (nothing listens there?): {text}"
    if "TimeoutError" in text or "timed out" in text:
        return f"the broker did not answer in time: {text}"
    return text


class SessionClosed(Exception):
    """The AMQP connection or channel closed during a handshake step."""


class AmqpInput:
    """Consumes from an AMQP broker into an :class:`~listener.core.intake.Intake`,
    and acknowledges what its writer has written.

    Args:
        cfg: settings (``max_body_bytes``, ``flush_interval_s`` = ack cadence).
        intake: where messages go.
        writer: writes the intake's pending messages
            (:class:`listener.daemon.consumer.Consumer`): a delivery is acknowledged
            once its message is in Redis.
        settings: where to connect; default :meth:`AmqpSettings.from_config`.
        backoff: reconnect delays; default 1 s doubling to 60 s.
        schema_users: users from installed schemas; default :class:`SchemaUsers`.
    """

    def __init__(
        self,
        cfg: Config,
        intake: Intake,
        writer: Writer,
        settings: AmqpSettings | None = None,
        backoff: Backoff | None = None,
        schema_users: Callable[[Decoded, Mapping[str, Any]], list[str] | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.intake = intake
        self.writer = writer
        self.settings = settings or AmqpSettings.from_config(cfg)
        self.params = self.settings.parameters()
        self.backoff = backoff or Backoff()
        self.schema_users = schema_users if schema_users is not None else SchemaUsers()
        self.ack_interval_s = cfg.flush_interval_s
        self.stats = AmqpStats()
        self.queue_name = ""
        self._conn: Any = None
        self._channel: Any = None
        self._consumer_tag = ""
        self._last_tag = 0
        self._acked_tag = 0
        self._overflow_mark = 0
        self._stopping = False
        self._closed: asyncio.Future[Any] | None = None
        #: why the broker closed the current session's channel ("" while open)
        self._channel_closed_by = ""
        #: UNIX s: when the current session opened, when the last one was lost (or
        #: the input was made), when the last message arrived (None: never)
        self._connected_at = 0.0
        self._down_since = time.time()
        self._last_msg_at: float | None = None

    # -- per message (sync, never raises) ---------------------------------

    def _on_message(self, channel: Any, method: Any, properties: Any, raw: bytes) -> None:
        if channel is not self._channel:
            return  # a late delivery on a dead channel: the broker redelivers it
        self.stats.received += 1
        self._last_msg_at = time.time()
        if method.redelivered:
            self.stats.redelivered += 1
        try:
            self.handle(method.routing_key or "", properties, raw, time.time())
        except Exception:  # never let one message stop the input
            self.stats.rejected["internal_error"] += 1
            log.exception("internal error on AMQP message %s", properties.message_id)
        self._last_tag = method.delivery_tag

    def handle(self, topic: str, properties: Any, raw: bytes, now: float) -> bool:
        """Decode one message and hand it to the intake; True if accepted.

        Args:
            topic: the routing key.
            properties: its ``pika.BasicProperties`` (``message_id``, ``headers``,
                ``timestamp``).
            raw: the body bytes.
            now: arrival time, UNIX seconds.
        """
        headers = properties.headers if isinstance(properties.headers, dict) else {}
        decoded = to_fedmsg(
            topic,
            properties.message_id,
            headers,
            raw,
            now,
            properties.timestamp,
            self.cfg.max_body_bytes,
        )
        if isinstance(decoded, Rejected):
            self.stats.rejected[decoded.reason] += 1
            self.intake.reject(decoded, logged=False)
            log.warning(
                "rejected AMQP msg_id=%s topic=%s: %s (%s)",
                decoded.msg_id,
                topic[:120],
                decoded.reason,
                decoded.detail,
            )
            return False
        users = pick_users(decoded, headers, self.schema_users)
        source = (
            "fedmsg.meta"
            if users is None
            else "headers"
            if header_users(headers) is not None
            else "schema"
        )
        describer = getattr(self.schema_users, "describe", None)
        describe = describer(decoded, headers) if callable(describer) else None
        # signatures belong to the ZeroMQ bus (module docstring)
        ok = self.intake.handle_body(
            decoded.body, now=now, users=users, validate=False, describe=describe
        )
        if ok:
            self.stats.accepted += 1
            self.stats.users_from[source] += 1
        return ok

    # -- acknowledgements ----------------------------------------------------

    async def ack_counted(self, flush: bool = True) -> int:
        """Acknowledge every delivery whose message is now counted in Redis.

        Flushes the writer (``flush``) until everything accepted so far is
        written, then ``basic.ack(multiple=True)`` up to the newest delivery tag
        handled before.  If the intake's pending buffer overflowed meanwhile (a
        long Redis outage), the deliveries are returned with ``basic.nack(requeue)``
        instead: some may have been dropped unwritten.

        Returns:
            Deliveries acknowledged (0 when nothing was due or the channel closed).

        Raises:
            redis.exceptions.RedisError: the flush failed (nothing acknowledged).
        """
        channel = self._channel
        tag = self._last_tag
        if channel is None or tag <= self._acked_tag:
            return 0
        stats = self.intake.stats
        seq = stats.accepted
        overflow_now = stats.pending_overflow
        while not self.writer.written(seq):
            if not flush:
                return 0
            await self.writer.flush()
        if channel is not self._channel or not channel.is_open:
            return 0  # the tags died with their channel: the broker redelivers
        n = tag - self._acked_tag
        if stats.pending_overflow != self._overflow_mark:
            channel.basic_nack(delivery_tag=tag, multiple=True, requeue=True)
            self.stats.nacked += n
            log.error("pending buffer overflowed: %d AMQP deliveries returned to the queue", n)
            n = 0
        else:
            channel.basic_ack(delivery_tag=tag, multiple=True)
            self.stats.acked += n
        self._acked_tag = tag
        self._overflow_mark = overflow_now
        return n

    async def _ack_loop(self) -> None:
        delay = self.ack_interval_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.ack_counted()
                delay = self.ack_interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep the deliveries unacked
                delay = min(2.0, delay * 2)
                log.debug("ack postponed (%s: %s)", type(exc).__name__, exc)

    # -- the connection --------------------------------------------------------

    async def _step(self, start: Callable[[Callable[..., None]], Any], what: str) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(*args: Any) -> None:
            if not fut.done():
                fut.set_result(args[0] if args else None)

        start(done)
        assert self._closed is not None
        finished, _ = await asyncio.wait(
            {fut, self._closed}, timeout=OP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if fut in finished:
            return fut.result()
        fut.cancel()
        reason = self._closed.result() if self._closed.done() else f"timeout after {OP_TIMEOUT_S} s"
        # the broker's reason for closing the channel (ACCESS_REFUSED on a queue...)
        # says more than the connection's "Normal shutdown" that follows it
        raise SessionClosed(f"{what}: {self._channel_closed_by or reason}")

    def _bind(self, channel: Any, key: str, callback: Callable[..., None]) -> None:
        channel.queue_bind(
            queue=self.queue_name, exchange=EXCHANGE, routing_key=key, callback=callback
        )

    async def _session(self) -> None:
        """One connection: open, declare, bind, consume until it closes."""
        # imported here: pika only for the AMQP input: every other command starts without it
        from pika.adapters.asyncio_connection import AsyncioConnection

        loop = asyncio.get_running_loop()
        opened: asyncio.Future[Any] = loop.create_future()
        closed: asyncio.Future[Any] = loop.create_future()
        self._closed = closed
        self._channel_closed_by = ""

        def on_open(conn: Any) -> None:
            if not opened.done():
                opened.set_result(conn)

        def on_open_error(conn: Any, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(SessionClosed(f"connect failed: {connect_failure(exc)}"))
            if not closed.done():
                closed.set_result(repr(exc))

        def on_close(conn: Any, exc: BaseException) -> None:
            if not closed.done():
                closed.set_result(repr(exc))

        conn = AsyncioConnection(
            self.params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        self._conn = conn
        ack_task = None
        try:
            await asyncio.wait_for(opened, OP_TIMEOUT_S)
            channel = await self._step(lambda cb: conn.channel(on_open_callback=cb), "channel")

            def on_channel_close(ch: Any, exc: BaseException) -> None:
                (log.info if self._stopping else log.warning)("AMQP channel closed: %r", exc)
                self._channel_closed_by = repr(exc)
                if conn.is_open:
                    conn.close()
                elif not closed.done():
                    closed.set_result(repr(exc))

            def on_cancel(frame: Any) -> None:
                log.warning("the broker cancelled the consumer (queue deleted?)")
                if conn.is_open:
                    conn.close()

            channel.add_on_close_callback(on_channel_close)
            channel.add_on_cancel_callback(on_cancel)
            s = self.settings
            await self._step(
                lambda cb: channel.basic_qos(prefetch_count=s.prefetch_count, callback=cb),
                "basic.qos",
            )
            if s.queue:
                name, durable, exclusive, auto_delete = s.queue, True, False, False
            else:
                name, durable, exclusive, auto_delete = str(uuid.uuid4()), False, True, True
            frame = await self._step(
                lambda cb: channel.queue_declare(
                    queue=name,
                    durable=durable,
                    exclusive=exclusive,
                    auto_delete=auto_delete,
                    callback=cb,
                ),
                "queue.declare",
            )
            self.queue_name = frame.method.queue
            for key in s.bindings:
                await self._step(functools.partial(self._bind, channel, key), "queue.bind")
            self._channel = channel
            self._last_tag = self._acked_tag = 0
            self._overflow_mark = self.intake.stats.pending_overflow
            self._consumer_tag = channel.basic_consume(
                queue=self.queue_name, on_message_callback=self._on_message, auto_ack=False
            )
            self.stats.connects += 1
            self.stats.connected = True
            self._connected_at = time.time()
            log.info(
                "AMQP connected to %s: queue %s (%s), bindings %s, prefetch %d",
                redact(s.url),
                self.queue_name,
                "durable" if durable else "exclusive, auto-delete",
                list(s.bindings),
                s.prefetch_count,
            )
            ack_task = asyncio.create_task(self._ack_loop(), name="amqp-ack")
            reason = await closed
            if not self._stopping:
                log.warning("AMQP connection lost: %s", reason)
        finally:
            if self.stats.connected:
                self._down_since = time.time()
            self.stats.connected = False
            self._channel = None
            if ack_task is not None:
                ack_task.cancel()
                # bounded: after a broker restart a session can fail to end (no
                # reconnect for minutes), waiting here or on the close; a task that
                # ignores its cancellation must not stop the input
                done, _ = await asyncio.wait({ack_task}, timeout=ACK_STOP_S)
                if not done:
                    log.warning("AMQP ack task did not stop within %.0f s: left behind", ACK_STOP_S)
                elif not ack_task.cancelled() and ack_task.exception() is not None:
                    log.debug("AMQP ack task ended with %r", ack_task.exception())
            if not (conn.is_closed or conn.is_closing):
                with contextlib.suppress(Exception):
                    conn.close()
            if not closed.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(closed), 5.0)

    async def run(self) -> None:
        """Consume until :meth:`stop`, reconnecting with backoff.  Never raises for a
        bad message or a lost connection.

        Raises:
            listener.core.errors.ConfigError: a failure that retrying cannot fix
                (:func:`listener.inputs.amqp.settings.diagnose`: the broker's
                certificate does not verify against the CA, the broker refuses the
                client certificate, the login, the queue name or a binding).
        """
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                problem = diagnose(self.settings, str(exc))
                if problem is not None and not self._stopping:
                    raise ConfigError(problem) from None
                login = login_problem(self.settings, str(exc))
                if login is not None:
                    log.error("%s; retrying", login)
                else:
                    log.warning("AMQP session to %s failed: %s", redact(self.settings.url), exc)
            if self._stopping:
                break
            if time.monotonic() - started > 30:
                self.backoff.reset()
            delay = self.backoff.next()
            self.stats.reconnects += 1
            log.info("AMQP reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    def stop(self) -> None:
        """Stop receiving (``basic.cancel``); delivered messages can still be acked."""
        self._stopping = True
        ch = self._channel
        if ch is not None and ch.is_open and self._consumer_tag:
            with contextlib.suppress(Exception):
                ch.basic_cancel(self._consumer_tag)

    def state(self, now: float) -> str:
        """The input's state, one of :data:`listener.core.linkstate.LINK_STATES`, as a ZeroMQ
        link's (:meth:`listener.inputs.zmq.Bus.link_state`): ``"connecting"`` before the
        first session, for at most :data:`DEAD_AFTER_S`; ``"ok"`` with a session (or
        within that grace after losing it) and a message within
        :data:`QUIET_AFTER_S` of ``now`` (UNIX s); ``"quiet"`` with a session and no
        message for longer; ``"dead"`` without a session for longer than the grace
        (the broker is down or refuses the credentials)."""
        if not self.stats.connected:
            if now - self._down_since > DEAD_AFTER_S:
                return "dead"
            if not self.stats.connects:
                return "connecting"
        last = self._last_msg_at if self._last_msg_at is not None else self._connected_at
        return "ok" if now - last <= QUIET_AFTER_S else "quiet"

    def health_fields(self, now: float | None = None) -> dict[str, Any]:
        """Health fields recorded in Redis ``P:meta`` beside the consumer's:
        ``listener_amqp_connected`` (0/1), ``listener_amqp_received``,
        ``listener_amqp_acked``, ``listener_amqp_reconnects`` (counts), and
        ``listener_amqp_state`` (:meth:`state` at ``now``, UNIX s, default the
        clock's)."""
        return {
            "listener_amqp_state": self.state(time.time() if now is None else now),
            "listener_amqp_connected": int(self.stats.connected),
            "listener_amqp_received": self.stats.received,
            "listener_amqp_acked": self.stats.acked,
            "listener_amqp_reconnects": self.stats.reconnects,
        }

    async def close(self, timeout_s: float = 5.0) -> None:
        """Acknowledge what is counted (no flush: call after the final flush), then
        close the connection (waits at most ``timeout_s``)."""
        self._stopping = True
        with contextlib.suppress(Exception):
            await self.ack_counted(flush=False)
        conn, closed = self._conn, self._closed
        if conn is not None and not conn.is_closed:
            if not conn.is_closing:  # one closing already: wait for its end too
                with contextlib.suppress(Exception):
                    conn.close()
            if closed is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(closed), timeout_s)
