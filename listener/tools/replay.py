"""``fedmsg-wallboard replay``: publish recorded real messages on a ZeroMQ endpoint.

Exactly the fedmsg wire format (two frames: topic, JSON body), from a PUB-type
socket.  To beat ZeroMQ's slow-joiner problem (a PUB drops what it sends before
a SUB's subscription has arrived) the socket is an XPUB: it sees subscription
frames, and publishing starts only once ``--wait-subscribers`` subscriptions
arrived (or ``--wait-timeout`` passed).  Its send high-water mark is set to
``--hwm`` (default 0 = unlimited; libzmq's default of 1000 drops silently).
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from listener.core.endpoints import check_endpoint
from listener.core.envelope import encode_frames
from listener.core.errors import ConfigError, InputError
from listener.runtime.options import (
    bounded,
    non_negative_float,
    non_negative_int,
    plain_text,
    positive_int,
)
from listener.tools.examples import builtin_examples, load_file

log = logging.getLogger(__name__)

#: The fields of a fedmsg envelope on the wire (fedmsg.core.FedMsgContext.publish).
FEDMSG_KEYS = (
    "topic",
    "msg",
    "msg_id",
    "timestamp",
    "i",
    "username",
    "crypto",
    "signature",
    "certificate",
)


def wire_body(record: dict[str, Any]) -> dict[str, Any]:
    """Keep only fedmsg envelope fields (drops JSONL/datagrepper extras such as
    ``seq``, ``usernames``, ``users``, ``packages``, ``source_name``, ``headers``)."""
    return {k: record[k] for k in FEDMSG_KEYS if k in record}


def schedule(
    bodies: list[dict[str, Any]],
    rate: float | None,
    speed: float | None,
    loop: bool,
    count: int | None,
    rebase_time: bool,
    clock: Any = time.time,
    run_id: str = "",
) -> Iterator[tuple[float, dict[str, Any]]]:
    """Yield ``(send_at, body)`` pairs: when (UNIX s) to send which body.

    Args:
        bodies: wire bodies, in publication order.
        rate: messages per second (fixed spacing); speed: factor on the original
            spacing (2.0 = twice as fast); neither: as fast as possible.
        loop: start again after the last body; passes after the first get fresh
            ``msg_id``s (suffix ``-rN``) so they count as new messages.
        count: stop after this many messages (None: one pass, or forever with loop).
        rebase_time: set each body's ``timestamp`` to its send time and number the
            bodies ``i`` = 1, 2, ... per publisher (the envelope's ``username`` and
            ``certificate``: what the listener follows sequences by,
            :class:`listener.core.sequences.SequenceTracker`), as if each recorded publisher
            were one process publishing again; signatures, if any, no longer match.
        run_id: when set, every ``msg_id`` (first pass too) gets the suffix
            ``-{run_id}`` (then ``-rN``): a new replay of the same recording counts
            as new messages in a Redis that remembers the earlier run's ids
            (``dedupe_s``).  Empty: the recorded ids, so a second replay of a file
            is recognised and not counted twice.
    """
    if not bodies:
        return
    start = clock()
    t0 = float(bodies[0].get("timestamp") or 0)
    sent = 0
    rnd = 0
    offset = 0.0
    next_i: dict[tuple[Any, Any], int] = {}  # per publisher, with rebase_time
    while True:
        for body in bodies:
            if count is not None and sent >= count:
                return
            if rate:
                at = start + sent / rate
            elif speed:
                ts = float(body.get("timestamp") or t0)
                at = start + offset + max(0.0, ts - t0) / speed
            else:
                at = start
            out = dict(body)
            if run_id or rnd:
                suffix = (f"-{run_id}" if run_id else "") + (f"-r{rnd}" if rnd else "")
                out["msg_id"] = f"{body.get('msg_id', '')}{suffix}"
            if rebase_time:
                # new timestamps, and new sequence numbers per publisher: the
                # recorded ``i`` belong to many old processes, and one counter over
                # all publishers would read as gaps in each publisher's sequence
                out["timestamp"] = max(at, clock())
                who = (str(body.get("username")), str(body.get("certificate")))
                out["i"] = next_i[who] = next_i.get(who, 0) + 1
            yield at, out
            sent += 1
        if not loop:
            return
        rnd += 1
        if speed:
            last = float(bodies[-1].get("timestamp") or t0)
            offset += max(1.0, (last - t0) / speed + 1.0 / speed)


def open_publisher(ctx: zmq.Context[Any], endpoint: str, bind: bool, hwm: int) -> Any:
    """An XPUB socket bound or connected to ``endpoint`` (linger 2 s)."""
    sock = ctx.socket(zmq.XPUB)
    try:  # a socket left open would hang ctx.term() for ever
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


def wait_subscribers(sock: Any, n: int, timeout_s: float) -> int:
    """Wait for ``n`` subscription frames on an XPUB socket; returns how many came."""
    got = 0
    deadline = time.monotonic() + timeout_s
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if sock.poll(int(left * 1000), zmq.POLLIN):
            frame = sock.recv()
            if frame[:1] == b"\x01":
                got += 1
    return got


def publish(
    sock: Any,
    plan: Iterable[tuple[float, dict[str, Any]]],
    progress: Any = None,
) -> int:
    """Send every planned body at its time; returns the number sent."""
    sent = 0
    for at, body in plan:
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)
        sock.send_multipart(encode_frames(body))
        sent += 1
        # drain subscription frames so the XPUB's inbound queue never fills
        while sock.poll(0, zmq.POLLIN):
            sock.recv()
        if progress is not None:
            progress.update(1)
    return sent


#: Slowest pace accepted (``--rate`` msgs/s, ``--speed`` factor): one message per
#: 1,000 s.  Slower ones put send times past what ``time.sleep`` takes.
MIN_PACE = 0.001


def pace_number(text: str) -> float:
    """argparse type of ``--rate`` and ``--speed``: a finite number >= :data:`MIN_PACE`."""
    return float(bounded(float, MIN_PACE)(text))


def add_parser(sub: Any) -> None:
    """Register the ``replay`` subcommand."""
    p = sub.add_parser(
        "replay",
        help="publish recorded real fedmsg messages on a local ZeroMQ endpoint",
        description=plain_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="*", help="JSONL of fedmsg envelopes or datagrepper /raw pages")
    p.add_argument(
        "--builtin-examples",
        action="store_true",
        help="the 553 distinct real messages shipped in fedmsg_meta_fedora_infrastructure's tests",
    )
    p.add_argument("--endpoint", default="tcp://127.0.0.1:9940", help="ZeroMQ address")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--bind", action="store_true", default=True, help="bind (default)")
    mode.add_argument("--connect", action="store_true", help="connect instead of bind")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=pace_number, help="messages per second (>= 0.001)")
    pace.add_argument("--speed", type=pace_number, help="factor on the original spacing (>= 0.001)")
    p.add_argument("--rebase-time", action="store_true", help="timestamps = send time")
    p.add_argument("--loop", action="store_true", help="repeat (fresh msg_ids each pass)")
    p.add_argument(
        "--new-ids",
        action="store_true",
        help="fresh msg_ids for this run (a suffix per run): counted again by a Redis that "
        "saw an earlier replay of the same messages (default: the recorded ids, deduplicated)",
    )
    p.add_argument("--count", type=positive_int, help="stop after N messages (>= 1)")
    p.add_argument("--wait-subscribers", type=int, default=1, help="subscriptions to wait for")
    p.add_argument(
        "--wait-timeout", type=non_negative_float, default=30.0, help="seconds to wait for them"
    )
    p.add_argument(
        "--hwm", type=non_negative_int, default=0, help="send high-water mark (0: unlimited)"
    )
    p.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``replay``; returns the exit code (0, or 2 when there is nothing to send)."""
    bodies: list[dict[str, Any]] = []
    try:
        for f in args.files:
            bodies.extend(wire_body(b) for b in load_file(f))
        if args.builtin_examples:
            bodies.extend(wire_body(ex.body) for ex in builtin_examples())
    except InputError as exc:
        log.error("%s", exc)
        return 2
    if not bodies:
        log.error("nothing to replay: give files or --builtin-examples")
        return 2
    try:
        check_endpoint(args.endpoint)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        sock = open_publisher(ctx, args.endpoint, not args.connect, args.hwm)
    except zmq.ZMQError as exc:
        log.error("cannot %s %s: %s", "connect" if args.connect else "bind", args.endpoint, exc)
        ctx.term()
        return 2
    try:
        if args.wait_subscribers:
            log.info(
                "waiting up to %.0f s for %d subscriber(s) on %s",
                args.wait_timeout,
                args.wait_subscribers,
                args.endpoint,
            )
            got = wait_subscribers(sock, args.wait_subscribers, args.wait_timeout)
            if got < args.wait_subscribers:
                log.warning(
                    "%d of %d subscriber(s) on %s after %.0f s: publishing anyway "
                    "(messages nobody receives are lost)",
                    got,
                    args.wait_subscribers,
                    args.endpoint,
                    args.wait_timeout,
                )
            else:
                log.info("%d subscriber(s) on %s", got, args.endpoint)
        plan = schedule(
            bodies,
            args.rate,
            args.speed,
            args.loop,
            args.count,
            args.rebase_time,
            run_id=uuid.uuid4().hex[:8] if args.new_ids else "",
        )
        progress = None
        if args.progress:
            # imported here: tqdm only when a progress bar is shown
            from tqdm import tqdm

            progress = tqdm(total=args.count, unit="msg")
        sent = publish(sock, plan, progress)
        log.info("published %d messages on %s", sent, args.endpoint)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        ctx.term()
    return 0
