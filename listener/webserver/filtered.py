"""The filtered screens of one web process: their ``snapshot``, ``blink`` and ``tick``.

A websocket opened with filter parameters (``/ws?category=koji&not_user=bodhi``,
:mod:`listener.core.filters`) belongs to the *view* of its filter (the filter's
key; :class:`listener.webserver.hub.Hub` broadcasts to one view at a time).  Per
view, once per event whatever its number of clients:

* a ``blink`` is filtered message by message (:func:`listener.core.filters.filter_blink`);
  nothing is sent when no message matches;
* a ``tick`` is replaced by one whose windows are read from the Redis buckets at the
  tick's ``end`` and filtered (:func:`listener.core.filters.filter_counts`), reading
  only the hashes the filter needs (:func:`listener.core.filters.needed_kinds`).
  Each window keeps the filtered sum of its closed buckets (all but the newest),
  slid bucket by bucket as time goes (the buckets that closed are added, those that
  left the window subtracted, both read again) and re-read whole every
  :data:`REFRESH_S`; only its open bucket is read every tick
  (``bench/filters.py`` measures both);
* a ``snapshot`` is built the same way, with the ticker's ``recent`` messages
  filtered and an empty ``history`` (the listener stores the unfiltered one only).

The unfiltered view is served by :class:`listener.webserver.server.WebServer` as
before: the listener's events, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from listener.core.config import Config
from listener.core.filters import (
    Filter,
    filter_blink,
    filter_counts,
    filtered_alerts,
    needed_kinds,
    snapshot_of_filtered,
)
from listener.core.windows import Counts, window_buckets
from listener.storage import readers
from listener.storage.store import Store
from listener.webserver import api as webapi
from listener.webserver.hub import Hub

log = logging.getLogger(__name__)

#: A window's closed buckets are re-read whole this often per view, seconds (a 7 d
#: window is 168 buckets): a message counted late into a closed bucket shows on a
#: filtered screen within this time.
REFRESH_S = 120.0
#: A view's ``snapshot`` event is rebuilt at most this often, seconds.
SNAPSHOT_CACHE_S = 1.0
#: What a filtered ``snapshot`` or ``tick`` event cannot give (listed in its ``unfiltered``).
EVENT_UNFILTERED = ["history", "last_received_at", "rate_per_min"]


class FilteredViews:
    """Events of the filtered views of one web process.

    Args:
        cfg: settings (``windows_s``, ``top_users``, ``top_topics``, ``recent_len``,
            ``step_s``).
        store: the Redis namespace (read only).
        hub: the websocket fan-out.
        health: returns the ``/healthz`` object.
        clock: returns UNIX seconds.

    Attributes:
        filters: ``{key: Filter}`` of the views seen (pruned to the connected ones).
        ticks: filtered ticks sent (all views).
        reads_s: seconds spent reading and filtering windows (all views).
    """

    def __init__(
        self,
        cfg: Config,
        store: Store,
        hub: Hub,
        health: Callable[[], Awaitable[dict[str, Any]]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.hub = hub
        self.health = health
        self.clock = clock
        self.filters: dict[str, Filter] = {}
        self.ticks = 0
        self.reads_s = 0.0
        #: per view and window: (read at, closed starts, filtered sum, unfiltered)
        self._slow: dict[str, dict[int, tuple[float, range, Counts, frozenset[str]]]] = {}
        self._snapshots: dict[str, tuple[float, bytes]] = {}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, flt: Filter) -> None:
        """Remember a view's filter (once a websocket with it has joined the hub: a
        view with no client is forgotten at the next event)."""
        self.filters[flt.key] = flt

    def _live(self) -> dict[str, Filter]:
        """The views with a client now; the others are forgotten."""
        keys = self._prune()
        return {k: f for k, f in self.filters.items() if k in keys}

    def cached(self) -> set[str]:
        """The views whose sums or snapshot are held in memory."""
        return set(self._slow) | set(self._snapshots)

    def _prune(self, keep: str = "") -> set[str]:
        """Forget the filters and cached sums of views without a client (but
        ``keep``): ``/api/state?...`` of any number of filters keeps no memory.

        Returns:
            The views with a client now.
        """
        keys = self.hub.views()
        for table in (self.filters, self._slow, self._snapshots):
            for gone in [k for k in table if k not in keys and k != keep]:
                del table[gone]
        return keys

    # -- windows and snapshots ---------------------------------------------------

    async def windows(
        self, flt: Filter, end: float, warming: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``{str(window_s): filtered snapshot}`` of every window at ``end``.

        Raises:
            redis.exceptions.RedisError: Redis failed.
        """
        started = time.monotonic()
        kinds = needed_kinds(flt)
        out: dict[str, Any] = {}
        for w in self.cfg.windows_s:
            starts = window_buckets(end, w, self.store.bucket_for(w))
            filtered, unfiltered = await self._window(flt, kinds, w, starts, started)
            snap = snapshot_of_filtered(
                w, end, filtered, unfiltered, flt, self.cfg.top_users, self.cfg.top_topics
            )
            snap["warming_up"] = bool((warming or {}).get(str(w), False))
            out[str(w)] = snap
        self.reads_s += time.monotonic() - started
        return out

    async def _read(
        self, flt: Filter, kinds: tuple[str, ...], bucket_s: int, starts: Sequence[int]
    ) -> tuple[Counts, frozenset[str]]:
        read = await readers.read_kinds(self.store, bucket_s, starts, kinds, user=flt.single_user)
        return filter_counts(read, flt)

    async def _window(
        self, flt: Filter, kinds: tuple[str, ...], w: int, starts: range, now: float
    ) -> tuple[Counts, frozenset[str]]:
        """One window, filtered: the sum of its closed buckets (all but the newest),
        kept per view and slid as the window moves, re-read whole after
        :data:`REFRESH_S`; plus its open bucket, read now."""
        bucket_s = starts.step
        closed = starts[:-1]
        views = self._slow.setdefault(flt.key, {})
        cached = views.get(w)
        if (
            cached is None
            or now - cached[0] >= REFRESH_S
            or not closed
            or not cached[1]
            or closed[0] < cached[1][0]
            or closed[0] > cached[1][-1]
        ):
            total, unfiltered = await self._read(flt, kinds, bucket_s, closed)
            cached = (now, closed, total, unfiltered)
        elif closed != cached[1]:  # slid: add what closed, take out what left
            total = cached[2].copy()
            gone = [s for s in cached[1] if s < closed[0]]
            new = [s for s in closed if s > cached[1][-1]]
            total.merge((await self._read(flt, kinds, bucket_s, new))[0])
            total.merge((await self._read(flt, kinds, bucket_s, gone))[0], sign=-1)
            cached = (cached[0], closed, total, cached[3])
        views[w] = cached
        newest, _ = await self._read(flt, kinds, bucket_s, starts[-1:])
        total = cached[2].copy()
        total.merge(newest)
        return total, cached[3]

    async def snapshot_event(self, flt: Filter) -> dict[str, Any]:
        """The ``snapshot`` event of a view (docs/PROTOCOL.md, "Filters").

        Raises:
            redis.exceptions.RedisError: Redis unreachable.
        """
        now = self.clock()
        state = await self.store.state()
        warming = (
            state.get("warming_up")
            if state and webapi.state_is_fresh(state, now, self.cfg.step_s)
            else None
        )
        windows = await self.windows(flt, now, warming)
        recent = [
            m
            for m in await self.store.recent(self.cfg.recent_len)
            if flt.matches(
                str(m.get("topic", "")), str(m.get("category", "")), m.get("users") or ()
            )
        ]
        health = await self.health()
        history: dict[str, list[Any]] = {name: [] for name in windows}
        event = webapi.snapshot_event(windows, history, recent, None, health, now, "redis")
        stamps = [m["ts"] for m in recent if isinstance(m.get("ts"), int | float)]
        event["last_message_at"] = max(stamps) if stamps else None
        event["last_received_at"] = None
        event["filter"] = flt.as_dict()
        event["unfiltered"] = EVENT_UNFILTERED
        return event

    async def snapshot_bytes(self, flt: Filter) -> bytes:
        """The encoded ``snapshot`` event of a view, rebuilt at most every
        :data:`SNAPSHOT_CACHE_S`."""
        now = time.monotonic()
        cached = self._snapshots.get(flt.key)
        if cached and now - cached[0] < SNAPSHOT_CACHE_S:
            return cached[1]
        data = orjson.dumps(await self.snapshot_event(flt))
        self._prune(keep=flt.key)
        self._snapshots[flt.key] = (now, data)
        return data

    # -- events ---------------------------------------------------------------------

    def on_event(self, event: Mapping[str, Any]) -> None:
        """Serve one listener event (``blink`` or ``tick``) to every filtered view."""
        views = self._live()
        if not views:
            return
        if event.get("type") == "blink":
            for key, flt in views.items():
                out = filter_blink(event, flt)
                if out is not None:
                    self.hub.broadcast(orjson.dumps(out), key)
        elif event.get("type") == "tick":
            for key, flt in views.items():
                if key in self._running:  # the previous tick's read is still going
                    continue
                self._spawn(key, self._send_tick(key, flt, event))

    def _spawn(self, key: str, coro: Any) -> None:
        self._running.add(key)
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._running.discard(key)

        task.add_done_callback(done)

    async def _send_tick(self, key: str, flt: Filter, tick: Mapping[str, Any]) -> None:
        try:
            end = float(tick.get("end") or self.clock())
            windows = await self.windows(flt, end, tick.get("warming_up"))
        except Exception as exc:  # Redis down: the next tick tries again
            log.warning("filtered tick not built (%s: %s)", type(exc).__name__, exc)
            return
        out = {
            "type": "tick",
            "end": end,
            "windows": windows,
            "rate_per_min": None,
            "last_message_at": None,
            "last_received_at": None,
            "warming_up": {w: s["warming_up"] for w, s in windows.items()},
            "pending": tick.get("pending"),
            "filter": flt.as_dict(),
            "unfiltered": EVENT_UNFILTERED,
        }
        if isinstance(tick.get("alerts"), Mapping):
            out["alerts"] = filtered_alerts(tick["alerts"], flt)
        self.ticks += 1
        self.hub.broadcast(orjson.dumps(out), key)

    async def push_snapshots(self) -> None:
        """A fresh ``snapshot`` to every filtered view (after a resubscription)."""
        for key, flt in self._live().items():
            self._snapshots.pop(key, None)
            self._slow.pop(key, None)
            try:
                data = await self.snapshot_bytes(flt)
            except Exception as exc:
                log.warning("no fresh filtered snapshot (%s: %s)", type(exc).__name__, exc)
                continue
            self.hub.broadcast(data, key)

    async def close(self) -> None:
        """Cancel the ticks being built."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
