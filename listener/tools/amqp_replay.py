"""Publishing fedmsg messages with fedora-messaging (``amqp-replay``, tests, demo).

Messages are *bridged* as fedmsg-migration-tools' ``zmq_to_amqp`` bridge
published them: the whole fedmsg envelope as the body, the AMQP message id set to
its ``msg_id``, the routing key its topic.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from listener.core.envelope import MAX_TOPIC_BYTES, topic_too_long
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
    process; its TLS settings come from its own config file.

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
        fm_config.conf["amqp_url"] = amqp_url
        _publisher_url = amqp_url


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
    amqp_url: str,
    bodies: Iterable[Mapping[str, Any]],
    rate: float | None = None,
    loop: bool = False,
    count: int | None = None,
    stop: threading.Event | None = None,
    timeout_s: float = 30.0,
    run_id: str = "",
) -> int:
    """Publish fedmsg bodies to ``amq.topic`` as bridged messages, with
    fedora-messaging's publish API (each publish waits for the broker's confirm).

    Args:
        amqp_url: the broker (``amqp://guest:guest@127.0.0.1:5672/%2F``).
        bodies: fedmsg envelopes (``listener.tools.replay.wire_body`` shape).
        rate: messages per second; None or 0: as fast as the broker confirms.
        loop: start again after the last body (fresh ``-rN`` msg_ids, timestamps
            set to the send time), as ``listener.tools.replay.schedule`` does.
        count: stop after this many (None: one pass, or forever with ``loop``).
        stop: set it to stop early (checked between messages).
        timeout_s: longest wait for one confirm, seconds.
        run_id: a suffix for every msg_id of this run (``schedule``'s ``run_id``).

    Returns:
        Messages published.  A body whose topic is not a routing key (not a
        string, or more than 255 bytes of UTF-8) is skipped with a warning.

    Raises:
        fedora_messaging.exceptions.PublishException: the broker refused a
            message or did not confirm it in ``timeout_s``.
        ValueError: see :func:`configure_publisher`.
    """
    # imported here: fedora_messaging is slow to import; only what uses it pays
    from fedora_messaging import api

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
        items, rate or None, None, loop, count, rebase_time=True, run_id=run_id
    ):
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

    try:
        bodies = list(iter_bodies(args.file or args.path))
    except Exception as exc:
        log.error("cannot read messages: %s", exc)
        return 2
    try:
        n = publish_replay(
            args.amqp_url,
            bodies,
            args.rate,
            args.loop,
            args.count,
            timeout_s=args.timeout,
            run_id=uuid.uuid4().hex[:8] if args.new_ids else "",
        )
    except (ConnectionException, PublishException) as exc:
        log.error("publishing to %s failed: %s", redact(args.amqp_url), exc)
        return 69
    log.info("published %d messages to %s", n, redact(args.amqp_url))
    return 0
