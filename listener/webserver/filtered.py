"""The filtered screens of one web process: their ``snapshot``, ``blink`` and ``tick``.

A websocket opened with filter parameters (``/ws?category=koji&not_user=bodhi``,
:mod:`listener.core.filters`) belongs to the *view* of its filter (the filter's
key; :class:`listener.webserver.hub.Hub` broadcasts to one view at a time).  Per
view, once per event whatever its number of clients:

* a ``blink`` is filtered message by message (:func:`listener.core.filters.filter_blink`);
  nothing is sent when no message matches;
* a ``tick`` is replaced by one whose windows are read from the Redis buckets at the
  tick's ``end`` and filtered (:func:`listener.core.filters.filtered_snapshot`);
  the windows read from hourly buckets (24 h, 7 d) are re-read at most every
  :data:`SLOW_WINDOW_REFRESH_S`;
* a ``snapshot`` is built the same way, with the ticker's ``recent`` messages
  filtered and an empty ``history`` (the listener stores the unfiltered one only).

The unfiltered view is served by :class:`listener.webserver.server.WebServer` as
before: the listener's events, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from listener.core.config import Config
from listener.core.filters import Filter, filter_blink, filtered_snapshot
from listener.storage.store import Store
from listener.webserver import api as webapi
from listener.webserver.hub import Hub

log = logging.getLogger(__name__)

#: Windows read from buckets of at least an hour are re-read at most this often
#: per view, seconds (a 7 d window is 168 buckets of every counter).
SLOW_WINDOW_REFRESH_S = 60.0
#: Bucket size from which a window counts as slow, seconds.
SLOW_BUCKET_S = 3600
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
        self._slow: dict[str, tuple[float, dict[str, Any]]] = {}
        self._snapshots: dict[str, tuple[float, bytes]] = {}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, flt: Filter) -> None:
        """Remember a view's filter (a websocket with it is about to join)."""
        self.filters[flt.key] = flt

    def _live(self) -> dict[str, Filter]:
        """The views with a client now; the others are forgotten."""
        keys = self.hub.views()
        for gone in [k for k in self.filters if k not in keys]:
            self.filters.pop(gone, None)
            self._slow.pop(gone, None)
            self._snapshots.pop(gone, None)
        return {k: f for k, f in self.filters.items() if k in keys}

    # -- windows and snapshots ---------------------------------------------------

    async def windows(
        self, flt: Filter, end: float, warming: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``{str(window_s): filtered snapshot}`` of every window at ``end``.

        Windows of :data:`SLOW_BUCKET_S` buckets come from the view's cache when it
        is younger than :data:`SLOW_WINDOW_REFRESH_S`.

        Raises:
            redis.exceptions.RedisError: Redis failed.
        """
        started = time.monotonic()
        cached = self._slow.get(flt.key)
        reuse = cached is not None and started - cached[0] < SLOW_WINDOW_REFRESH_S
        out: dict[str, Any] = {}
        slow: dict[str, Any] = {}
        for w in self.cfg.windows_s:
            name = str(w)
            is_slow = self.store.bucket_for(w) >= SLOW_BUCKET_S
            if is_slow and reuse and cached is not None and name in cached[1]:
                out[name] = cached[1][name]
                continue
            counts = await self.store.read_window(w, end)
            snap = filtered_snapshot(w, end, counts, flt, self.cfg.top_users, self.cfg.top_topics)
            snap["warming_up"] = bool((warming or {}).get(name, False))
            out[name] = snap
            if is_slow:
                slow[name] = snap
        if slow:
            self._slow[flt.key] = (started, slow)
        self.reads_s += time.monotonic() - started
        return out

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
