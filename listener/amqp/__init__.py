"""The AMQP bus input (fedora-messaging), beside the ZeroMQ one.

Fedora retired its public fedmsg ZeroMQ bus; its live bus is RabbitMQ, written
and read with ``fedora-messaging`` (public broker
``amqps://rabbitmq.fedoraproject.org/%2Fpublic_pubsub``, see ``docs/AMQP.md``).
This package subscribes there and feeds the same :class:`listener.consumer.Consumer`
as :mod:`listener.bus`, so counters, metrics and the page are the same.

========================  ======================================================
:mod:`.wire`              PURE  AMQP message -> fedmsg body; users from headers
:mod:`.schemas`           users from installed fedora-messaging schema packages
:mod:`.settings`          URL, TLS, bindings, queue, prefetch; reconnect backoff
:mod:`.input`             I/O   :class:`AmqpInput`: consume, count, then ack
:mod:`.publish`           publish with fedora-messaging; ``amqp-replay``
========================  ======================================================

Importing this package imports neither pika nor fedora-messaging (the CLI
imports it for every command); they are loaded when first used.
"""

from __future__ import annotations

from .input import DEAD_AFTER_S, EXCHANGE, QUIET_AFTER_S, AmqpInput, AmqpStats, SessionClosed
from .publish import (
    add_parser,
    bridged_message,
    configure_publisher,
    iter_bodies,
    publish_replay,
    run_replay,
)
from .schemas import SchemaUsers
from .settings import PREFETCH_COUNT, AmqpSettings, Backoff, redact
from .wire import (
    Decoded,
    fallback_msg_id,
    header_users,
    is_envelope,
    pick_users,
    sent_at_seconds,
    to_fedmsg,
    unwrap_bridged,
)

#: Values of the ``bus`` setting / ``--bus``.
BUS_CHOICES = ("zmq", "amqp", "both")

__all__ = [
    "BUS_CHOICES",
    "DEAD_AFTER_S",
    "EXCHANGE",
    "PREFETCH_COUNT",
    "QUIET_AFTER_S",
    "AmqpInput",
    "AmqpSettings",
    "AmqpStats",
    "Backoff",
    "Decoded",
    "SchemaUsers",
    "SessionClosed",
    "add_parser",
    "bridged_message",
    "configure_publisher",
    "fallback_msg_id",
    "header_users",
    "is_envelope",
    "iter_bodies",
    "pick_users",
    "publish_replay",
    "redact",
    "run_replay",
    "sent_at_seconds",
    "to_fedmsg",
    "unwrap_bridged",
]
