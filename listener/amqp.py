"""The AMQP bus input (fedora-messaging), beside the ZeroMQ one.  I/O, with a pure core.

Fedora retired its public fedmsg ZeroMQ bus; its live bus is RabbitMQ, written
and read with ``fedora-messaging`` (public broker
``amqps://rabbitmq.fedoraproject.org/%2Fpublic_pubsub``, see ``docs/AMQP.md``).
This module subscribes there and feeds the same :class:`listener.consumer.Consumer`
as :mod:`listener.bus`, so counters, metrics and the page are the same.

Wire format (fedora-messaging docs, "Message Format"): the AMQP routing key is
the topic; the body is a UTF-8 JSON object; headers ``sent-at`` (ISO 8601 with
UTC offset), ``fedora_messaging_schema`` (entry point name of the schema class),
``fedora_messaging_severity`` and one ``fedora_messaging_user_<name>`` (value
``true``) per user the message is about; the AMQP ``message_id`` is a UUID.

Each message becomes a fedmsg-shaped body ``{"topic", "msg", "msg_id",
"timestamp", "i": 0, "username": None}`` (pure: :func:`to_fedmsg`):

* ``msg_id`` is the AMQP message id (``amqp-<sha1 of topic+body>`` if missing, so
  a redelivery is still de-duplicated); ``timestamp`` the ``sent-at`` header in
  UNIX seconds (else the AMQP ``timestamp`` property, else arrival time).
* Bridged fedmsg messages (fedmsg-migration-tools' ``zmq_to_amqp`` publishes the
  whole fedmsg envelope as the body, with the AMQP id set to its ``msg_id``) are
  unwrapped: topic and msg come from the innermost envelope (wrappers that nest
  a whole envelope under ``msg`` are unwrapped too).
* Users (:func:`pick_users`): the ``fedora_messaging_user_*`` headers when there
  are any; else the schema's ``usernames`` when its package is installed and the
  schema declares them (:class:`SchemaUsers`); else ``None``: fedmsg.meta reads
  them from the body, as for ZeroMQ.  The category comes from the topic.

Delivery (:class:`AmqpInput`): a pika ``AsyncioConnection`` on the listener's own
event loop; manual acknowledgements, ``basic.qos`` prefetch bounded by
:data:`PREFETCH_COUNT`.  A message is acknowledged only after a Redis flush that
included it (acks are sent every ``flush_interval_s``, ``multiple=True`` up to
the newest counted delivery tag), so a crash or a broker restart can only cause
a redelivery, never a loss of an acknowledged message; redeliveries are
de-duplicated by msg_id (memory, then Redis).  Connection failures are retried
with exponential backoff (:class:`Backoff`).  Queues: ``amqp_queue = ""`` makes a
fresh UUID queue per connection (non-durable, exclusive, auto-deleted: the
public broker requires UUID names, and a shared queue would split the traffic
between its consumers); a named queue is durable and survives disconnects.

fedmsg x509 signatures belong to the ZeroMQ bus: on AMQP the broker
authenticates publishers, so ``validate_signatures`` is not applied here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import hashlib
import logging
import math
import os
import random
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import Config
from .consumer import Consumer
from .envelope import Rejected

log = logging.getLogger(__name__)

#: The exchange every Fedora message is published to (fedora-messaging default).
EXCHANGE = "amq.topic"
#: Unacknowledged messages the broker may send ahead (``basic.qos``).  Bounds the
#: memory held while Redis is down: the broker stops delivering at this many.
PREFETCH_COUNT = 500
#: Header prefix of the users a message is about (fedora-messaging wire format).
USER_HEADER = "fedora_messaging_user_"
#: Longest wait for one AMQP handshake step (open, declare, bind), seconds.
OP_TIMEOUT_S = 30.0
#: Deepest nesting of bridged envelopes unwrapped.
MAX_UNWRAP = 4
#: The client properties shown in the broker's connection list.
CLIENT_PROPERTIES = {
    "app": "fedmsg-wallboard",
    "product": "fedmsg-wallboard with pika",
}

BUS_CHOICES = ("zmq", "amqp", "both")


# -- the pure core: AMQP message -> fedmsg body, users ----------------------


def sent_at_seconds(value: Any) -> float | None:
    """The ``sent-at`` header in UNIX seconds, or None when missing or unreadable.

    Args:
        value: ISO 8601 text (``2019-07-30T19:12:22+00:00``; fedora-messaging's
            ``datetime.isoformat()``); a naive time is taken as UTC; bytes are
            decoded as UTF-8.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    ts = when.timestamp()
    return ts if math.isfinite(ts) else None


def header_users(headers: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The users named by ``fedora_messaging_user_<name>`` headers, or None if none.

    A header whose value is false (``False``, ``0``, ``""``) does not name a user
    (the wire format sets ``true``).
    """
    if not headers:
        return None
    users = frozenset(
        key[len(USER_HEADER) :]
        for key, val in headers.items()
        if isinstance(key, str)
        and key.startswith(USER_HEADER)
        and val
        and key[len(USER_HEADER) :].strip()
    )
    return users or None


def is_envelope(obj: Any) -> bool:
    """True for a whole fedmsg envelope: a ``topic`` string, a ``msg`` object and a
    ``msg_id`` or ``timestamp`` (fedmsg.core.FedMsgContext.publish)."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("topic"), str)
        and isinstance(obj.get("msg"), dict)
        and ("msg_id" in obj or "timestamp" in obj)
    )


def unwrap_bridged(body: Any) -> dict[str, Any] | None:
    """The innermost fedmsg envelope of a bridged body, or None if not bridged.

    ``zmq_to_amqp`` (fedmsg-migration-tools) publishes the whole envelope as the
    body; a wrapper may nest a whole envelope under ``msg`` again (the corpus
    stream format, or a message bridged AMQP -> ZeroMQ -> AMQP).  At most
    :data:`MAX_UNWRAP` levels are unwrapped.
    """
    if not is_envelope(body):
        return None
    inner: dict[str, Any] = body
    for _ in range(MAX_UNWRAP):
        nested = inner["msg"]
        if not is_envelope(nested):
            break
        inner = nested
    return inner


def fallback_msg_id(topic: str, body: bytes) -> str:
    """A stable id for a message without ``message_id``: ``amqp-<sha1>``."""
    digest = hashlib.sha1(topic.encode("utf-8", "replace") + b"\0" + body).hexdigest()
    return f"amqp-{digest}"


@dataclass(frozen=True)
class Decoded:
    """One AMQP message as the consumer takes it.

    Attributes:
        body: the fedmsg-shaped body ``{"topic", "msg", "msg_id", "timestamp",
            "i", "username"}``.
        bridged: the AMQP body was a whole fedmsg envelope.
        schema: the ``fedora_messaging_schema`` header ("" if absent).
        amqp_body: the decoded AMQP body (what a schema class takes).
    """

    body: dict[str, Any]
    bridged: bool
    schema: str
    amqp_body: Any = field(repr=False)


def to_fedmsg(
    topic: str,
    message_id: str | None,
    headers: Mapping[str, Any] | None,
    raw: bytes,
    arrival_s: float,
    amqp_timestamp: int | float | None = None,
    max_body_bytes: int = 1 << 20,
) -> Decoded | Rejected:
    """Decode one AMQP message into the fedmsg body the consumer counts.  PURE.

    Args:
        topic: the routing key.
        message_id: the AMQP ``message_id`` property (None/"" when absent).
        headers: the AMQP headers table.
        raw: the body bytes (UTF-8 JSON).
        arrival_s: arrival time, UNIX seconds (the timestamp of last resort).
        amqp_timestamp: the AMQP ``timestamp`` property, UNIX seconds.
        max_body_bytes: larger bodies are rejected (``too_large``).

    Returns:
        A :class:`Decoded`, or a :class:`listener.envelope.Rejected` naming a
        reason of ``envelope.REJECT_REASONS`` (``too_large``, ``bad_utf8``,
        ``bad_json``).  Never raises.  A body that is not a JSON object is passed
        on: the consumer rejects it (``bad_msg``) and counts it.
    """
    if len(raw) > max_body_bytes:
        return Rejected("too_large", f"body of {len(raw)} bytes > {max_body_bytes}", message_id)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("bad_utf8", str(exc)[:120], message_id)
    try:
        amqp_body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejected("bad_json", str(exc)[:120], message_id)
    headers = headers or {}
    ts = sent_at_seconds(headers.get("sent-at"))
    if ts is None and isinstance(amqp_timestamp, (int, float)) and amqp_timestamp > 0:
        ts = float(amqp_timestamp)
    inner = unwrap_bridged(amqp_body)
    if inner is not None:
        fed_topic = inner["topic"] or topic
        msg = inner["msg"]
        inner_id = inner.get("msg_id")
        msg_id = message_id or (inner_id if isinstance(inner_id, str) else "")
        if ts is None:
            its = inner.get("timestamp")
            if isinstance(its, (int, float)) and not isinstance(its, bool):
                ts = float(its)
    else:
        fed_topic, msg, msg_id = topic, amqp_body, message_id or ""
    if not msg_id:
        msg_id = fallback_msg_id(topic, raw)
    schema = headers.get("fedora_messaging_schema")
    return Decoded(
        body={
            "topic": fed_topic,
            "msg": msg,
            "msg_id": msg_id,
            "timestamp": arrival_s if ts is None else ts,
            "i": 0,
            "username": None,
        },
        bridged=inner is not None,
        schema=schema if isinstance(schema, str) else "",
        amqp_body=amqp_body,
    )


def pick_users(
    decoded: Decoded,
    headers: Mapping[str, Any] | None,
    schema_users: Callable[[Decoded, Mapping[str, Any]], list[str] | None] | None = None,
) -> frozenset[str] | list[str] | None:
    """The users to count for a message, or None to let fedmsg.meta find them.

    Order: the ``fedora_messaging_user_*`` headers; else (not bridged) the
    schema's ``usernames`` when ``schema_users`` knows the schema and it declares
    usernames (an empty list means no users); else None.
    """
    users = header_users(headers)
    if users is not None:
        return users
    if decoded.bridged or schema_users is None:
        return None
    return schema_users(decoded, headers or {})


class SchemaUsers:
    """Users from installed fedora-messaging schema packages (``fedora.messages``).

    The entry points are listed once; a class is loaded on first use.  A schema
    "declares usernames" when its class overrides ``Message.usernames``.  Unknown
    schemas, classes that fail to load and ``usernames`` that raise give None
    (fedmsg.meta is asked instead); failures are counted in ``errors``.
    """

    def __init__(self) -> None:
        from importlib.metadata import entry_points

        from fedora_messaging.message import Message

        self._base = Message
        self._eps = {ep.name: ep for ep in entry_points(group="fedora.messages")}
        self._classes: dict[str, Any] = {}
        self.errors = 0

    @property
    def names(self) -> frozenset[str]:
        """The installed schema names."""
        return frozenset(self._eps)

    def _class(self, name: str) -> Any:
        if name in self._classes:
            return self._classes[name]
        cls = None
        ep = self._eps.get(name)
        if ep is not None:
            try:
                loaded = ep.load()
                if (
                    isinstance(loaded, type)
                    and issubclass(loaded, self._base)
                    and loaded.usernames is not self._base.usernames
                ):
                    cls = loaded
            except Exception as exc:  # a broken schema package
                self.errors += 1
                log.warning("cannot load schema %s: %s", name, exc)
        self._classes[name] = cls
        return cls

    def __call__(self, decoded: Decoded, headers: Mapping[str, Any]) -> list[str] | None:
        """The schema's usernames for a message, or None (see the class doc)."""
        cls = self._class(decoded.schema) if decoded.schema else None
        if cls is None:
            return None
        import pika

        try:
            props = pika.BasicProperties(headers=dict(headers))
            msg = cls(body=decoded.amqp_body, topic=decoded.body["topic"], properties=props)
            return [u for u in msg.usernames if isinstance(u, str)]
        except Exception as exc:  # a body that does not fit its schema
            self.errors += 1
            log.debug(
                "usernames of %s raised on %s: %s", decoded.schema, decoded.body["msg_id"], exc
            )
            return None


# -- connection settings ------------------------------------------------------


@dataclass(frozen=True)
class AmqpSettings:
    """Where and how to connect.

    Attributes:
        url: AMQP URL (``amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub``).
        ca_cert / certfile / keyfile: TLS files (``""``: system CAs, no client
            certificate).  With a client certificate, SASL EXTERNAL is used, as
            fedora-messaging does.
        bindings: routing keys bound on ``amq.topic`` (``#`` = every topic).
        queue: queue name; ``""`` = a fresh UUID per connection.
        prefetch_count: ``basic.qos`` prefetch, messages.
    """

    url: str
    ca_cert: str = ""
    certfile: str = ""
    keyfile: str = ""
    bindings: tuple[str, ...] = ("#",)
    queue: str = ""
    prefetch_count: int = PREFETCH_COUNT

    @classmethod
    def from_config(cls, cfg: Config) -> AmqpSettings:
        """Settings from the wallboard config; empty fields fall back to
        fedora-messaging's own config file (``$FEDORA_MESSAGING_CONF``, else
        ``/etc/fedora-messaging/config.toml``: its ``amqp_url`` and ``[tls]``),
        then to fedora-messaging's default ``amqp://`` (localhost, guest).

        Raises:
            listener.errors.ConfigError: fedora-messaging's config file is invalid.
        """
        url = cfg.amqp_url
        tls = {
            "ca_cert": cfg.amqp_ca_cert,
            "certfile": cfg.amqp_certfile,
            "keyfile": cfg.amqp_keyfile,
        }
        if not url:
            fm = _fedora_messaging_conf()
            url = str(fm.get("amqp_url") or "amqp://")
            # fedora-messaging's [tls] goes with its own URL only
            for key in tls:
                tls[key] = tls[key] or str((fm.get("tls") or {}).get(key) or "")
        return cls(
            url=url,
            bindings=tuple(cfg.amqp_bindings) or ("#",),
            queue=cfg.amqp_queue,
            ca_cert=tls["ca_cert"],
            certfile=tls["certfile"],
            keyfile=tls["keyfile"],
        )

    def parameters(self) -> Any:
        """The ``pika.URLParameters`` (TLS context, credentials, client properties).

        Raises:
            listener.errors.ConfigError: a bad URL or unreadable TLS files.
        """
        import pika

        from .errors import ConfigError

        try:
            params = pika.URLParameters(self.url)
        except Exception as exc:
            raise ConfigError(f"bad amqp_url {self.url!r}: {exc}") from exc
        params.client_properties = dict(CLIENT_PROPERTIES)
        if self.url.startswith("amqps:") or params.ssl_options is not None:
            # as fedora_messaging.twisted.service._configure_tls_parameters
            try:
                ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
                if self.ca_cert:
                    ctx.load_verify_locations(cafile=self.ca_cert)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.check_hostname = True
                if self.certfile and self.keyfile:
                    ctx.load_cert_chain(self.certfile, self.keyfile)
                    params.credentials = pika.credentials.ExternalCredentials()
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"AMQP TLS files: {exc}") from exc
            params.ssl_options = pika.SSLOptions(ctx, server_hostname=params.host)
        return params


def _fedora_messaging_conf() -> Mapping[str, Any]:
    from fedora_messaging import config as fm_config
    from fedora_messaging.exceptions import ConfigurationException

    from .errors import ConfigError

    try:
        if not fm_config.conf.loaded:
            fm_config.conf.load_config()
        return fm_config.conf
    except ConfigurationException as exc:
        raise ConfigError(f"fedora-messaging config: {exc}") from exc


def redact(url: str) -> str:
    """The URL without its password (for logs)."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in cred else f"{scheme}://{user}@{host}"


class Backoff:
    """Exponential reconnect delays with jitter: ``min_s``, doubling, capped at ``max_s``.

    Each delay is multiplied by a random factor in [1, 1 + ``jitter``] so many
    wallboards do not reconnect in step.  :meth:`reset` after a good session.
    """

    def __init__(self, min_s: float = 1.0, max_s: float = 60.0, jitter: float = 0.25) -> None:
        self.min_s, self.max_s, self.jitter = min_s, max_s, jitter
        self._next = min_s

    def next(self) -> float:
        """The next delay, seconds."""
        delay = self._next
        self._next = min(self.max_s, self._next * 2)
        return delay * (1 + random.uniform(0, self.jitter))

    def reset(self) -> None:
        """Start again from ``min_s``."""
        self._next = self.min_s


# -- the input --------------------------------------------------------------


@dataclass
class AmqpStats:
    """Counters of one AMQP input (messages unless noted).

    Attributes:
        received: deliveries handled (redeliveries included).
        redelivered: deliveries flagged ``redelivered`` by the broker.
        accepted: handed to the consumer and accepted (new, valid).
        acked / nacked: acknowledged after counting / returned to the queue
            (the consumer's pending buffer overflowed).
        rejected: by reason, before the consumer (``bad_json``...).
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


class SessionClosed(Exception):
    """The AMQP connection or channel closed during a handshake step."""


class AmqpInput:
    """Consumes from an AMQP broker into a :class:`listener.consumer.Consumer`.

    Args:
        cfg: settings (``max_body_bytes``, ``flush_interval_s`` = ack cadence).
        consumer: where messages go (its ``handle_body`` and ``flush``).
        settings: where to connect; default :meth:`AmqpSettings.from_config`.
        backoff: reconnect delays; default 1 s doubling to 60 s.
        schema_users: users from installed schemas; default :class:`SchemaUsers`.
    """

    def __init__(
        self,
        cfg: Config,
        consumer: Consumer,
        settings: AmqpSettings | None = None,
        backoff: Backoff | None = None,
        schema_users: Callable[[Decoded, Mapping[str, Any]], list[str] | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.consumer = consumer
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

    # -- per message (sync, never raises) ---------------------------------

    def _on_message(self, channel: Any, method: Any, properties: Any, raw: bytes) -> None:
        if channel is not self._channel:
            return  # a late delivery on a dead channel: the broker redelivers it
        self.stats.received += 1
        if method.redelivered:
            self.stats.redelivered += 1
        try:
            self.handle(method.routing_key or "", properties, raw, time.time())
        except Exception:  # never let one message stop the input
            self.stats.rejected["internal_error"] += 1
            log.exception("internal error on AMQP message %s", properties.message_id)
        self._last_tag = method.delivery_tag

    def handle(self, topic: str, properties: Any, raw: bytes, now: float) -> bool:
        """Decode one message and hand it to the consumer; True if accepted.

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
        c = self.consumer
        if isinstance(decoded, Rejected):
            self.stats.rejected[decoded.reason] += 1
            c.stats.received += 1
            c.stats.rejected[decoded.reason] += 1
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
        validator, c.validator = c.validator, None  # see the module doc
        try:
            ok = c.handle_body(decoded.body, now=now, users=users, blink=True)
        finally:
            c.validator = validator
        if ok:
            self.stats.accepted += 1
            self.stats.users_from[source] += 1
        return ok

    # -- acknowledgements ----------------------------------------------------

    def _written(self, seq: int) -> bool:
        """True when the first ``seq`` accepted messages left the pending buffer and
        no flush is in flight (pending is FIFO; ``accepted - len(pending)`` = removed)."""
        c = self.consumer
        removed = c.stats.accepted - len(c.pending)
        return removed >= seq and getattr(c, "_retry_batch", None) is None

    async def ack_counted(self, flush: bool = True) -> int:
        """Acknowledge every delivery whose message is now counted in Redis.

        Flushes the consumer (``flush``) until everything accepted so far is
        written, then ``basic.ack(multiple=True)`` up to the newest delivery tag
        handled before.  If the consumer's pending buffer overflowed meanwhile (a
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
        c = self.consumer
        seq = c.stats.accepted
        overflow_now = c.stats.pending_overflow
        while not self._written(seq):
            if not flush:
                return 0
            await c.flush()
        if channel is not self._channel or not channel.is_open:
            return 0  # the tags died with their channel: the broker redelivers
        n = tag - self._acked_tag
        if c.stats.pending_overflow != self._overflow_mark:
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
        raise SessionClosed(f"{what}: {reason}")

    def _bind(self, channel: Any, key: str, callback: Callable[..., None]) -> None:
        channel.queue_bind(
            queue=self.queue_name, exchange=EXCHANGE, routing_key=key, callback=callback
        )

    async def _session(self) -> None:
        """One connection: open, declare, bind, consume until it closes."""
        from pika.adapters.asyncio_connection import AsyncioConnection

        loop = asyncio.get_running_loop()
        opened: asyncio.Future[Any] = loop.create_future()
        closed: asyncio.Future[Any] = loop.create_future()
        self._closed = closed

        def on_open(conn: Any) -> None:
            if not opened.done():
                opened.set_result(conn)

        def on_open_error(conn: Any, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(SessionClosed(f"connect failed: {exc!r}"))
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
            self._overflow_mark = self.consumer.stats.pending_overflow
            self._consumer_tag = channel.basic_consume(
                queue=self.queue_name, on_message_callback=self._on_message, auto_ack=False
            )
            self.stats.connects += 1
            self.stats.connected = True
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
            self.stats.connected = False
            self._channel = None
            if ack_task is not None:
                ack_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ack_task
            if not (conn.is_closed or conn.is_closing):
                with contextlib.suppress(Exception):
                    conn.close()
            if not closed.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(closed), 5.0)

    async def run(self) -> None:
        """Consume until :meth:`stop`, reconnecting with backoff.  Never raises for a
        bad message or a lost connection."""
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("AMQP session to %s failed: %s", redact(self.settings.url), exc)
            if self._stopping:
                break
            if time.monotonic() - started > 30:
                self.backoff.reset()
            delay = self.backoff.next()
            self.stats.reconnects += 1
            self.consumer.stats.bus_reconnects += 1
            log.info("AMQP reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    def stop(self) -> None:
        """Stop receiving (``basic.cancel``); delivered messages can still be acked."""
        self._stopping = True
        ch = self._channel
        if ch is not None and ch.is_open and self._consumer_tag:
            with contextlib.suppress(Exception):
                ch.basic_cancel(self._consumer_tag)

    def health_fields(self) -> dict[str, Any]:
        """Health fields recorded in Redis ``P:meta`` beside the consumer's:
        ``listener_amqp_connected`` (0/1), ``listener_amqp_received``,
        ``listener_amqp_acked``, ``listener_amqp_reconnects`` (counts)."""
        return {
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
        if conn is not None and not (conn.is_closed or conn.is_closing):
            with contextlib.suppress(Exception):
                conn.close()
            if closed is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(closed), timeout_s)


# -- publishing (tests, the demo) ---------------------------------------------

_publisher_lock = threading.Lock()
_publisher_url: str | None = None


def configure_publisher(amqp_url: str) -> None:
    """Point fedora-messaging's publish API at ``amqp_url`` (once per process).

    fedora-messaging keeps one global config and one Twisted publisher service per
    process; its TLS settings come from its own config file.

    Raises:
        ValueError: the publisher already points at another URL.
    """
    global _publisher_url
    from fedora_messaging import config as fm_config

    with _publisher_lock:
        if _publisher_url == amqp_url:
            return
        if _publisher_url is not None:
            raise ValueError(f"fedora-messaging already publishes to {redact(_publisher_url)}")
        if not fm_config.conf.loaded:
            fm_config.conf.load_config()
        fm_config.conf["amqp_url"] = amqp_url
        _publisher_url = amqp_url


def bridged_message(body: Mapping[str, Any]) -> Any:
    """A fedora-messaging ``Message`` carrying a whole fedmsg envelope, as
    fedmsg-migration-tools' ``zmq_to_amqp`` bridge publishes it (AMQP id =
    ``msg_id``, routing key = ``topic``).

    Raises:
        KeyError: ``body`` has no ``topic``.
    """
    from fedora_messaging.message import Message

    message = Message(body=dict(body), topic=body["topic"])
    if isinstance(body.get("msg_id"), str) and body["msg_id"]:
        message.id = body["msg_id"]
    return message


def publish_replay(
    amqp_url: str,
    bodies: Iterable[Mapping[str, Any]],
    rate: float | None = None,
    loop: bool = False,
    count: int | None = None,
    stop: threading.Event | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Publish fedmsg bodies to ``amq.topic`` as bridged messages, with
    fedora-messaging's publish API (each publish waits for the broker's confirm).

    Args:
        amqp_url: the broker (``amqp://guest:guest@127.0.0.1:5672/%2F``).
        bodies: fedmsg envelopes (``listener.replay.wire_body`` shape).
        rate: messages per second; None or 0: as fast as the broker confirms.
        loop: start again after the last body (fresh ``-rN`` msg_ids, timestamps
            set to the send time), as ``listener.replay.schedule`` does.
        count: stop after this many (None: one pass, or forever with ``loop``).
        stop: set it to stop early (checked between messages).
        timeout_s: longest wait for one confirm, seconds.

    Returns:
        Messages published.

    Raises:
        fedora_messaging.exceptions.PublishException: the broker refused a
            message or did not confirm it in ``timeout_s``.
        ValueError: see :func:`configure_publisher`.
    """
    from fedora_messaging import api

    from .replay import schedule, wire_body

    configure_publisher(amqp_url)
    items = [wire_body(dict(b)) for b in bodies]
    sent = 0
    for at, body in schedule(items, rate or None, None, loop, count, rebase_time=True):
        if stop is not None and stop.is_set():
            break
        delay = at - time.time()
        if delay > 0:
            if stop is not None:
                if stop.wait(delay):
                    break
            else:
                time.sleep(delay)
        api.publish(bridged_message(body), timeout=int(max(1, timeout_s)))
        sent += 1
    return sent


def iter_bodies(path: str | None) -> Iterator[dict[str, Any]]:
    """Bodies of a JSONL/datagrepper file, or fedmsg_meta's shipped examples."""
    from .examples import builtin_examples, load_file, unwrap_record

    if path:
        for rec in load_file(path):
            yield unwrap_record(rec)
    else:
        for ex in builtin_examples():
            yield ex.body


# -- CLI ------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register ``amqp-replay``: publish recorded messages to an AMQP broker."""
    p = sub.add_parser(
        "amqp-replay",
        help="publish recorded real messages to an AMQP broker (fedora-messaging)",
        description="Publish fedmsg messages to amq.topic as bridged fedora-messaging "
        "messages (the whole envelope as body, AMQP id = msg_id).",
    )
    p.add_argument(
        "--amqp-url",
        default=os.environ.get(
            "FEDMSG_WALLBOARD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"
        ),
        help="broker URL (default amqp://guest:guest@127.0.0.1:5672/%%2F)",
    )
    p.add_argument("--file", help="JSONL or datagrepper page (default: fedmsg_meta's examples)")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (0: max)")
    p.add_argument("--loop", action="store_true", help="replay forever with fresh msg_ids")
    p.add_argument("--count", type=int, help="stop after N messages")
    p.add_argument("--timeout", type=float, default=30.0, help="longest wait for a confirm, s")
    p.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    """``amqp-replay``: exit 0 when every message was confirmed, 69 if the broker
    could not be reached, 2 for an unreadable input file."""
    from fedora_messaging.exceptions import ConnectionException, PublishException

    try:
        bodies = list(iter_bodies(args.file))
    except Exception as exc:
        log.error("cannot read messages: %s", exc)
        return 2
    try:
        n = publish_replay(
            args.amqp_url, bodies, args.rate, args.loop, args.count, timeout_s=args.timeout
        )
    except (ConnectionException, PublishException) as exc:
        log.error("publishing to %s failed: %s", redact(args.amqp_url), exc)
        return 69
    log.info("published %d messages to %s", n, redact(args.amqp_url))
    return 0
