"""Publishing messages with fedora-messaging (``amqp-replay``, tests, demo).

Two shapes:

* *bridged* fedmsg messages, as fedmsg-migration-tools' ``zmq_to_amqp`` bridge
  published them: the whole fedmsg envelope as the body, the AMQP message id set
  to its ``msg_id``, the routing key its topic;
* *native* messages of today's bus (``--native FILE``): records of the
  today's-bus corpus (JSONL ``{"topic", "body", "headers", "id", "sent_at",
  "schema"}``, ``shared/corpus/amqp/README.md``) published as their publisher
  did: the body alone, the recorded AMQP headers (``fedora_messaging_user_*``,
  ``fedora_messaging_rpm_*``...), ``fedora_messaging_schema`` (the record's
  ``schema`` when the header is missing and the name is a registered schema),
  ``sent-at`` set to the send time (:func:`native_message`).

:func:`bridge_native` wraps a native record as fedmsg-migration-tools'
``amqp_to_zmq`` bridge put it on the ZeroMQ bus.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import orjson

from listener.core.envelope import MAX_TOPIC_BYTES, topic_too_long
from listener.core.errors import InputError
from listener.inputs.amqp.settings import redact
from listener.runtime.options import positive_int
from listener.tools.examples import builtin_examples, load_file, unwrap_record
from listener.tools.replay import schedule, wire_body

log = logging.getLogger(__name__)

_publisher_lock = threading.Lock()
_publisher_url: str | None = None


def configure_publisher(amqp_url: str) -> None:
    """Point fedora-messaging's publish API at ``amqp_url`` (once per process).

    fedora-messaging keeps one global config and one Twisted publisher service per
    process; its TLS settings (``[tls]``: client certificate, SASL EXTERNAL) come
    from its own config file (``$FEDORA_MESSAGING_CONF``).  ``""``: that file's
    ``amqp_url``.

    Raises:
        ValueError: the publisher already points at another URL.
    """
    global _publisher_url
    # imported here: fedora_messaging is slow to import; only what uses it pays
    from fedora_messaging import config as fm_config

    with _publisher_lock:
        if _publisher_url == amqp_url:
            return
        if _publisher_url is not None:
            raise ValueError(f"fedora-messaging already publishes to {redact(_publisher_url)}")
        if not fm_config.conf.loaded:
            fm_config.conf.load_config()
        if amqp_url:
            fm_config.conf["amqp_url"] = amqp_url
        _publisher_url = amqp_url


@dataclass(frozen=True)
class Pace:
    """How a publish runs: its rate, its length and its limits.

    Attributes:
        rate: messages per second; None or 0: as fast as the broker confirms.
        loop: start again after the last message (fresh ``r<N>`` ids).
        count: stop after this many (None: one pass, or forever with ``loop``).
        stop: set it to stop early (checked between messages).
        timeout_s: longest wait for one confirm, seconds.
        run_id: a suffix for every msg_id of this run (``schedule``'s ``run_id``).
    """

    rate: float | None = None
    loop: bool = False
    count: int | None = None
    stop: threading.Event | None = None
    timeout_s: float = 30.0
    run_id: str = ""

    def stopped(self) -> bool:
        """Whether :attr:`stop` is set."""
        return self.stop is not None and self.stop.is_set()

    def sleep_until(self, at: float) -> bool:
        """Wait until ``at`` (UNIX s); False when :attr:`stop` was set meanwhile."""
        delay = at - time.time()
        if delay > 0:
            if self.stop is None:
                time.sleep(delay)
            elif self.stop.wait(delay):
                return False
        return True

    def publish(self, message: Any) -> None:
        """fedora-messaging's ``api.publish`` of ``message``, waiting at most
        :attr:`timeout_s` (at least 1 s) for the broker's confirm.

        Raises:
            fedora_messaging.exceptions.PublishException: refused or not confirmed.
        """
        # imported here: fedora_messaging is slow to import; only what uses it pays
        from fedora_messaging import api

        api.publish(message, timeout=int(max(1, self.timeout_s)))


def bridged_message(body: Mapping[str, Any]) -> Any:
    """A fedora-messaging ``Message`` carrying a whole fedmsg envelope, as
    fedmsg-migration-tools' ``zmq_to_amqp`` bridge publishes it (AMQP id =
    ``msg_id``, routing key = ``topic``).

    Raises:
        KeyError: ``body`` has no ``topic``.
    """
    # imported here: fedora_messaging is slow to import; only what uses it pays
    from fedora_messaging.message import Message

    message = Message(body=dict(body), topic=body["topic"])
    if isinstance(body.get("msg_id"), str) and body["msg_id"]:
        message.id = body["msg_id"]
    return message


def publish_replay(
    amqp_url: str, bodies: Iterable[Mapping[str, Any]], pace: Pace | None = None
) -> int:
    """Publish fedmsg bodies to ``amq.topic`` as bridged messages, with
    fedora-messaging's publish API (each publish waits for the broker's confirm).

    Args:
        amqp_url: the broker (``amqp://guest:guest@127.0.0.1:5672/%2F``).
        bodies: fedmsg envelopes (``listener.tools.replay.wire_body`` shape).
        pace: rate, loop, count, stop, confirm timeout and run id (:class:`Pace`;
            default: one pass as fast as the broker confirms).  A ``loop`` starts
            again after the last body (fresh ``-rN`` msg_ids, timestamps set to the
            send time), as ``listener.tools.replay.schedule`` does.

    Returns:
        Messages published.  A body whose topic is not a routing key (not a
        string, or more than 255 bytes of UTF-8) is skipped with a warning.

    Raises:
        fedora_messaging.exceptions.PublishException: the broker refused a
            message or did not confirm it in ``pace.timeout_s``.
        ValueError: see :func:`configure_publisher`.
    """
    pace = pace or Pace()
    configure_publisher(amqp_url)
    items = []
    for b in bodies:
        topic = b.get("topic")
        if not isinstance(topic, str) or topic_too_long(topic):
            # not a routing key: pika raised ShortStringTooLong mid-replay
            log.warning(
                "skipped msg_id=%s: its topic is not a routing key (a string of at "
                "most %d bytes of UTF-8)",
                b.get("msg_id"),
                MAX_TOPIC_BYTES,
            )
            continue
        items.append(wire_body(dict(b)))
    sent = 0
    for at, body in schedule(
        items, pace.rate or None, None, pace.loop, pace.count, rebase_time=True, run_id=pace.run_id
    ):
        if pace.stopped() or not pace.sleep_until(at):
            break
        pace.publish(bridged_message(body))
        sent += 1
    return sent


# -- native messages of today's bus ------------------------------------------------

#: Namespace of the message ids made for corpus records without one (uuid5).
NATIVE_ID_NAMESPACE = uuid.UUID("6f0e4a38-95a5-4a0f-9b3c-4f1f7f3d1a18")


def load_native(path: str | Path) -> list[dict[str, Any]]:
    """The records of a today's-bus JSONL file (``{"topic", "body", "headers",
    "id", ...}`` a line; ``shared/corpus/amqp/README.md``).

    Raises:
        listener.core.errors.InputError: unreadable file, a line that is not a
            JSON object with a ``topic`` string and a ``body``, or no record.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not JSON: {exc}") from exc
        if not (isinstance(rec, dict) and isinstance(rec.get("topic"), str) and "body" in rec):
            raise InputError(f"{path}:{n}: not a today's-bus record (topic, body, headers)")
        records.append(rec)
    if not records:
        raise InputError(f"{path}: no record")
    return records


def native_id(rec: Mapping[str, Any], index: int, run_id: str = "") -> str:
    """The AMQP message id of a record: its ``id``, else a uuid5 of its place and
    topic (stable: a second replay is de-duplicated); ``run_id`` makes it new."""
    mid = rec.get("id")
    if not isinstance(mid, str) or not mid:
        mid = str(uuid.uuid5(NATIVE_ID_NAMESPACE, f"{index}:{rec['topic']}"))
    return f"{mid}-{run_id}" if run_id else mid


def schema_names() -> dict[str, str]:
    """``{name or "module:Class": registered schema name}`` of the installed
    schema packages (entry points ``fedora.messages``)."""
    names = {}
    for ep in entry_points(group="fedora.messages"):
        names[ep.name] = ep.name
        names.setdefault(ep.value, ep.name)
        # the corpus may name a class by its package and class only
        module, _, cls = ep.value.partition(":")
        names.setdefault(f"{module.split('.')[0]}:{cls}", ep.name)
    return names


def native_headers(
    rec: Mapping[str, Any], sent_at: datetime.datetime, schemas: Mapping[str, str]
) -> dict[str, Any]:
    """The AMQP headers a record is published with: its recorded ones, its
    ``schema`` as ``fedora_messaging_schema`` when missing and registered (a
    fedora-messaging publisher always sends it; ``schemas`` from
    :func:`schema_names`, a ``module:Class`` name is mapped to its registered name),
    ``sent-at`` = ``sent_at`` (ISO 8601, seconds), and ``fedora_messaging_severity``
    20 (INFO) if missing."""
    headers = dict(rec.get("headers") or {})
    schema = rec.get("schema")
    if "fedora_messaging_schema" not in headers and isinstance(schema, str):
        name = schemas.get(schema) or schemas.get(schema.split(" ", 1)[0])
        if name:
            headers["fedora_messaging_schema"] = name
    headers["sent-at"] = sent_at.replace(microsecond=0).isoformat()
    headers.setdefault("fedora_messaging_severity", 20)
    return headers


def native_message(
    rec: Mapping[str, Any],
    index: int,
    sent_at: datetime.datetime,
    schemas: Mapping[str, str],
    run_id: str = "",
) -> Any:
    """A fedora-messaging ``Message`` publishing a today's-bus record as its
    publisher did (module docstring); persistent, JSON, UTF-8."""
    # imported here: fedora_messaging and pika are slow to import; only what uses them pays
    import pika
    from fedora_messaging.message import Message

    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        headers=native_headers(rec, sent_at, schemas),
        message_id=native_id(rec, index, run_id),
    )
    return Message(body=rec["body"], topic=rec["topic"], properties=props)


def bridge_native(rec: Mapping[str, Any], index: int, sent_at: float) -> dict[str, Any]:
    """A today's-bus record as fedmsg-migration-tools' ``amqp_to_zmq`` bridge put it
    on the ZeroMQ bus: ``{"topic", "msg": body, "msg_id": "<year>-<AMQP id>",
    "timestamp": sent_at, "i": 0, "username": None}`` (``sent_at`` UNIX s)."""
    year = datetime.datetime.fromtimestamp(sent_at, datetime.UTC).year
    return {
        "topic": rec["topic"],
        "msg": rec["body"],
        "msg_id": f"{year}-{native_id(rec, index)}",
        "timestamp": sent_at,
        "i": 0,
        "username": None,
    }


def publish_native(amqp_url: str, records: list[dict[str, Any]], pace: Pace | None = None) -> int:
    """Publish today's-bus records as native messages (:func:`native_message`)
    with fedora-messaging's publish API, each confirmed by the broker.

    Args: as :func:`publish_replay`; passes after the first of a ``pace.loop`` get
    fresh ids (suffix ``r<N>``).  ``amqp_url`` ``""``: fedora-messaging's config's.

    Returns:
        Messages published (records whose topic is not a routing key are skipped).

    Raises:
        fedora_messaging.exceptions.PublishException: refused or not confirmed.
    """
    pace = pace or Pace()
    count = pace.count
    configure_publisher(amqp_url)
    schemas = schema_names()
    items = [(i, r) for i, r in enumerate(records) if not topic_too_long(r["topic"])]
    if len(items) < len(records):
        log.warning(
            "skipped %d record(s) whose topic is not a routing key", len(records) - len(items)
        )
    sent, rnd = 0, 0
    gap = 1.0 / pace.rate if pace.rate else 0.0
    next_at = time.time()
    while items:
        for index, rec in items:
            if (count is not None and sent >= count) or pace.stopped():
                return sent
            if not pace.sleep_until(next_at):
                return sent
            next_at = max(next_at + gap, time.time() - 1.0)
            suffix = "-".join(x for x in (pace.run_id, f"r{rnd}" if rnd else "") if x)
            now = datetime.datetime.now(datetime.UTC)
            pace.publish(native_message(rec, index, now, schemas, suffix))
            sent += 1
        rnd += 1
        if not pace.loop or (count is not None and sent >= count):
            break
    return sent


def iter_bodies(path: str | None) -> Iterator[dict[str, Any]]:
    """Bodies of a JSONL/datagrepper file, or fedmsg_meta's shipped examples."""
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
        default=None,
        help="broker URL (default: $FEDMSG_WALLBOARD_AMQP_URL, else the amqp_url of "
        "$FEDORA_MESSAGING_CONF with its [tls] client certificate, else "
        "amqp://guest:guest@127.0.0.1:5672/%%2F)",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "path",
        nargs="?",
        metavar="FILE",
        help="JSONL or datagrepper page, as replay takes it (the same as --file)",
    )
    src.add_argument("--file", help="JSONL or datagrepper page (default: fedmsg_meta's examples)")
    src.add_argument(
        "--builtin-examples",
        action="store_true",
        help="the 553 distinct real messages shipped with fedmsg_meta (the default)",
    )
    src.add_argument(
        "--native",
        metavar="FILE",
        help="today's bus: JSONL records {topic, body, headers, id, schema} published "
        "as native fedora-messaging messages (shared/corpus/amqp/today_bus.jsonl)",
    )
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (0: max)")
    p.add_argument("--loop", action="store_true", help="replay forever with fresh msg_ids")
    p.add_argument(
        "--new-ids",
        action="store_true",
        help="fresh msg_ids for this run, as replay --new-ids (default: the recorded ids)",
    )
    p.add_argument("--count", type=positive_int, help="stop after N messages (>= 1)")
    p.add_argument("--timeout", type=float, default=30.0, help="longest wait for a confirm, s")
    p.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    """``amqp-replay``: exit 0 when every message was confirmed, 69 if the broker
    could not be reached, 2 for an unreadable input file."""
    # imported here: fedora_messaging is slow to import; only what uses it pays
    from fedora_messaging.exceptions import ConnectionException, PublishException

    url = args.amqp_url or os.environ.get("FEDMSG_WALLBOARD_AMQP_URL", "")
    if not url and not os.environ.get("FEDORA_MESSAGING_CONF"):
        url = "amqp://guest:guest@127.0.0.1:5672/%2F"
    run_id = uuid.uuid4().hex[:8] if args.new_ids else ""
    try:
        if args.native:
            records = load_native(args.native)
        else:
            bodies = list(iter_bodies(args.file or args.path))
    except Exception as exc:
        log.error("cannot read messages: %s", exc)
        return 2
    shown = redact(url) if url else "$FEDORA_MESSAGING_CONF's amqp_url"
    try:
        pace = Pace(args.rate, args.loop, args.count, timeout_s=args.timeout, run_id=run_id)
        if args.native:
            n = publish_native(url, records, pace)
        else:
            n = publish_replay(url, bodies, pace)
    except (ConnectionException, PublishException) as exc:
        log.error("publishing to %s failed: %s", shown, exc)
        return 69
    log.info("published %d messages to %s", n, shown)
    return 0
