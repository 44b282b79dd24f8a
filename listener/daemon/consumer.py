"""The writer: pending messages -> Redis -> sliding windows -> events.

One :class:`Consumer` per listener process; the single writer of its Redis
namespace.  The inputs hand messages to an :class:`~listener.core.intake.Intake`
(the synchronous per-message path); the consumer takes its pending rows in
batches and writes them with :meth:`Consumer.flush` (one Lua script per flush,
idempotent per msg_id and per batch), recomputes the windows with
:meth:`Consumer.step`, never per message, and publishes the ``blink`` and ``tick``
events the web processes push to the page.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from listener.core.config import Config
from listener.core.counting import Counted, aggregate
from listener.core.intake import Intake, timestamp_of
from listener.core.silence import HOUR_S, WEEK_H, Detector, rule_of
from listener.core.snapshot import live_snapshot
from listener.core.windows import SlidingWindow, choose_bucket
from listener.daemon.memory import trim_heap
from listener.storage.readers import read_hourly_fields
from listener.storage.store import Fenced, Store

log = logging.getLogger(__name__)

#: After this many messages, once a flush finds fewer than :data:`TRIM_QUIET_MSGS`
#: pending (the burst is over), the heap is trimmed
#: (:func:`listener.daemon.memory.trim_heap`): a burst's queue memory goes back.
TRIM_EVERY_MSGS = 50_000
#: A flush of fewer messages than this means traffic is back to its usual pace.
#: During a backlog every flush takes thousands (a flush interval's worth), and
#: trimming then would hand back pages the next messages fault in again.
TRIM_QUIET_MSGS = 1000


class Consumer:
    """Writes an intake's pending messages to Redis and keeps the sliding windows.

    Args:
        cfg: settings.
        intake: the per-message path whose pending rows this writes; its
            :attr:`~listener.core.intake.Intake.stats` are this consumer's too.
        store: the Redis namespace.
        clock: returns UNIX seconds (``time.time``); injected for tests.
        lease: this listener's writer lease token (``P:writer``): every flush,
            tick and blink carries it and Redis refuses them once another listener
            holds the lease (fencing, :class:`listener.storage.store.Fenced`).
            None: not checked.  A consumer with a lease starts as a standby: it
            writes nothing until :meth:`hold` (the lease was claimed).
    """

    def __init__(
        self,
        cfg: Config,
        intake: Intake,
        store: Store,
        clock: Callable[[], float] = time.time,
        lease: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.lease = lease
        #: whether this consumer writes (it holds the lease, or has none to check);
        #: a standby keeps what the inputs accept (:meth:`expire_kept`) instead
        self.holding = lease is None
        #: set when Redis refused a write of this consumer's (another listener holds
        #: the lease): the service makes it a standby again
        self.fenced = asyncio.Event()
        self.intake = intake
        self.store = store
        self.clock = clock
        self.stats = intake.stats
        self.windows = {w: SlidingWindow(w, choose_bucket(w, cfg.buckets_s)) for w in cfg.windows_s}
        self._since_trim = 0  # messages flushed since the heap was last trimmed
        self._lock = asyncio.Lock()
        self.last_message_at: float | None = None  # newest msg timestamp counted
        self.redis_ok = False
        self.epoch: str | None = None
        self.epoch_started_at: float | None = None
        #: a batch taken from the intake whose flush failed: retried first, with
        #: the same batch id (the flush script makes a retry change nothing)
        self._retry_batch: tuple[str, list[Counted]] | None = None
        self._backfill_done_at: str | None = None
        #: the flush task flushes at once instead of at its next tick when this is
        #: set: by an input when a backlog has just been received (its queue was
        #: full and is empty again), by :meth:`flush` when it left a full batch
        #: pending.  A burst reaches Redis in batches of ``flush_batch_max`` one
        #: after the other, and its end up to ``flush_interval_s`` sooner.
        self.flush_wanted = asyncio.Event()
        #: the silence and burst detector (listener.core.silence), fed by each flush's
        #: new counts, its weekly history re-read once an hour; :attr:`alerts` is its
        #: latest report (the tick's ``alerts``)
        self.silence = Detector(rule_of(cfg), clock())
        self.alerts: dict[str, Any] = {
            "mode": "warming_up",
            "time": None,
            "judged": 0,
            "alerts": [],
        }
        self._alert_hour: int | None = None  # the hour whose history the detector has

    def unwritten(self) -> bool:
        """Whether anything accepted is not yet in Redis (a standby: never, it
        writes nothing)."""
        if not self.holding:
            return False
        return bool(self.intake.pending) or self._retry_batch is not None

    def written(self, accepted: int) -> bool:
        """Whether the first ``accepted`` accepted messages left the pending buffer
        and no flush is in flight (pending is FIFO: ``accepted - len(pending)``
        have been taken).  A standby's are kept, not written: True when its AMQP
        queue is its own (``amqp_queue`` empty: a UUID queue; the lease holder
        reads the same messages from its own)."""
        if not self.holding and not self.cfg.amqp_queue:
            return True
        taken = self.stats.accepted - len(self.intake.pending)
        return taken >= accepted and self._retry_batch is None

    @property
    def last_received_at(self) -> float | None:
        """Arrival time of the newest accepted message, UNIX s."""
        return self.intake.last_received_at

    def rate_per_min(self, now: float) -> float:
        """Live messages over the last 60 s (:meth:`Intake.rate_per_min`)."""
        return self.intake.rate_per_min(now)

    # -- the lease -------------------------------------------------------

    async def hold(self) -> None:
        """This listener now holds the lease: load the windows from Redis (what the
        previous holder wrote), then write what it kept (the overlap with what the
        previous holder wrote is dropped by the flush's msg_id de-dup)."""
        self.fenced.clear()
        self.holding = True
        await self.warm_up()
        self.flush_wanted.set()

    def stand_by(self) -> None:
        """Another listener holds the lease: write nothing, keep what comes in."""
        self.holding = False
        self.fenced.clear()

    def expire_kept(self, now: float) -> int:
        """A standby's bound: drop kept messages whose timestamp is older than
        ``standby_keep_s`` before ``now`` (UNIX s), and the blink batch (only
        the holder publishes).  Returns the messages dropped."""
        self.intake.take_blink()
        dropped = self.intake.drop_older(now - self.cfg.standby_keep_s)
        if self._retry_batch is not None and all(
            m.timestamp < now - self.cfg.standby_keep_s for m in self._retry_batch[1]
        ):
            dropped += len(self._retry_batch[1])
            self._retry_batch = None
        return dropped

    def _refused(self, exc: Fenced) -> None:
        if not self.fenced.is_set():
            log.warning("Redis refused a write: %s", exc)
        self.holding = False
        self.fenced.set()

    # -- Redis side ------------------------------------------------------

    async def warm_up(self, now: float | None = None) -> None:
        """Load every window's totals from Redis (at start, after a Redis reset, when
        this listener takes the lease).  An epoch created here when one was known
        before is a Redis that came back empty (counted in ``redis_resets``)."""
        now = self.clock() if now is None else now
        async with self._lock:
            known = self.epoch
            self.epoch, created = await self.store.ensure_epoch(now)
            if created and known is not None:
                log.warning("Redis came back empty (epoch missing): windows warm up again")
                self.stats.redis_resets += 1
            meta = await self.store.meta()
            self.epoch_started_at = float(meta.get("epoch_started_at", now))
            if meta.get("last_message_at"):
                self.last_message_at = float(meta["last_message_at"])
            self._backfill_done_at = meta.get("backfill_done_at")
            await self.store.convert_legacy_ids()
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
            if not self.holding:
                return 0
            if self._retry_batch is not None:
                batch_id, batch = self._retry_batch
            else:
                if not self.intake.pending:
                    self._trim_after_burst(0)
                    return 0
                batch = self.intake.take_batch(limit)
                batch_id = uuid.uuid4().hex
                self._retry_batch = (batch_id, batch)
            t0 = time.perf_counter()
            # aggregated once: written to Redis and added to the windows; buckets
            # that would expire at once (by the wall clock, as Redis) are left out
            agg = aggregate(batch, self.store.buckets_s, self.store.oldest_starts(time.time()))
            try:
                flags = await self.store.flush(batch, batch_id, agg, self.lease)
            except Fenced as exc:
                self._refused(exc)
                raise
            except Exception:
                self.stats.flush_errors += 1
                self.redis_ok = False
                raise
            self._retry_batch = None
            self.redis_ok = True
            self.stats.flushes += 1
            self.stats.flush_seconds = elapsed = time.perf_counter() - t0
            self.stats.flush_durations.observe(elapsed)
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
            self._feed_silence(per_bucket, now)
            if new:
                if dups:
                    newest = max(
                        m.timestamp for m, is_new in zip(batch, flags, strict=True) if is_new
                    )
                else:
                    newest = max(map(timestamp_of, batch))
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
            if len(self.intake.pending) >= limit:  # a burst: the next batch at once
                self.flush_wanted.set()
            return new

    def _feed_silence(self, per_bucket: dict[tuple[int, int], Any], now: float) -> None:
        """Hand the new counts of the finest window buckets to the silence detector,
        as arrived at the end of their bucket or now, whichever is first (live
        traffic: now): per distinct category and topic, not per message."""
        if not per_bucket:
            return
        finest = min(b for b, _ in per_bucket)
        for (b, start), c in per_bucket.items():
            if b == finest:
                at = min(now, start + b)
                self.silence.seen("category", c.categories, at)
                if self.silence.topics:
                    self.silence.seen("topic", c.topics, at)

    async def _alert_history(self, now: float) -> None:
        """Once an hour (and after a Redis reset): the hourly category counts of
        the 168 complete hours before this one and of this one, and those of the
        busiest topics of the longest window (its running totals: ``4 x
        alert_topics`` candidates, the detector keeps ``alert_topics``), to the
        detector (169 ``HGETALL`` and 169 ``HMGET``, pipelined; docs/SILENCE.md has
        the cost).  Without 3600 s buckets the detector runs on what it saw since
        start."""
        hour = int(now // HOUR_S) * HOUR_S
        if hour == self._alert_hour or HOUR_S not in self.store.buckets_s:
            return
        first = hour - WEEK_H * HOUR_S
        starts = list(range(first, hour + 1, HOUR_S))
        longest = self.windows[max(self.windows)].totals.topics
        candidates = [t for t, _ in longest.most_common(4 * self.cfg.alert_topics)]
        got = await read_hourly_fields(
            self.store, HOUR_S, starts, ("c", "t"), only={"t": candidates}
        )
        self.silence.history(first, got["c"], got["t"], now)
        self._alert_hour = hour

    def _trim_after_burst(self, flushed: int) -> None:
        """Return a burst's memory to the system once it has gone through
        (:data:`TRIM_EVERY_MSGS`, :data:`TRIM_QUIET_MSGS`)."""
        if (
            self._since_trim >= TRIM_EVERY_MSGS
            and flushed < TRIM_QUIET_MSGS
            and len(self.intake.pending) < TRIM_QUIET_MSGS
        ):
            self._since_trim = 0
            self.stats.heap_trims += 1
            trim_heap()

    async def step(self, now: float | None = None, bus_state: str = "ok") -> dict[str, Any]:
        """Advance every window, recompute its metrics, record history, publish a tick.

        ``bus_state``: the inputs' state (:data:`listener.core.linkstate.LINK_STATES`);
        silences are not judged while it is ``dead`` or ``connecting``.

        Returns the ``tick`` event: ``{"type": "tick", "end", "windows": {window_s:
        snapshot}, "rate_per_min", "last_message_at", "warming_up": {window_s:
        bool}, "stats": {...}, "alerts": {...}}`` (``alerts``:
        :meth:`listener.core.silence.Detector.evaluate`'s report).
        """
        now = self.clock() if now is None else now
        await self._alert_history(now)
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
                self._alert_hour = None  # the detector's history too, at the next step
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
                    w,
                    now,
                    win.totals,
                    self.last_message_at,
                    self.cfg.top_users,
                    self.cfg.top_topics,  # every tick goes to every wall: bounded
                )
                warm = self.epoch_started_at is not None and (now - w < self.epoch_started_at)
                snap["warming_up"] = warm
                snaps[str(w)] = snap
                warming[str(w)] = warm
            self.alerts = self.silence.evaluate(now, bus_state not in ("dead", "connecting"))
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
            "pending": len(self.intake.pending),
            "alerts": self.alerts,
        }
        # history points, the stored tick and its publication: one round trip
        try:
            await self.store.record_tick(points, self.cfg.history_len, tick, self.lease)
        except Fenced as exc:
            self._refused(exc)
            raise
        return tick

    async def publish_blink(self) -> dict[str, Any] | None:
        """Publish the pending ``blink`` event (and keep it in the ticker list)."""
        event = self.intake.take_blink()
        if event is None:
            return None
        try:
            await self.store.publish_blink(event, self.cfg.recent_len, self.lease)
        except Fenced as exc:
            self._refused(exc)
            raise
        return event

    def health(self, now: float) -> dict[str, Any]:
        """Health fields recorded in Redis ``P:meta`` (read by ``/healthz``)."""
        return {
            "listener_heartbeat": now,
            "listener_pending": len(self.intake.pending),
            "listener_received": self.stats.received,
            "listener_counted": self.stats.counted,
            "listener_last_received_at": self.last_received_at or "",
        }
