"""AMQP message -> fedmsg body, and who it is about.

Wire format (fedora-messaging docs, "Message Format"): the AMQP routing key is
the topic; the body is a UTF-8 JSON object; headers ``sent-at`` (ISO 8601 with
UTC offset), ``fedora_messaging_schema`` (entry point name of the schema class),
``fedora_messaging_severity`` and one ``fedora_messaging_user_<name>`` (value
``true``) per user the message is about; the AMQP ``message_id`` is a UUID.

Each message becomes a fedmsg-shaped body ``{"topic", "msg", "msg_id",
"timestamp", "i": 0, "username": None}`` (:func:`to_fedmsg`):

* ``msg_id`` is the AMQP message id (``amqp-<sha1 of topic+body>`` if missing, so
  a redelivery is still de-duplicated); ``timestamp`` the ``sent-at`` header in
  UNIX seconds (else the AMQP ``timestamp`` property, else arrival time).
* Bridged fedmsg messages (fedmsg-migration-tools' ``zmq_to_amqp`` publishes the
  whole fedmsg envelope as the body, with the AMQP id set to its ``msg_id``) are
  unwrapped: topic and msg come from the innermost envelope (wrappers that nest
  a whole envelope under ``msg`` are unwrapped too).
* Users (:func:`pick_users`): the ``fedora_messaging_user_*`` headers when there
  are any; else the schema's ``usernames`` when its package is installed and the
  schema declares them (:class:`listener.inputs.amqp.schemas.SchemaUsers`); else
  ``None``: fedmsg.meta reads them from the body, as for ZeroMQ.
"""

from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from listener.core.envelope import Rejected

#: Header prefix of the users a message is about (fedora-messaging wire format).
USER_HEADER = "fedora_messaging_user_"
#: Deepest nesting of bridged envelopes unwrapped.
MAX_UNWRAP = 4


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
    """One AMQP message as the intake takes it.

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
    """Decode one AMQP message into the fedmsg body the intake counts.

    Args:
        topic: the routing key.
        message_id: the AMQP ``message_id`` property (None/"" when absent).
        headers: the AMQP headers table.
        raw: the body bytes (UTF-8 JSON).
        arrival_s: arrival time, UNIX seconds (the timestamp of last resort).
        amqp_timestamp: the AMQP ``timestamp`` property, UNIX seconds.
        max_body_bytes: larger bodies are rejected (``too_large``).

    Returns:
        A :class:`Decoded`, or a :class:`listener.core.envelope.Rejected` naming a
        reason of ``envelope.REJECT_REASONS`` (``too_large``, ``bad_utf8``,
        ``bad_json``).  Never raises.  A body that is not a JSON object is passed
        on: the intake rejects it (``bad_msg``) and counts it.
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
