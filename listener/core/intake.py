"""The intake: the synchronous per-message path of the listener.

An input (the ZeroMQ bus, AMQP, a datagrepper backfill) hands each message to
:class:`Intake` as a decoded :class:`~listener.core.envelope.Envelope` (or a
:class:`~listener.core.envelope.Rejected` it could not decode), or as a fedmsg body.
The intake validates, de-duplicates by msg_id in memory, clamps future timestamps,
drops messages older than the longest window, finds the users (fedmsg.meta through
:class:`~listener.core.users.UserExtractor`, or the ones the input knew), derives
the category, and appends a :class:`~listener.core.counting.Counted` row to
:attr:`Intake.pending`.  It never waits and never raises: a bad message is counted
(:attr:`Stats.rejected`) and skipped.

The writer (:class:`listener.daemon.consumer.Consumer`) takes batches from
:attr:`Intake.pending` and writes them to Redis; the blink batch
(:meth:`Intake.take_blink`) is what the page shows of the newest messages.
"""

from __future__ import annotations

import logging
import operator
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from listener.core.bidi import strip_bidi, strip_bidi_all, strip_bidi_counts
from listener.core.config import Config
from listener.core.counting import Counted
from listener.core.envelope import (
    Envelope,
    Rejected,
    category_of,
    decode_frames,
    envelope_from_dict,
)
from listener.core.histogram import Histogram
from listener.core.lograte import is_log_milestone, milestone_level
from listener.core.users import UserExtractor, clean_usernames

log = logging.getLogger(__name__)

_new_tuple = tuple.__new__  # a named tuple without its Python-level __new__
timestamp_of = operator.attrgetter("timestamp")
#: Longest ``summary`` in a blink, characters (as fedmsg.meta's subtitles).
SUMMARY_MAX = 200
#: Most ``packages`` listed for one message in a blink.
MAX_PACKAGES_SHOWN = 10


def clip_summary(text: str, limit: int = SUMMARY_MAX) -> str:
    """``text`` on one line (runs of white space made one space), at most ``limit``
    characters (the last one an ellipsis when cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass
class Stats:
    """The listener's message counters since it started (exported on ``/metrics``).

    The intake counts the message path; the writer
    (:class:`listener.daemon.consumer.Consumer`) counts its flushes into the same
    record, so one object answers "what happened to the messages".

    Attributes (messages unless noted):
        received: frame sets or bodies handed to the intake.
        accepted: valid, not a duplicate, queued for counting.
        counted: written to Redis as new.
        duplicates: skipped because the msg_id was already counted (memory or Redis).
        rejected: by reason (see ``envelope.REJECT_REASONS``).
        processor_errors: fedmsg.meta processors that raised (message still counted).
        future_clamped: timestamps beyond ``max_future_skew_s`` clamped to arrival.
        pending_overflow: dropped because the pending buffer was full (Redis down).
        flushes / flush_errors: Lua flushes that succeeded / failed.
        flush_seconds: duration of the last successful flush, seconds.
        flush_durations: every successful flush's duration, seconds, in buckets.
        blink_dropped: messages left out of blink batches (still counted).
        redis_resets: times Redis came back empty and the windows warmed up again.
        heap_trims: times a burst's memory was handed back (``malloc_trim``).
        standby_expired: kept by a standby listener, then dropped as older than
            ``standby_keep_s`` (the lease holder counted them).
    """

    received: int = 0
    accepted: int = 0
    counted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    processor_errors: int = 0
    future_clamped: int = 0
    pending_overflow: int = 0
    flushes: int = 0
    flush_errors: int = 0
    flush_seconds: float = 0.0
    flush_durations: Histogram = field(default_factory=Histogram)
    blink_dropped: int = 0
    redis_resets: int = 0
    heap_trims: int = 0
    standby_expired: int = 0


class Writer(Protocol):
    """What an input that acknowledges messages (AMQP) needs of the writer."""

    async def flush(self) -> int:
        """Write a batch of pending messages; returns those counted as new."""
        ...

    def written(self, accepted: int) -> bool:
        """Whether the first ``accepted`` accepted messages are in Redis."""
        ...


class Intake:
    """The per-message path: envelopes in, :class:`Counted` rows and blinks out.

    Args:
        cfg: settings (``windows_s``, ``dedupe_memory``, ``max_pending``,
            ``max_future_skew_s``, ``blink_batch_max``, ``max_body_bytes``).
        extractor: users, category and summary of messages.
        clock: returns UNIX seconds (``time.time`` in the listener).
        validator: the signature check, ``body -> None`` when valid, else a reject
            reason (:func:`listener.inputs.signatures.check_signature_setup`); None
            when signatures are not validated.
    """

    def __init__(
        self,
        cfg: Config,
        extractor: UserExtractor,
        clock: Callable[[], float],
        validator: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.extractor = extractor
        self.clock = clock
        self.validator = validator
        self.stats = Stats()
        #: accepted messages not yet taken by the writer, oldest first
        self.pending: deque[Counted] = deque()
        #: the newest accepted messages for the next ``blink``: ``(topic, msg_id,
        #: timestamp, users, category, body)``, ``body`` the wire bytes of a bus
        #: message (decoded again for its summary if shown) or the decoded body
        #: otherwise: freeing a decoded tree long after it was built (cache misses)
        #: costs more than freeing it at once
        self._blinks: deque[
            tuple[
                str,
                str,
                float,
                tuple[str, ...],
                str,
                bytes | dict[str, Any],
                Callable[[], Mapping[str, Any]] | None,
            ]
        ] = deque(maxlen=cfg.blink_batch_max)
        self._blink_counts: Counter[str] = Counter()
        self._blink_total = 0
        #: timestamp of the first message of the current blink batch, UNIX s
        self._blink_first_ts = 0.0
        #: msg_ids accepted lately (de-duplication in memory, before Redis): a dict
        #: for look-ups and a deque for their order (cheaper than an OrderedDict's
        #: popitem on the per-message path)
        self._seen: dict[str, None] = {}
        self._seen_order: deque[str] = deque()
        #: older messages are rejected (``too_old``): the longest window, seconds
        self.max_age_s = max(cfg.windows_s)
        self._dedupe_memory = cfg.dedupe_memory
        self._max_pending = cfg.max_pending
        self.last_received_at: float | None = None  # arrival time of newest msg
        #: (time, live messages) per blink batch: the rate shown excludes backfill
        self._rate: deque[tuple[float, int]] = deque(maxlen=1200)

    # -- the per-message path (sync, never raises) --------------------------

    def handle_frames(self, frames: list[bytes], now: float | None = None) -> bool:
        """Decode one ZeroMQ multipart message and accept it; True if accepted.

        For callers that follow no publisher sequence (the ZeroMQ input decodes
        itself, :meth:`listener.inputs.zmq.Bus`, and calls :meth:`accept`)."""
        try:
            env = decode_frames(frames, self.cfg.max_body_bytes)
        except Exception as exc:  # defensive: decode_frames should not raise
            env = Rejected("bad_json", f"{type(exc).__name__}: {exc}"[:120])
        if isinstance(env, Rejected):
            self.reject(env)
            return False
        return self.accept(env, now, None, True, frames[1])

    def handle_body(
        self,
        body: Any,
        now: float | None = None,
        users: Iterable[str] | None = None,
        blink: bool = True,
        validate: bool = True,
        describe: Callable[[], Mapping[str, Any]] | None = None,
    ) -> bool:
        """Handle one decoded fedmsg body (JSONL, datagrepper, AMQP); True if accepted.

        Args:
            users: the message's users when already known (datagrepper's ``users``,
                AMQP headers); otherwise fedmsg.meta is asked.
            blink: False for backfill (counted, not shown as live).
            validate: False where the signature check does not apply (AMQP, whose
                broker authenticates publishers; datagrepper, trusted over HTTPS).
            describe: see :meth:`accept`.
        """
        env = envelope_from_dict(body)
        if isinstance(env, Rejected):
            self.reject(env)
            return False
        return self.accept(env, now, users, blink, None, validate, describe)

    def reject(self, rej: Rejected, logged: bool = True) -> None:
        """Count a message that arrived but cannot be counted (``rej.reason``).

        Args:
            logged: False when the input logs it itself.
        """
        self.stats.received += 1
        self._count_reject(rej, logged)

    def _count_reject(self, rej: Rejected, logged: bool = True) -> None:
        self.stats.rejected[rej.reason] += 1
        if not logged:
            return
        n = self.stats.rejected[rej.reason]
        # a flood of bad messages must not flood the journal: the 1st, 10th, 100th,
        # 1,000th and every 10,000th of each reason at WARNING, the rest at DEBUG
        # (all of them counted, fedmsg_wallboard_rejected_total{reason})
        level = milestone_level(n)
        log.log(
            level,
            "rejected msg_id=%s: %s (%s); %d rejected as %s so far",
            rej.msg_id,
            rej.reason,
            rej.detail,
            n,
            rej.reason,
        )

    def accept(
        self,
        env: Envelope,
        now: float | None = None,
        users: Iterable[str] | None = None,
        blink: bool = True,
        wire: bytes | None = None,
        validate: bool = True,
        describe: Callable[[], Mapping[str, Any]] | None = None,
    ) -> bool:
        """Count one decoded message; True if accepted (not a duplicate, valid,
        inside the longest window).

        Args:
            env: the message.
            now: arrival time, UNIX s (default: the clock).
            users: its users when the input knows them, else fedmsg.meta's.
            blink: shown on the page as live (False for backfill).
            wire: the body's JSON bytes when at hand (decoded again only if shown).
            validate: apply the signature check (when one is set).
            describe: for a message shown in a ``blink``, called then (only then):
                ``{"summary": str | None, "agent": str | None, "packages": [str]}``
                from the message's schema (AMQP); a None or empty summary falls
                back to fedmsg.meta's subtitle.  It must not raise (if it does,
                fedmsg.meta's summary is shown and ``processor_errors`` counts it).
        """
        self.stats.received += 1
        try:
            return self._accept(env, now, users, blink, wire, validate, describe)
        except Exception as exc:  # never let one message stop the listener
            self.stats.rejected["internal_error"] += 1
            log.exception("internal error on msg_id=%s: %s", env.msg_id, exc)
            return False

    def _accept(
        self,
        env: Envelope,
        now: float | None,
        users: Iterable[str] | None,
        blink: bool,
        wire: bytes | None,
        validate: bool,
        describe: Callable[[], Mapping[str, Any]] | None = None,
    ) -> bool:
        # the per-message path: attributes read once, rare cases in methods of their own
        if now is None:
            now = self.clock()
        msg_id = env.msg_id
        seen = self._seen
        if msg_id and msg_id in seen:
            self.stats.duplicates += 1
            return False
        if validate and self.validator is not None:
            reason = self.validator(env.body)
            if reason is not None:
                self._count_reject(Rejected(reason, "signature check failed", msg_id or None))
                return False
        ts = shown_ts = env.timestamp
        if ts > now:
            if ts > now + self.cfg.max_future_skew_s:
                self.stats.future_clamped += 1
                shown_ts = now  # absurd: the page must not wait for it to turn stale
            ts = now
        if ts < now - self.max_age_s:
            self._too_old(env)
            return False
        if users is None:
            extractor = self.extractor
            before = extractor.errors
            found = extractor.usernames(env.body)
            if extractor.errors != before:
                self.stats.processor_errors += 1
        else:
            found = clean_usernames(users)
        if msg_id:
            seen[msg_id] = None
            order = self._seen_order
            order.append(msg_id)
            if len(order) > self._dedupe_memory:
                seen.pop(order.popleft(), None)
        topic = env.topic
        category = category_of(topic)
        ulist = tuple(sorted(found)) if found else ()
        pending = self.pending
        pending.append(_new_tuple(Counted, (msg_id, int(ts), topic, category, ulist)))
        if len(pending) > self._max_pending:
            self._overflow()
        self.stats.accepted += 1
        self.last_received_at = now
        if blink:
            # a timestamp beyond max_future_skew_s is shown as now: it must not hold
            # the page's "last message" in the future (never "stale"); a small skew
            # is shown as sent, so latencies measured from it stay true
            if not self._blink_total:
                self._blink_first_ts = shown_ts
            self._blink_counts[category] += 1
            self._blink_total += 1
            self._blinks.append(
                (
                    topic,
                    msg_id,
                    shown_ts,
                    ulist,
                    category,
                    env.body if wire is None else wire,
                    describe,
                )
            )
        return True

    def _too_old(self, env: Envelope) -> None:
        self.stats.rejected["too_old"] += 1
        n_old = self.stats.rejected["too_old"]
        if is_log_milestone(n_old):
            log.warning(
                "%d message(s) older than the longest window (%d s) dropped so far, "
                "latest msg_id=%s (replaying old messages? use --rebase-time)",
                n_old,
                self.max_age_s,
                env.msg_id,
            )
        log.debug("too old msg_id=%s ts=%s", env.msg_id, env.timestamp)

    def _overflow(self) -> None:
        """The pending buffer is full (Redis down): drop the oldest message, counted."""
        dropped = self.pending.popleft()
        # forget its msg_id: a redelivery (AMQP requeue, replay) may count it.  Its
        # entry in ``_seen_order`` stays; when it comes round it may forget the
        # redelivered id early, which Redis' own msg_id sets still catch.
        self._seen.pop(dropped.msg_id, None)
        self.stats.pending_overflow += 1
        if is_log_milestone(self.stats.pending_overflow):
            log.warning(
                "pending buffer full (%d messages): %d dropped so far",
                self.cfg.max_pending,
                self.stats.pending_overflow,
            )

    def forget_seen(self) -> None:
        """Empty the in-memory msg_id memory, as a restart does: a message seen
        again is then caught by Redis' msg_id sets, at flush time."""
        self._seen.clear()
        self._seen_order.clear()

    # -- the writer's side ---------------------------------------------------

    def drop_older(self, before: float) -> int:
        """Drop the pending messages whose timestamp is before ``before`` (UNIX s),
        oldest first, up to the first newer one (pending is in arrival order), and
        count them in ``stats.standby_expired``.  A standby listener's bound on what
        it keeps.  Returns the number dropped."""
        pending = self.pending
        n = 0
        while pending and pending[0].timestamp < before:
            pending.popleft()
            n += 1
        self.stats.standby_expired += n
        return n

    def take_batch(self, limit: int) -> list[Counted]:
        """Remove and return the oldest ``limit`` pending messages (all when fewer)."""
        pending = self.pending
        if limit >= len(pending):  # the usual case: all of it, in C
            batch = list(pending)
            pending.clear()
            return batch
        return [pending.popleft() for _ in range(limit)]

    # -- blinks ----------------------------------------------------------

    def take_blink(self) -> dict[str, Any] | None:
        """The ``blink`` event for messages accepted since the last call, or None.

        ``{"type": "blink", "msgs": [{"topic", "category", "users", "summary",
        "ts", "msg_id"}...], "counts": {category: messages}, "total": n,
        "omitted": n, "first_ts": s}`` (text fields without bidirectional controls,
        :mod:`listener.core.bidi`): ``msgs`` holds at most ``blink_batch_max``
        of the newest messages; ``counts``/``total`` cover all of them;
        ``first_ts`` is the fedmsg ``timestamp`` (UNIX s) of the first message
        accepted since the previous blink, shown or omitted: the one that waited
        longest for this event (its latency bounds every other's).  ``ts`` and
        ``first_ts`` are the message's own, except one more than
        ``max_future_skew_s`` ahead of the receive time: shown as that time.
        """
        if not self._blink_total:
            return None
        msgs = []
        for topic, msg_id, ts, users, category, body, describe in self._blinks:
            if isinstance(body, bytes):
                try:
                    body = orjson.loads(body)
                except orjson.JSONDecodeError:  # it was decoded once: never expected
                    body = {"topic": topic}
            info: Mapping[str, Any] = {}
            if describe is not None:
                try:
                    info = describe()
                except Exception:  # a schema's property on an odd body
                    self.stats.processor_errors += 1
            summary = info.get("summary")
            shown = {
                "topic": strip_bidi(topic),
                "category": strip_bidi(category),
                "users": strip_bidi_all(users),
                "summary": strip_bidi(
                    clip_summary(summary)
                    if isinstance(summary, str) and summary.strip()
                    else self.extractor.subtitle(body)
                ),
                "ts": ts,
                "msg_id": msg_id,
            }
            if info.get("agent"):
                shown["agent"] = strip_bidi(str(info["agent"]))
            if info.get("packages"):
                shown["packages"] = strip_bidi_all(
                    [str(p) for p in info["packages"]][:MAX_PACKAGES_SHOWN]
                )
            msgs.append(shown)
        omitted = self._blink_total - len(msgs)
        self.stats.blink_dropped += omitted
        event = {
            "type": "blink",
            "msgs": msgs,
            "counts": strip_bidi_counts(self._blink_counts),
            "total": self._blink_total,
            "omitted": omitted,
            "first_ts": self._blink_first_ts,
        }
        self._blinks.clear()
        self._blink_counts.clear()
        self._rate.append((self.clock(), self._blink_total))
        self._blink_total = 0
        return event

    def rate_per_min(self, now: float) -> float:
        """Live messages (not backfill) accepted over the last 60 s, per minute.

        Recorded per ``blink`` batch by :meth:`take_blink`, so a backfill of
        history does not show as a burst on the wall.
        """
        return float(sum(n for t, n in self._rate if t > now - 60))
