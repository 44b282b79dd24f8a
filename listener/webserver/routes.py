"""The web server's HTTP side: routes, JSON answers, ``/metrics``.

:class:`Routes` answers every request that is not a websocket upgrade on ``/ws``
(docs/PROTOCOL.md lists the routes); :class:`listener.webserver.server.WebServer`
builds one and hands its ``process_request`` to websockets.  Parameters are parsed by the pure
:mod:`listener.webserver.api`; radar and diff are read by :mod:`listener.storage.readers`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from listener.core import filters
from listener.core.config import Config
from listener.core.snapshot import build_snapshot
from listener.runtime.metrics import exposition
from listener.storage import readers
from listener.storage.store import Store
from listener.webserver import api as webapi
from listener.webserver.hub import MAX_VIEWS, Hub
from listener.webserver.proxies import connection_client, parse_networks

log = logging.getLogger(__name__)


class Routes:
    """The HTTP answers of one web process: websockets' ``process_request`` hook
    answers every request that is not a websocket upgrade on ``/ws``.

    Args:
        cfg: settings (``max_clients_per_ip``, ``trusted_proxies``, ``windows_s``,
            ``retention_s``, ``top_users``).
        store: the Redis namespace (read only).
        assets: the page's files, ``{url path: Asset}`` (:func:`webapi.load_assets`).
        hub: the websocket fan-out (its per-address counts).
        registry: the web process's Prometheus registry (``/metrics``).
        clock: returns UNIX seconds.
        snapshot_bytes: the cached ``snapshot`` event, encoded (``/api/state``).
        health: the ``/healthz`` object.
        rejected: the process's counter of refused websockets, by reason (this
            counts ``per_address``).
        filtered_state: the encoded ``snapshot`` event of a filter
            (``/api/state?category=...``); None: filters on ``/api/state`` get a 400.

    Attributes:
        http_status: answers sent, by status code.
    """

    def __init__(
        self,
        cfg: Config,
        store: Store,
        assets: dict[str, webapi.Asset],
        hub: Hub,
        registry: CollectorRegistry,
        clock: Callable[[], float],
        snapshot_bytes: Callable[[], Awaitable[bytes]],
        health: Callable[[], Awaitable[dict[str, Any]]],
        rejected: Counter[str],
        filtered_state: Callable[[filters.Filter], Awaitable[bytes]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.assets = assets
        self.hub = hub
        self.registry = registry
        self.clock = clock
        self.snapshot_bytes = snapshot_bytes
        self.health = health
        self.rejected = rejected
        self.filtered_state = filtered_state
        self.http_status: Counter[int] = Counter()
        #: ``cfg.trusted_proxies``, parsed (validated by ``Config``)
        self.trusted = parse_networks(cfg.trusted_proxies)

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Answer HTTP requests; let websocket upgrades on ``/ws`` through (None).

        ``GET`` and ``HEAD`` (the same answer without its body, RFC 9110 9.3.2);
        any other method gets 405 with ``Allow: GET, HEAD``.
        """
        method = request.method
        if method not in ("GET", "HEAD"):
            refused = self._json_error(f"method {method[:16]} not allowed", 405)
            refused.headers["Allow"] = "GET, HEAD"
            return refused
        resp = await self._answer(connection, request)
        if method == "HEAD" and resp is not None and resp.body:
            resp = Response(resp.status_code, resp.reason_phrase, resp.headers, b"")
        return resp

    async def _answer(self, connection: ServerConnection, request: Request) -> Response | None:
        path, query = webapi.split_target(request.path)
        if path == "/ws":
            if "websocket" not in request.headers.get("Upgrade", "").lower():
                return self._respond(426, b"use a websocket\n", "text/plain; charset=utf-8")
            address = connection_client(connection, self.trusted)
            if self.hub.per_address(address) >= self.cfg.max_clients_per_ip:
                self.rejected["per_address"] += 1
                return self._json_error("too many connections from this address", 429)
            return self._check_ws_filter(query)
        asset = self.assets.get(path)
        if asset is not None:
            extra = {"Content-Security-Policy": webapi.CSP} if path in ("/", "/index.html") else {}
            return self._respond(200, asset.body, asset.content_type, **extra)
        route = {
            "/api/snapshot": self._api_snapshot,
            "/api/state": self._api_state,
            "/api/radar": self._api_radar,
            "/api/diff": self._api_diff,
            "/healthz": self._api_health,
            "/livez": self._api_live,
            "/api/alerts": self._api_alerts,
            "/api/integrity": self._api_integrity,
        }.get(path)
        if path == "/metrics":
            body, content_type = exposition(self.registry, request.headers.get("Accept"))
            return self._respond(200, body, content_type)
        if route is None:
            return self._json_error(f"not found: {path[:80]}", 404)
        try:
            return await route(query)
        except webapi.ApiError as exc:
            return self._json_error(str(exc), exc.status)
        except Exception as exc:
            if isinstance(exc, RedisError | OSError):
                log.warning("%s: Redis unavailable: %s", path, exc)
                return self._json_error("Redis unavailable", 503)
            raise

    def _check_ws_filter(self, query: dict[str, list[str]]) -> Response | None:
        """A websocket's filter: 400 when refused, 429 past :data:`MAX_VIEWS` distinct
        filters in this process, else None (the upgrade goes on)."""
        try:
            flt = webapi.parse_filter(query)
        except webapi.ApiError as exc:
            return self._json_error(str(exc), exc.status)
        views = self.hub.views()
        if not flt.empty and flt.key not in views and len(views) >= MAX_VIEWS:
            self.rejected["filters"] += 1
            return self._json_error(f"at most {MAX_VIEWS} distinct filters per web process", 429)
        return None

    def _respond(self, status: int, body: bytes, ctype: str, **headers: str) -> Response:
        self.http_status[status] += 1
        h = Headers()
        h["Content-Type"] = ctype
        h["Content-Length"] = str(len(body))
        h["Cache-Control"] = "no-cache"
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["Connection"] = "close"
        for k, v in headers.items():
            h[k.replace("_", "-")] = v
        return Response(status, webapi.reason(status), h, body)

    def _json(self, obj: Any, status: int = 200) -> Response:
        return self._respond(status, webapi.json_body(obj), "application/json")

    def _json_error(self, message: str, status: int) -> Response:
        return self._respond(status, webapi.error_body(message, status), "application/json")

    async def _api_snapshot(self, query: dict[str, list[str]]) -> Response:
        now = self.clock()
        window_s = webapi.parse_window(query, self.cfg.windows_s[0], self.cfg.retention_s)
        end = webapi.parse_end(query, now)
        flt = webapi.parse_filter(query)
        try:
            counts = await self.store.read_window(window_s, end)
        except ValueError as exc:
            raise webapi.ApiError(str(exc)) from exc
        if not flt.empty:
            return self._json(
                filters.filtered_snapshot(window_s, end, counts, flt, self.cfg.top_users)
            )
        meta = await self.store.meta()
        last = float(meta["last_message_at"]) if meta.get("last_message_at") else None
        return self._json(build_snapshot(window_s, end, counts, last, self.cfg.top_users))

    async def _api_state(self, query: dict[str, list[str]]) -> Response:
        flt = webapi.parse_filter(query)
        if not flt.empty:
            if self.filtered_state is None:
                raise webapi.ApiError("filters are not served here")
            return self._respond(200, await self.filtered_state(flt), "application/json")
        return self._respond(200, await self.snapshot_bytes(), "application/json")

    async def _api_radar(self, query: dict[str, list[str]]) -> Response:
        now = self.clock()
        window_s = webapi.parse_window(query, self.cfg.windows_s[0], self.cfg.retention_s)
        end = webapi.parse_end(query, now)
        users = webapi.parse_users(query)
        top = webapi.parse_top(query, 5, webapi.MAX_RADAR_USERS)
        flt = webapi.parse_filter(query)
        if not flt.empty:
            return await self._filtered_radar(window_s, end, flt, users, top)
        try:
            result = await readers.radar(self.store, window_s, end, users or None, top)
        except ValueError as exc:
            raise webapi.ApiError(str(exc)) from exc
        return self._json(result)

    async def _api_diff(self, query: dict[str, list[str]]) -> Response:
        period_s = webapi.parse_period(query)
        by = webapi.parse_by(query)
        end = webapi.parse_end(query, self.clock())
        flt = webapi.parse_filter(query)
        if not flt.empty:
            return await self._filtered_diff(period_s, end, by, flt)
        try:
            result = await readers.diff(self.store, period_s, end, by)
        except ValueError as exc:
            raise webapi.ApiError(str(exc)) from exc
        return self._json(result)

    async def _api_live(self, query: dict[str, list[str]]) -> Response:
        """This process serves: answered by its event loop, without Redis, the
        listener or the bus (docs/PROTOCOL.md, ``/livez``)."""
        return self._json({"ok": True, "time": self.clock(), "clients": len(self.hub.clients)})

    async def _filtered_radar(
        self, window_s: int, end: float, flt: filters.Filter, users: list[str], top: int
    ) -> Response:
        """``/api/radar`` of the messages a filter matches
        (:func:`listener.core.filters.filtered_radar`)."""
        try:
            counts = await readers.read_radar_counts(self.store, window_s, end)
        except ValueError as exc:
            raise webapi.ApiError(str(exc)) from exc
        return self._json(filters.filtered_radar(counts, window_s, end, flt, users or None, top))

    async def _filtered_diff(
        self, period_s: int, end: float, by: str, flt: filters.Filter
    ) -> Response:
        """``/api/diff`` of the messages a filter matches: read by topic, the
        matching topics kept, regrouped by category when ``by`` is ``category``."""
        try:
            result = await readers.diff(self.store, period_s, end, "topic")
        except ValueError as exc:
            raise webapi.ApiError(str(exc)) from exc
        out = filters.filtered_diff(result, flt)
        return self._json(filters.diff_by_category(out) if by == "category" else out)

    async def _api_health(self, query: dict[str, list[str]]) -> Response:
        health = await self.health()
        return self._json(health, 200 if health["ok"] else 503)

    async def _api_alerts(self, query: dict[str, list[str]]) -> Response:
        flt = webapi.parse_filter(query)
        state = await self.store.state()
        report = webapi.alerts_of(state, self.clock(), self.cfg.step_s)
        return self._json(filters.filtered_alerts(report, flt))

    async def _api_integrity(self, query: dict[str, list[str]]) -> Response:
        health = await self.health()
        meta = await self.store.meta()
        running = bool(await self.store.r.exists(self.store.key("backfill_lock")))
        return self._json(webapi.integrity(meta, health, running))
