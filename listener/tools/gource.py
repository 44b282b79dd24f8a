"""``fedmsg-wallboard gource``: the bus as a live Gource log (the seed's "live-gource").

Writes Gource's *custom* log format, one line per user per message::

    timestamp|username|type|file|colour
    1504643075|dvdmuckle|A|copr/build/start|3FB6E8

(Gource's ``--log-format custom``: ``timestamp`` UNIX seconds (integer),
``type`` ``A`` added / ``M`` modified / ``D`` deleted, ``colour`` 6 hex digits.)

* ``file`` is built from the category and the topic: the topic parts after the
  category, under the category (``org.fedoraproject.prod.buildsys.build.state.change``
  -> ``buildsys/build/state/change``; a topic with nothing after its category gives
  ``<category>/<category>``).  ``type`` is ``A`` the first time this stream writes a
  file, ``M`` after.
* ``username`` is each of the message's users (fedmsg.meta's ``msg2usernames``,
  sorted); a message with no user gets one line whose username is its category
  (so koji's unattributed traffic shows as a ``buildsys`` avatar).
* ``colour`` is a stable colour per category (same on every machine and run: a
  hue from the category name's SHA-1, fixed saturation and value).
* ``timestamp`` is the message's fedmsg ``timestamp`` (integer seconds), made
  non-decreasing (a message older than the previous line gets its time), since
  Gource plays a stream in order.
* ``|`` and control characters inside a username, and also ``/`` inside a topic
  part, become ``_``.

Live sources (the stream runs until stopped, ``--count``, or Gource closing the
pipe, all exit 0):

* default: the listener's Redis ``blink`` events (``{"type": "blink", "msgs":
  [{"topic", "category", "users", "ts", "msg_id", ...}]}`` on ``P:events``): any
  listener on the same Redis, no second bus connection.  Blink batches carry at
  most ``blink_batch_max`` (30) messages per ``blink_interval_s`` (0.1 s), so
  under a burst this source **omits messages** (the listener counts them as
  ``blink_dropped``);
* ``--endpoint`` (repeatable): SUBscribe to ZeroMQ directly and ask fedmsg.meta
  for users: every message is seen.

``--since SECONDS`` first replays recent history: from datagrepper (``--datagrepper
URL``, every message of the range) or else from the listener's ticker list in
Redis (``P:recent``: only the last ``recent_len``, 50 by default).  Live messages
already replayed (same ``msg_id``) are skipped.

Usage::

    fedmsg-wallboard gource | gource --log-format custom --realtime -
"""

from __future__ import annotations

import argparse
import asyncio
import colorsys
import contextlib
import hashlib
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
import redis.exceptions
import zmq
import zmq.asyncio

from listener.core.bidi import strip_bidi
from listener.core.endpoints import check_endpoint
from listener.core.envelope import Rejected, category_index, category_of, decode_frames
from listener.core.users import UserExtractor, clean_usernames, load_fedmsg_config
from listener.inputs.datagrepper import DatagrepperClient
from listener.runtime.options import (
    add_common,
    load_config,
    non_negative_float,
    plain_text,
    positive_int,
)
from listener.storage.connect import open_store

log = logging.getLogger(__name__)

#: Characters that may not appear inside a field (``_UNSAFE``) or a path part.
_UNSAFE = re.compile(r"[|\x00-\x1f\x7f]")
_UNSAFE_PART = re.compile(r"[|/\x00-\x1f\x7f]")

#: Saturation and value of the category colours (HSV, 0..1).
COLOUR_SATURATION = 0.65
COLOUR_VALUE = 0.95

#: Live entries queued between a source and the writer before new ones are dropped.
QUEUE_MAX = 10_000


# -- pure: the log format ------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One message as the stream needs it.

    Attributes:
        ts: fedmsg timestamp, UNIX seconds.
        topic / category: as in the envelope (category as datagrepper defines it).
        users: usernames, sorted (may be empty).
        msg_id: fedmsg msg_id, ``""`` when unknown (then never de-duplicated).
    """

    ts: float
    topic: str
    category: str
    users: tuple[str, ...]
    msg_id: str = ""


def clean_name(text: str) -> str:
    """A username safe as a Gource field: ``|`` and control characters become
    ``_``, bidirectional controls are removed (:func:`listener.core.bidi.strip_bidi`),
    after surrounding whitespace is stripped (``/`` is kept:
    ``mbs/mbs.fedoraproject.org`` is a real fedmsg.meta username)."""
    return _UNSAFE.sub("_", strip_bidi(text).strip())


def clean_part(text: str) -> str:
    """A topic part safe as one path component: like :func:`clean_name`, and ``/``
    becomes ``_`` too."""
    return _UNSAFE_PART.sub("_", strip_bidi(text).strip())


def topic_path(topic: str, category: str) -> str:
    """Gource file path of a topic: ``category/object/.../verb``.

    The parts after the category's position in the topic
    (:func:`listener.core.envelope.category_index`); a topic
    too short for a category (``Unclassified``) keeps all its parts.  Empty parts
    are dropped; a topic with nothing left gives ``category/category``.
    """
    cat = clean_part(category) or "Unclassified"
    parts = topic.split(".")
    index = category_index(topic)
    rest = parts[index + 1 :] if index is not None else parts
    cleaned = [p for p in (clean_part(x) for x in rest) if p]
    return "/".join([cat, *(cleaned or [cat])])


def category_colour(category: str) -> str:
    """A stable colour for a category: ``RRGGBB`` (upper-case hex, no ``#``).

    Hue = the first 4 bytes of SHA-1(category) / 2**32; saturation
    ``COLOUR_SATURATION``, value ``COLOUR_VALUE`` (HSV), so every category gets a
    bright, distinct-enough colour that does not change between runs or machines.
    """
    digest = hashlib.sha1(category.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:4], "big") / 2**32
    r, g, b = colorsys.hsv_to_rgb(hue, COLOUR_SATURATION, COLOUR_VALUE)
    return f"{round(r * 255):02X}{round(g * 255):02X}{round(b * 255):02X}"


@dataclass
class GourceLog:
    """Turns entries into log lines; remembers the files written and the last time.

    Attributes:
        seen: files already written (their next line is ``M``, not ``A``).
        last_ts: timestamp of the last line, UNIX seconds (lines never go back).
    """

    seen: set[str] = field(default_factory=set)
    last_ts: int = 0

    def lines(self, entry: Entry) -> list[str]:
        """The lines of one message: one per user, or one for its category.

        Returns:
            ``["ts|username|A-or-M|path|RRGGBB", ...]`` without newlines.
        """
        ts = max(int(entry.ts), self.last_ts)
        self.last_ts = ts
        path = topic_path(entry.topic, entry.category)
        kind = "M" if path in self.seen else "A"
        self.seen.add(path)
        colour = category_colour(entry.category)
        names = [n for n in (clean_name(u) for u in entry.users) if n]
        if not names:
            names = [clean_part(entry.category) or "Unclassified"]
        return [f"{ts}|{name}|{kind}|{path}|{colour}" for name in names]


def entry_from_blink(item: Any) -> Entry | None:
    """An entry from one ``msgs`` item of a ``blink`` event (or a ``P:recent`` item).

    Returns:
        The entry, or None when ``item`` is not an object with a string ``topic``
        and a finite numeric ``ts`` (the caller counts and skips it).  A missing
        ``category`` is derived from the topic; bad ``users`` entries are dropped.
    """
    if not isinstance(item, Mapping):
        return None
    topic = item.get("topic")
    ts = item.get("ts")
    if not isinstance(topic, str) or not topic:
        return None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return None
    category = item.get("category")
    if not isinstance(category, str) or not category:
        category = category_of(topic)
    users = item.get("users")
    names = clean_usernames(users if isinstance(users, list) else None)
    msg_id = item.get("msg_id")
    return Entry(
        float(ts), topic, category, tuple(sorted(names)), msg_id if isinstance(msg_id, str) else ""
    )


def entry_from_body(body: Mapping[str, Any], users: Iterable[str]) -> Entry | None:
    """An entry from a fedmsg body or datagrepper ``raw_messages`` item, or None
    when it has no string topic or no finite timestamp."""
    topic = body.get("topic")
    ts = body.get("timestamp")
    if not isinstance(topic, str) or not topic:
        return None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return None
    msg_id = body.get("msg_id")
    return Entry(
        float(ts),
        topic,
        category_of(topic),
        tuple(sorted(clean_usernames(list(users)))),
        msg_id if isinstance(msg_id, str) else "",
    )


# -- I/O: sources --------------------------------------------------------------


@dataclass
class SourceStats:
    """What the stream skipped (logged at the end).

    Attributes:
        bad: events/messages that could not be read (not a blink item, rejected frames).
        dropped: live entries dropped because the writer fell behind ``QUEUE_MAX``.
        replayed_dupes: live entries skipped because history already wrote them.
        reconnects: Redis subscriptions re-established after an error.
        omitted: messages the listener left out of blink batches (their ``omitted``).
    """

    bad: int = 0
    dropped: int = 0
    replayed_dupes: int = 0
    reconnects: int = 0
    omitted: int = 0


class RedisSource:
    """Live entries from the listener's ``blink`` events on Redis pub/sub.

    :meth:`start` subscribes (call it before reading history, so nothing falls in
    between); :meth:`entries` yields until cancelled.  A lost connection is
    re-subscribed with backoff (messages published meanwhile are lost, and counted
    as ``reconnects``).
    """

    def __init__(self, store: Any, stats: SourceStats) -> None:
        self.store = store
        self.stats = stats
        self.pubsub: Any = None

    async def start(self) -> None:
        """Subscribe to the events channel."""
        self.pubsub = self.store.r.pubsub(ignore_subscribe_messages=True)
        await self.pubsub.subscribe(self.store.events_channel)

    async def close(self) -> None:
        """Unsubscribe and release the connection."""
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            self.pubsub = None

    async def entries(self) -> AsyncIterator[Entry]:
        """Entries of every ``blink`` event, in publication order."""
        transient = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        delay = 0.5
        while True:
            try:
                if self.pubsub is None:
                    await self.start()
                msg = await self.pubsub.get_message(timeout=1.0)
                delay = 0.5
            except transient as exc:
                self.stats.reconnects += 1
                log.warning("Redis subscription lost (%s); retry in %.1f s", exc, delay)
                await self.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if msg is None or msg.get("type") != "message":
                continue
            try:
                event = orjson.loads(msg["data"])
            except orjson.JSONDecodeError:
                self.stats.bad += 1
                log.warning("skipped an event that is not JSON")
                continue
            if not isinstance(event, dict) or event.get("type") != "blink":
                continue
            omitted = event.get("omitted")
            if isinstance(omitted, int) and omitted > 0:
                self.stats.omitted += omitted
            items = event.get("msgs")
            for item in items if isinstance(items, list) else []:
                entry = entry_from_blink(item)
                if entry is None:
                    self.stats.bad += 1
                    log.warning("skipped a malformed blink item")
                    continue
                yield entry


class BusSource:
    """Live entries straight from ZeroMQ SUB sockets (every message is seen).

    Args:
        cfg: settings (``hwm``, TCP keepalive, reconnect intervals, ``max_body_bytes``).
        endpoints: ZeroMQ addresses; topic_prefix: subscription prefix.
        extractor: a :class:`listener.core.users.UserExtractor` for the users.
        stats: where skipped frames are counted.

    Sockets are connected in :meth:`start`; libzmq reconnects by itself.
    """

    def __init__(
        self, cfg: Any, endpoints: list[str], topic_prefix: str, extractor: Any, stats: SourceStats
    ) -> None:
        self.cfg = cfg
        self.endpoints = endpoints
        self.topic_prefix = topic_prefix
        self.extractor = extractor
        self.stats = stats
        self.ctx: Any = None
        self.socks: list[Any] = []

    async def start(self) -> None:
        """Create and connect one SUB socket per endpoint."""
        for endpoint in self.endpoints:  # ConfigError (exit 78), as listen
            check_endpoint(endpoint)
        self.ctx = zmq.asyncio.Context()
        for endpoint in self.endpoints:
            sock = self.ctx.socket(zmq.SUB)
            self.socks.append(sock)  # closed by close() even if set-up fails here
            sock.setsockopt(zmq.RCVHWM, self.cfg.hwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, self.cfg.tcp_keepalive_idle_s)
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, self.cfg.tcp_keepalive_intvl_s)
            sock.setsockopt(zmq.RECONNECT_IVL, self.cfg.reconnect_ivl_ms)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.cfg.reconnect_ivl_max_ms)
            sock.setsockopt(zmq.SUBSCRIBE, self.topic_prefix.encode("utf-8"))
            sock.connect(endpoint)
            log.info("SUB connected to %s (prefix %r)", endpoint, self.topic_prefix)

    async def close(self) -> None:
        """Close the sockets and the context."""
        for sock in self.socks:
            sock.close(linger=0)
        self.socks = []
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None

    def entry(self, frames: list[bytes]) -> Entry | None:
        """Decode one multipart message; None (counted) when rejected."""
        env = decode_frames(frames, self.cfg.max_body_bytes)
        if isinstance(env, Rejected):
            self.stats.bad += 1
            log.warning("rejected msg_id=%s: %s (%s)", env.msg_id, env.reason, env.detail)
            return None
        users = self.extractor.usernames(env.body)
        return Entry(
            env.timestamp, env.topic, category_of(env.topic), tuple(sorted(users)), env.msg_id
        )

    async def entries(self) -> AsyncIterator[Entry]:
        """Entries in arrival order, across every endpoint."""
        poller = zmq.asyncio.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        while True:
            for sock, _ in await poller.poll(timeout=1000):
                while True:
                    try:
                        frames = await sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    entry = self.entry(frames)
                    if entry is not None:
                        yield entry


async def recent_history(store: Any, since_s: float, now: float, limit: int) -> list[Entry]:
    """Entries of the listener's ticker list (``P:recent``) newer than ``now - since_s``.

    Bounded by what the listener keeps (``recent_len``, 50 by default): ``limit``
    caps the read.  Oldest first.
    """
    out = []
    for item in await store.recent(limit):
        entry = entry_from_blink(item)
        if entry is not None and entry.ts >= now - since_s:
            out.append(entry)
    out.sort(key=lambda e: e.ts)
    return out


def datagrepper_history(
    url: str, since_s: float, now: float, extractor_factory: Any
) -> Iterator[Entry]:
    """Every message of ``[now - since_s, now]`` from datagrepper, oldest first.

    Uses :class:`listener.inputs.datagrepper.DatagrepperClient` (``/raw`` with
    ``start``/``end``, ``order=asc``); users are datagrepper's ``users`` when
    present, else fedmsg.meta (``extractor_factory()`` is called once, lazily).

    Raises:
        listener.core.errors.TransientError / InputError: datagrepper failed (see the client).
    """
    extractor: Any = None
    client = DatagrepperClient(url)
    try:
        for msg in client.iter_messages(now - since_s, now):
            users = msg.get("users")
            if not isinstance(users, list):
                if extractor is None:
                    extractor = extractor_factory()
                users = list(extractor.usernames(msg))
            entry = entry_from_body(msg, users)
            if entry is not None:
                yield entry
    finally:
        client.close()


# -- the stream ------------------------------------------------------------------


class PipeClosed(Exception):
    """The reader of the stream went away (Gource closed): stop, exit 0."""


class Writer:
    """Writes lines to a text stream, flushing each one.

    Args:
        out: the stream (``sys.stdout``).
        count: stop after this many messages (None: never).

    Raises (from :meth:`write`):
        PipeClosed: the reader closed the pipe.
    """

    def __init__(self, out: TextIO, count: int | None = None) -> None:
        self.out = out
        self.log = GourceLog()
        self.count = count
        self.messages = 0
        self.lines = 0
        self.replayed: set[str] = set()

    @property
    def done(self) -> bool:
        """True once ``count`` messages were written."""
        return self.count is not None and self.messages >= self.count

    def write(self, entry: Entry) -> None:
        """Write one message's lines and flush."""
        try:
            for line in self.log.lines(entry):
                self.out.write(line + "\n")
                self.lines += 1
            self.out.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise PipeClosed() from exc
        except OSError as exc:
            if getattr(exc, "errno", None) == 32:  # EPIPE
                raise PipeClosed() from exc
            raise
        self.messages += 1


async def stream(args: argparse.Namespace, out: TextIO) -> int:
    """Run the stream described by ``args`` (see :func:`add_parser`); returns 0.

    Raises:
        listener.core.errors.ConfigError: bad configuration or no usable source.
        listener.core.errors.TransientError: Redis or datagrepper unreachable.
    """
    cfg = load_config(args, topic_prefix=args.topic_prefix)
    stats = SourceStats()
    writer = Writer(out, args.count)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM,):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    extractor: Any = None

    def get_extractor() -> Any:
        nonlocal extractor
        if extractor is None:
            fcfg = load_fedmsg_config(cfg.fedmsg_config or None)
            fas = UserExtractor.load_fas_cache(cfg.fas_cache) if cfg.fas_cache else None
            extractor = UserExtractor(fcfg, fas_cache=fas)
        return extractor

    store = handle = None
    # Redis: the live blink events, or the ticker list as --since history
    need_redis = (not args.no_follow and not args.endpoint) or (
        bool(args.since) and not args.datagrepper
    )
    source: RedisSource | BusSource | None = None
    try:
        if need_redis:
            store, handle = await open_store(cfg, read_only=True)
        if not args.no_follow:
            if args.endpoint:
                source = BusSource(
                    cfg, list(args.endpoint), cfg.topic_prefix, get_extractor(), stats
                )
            else:
                source = RedisSource(store, stats)
            await source.start()  # before history: nothing falls in between

        # 1. history
        if args.since:
            now = time.time()
            if args.datagrepper:
                history: list[Entry] = await asyncio.to_thread(
                    list, datagrepper_history(args.datagrepper, args.since, now, get_extractor)
                )
                history.sort(key=lambda e: e.ts)
            else:
                history = await recent_history(store, args.since, now, cfg.recent_len)
            for entry in history:
                if cfg.topic_prefix and not entry.topic.startswith(cfg.topic_prefix):
                    continue
                if writer.done:
                    break
                writer.write(entry)
                if entry.msg_id:
                    writer.replayed.add(entry.msg_id)
            log.info("replayed %d message(s) of history", writer.messages)

        # 2. live
        if source is not None and not writer.done:
            await _follow(source, writer, cfg.topic_prefix, stats, stop)
    except PipeClosed:
        log.info("the reader closed the pipe: stopping")
        # keep Python's exit-time flush of stdout from failing again
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
    finally:
        if source is not None:
            await source.close()
        if store is not None:
            await store.close()
        del handle
    log.info(
        "gource: %d message(s), %d line(s); skipped %d bad, %d dropped, %d already replayed; "
        "%d omitted by the listener's blink cap; %d Redis reconnect(s)",
        writer.messages,
        writer.lines,
        stats.bad,
        stats.dropped,
        stats.replayed_dupes,
        stats.omitted,
        stats.reconnects,
    )
    return 0


async def _follow(
    source: RedisSource | BusSource,
    writer: Writer,
    topic_prefix: str,
    stats: SourceStats,
    stop: asyncio.Event,
) -> None:
    """Copy live entries to the writer until ``stop``, ``--count`` or a closed pipe.

    The source fills a bounded queue in its own task, so a slow reader (Gource
    paused) makes the stream drop entries (counted) instead of stalling Redis or
    the bus.
    """
    queue: asyncio.Queue[Entry] = asyncio.Queue(QUEUE_MAX)

    async def pump() -> None:
        async for entry in source.entries():
            if topic_prefix and not entry.topic.startswith(topic_prefix):
                continue
            try:
                queue.put_nowait(entry)
            except asyncio.QueueFull:
                stats.dropped += 1

    pump_task = asyncio.create_task(pump(), name="gource-source")
    stop_task = asyncio.create_task(stop.wait(), name="gource-stop")
    try:
        while not writer.done:
            get_task = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait(
                {get_task, stop_task, pump_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if get_task not in done:
                get_task.cancel()
                if pump_task in done:
                    pump_task.result()  # re-raise the source's error
                return
            entry = get_task.result()
            if entry.msg_id and entry.msg_id in writer.replayed:
                stats.replayed_dupes += 1
                continue
            writer.write(entry)
    finally:
        for task in (pump_task, stop_task):
            task.cancel()
        await asyncio.gather(pump_task, stop_task, return_exceptions=True)


# -- CLI -------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register the ``gource`` subcommand."""
    p = sub.add_parser(
        "gource",
        help="stream the bus as Gource's custom log (pipe into gource --realtime -)",
        description=plain_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument(
        "--endpoint",
        action="append",
        help="read this ZeroMQ endpoint directly (repeatable); default: the listener's "
        "Redis blink events",
    )
    p.add_argument("--topic-prefix", help="only topics starting with this")
    p.add_argument(
        "--since",
        type=non_negative_float,
        default=0.0,
        help="first replay the last SECONDS of history (datagrepper, else Redis's ticker list)",
    )
    p.add_argument("--datagrepper", metavar="URL", help="datagrepper base URL for --since")
    p.add_argument("--count", type=positive_int, help="stop after N messages")
    p.add_argument("--no-follow", action="store_true", help="write the --since history, then exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``gource``; returns 0 (also when Gource closes the pipe), 2 on bad usage."""
    if args.no_follow and not args.since:
        log.error("--no-follow needs --since SECONDS (nothing to write otherwise)")
        return 2
    if args.datagrepper and not args.since:
        log.error("--datagrepper is only used with --since SECONDS")
        return 2
    return asyncio.run(stream(args, sys.stdout))
