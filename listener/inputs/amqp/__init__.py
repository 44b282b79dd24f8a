"""The AMQP bus input (fedora-messaging), beside the ZeroMQ one.

Fedora retired its public fedmsg ZeroMQ bus; its live bus is RabbitMQ, written
and read with ``fedora-messaging`` (public broker
``amqps://rabbitmq.fedoraproject.org/%2Fpublic_pubsub``, see ``docs/AMQP.md``).
This package subscribes there and feeds the same :class:`listener.core.intake.Intake`
as :mod:`listener.inputs.zmq`, so counters, metrics and the page are the same.

========================  ======================================================
:mod:`.wire`              AMQP message -> fedmsg body; users from headers
:mod:`.schemas`           users from installed fedora-messaging schema packages
:mod:`.settings`          URL, TLS, bindings, queue, prefetch; reconnect backoff
:mod:`.input`             :class:`AmqpInput`: consume, count, then ack
========================  ======================================================

Publishing (``amqp-replay``) is a tool: :mod:`listener.tools.amqp_replay`.
Importing this package imports neither pika nor fedora-messaging; they are loaded
when first used.
"""

from __future__ import annotations

from listener.inputs.amqp.input import (
    DEAD_AFTER_S,
    EXCHANGE,
    QUIET_AFTER_S,
    AmqpInput,
    AmqpStats,
    SessionClosed,
)
from listener.inputs.amqp.schemas import SchemaUsers
from listener.inputs.amqp.settings import (
    FEDORA_URL,
    FEDORA_VHOST,
    PREFETCH_COUNT,
    AmqpSettings,
    Backoff,
    fedora_files,
    redact,
)
from listener.inputs.amqp.wire import (
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
BUS_CHOICES = ("auto", "zmq", "amqp", "both", "fedora")

__all__ = [
    "BUS_CHOICES",
    "DEAD_AFTER_S",
    "EXCHANGE",
    "FEDORA_URL",
    "FEDORA_VHOST",
    "PREFETCH_COUNT",
    "QUIET_AFTER_S",
    "AmqpInput",
    "AmqpSettings",
    "AmqpStats",
    "Backoff",
    "Decoded",
    "SchemaUsers",
    "SessionClosed",
    "fallback_msg_id",
    "fedora_files",
    "header_users",
    "is_envelope",
    "pick_users",
    "redact",
    "sent_at_seconds",
    "to_fedmsg",
    "unwrap_bridged",
]
