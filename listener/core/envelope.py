"""Decode fedmsg wire frames into envelopes.

The fedmsg wire format (fedmsg docs, ``fedmsg.core.FedMsgContext.publish`` and
``fedmsg.encoding``): a ZeroMQ multipart message of exactly two frames,

1. the full topic, UTF-8, e.g. ``org.fedoraproject.prod.buildsys.build.state.change``;
2. a JSON object, UTF-8: ``{"topic", "msg", "msg_id", "timestamp", "i",
   "username", ...}`` plus, when signed, ``crypto``, ``signature`` and
   ``certificate``.

:func:`decode_frames` never raises on bad input: it returns a :class:`Rejected`
naming one reason from :data:`REJECT_REASONS`, so the intake counts and skips it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

#: Every reason a frame set can be rejected for, as counted in metrics.
REJECT_REASONS = (
    "frame_count",  # not exactly two frames
    "too_large",  # body over the size limit
    "bad_utf8",  # topic or body is not UTF-8
    "bad_json",  # body is not JSON
    "not_object",  # body JSON is not an object
    "topic_mismatch",  # topic frame differs from the body's topic
    "bad_msg",  # msg missing, null, or not an object
    "bad_topic",  # topic longer than MAX_TOPIC_BYTES in UTF-8
    "bad_msg_id",  # msg_id longer than MAX_MSG_ID_CHARS
    "bad_timestamp",  # timestamp missing or not a finite number
    "unsigned",  # validate_signatures is on and the message carries no signature
    "bad_signature",  # signature validation failed (forged, tampered, revoked)
    "too_old",  # older than the longest window
)

#: Longest topic accepted, bytes of UTF-8: AMQP 0-9-1's limit on a routing key (a
#: ``shortstr``, 255 bytes), which fedora-messaging topics are.  Fedora's longest
#: known topic has 78 (``org.centos.prod.ci.pipeline.allpackages-build...``); a
#: longer one would become a Redis hash field and a bar on the wall for 7 days.
MAX_TOPIC_BYTES = 255

#: Longest msg_id accepted, characters.  fedmsg's are ``<year>-<uuid4>`` (41),
#: fedora-messaging's a uuid (36); a longer one would be kept in the dedupe
#: memory and Redis' msg_id sets, and sent in every blink and the ticker.
MAX_MSG_ID_CHARS = 255

#: Largest body accepted, in bytes (fedmsg messages are a few KiB; koji's biggest
#: are ~100 KiB).
DEFAULT_MAX_BODY_BYTES = 1 << 20


def topic_too_long(topic: str) -> bool:
    """True when ``topic`` has more than :data:`MAX_TOPIC_BYTES` bytes of UTF-8 (it
    could not be an AMQP routing key).  Encodes only a non-ASCII topic (``isascii``
    is a flag check): the per-message path stays a length comparison."""
    if len(topic) > MAX_TOPIC_BYTES:
        return True
    return not topic.isascii() and len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES


class Envelope(NamedTuple):
    """One fedmsg message, as published.  Immutable (a named tuple: built once per
    message, and cheaper to build than a frozen dataclass).

    Attributes:
        topic: the full topic (``org.fedoraproject.prod.bodhi.update.comment``).
        msg_id: the message's id (``2017-<uuid>``); ``""`` when the publisher sent none.
        timestamp: publication time, UNIX seconds (UTC), finite float.
        i: the publisher's sequence number (starts at 1 per publishing process),
            0 when absent.
        username: the publishing process's Unix account (e.g. ``apache``): NOT a
            user of the message.
        msg: the payload object.
        body: the whole decoded body (what fedmsg.meta processors take); left out
            of ``repr``.
    """

    topic: str
    msg_id: str
    timestamp: float
    i: int
    username: str | None
    msg: dict[str, Any]
    body: dict[str, Any]

    def __repr__(self) -> str:
        return (
            f"Envelope(topic={self.topic!r}, msg_id={self.msg_id!r}, "
            f"timestamp={self.timestamp!r}, i={self.i!r}, username={self.username!r}, "
            f"msg={self.msg!r})"
        )


_new_tuple = tuple.__new__


@dataclass(frozen=True)
class Rejected:
    """A frame set that was not counted.

    Attributes:
        reason: one of :data:`REJECT_REASONS`.
        detail: a short human explanation (never the whole body).
        msg_id: the message's id when it could be read, else ``None``.
        body: the decoded body when it was a JSON object (the bus still follows its
            publisher's sequence number ``i``: a message that arrived and was
            rejected is not a gap); ``None`` otherwise.  Left out of ``repr``.
    """

    reason: str
    detail: str
    msg_id: str | None = None
    body: dict[str, Any] | None = field(default=None, repr=False, compare=False)


def decode_frames(
    frames: list[bytes], max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> Envelope | Rejected:
    """Decode one ZeroMQ multipart message in the fedmsg wire format.

    Args:
        frames: the frames as received (``recv_multipart()``).
        max_body_bytes: bodies larger than this are rejected (``too_large``).

    Returns:
        An :class:`Envelope`, or a :class:`Rejected` with its reason.  Never raises.
    """
    if len(frames) != 2:
        return Rejected("frame_count", f"{len(frames)} frames, expected 2")
    topic_b, body_b = frames
    if len(body_b) > max_body_bytes:
        return Rejected("too_large", f"body of {len(body_b)} bytes > {max_body_bytes}")
    try:
        topic = topic_b.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("bad_utf8", str(exc)[:120])
    try:
        body = orjson.loads(body_b)  # orjson rejects invalid UTF-8 itself
    except orjson.JSONDecodeError as exc:
        try:  # tell bad UTF-8 from bad JSON only on this (rare) path
            body_b.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Rejected("bad_utf8", str(uexc)[:120])
        return Rejected("bad_json", str(exc)[:120])
    result = envelope_from_dict(body)
    if isinstance(result, Rejected):
        return result
    if result.topic != topic:
        return Rejected(
            "topic_mismatch",
            f"frame topic {topic[:80]!r} != body topic",
            result.msg_id,
            result.body,
        )
    return result


def envelope_from_dict(body: Any) -> Envelope | Rejected:
    """Validate a decoded fedmsg body (from the bus, a JSONL file or datagrepper).

    Args:
        body: the decoded JSON value.  datagrepper's ``/raw`` entries are accepted
            too (they carry the same fields, plus ``users``/``packages``).

    Returns:
        An :class:`Envelope`, or a :class:`Rejected`.  Never raises.
    """
    if not isinstance(body, dict):
        return Rejected("not_object", f"body is {type(body).__name__}")
    get = body.get
    raw_id = get("msg_id")
    msg_id = raw_id if isinstance(raw_id, str) else ""
    if len(msg_id) > MAX_MSG_ID_CHARS:
        return Rejected(
            "bad_msg_id",
            f"msg_id of {len(msg_id)} characters > {MAX_MSG_ID_CHARS}",
            msg_id[:60] + "...",
            body,
        )
    topic = get("topic")
    if not isinstance(topic, str) or not topic:
        return Rejected("bad_msg", "topic missing or not a string", msg_id or None, body)
    if topic_too_long(topic):
        return Rejected(
            "bad_topic",
            f"topic of {len(topic.encode('utf-8', 'surrogatepass'))} bytes > {MAX_TOPIC_BYTES}",
            msg_id or None,
            body,
        )
    msg = get("msg")
    if not isinstance(msg, dict):
        return Rejected("bad_msg", f"msg is {type(msg).__name__}", msg_id or None, body)
    ts = get("timestamp")
    # exact types first (what JSON gives); bool is an int but never a timestamp
    if type(ts) is float:
        if not math.isfinite(ts):
            return Rejected("bad_timestamp", f"timestamp is {ts!r}"[:80], msg_id or None, body)
    elif isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return Rejected("bad_timestamp", f"timestamp is {ts!r}"[:80], msg_id or None, body)
    seq = get("i")
    i = seq if type(seq) is int else 0
    user = get("username")
    return _new_tuple(
        Envelope,
        (topic, msg_id, float(ts), i, user if isinstance(user, str) else None, msg, body),
    )


def encode_frames(body: dict[str, Any]) -> list[bytes]:
    """Encode a fedmsg body as the two wire frames ``[topic, json]``.

    Raises:
        KeyError: when ``body`` has no ``topic``.
    """
    return [body["topic"].encode("utf-8"), orjson.dumps(body)]


#: Environment tokens of a topic ``<reverse domain>.<environment>.<service>.<event>``
#: (fedmsg's ``environment``: Fedora ``prod``/``stg``/``dev``, CentOS CI ``stage``).
ENVIRONMENTS = frozenset({"prod", "stg", "stage", "dev"})


@functools.lru_cache(maxsize=4096)
def category_of(topic: str) -> str:
    """The topic's category: the service that published it (one rule, docs/AMQP.md).

    1. A ``VirtualTopic`` topic (CI messages relayed from ActiveMQ): its third
       token, as datanommer's ``Message.get_category``
       (``/topic/VirtualTopic.eng.ci.koji-build.test.complete`` -> ``ci``).
    2. Otherwise the token after the first environment token (:data:`ENVIRONMENTS`)
       among the second to fourth tokens: ``org.fedoraproject.prod.buildsys.tag``
       -> ``buildsys``, ``io.pagure.prod.pagure.issue.new`` -> ``pagure``,
       ``org.release-monitoring.prod.anitya.project.version.update.v2`` ->
       ``anitya``, ``org.centos.stage.ci.pipeline.image.running`` -> ``ci``.  Where
       the environment is the third token (every topic of Fedora's bus, old and
       today's) this is datanommer's ``topic.split(".")[3]``, so the categories
       match datagrepper's.
    3. Otherwise (no environment token, nothing after it, or an empty token)
       ``"Unclassified"``: a fragment of the event (``complete``, ``update``) is
       never taken for a service.

    Cached per topic (a bus has a few hundred topics).
    """
    index = category_index(topic)
    if index is None:
        return "Unclassified"
    return topic.split(".")[index] or "Unclassified"


def category_index(topic: str) -> int | None:
    """The position of the category's token in ``topic.split(".")``, or None when
    the topic has none (:func:`category_of`'s rule)."""
    parts = topic.split(".")
    if "VirtualTopic" in topic:
        return 2 if len(parts) > 2 else None
    for i in range(1, min(4, len(parts) - 1)):
        if parts[i] in ENVIRONMENTS:
            return i + 1
    return None
