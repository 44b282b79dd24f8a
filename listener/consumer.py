"""The fedmsg consumer: frames -> envelopes -> users -> pending counts -> Redis.

One :class:`Consumer` per listener process; the single writer of its Redis
namespace.  The per-message path (:meth:`Consumer.handle_frames`) is synchronous,
never awaits and never raises: decode, validate, de-duplicate in memory, extract
users, append to a bounded pending list.  Redis is written by :meth:`flush`
(one Lua script per flush, idempotent per msg_id and per batch) and windows are
recomputed by :meth:`step`, never per message.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import Config
from .envelope import Envelope, Rejected, category_of, decode_frames, envelope_from_dict
from .livesnapshot import live_snapshot
from .memory import trim_heap
from .store import Counted, Store, aggregate
from .users import UserExtractor, clean_usernames, is_log_milestone
from .windows import SlidingWindow, choose_bucket

log = logging.getLogger(__name__)

_new_tuple = tuple.__new__  # a named tuple without its Python-level __new__
_timestamp = operator.attrgetter("timestamp")

#: After this many messages, once a flush finds fewer than :data:`TRIM_QUIET_MSGS`
#: pending (the burst is over), the heap is trimmed
#: (:func:`listener.memory.trim_heap`): a burst's queue memory goes back.
TRIM_EVERY_MSGS = 50_000
#: A flush of fewer messages than this means traffic is back to its usual pace.
#: During a backlog every flush takes thousands (a flush interval's worth), and
#: trimming then would hand back pages the next messages fault in again.
TRIM_QUIET_MSGS = 1000


@dataclass
class Stats:
    """Counters of one consumer since it started (exported on ``/metrics``).

    Attributes (messages unless noted):
        received: frame sets or bodies handed to the consumer.
        accepted: valid, not a duplicate, queued for counting.
        counted: written to Redis as new.
        duplicates: skipped because the msg_id was already counted (memory or Redis).
        rejected: by reason (see ``envelope.REJECT_REASONS``).
        processor_errors: fedmsg.meta processors that raised (message still counted).
        future_clamped: timestamps beyond ``max_future_skew_s`` clamped to arrival.
        pending_overflow: dropped because the pending buffer was full (Redis down).
        flushes / flush_errors: Lua flushes that succeeded / failed.
        flush_seconds: duration of the last successful flush, seconds.
        blink_dropped: messages left out of blink batches (still counted).
        gaps: messages missing by publisher sequence number ``i``.
        bus_reconnects: SUB sockets recreated.
        hwm_drops: messages libzmq dropped at the high-water mark (estimated by gaps).
        heap_trims: times a burst's memory was handed back (``malloc_trim``).
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
    blink_dropped: int = 0
    gaps: int = 0
    bus_reconnects: int = 0
    redis_resets: int = 0
    heap_trims: int = 0


def _observe_rejected(hook: Callable[[Envelope], None], body: dict[str, Any]) -> None:
    """Show the ``on_envelope`` hook the sequence fields of a message that arrived
    but was rejected (its topic, msg_id or timestamp unusable): its publisher's
    ``i`` moved on, and a message rejected here is counted as rejected, not also as
    a gap.  Only ``i``, ``username``, ``msg_id`` and ``body`` are real."""
    seq, user, raw_id = body.get("i"), body.get("username"), body.get("msg_id")
    if type(seq) is not int or seq < 1:
        return
    hook(
        Envelope(
            "", raw_id if isinstance(raw_id, str) else "", 0.0, seq,
            user if isinstance(user, str) else None, {}, body,
        )
    )


class Consumer:
    """Counts fedmsg messages into Redis and keeps the sliding windows.

    Args:
        cfg: settings.
        extractor: users/category/summary of messages.
        store: the Redis namespace.
        clock: returns UNIX seconds (``time.time``); injected for tests.
    """

    def __init__(
        self,
        cfg: Config,
        extractor: UserExtractor,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.extractor = extractor
        self.store = store
        self.clock = clock
        self.stats = Stats()
        self.pending: deque[Counted] = deque()
        #: the newest accepted messages for the next ``blink``: ``(topic, msg_id,
        #: timestamp, users, category, body)``, ``body`` the wire bytes of a bus
        #: message (decoded again for its summary if shown) or the decoded body
        #: otherwise: freeing a decoded tree long after it was built (cache misses)
        #: cost ~1-3 us more a message than freeing it at once
        self._blinks: deque[
            tuple[str, str, float, tuple[str, ...], str, bytes | dict[str, Any]]
        ] = deque(maxlen=cfg.blink_batch_max)
        self._blink_counts: Counter[str] = Counter()
        self._blink_total = 0
        #: timestamp of the first message of the current blink batch, UNIX s
        self._blink_first_ts = 0.0
        #: msg_ids accepted lately (de-duplication in memory, before Redis): a dict
        #: for look-ups and a deque for their order (cheaper than an OrderedDict's
        #: popitem, ~0.9 vs ~1.4 us a message at 200,000 ids)
        self._seen: dict[str, None] = {}
        self._seen_order: deque[str] = deque()
        self.windows = {
            w: SlidingWindow(w, choose_bucket(w, cfg.buckets_s)) for w in cfg.windows_s
        }
        #: older messages are rejected (``too_old``): the longest window, seconds
        self._max_age_s = max(self.windows)
        self._dedupe_memory = cfg.dedupe_memory
        self._max_pending = cfg.max_pending
        self._since_trim = 0  # messages flushed since the heap was last trimmed
        self._lock = asyncio.Lock()
        self.last_message_at: float | None = None  # newest msg timestamp counted
        self.last_received_at: float | None = None  # arrival time of newest msg
        self.redis_ok = False
        self.epoch: str | None = None
        self.epoch_started_at: float | None = None
        self._retry_batch: tuple[str, list[Counted]] | None = None
        #: (time, live messages) per blink batch: the rate shown excludes backfill
        self._rate: deque[tuple[float, int]] = deque(maxlen=1200)
        self._backfill_done_at: str | None = None
        #: signature check: body -> None when valid, else a reject reason
        self.validator: Callable[[Any], str | None] | None = None
        #: called with every envelope decoded from bus frames (the bus follows
        #: publishers' sequence numbers with it); must not raise
        self.on_envelope: Callable[[Envelope], None] | None = None
        #: ``now -> "ok" | "quiet" | "connecting" | "dead"``: the bus state for the
        #: listener's ``/healthz`` (its inputs' best: :meth:`listener.bus.Bus.state`,
        #: :meth:`listener.amqp.AmqpInput.state`); None: not set (tests)
        self.bus_state: Callable[[float], str] | None = None
        #: the flush task flushes at once instead of at its next tick when this is
        #: set: by the bus when a backlog has just been received (its queue was
        #: full and is empty again), by :meth:`flush` when it left a full batch
        #: pending.  A burst reaches Redis in batches of ``flush_batch_max`` one
        #: after the other, and its end up to ``flush_interval_s`` sooner.
        self.flush_wanted = asyncio.Event()

    # -- the per-message path (sync, never raises) --------------------------

    def handle_frames(self, frames: list[bytes], now: float | None = None) -> bool:
        """Handle one ZeroMQ multipart message; True if it was accepted."""
        self.stats.received += 1
        try:
            env = decode_frames(frames, self.cfg.max_body_bytes)
        except Exception as exc:  # defensive: decode_frames should not raise
            env = Rejected("bad_json", f"{type(exc).__name__}: {exc}"[:120])
        if isinstance(env, Rejected):
            self._reject(env)
            if env.body is not None and self.on_envelope is not None:
                _observe_rejected(self.on_envelope, env.body)
            return False
        if self.on_envelope is not None:
            self.on_envelope(env)
        return self._accept(env, now, None, True, frames[1])

    def handle_body(
        self,
        body: Any,
        now: float | None = None,
        users: Iterable[str] | None = None,
        blink: bool = True,
    ) -> bool:
        """Handle one decoded fedmsg body (JSONL, datagrepper, AMQP); True if accepted.

        Args:
            users: the message's users when already known (datagrepper's ``users``,
                AMQP headers); otherwise fedmsg.meta is asked.
            blink: False for backfill (counted, not shown as live).
        """
        self.stats.received += 1
        env = envelope_from_dict(body)
        if isinstance(env, Rejected):
            self._reject(env)
            return False
        return self._accept(env, now, users, blink)

    def _reject(self, rej: Rejected) -> None:
        self.stats.rejected[rej.reason] += 1
        n = self.stats.rejected[rej.reason]
        # a flood of bad messages must not flood the journal: the 1st, 10th, 100th,
        # 1,000th and every 10,000th of each reason at WARNING, the rest at DEBUG
        # (all of them counted, fedmsg_wallboard_rejected_total{reason})
        level = logging.WARNING if is_log_milestone(n) else logging.DEBUG
        log.log(
            level, "rejected msg_id=%s: %s (%s); %d rejected as %s so far",
            rej.msg_id, rej.reason, rej.detail, n, rej.reason,
        )

    def _accept(
        self,
        env: Envelope,
        now: float | None,
        users: Iterable[str] | None,
        blink: bool,
        wire: bytes | None = None,
    ) -> bool:
        try:
            return self._accept_unsafe(env, now, users, blink, wire)
        except Exception as exc:  # never let one message stop the consumer
            self.stats.rejected["internal_error"] += 1
            log.exception("internal error on msg_id=%s: %s", env.msg_id, exc)
            return False

    def _accept_unsafe(
        self,
        env: Envelope,
        now: float | None,
        users: Iterable[str] | None,
        blink: bool,
        wire: bytes | None,
    ) -> bool:
        # the per-message path: attributes read once, rare cases in methods of their own
        if now is None:
            now = self.clock()
        msg_id = env.msg_id
        seen = self._seen
        if msg_id and msg_id in seen:
            self.stats.duplicates += 1
            return False
        if self.validator is not None:
            reason = self.validator(env.body)
            if reason is not None:
                self._reject(Rejected(reason, "signature check failed", msg_id or None))
                return False
        ts = shown_ts = env.timestamp
        if ts > now:
            if ts > now + self.cfg.max_future_skew_s:
                self.stats.future_clamped += 1
                shown_ts = now  # absurd: the page must not wait for it to turn stale
            ts = now
        if ts < now - self._max_age_s:
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
                (topic, msg_id, shown_ts, ulist, category, env.body if wire is None else wire)
            )
        return True

    def _too_old(self, env: Envelope) -> None:
        self.stats.rejected["too_old"] += 1
        n_old = self.stats.rejected["too_old"]
        if is_log_milestone(n_old):
            log.warning(
                "%d message(s) older than the longest window (%d s) dropped so far, "
                "latest msg_id=%s (replaying old messages? use --rebase-time)",
                n_old, self._max_age_s, env.msg_id,
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
        if self.stats.pending_overflow in (1, 10, 100, 1000) or (
            self.stats.pending_overflow % 10000 == 0
        ):
            log.warning(
                "pending buffer full (%d messages): %d dropped so far",
                self.cfg.max_pending,
                self.stats.pending_overflow,
            )

    # -- blinks ----------------------------------------------------------

    def take_blink(self) -> dict[str, Any] | None:
        """The ``blink`` event for messages accepted since the last call, or None.

        ``{"type": "blink", "msgs": [{"topic", "category", "users", "summary",
        "ts", "msg_id"}...], "counts": {category: messages}, "total": n,
        "omitted": n, "first_ts": s}``: ``msgs`` holds at most ``blink_batch_max``
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
        for topic, msg_id, ts, users, category, body in self._blinks:
            if isinstance(body, bytes):
                try:
                    body = orjson.loads(body)
                except orjson.JSONDecodeError:  # it was decoded once: never expected
                    body = {"topic": topic}
            msgs.append(
                {
                    "topic": topic,
                    "category": category,
                    "users": list(users),
                    "summary": self.extractor.subtitle(body),
                    "ts": ts,
                    "msg_id": msg_id,
                }
            )
        omitted = self._blink_total - len(msgs)
        self.stats.blink_dropped += omitted
        event = {
            "type": "blink",
            "msgs": msgs,
            "counts": dict(self._blink_counts),
            "total": self._blink_total,
            "omitted": omitted,
            "first_ts": self._blink_first_ts,
        }
        self._blinks.clear()
        self._blink_counts.clear()
        self._rate.append((self.clock(), self._blink_total))
        self._blink_total = 0
        return event

    # -- Redis side ------------------------------------------------------

    async def warm_up(self, now: float | None = None) -> None:
        """Load every window's totals from Redis (at start and after a Redis reset)."""
        now = self.clock() if now is None else now
        async with self._lock:
            self.epoch, created = await self.store.ensure_epoch(now)
            meta = await self.store.meta()
            self.epoch_started_at = float(meta.get("epoch_started_at", now))
            if meta.get("last_message_at"):
                self.last_message_at = float(meta["last_message_at"])
            self._backfill_done_at = meta.get("backfill_done_at")
            for w, win in self.windows.items():
                win.reset(await self.store.read_window(w, now, usercat=False), now)
            self.redis_ok = True

    async def flush(self, now: float | None = None, limit: int | None = None) -> int:
        """Write pending messages to Redis in one atomic, idempotent script call.

        Args:
            limit: most messages written (default ``flush_batch_max``); when as
                many are still pending afterwards, :attr:`flush_wanted` is set.

        Returns the number of messages counted as new.  On a Redis error the batch
        stays pending (retried with the same batch id, so it never double-counts)
        and the error propagates.
        """
        limit = self.cfg.flush_batch_max if limit is None else limit
        async with self._lock:
            if self._retry_batch is not None:
                batch_id, batch = self._retry_batch
            else:
                if not self.pending:
                    self._trim_after_burst(0)
                    return 0
                n = min(limit, len(self.pending))
                if n == len(self.pending):  # the usual case: all of it, in C
                    batch = list(self.pending)
                    self.pending.clear()
                else:
                    batch = [self.pending.popleft() for _ in range(n)]
                batch_id = uuid.uuid4().hex
                self._retry_batch = (batch_id, batch)
            t0 = time.perf_counter()
            # aggregated once: written to Redis and added to the windows; buckets
            # that would expire at once (by the wall clock, as Redis) are left out
            agg = aggregate(batch, self.store.buckets_s, self.store.oldest_starts(time.time()))
            try:
                flags = await self.store.flush(batch, batch_id, agg)
            except Exception:
                self.stats.flush_errors += 1
                self.redis_ok = False
                raise
            self._retry_batch = None
            self.redis_ok = True
            self.stats.flushes += 1
            self.stats.flush_seconds = time.perf_counter() - t0
            now = self.clock() if now is None else now
            sizes = {win.bucket_s for win in self.windows.values()}
            per_bucket = {k: c for k, c in agg.items() if k[0] in sizes}
            missing = sizes.difference(self.store.buckets_s)
            if missing:  # a window on a bucket size the store does not keep
                per_bucket.update(aggregate(batch, missing))
            if all(flags):  # live traffic: no duplicate, no per-message pass
                dups: list[Counted] = []
            else:
                dups = [m for m, is_new in zip(batch, flags, strict=True) if not is_new]
            new = len(batch) - len(dups)
            self.stats.duplicates += len(dups)
            for key, c in aggregate(dups, sizes).items():
                if key in per_bucket:  # else a bucket left out as expired
                    per_bucket[key].merge(c, -1)
            if new:
                if dups:
                    newest = max(
                        m.timestamp for m, is_new in zip(batch, flags, strict=True) if is_new
                    )
                else:
                    newest = max(map(_timestamp, batch))
                if self.last_message_at is None or newest > self.last_message_at:
                    self.last_message_at = float(newest)
            for win in self.windows.values():
                gone = win.advance(now)
                if gone:
                    for c in await self.store.read_buckets(win.bucket_s, gone, usercat=False):
                        win.remove(c)
                for (b, start), c in per_bucket.items():
                    if b == win.bucket_s:
                        win.add(start, c)
            self.stats.counted += new
            self._since_trim += len(batch)
            self._trim_after_burst(len(batch))
            if len(self.pending) >= limit:  # a burst: the next batch at once
                self.flush_wanted.set()
            return new

    def _trim_after_burst(self, flushed: int) -> None:
        """Return a burst's memory to the system once it has gone through
        (:data:`TRIM_EVERY_MSGS`, :data:`TRIM_QUIET_MSGS`)."""
        if (
            self._since_trim >= TRIM_EVERY_MSGS
            and flushed < TRIM_QUIET_MSGS
            and len(self.pending) < TRIM_QUIET_MSGS
        ):
            self._since_trim = 0
            self.stats.heap_trims += 1
            trim_heap()

    def rate_per_min(self, now: float) -> float:
        """Live messages (not backfill) accepted over the last 60 s, per minute.

        Recorded per ``blink`` batch by :meth:`take_blink`, so a backfill of
        history does not show as a burst on the wall.
        """
        return float(sum(n for t, n in self._rate if t > now - 60))

    async def step(self, now: float | None = None) -> dict[str, Any]:
        """Advance every window, recompute its metrics, record history, publish a tick.

        Returns the ``tick`` event: ``{"type": "tick", "end", "windows": {window_s:
        snapshot}, "rate_per_min", "last_message_at", "warming_up": {window_s:
        bool}, "stats": {...}}``.
        """
        now = self.clock() if now is None else now
        async with self._lock:
            epoch, created, done_at = await self.store.check_epoch(now)
            reload = False
            if created and self.epoch is not None:
                log.warning("Redis came back empty (epoch missing): windows warm up again")
                self.stats.redis_resets += 1
                self.epoch_started_at = now
                reload = True
            self.epoch = epoch
            if done_at is not None and done_at != self._backfill_done_at:
                # a ``fedmsg-wallboard backfill`` run beside this listener wrote
                # counts that the running totals never saw
                self._backfill_done_at = done_at
                reload = True
            if reload:
                for w, win in self.windows.items():
                    win.reset(await self.store.read_window(w, now, usercat=False), now)
            snaps: dict[str, Any] = {}
            warming: dict[str, bool] = {}
            for w, win in self.windows.items():
                gone = win.advance(now)
                if gone:
                    for c in await self.store.read_buckets(win.bucket_s, gone, usercat=False):
                        win.remove(c)
                snap = live_snapshot(  # build_snapshot's object, without sorting users
                    w, now, win.totals, self.last_message_at, self.cfg.top_users,
                    self.cfg.top_topics,  # every tick goes to every wall: bounded
                )
                warm = self.epoch_started_at is not None and (
                    now - w < self.epoch_started_at
                )
                snap["warming_up"] = warm
                snaps[str(w)] = snap
                warming[str(w)] = warm
        points = {
            int(w): [
                now,
                snap["longtail"],
                snap["longtail_normalized"],
                snap["gini"],
                snap["messages"],
                snap["users"],
            ]
            for w, snap in snaps.items()
        }
        tick = {
            "type": "tick",
            "end": now,
            "windows": snaps,
            "rate_per_min": self.rate_per_min(now),
            "last_message_at": self.last_message_at,
            "last_received_at": self.last_received_at,
            "warming_up": warming,
            "pending": len(self.pending),
        }
        # history points, the stored tick and its publication: one round trip
        await self.store.record_tick(points, self.cfg.history_len, tick)
        return tick

    async def publish_blink(self) -> dict[str, Any] | None:
        """Publish the pending ``blink`` event (and keep it in the ticker list)."""
        event = self.take_blink()
        if event is None:
            return None
        await self.store.publish_blink(event, self.cfg.recent_len)
        return event

    def health(self, now: float) -> dict[str, Any]:
        """Health fields recorded in Redis ``P:meta`` (read by ``/healthz``)."""
        return {
            "listener_heartbeat": now,
            "listener_pending": len(self.pending),
            "listener_received": self.stats.received,
            "listener_counted": self.stats.counted,
            "listener_last_received_at": self.last_received_at or "",
        }
