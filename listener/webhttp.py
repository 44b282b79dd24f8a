"""The web server's HTTP side: routes, JSON answers, ``/metrics``.  I/O (thin).

:class:`HttpRoutes` is mixed into :class:`listener.web.WebServer`: websockets'
``process_request`` hook answers every request that is not a websocket upgrade on
``/ws`` (docs/PROTOCOL.md lists the routes).  Parameters are parsed by the pure
:mod:`listener.webapi`; radar and diff come from :mod:`listener.views`, imported
when first asked for.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import webapi
from .config import Config
from .snapshot import build_snapshot
from .store import Store
from .webhub import Hub

log = logging.getLogger(__name__)


class WebCollector(Collector):
    """Prometheus metrics of one :class:`WebServer` (read at scrape time)."""

    def __init__(self, web: Any) -> None:
        self.web = web

    def collect(self) -> Iterator[Any]:
        w = self.web
        hub = w.hub
        for name, doc, value in (
            ("web_connections", "Websockets accepted", hub.stats.connections),
            ("web_broadcasts", "Events fanned out to websockets", hub.stats.broadcasts),
            ("web_frames_sent", "Websocket frames sent", hub.stats.sent),
            ("web_frames_direct", "Websocket frames written at once (client keeping up)",
             hub.stats.direct),
            ("web_clients_cut", "Websockets closed for a backlog (slow)", hub.stats.cut),
            ("web_resubscribes", "Redis pub/sub subscriptions re-established", w.resubscribes),
            ("web_bad_events", "Pub/sub messages that were not events", w.bad_events),
        ):
            c = CounterMetricFamily(f"fedmsg_wallboard_{name}", doc)
            c.add_metric([], value)
            yield c
        rej = CounterMetricFamily(
            "fedmsg_wallboard_web_rejected", "Websockets refused, by reason", labels=["reason"]
        )
        for why, n in sorted(w.rejected.items()):
            rej.add_metric([why], n)
        yield rej
        req = CounterMetricFamily(
            "fedmsg_wallboard_web_http_requests", "HTTP requests, by status", labels=["status"]
        )
        for status, n in sorted(w.http_status.items()):
            req.add_metric([str(status)], n)
        yield req
        events, nbytes, largest = hub.queued()
        for name, doc, value in (
            ("web_clients", "Open websockets", len(hub.clients)),
            ("web_queued_events", "Events queued for websockets", events),
            ("web_queued_bytes", "Bytes queued for websockets", nbytes),
            ("web_queued_bytes_max", "Largest per-websocket queue, bytes", largest),
            ("web_pubsub_up", "1 when the Redis events subscription is live", int(w.pubsub_ok)),
            ("web_redis_up", "1 when the last Redis check worked", int(w.redis_ok)),
        ):
            g = GaugeMetricFamily(f"fedmsg_wallboard_{name}", doc)
            g.add_metric([], value)
            yield g


class HttpRoutes:
    """HTTP answers of a web process (mixed into :class:`listener.web.WebServer`).

    The host class provides ``cfg``, ``store``, ``assets`` (``{url path:
    webapi.Asset}``), ``hub``, ``registry``, ``rejected``, ``http_status``,
    ``clock``, and the coroutines ``snapshot_bytes()`` and ``health()``.
    """

    cfg: Config
    store: Store
    assets: dict[str, webapi.Asset]
    hub: Hub
    registry: CollectorRegistry
    rejected: Counter[str]
    http_status: Counter[int]
    clock: Any

    async def snapshot_bytes(self, fresh: bool = False) -> bytes:  # provided by the host
        raise NotImplementedError

    async def health(self) -> dict[str, Any]:  # provided by the host
        raise NotImplementedError

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

    async def _answer(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path, query = webapi.split_target(request.path)
        if path == "/ws":
            if "websocket" not in request.headers.get("Upgrade", "").lower():
                return self._respond(426, b"use a websocket\n", "text/plain; charset=utf-8")
            address = str(connection.remote_address[0]) if connection.remote_address else "?"
            if self.hub.per_address(address) >= self.cfg.max_clients_per_ip:
                self.rejected["per_address"] += 1
                return self._json_error("too many connections from this address", 429)
            return None
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
            "/metrics": self._api_metrics,
        }.get(path)
        if route is None:
            return self._json_error(f"not found: {path[:80]}", 404)
        try:
            return await route(query)
        except webapi.ApiError as exc:
            return self._json_error(str(exc), exc.status)
        except Exception as exc:
            from redis.exceptions import RedisError

            if isinstance(exc, RedisError | OSError):
                log.warning("%s: Redis unavailable: %s", path, exc)
                return self._json_error("Redis unavailable", 503)
            raise

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
        try:
            counts = await self.store.read_window(window_s, end)
        except ValueError as exc:
            raise webapi.ApiError(str(exc)) from exc
        meta = await self.store.meta()
        last = float(meta["last_message_at"]) if meta.get("last_message_at") else None
        return self._json(build_snapshot(window_s, end, counts, last, self.cfg.top_users))

    async def _api_state(self, query: dict[str, list[str]]) -> Response:
        return self._respond(200, await self.snapshot_bytes(), "application/json")

    def _views(self) -> Any:
        try:
            return importlib.import_module("listener.views")
        except ModuleNotFoundError as exc:
            if exc.name != "listener.views":
                raise
            raise webapi.ApiError("views are not available in this version", 501) from None

    async def _api_radar(self, query: dict[str, list[str]]) -> Response:
        now = self.clock()
        window_s = webapi.parse_window(query, self.cfg.windows_s[0], self.cfg.retention_s)
        end = webapi.parse_end(query, now)
        users = webapi.parse_users(query)
        top = webapi.parse_top(query, 5, webapi.MAX_RADAR_USERS)
        views = self._views()
        try:
            result = await views.radar(self.store, window_s, end, users or None, top)
        except ValueError as exc:
            raise webapi.ApiError(str(exc)) from exc
        return self._json(result)

    async def _api_diff(self, query: dict[str, list[str]]) -> Response:
        period_s = webapi.parse_period(query)
        by = webapi.parse_by(query)
        end = webapi.parse_end(query, self.clock())
        views = self._views()
        try:
            result = await views.diff(self.store, period_s, end, by)
        except ValueError as exc:
            raise webapi.ApiError(str(exc)) from exc
        return self._json(result)

    async def _api_health(self, query: dict[str, list[str]]) -> Response:
        health = await self.health()
        return self._json(health, 200 if health["ok"] else 503)

    async def _api_metrics(self, query: dict[str, list[str]]) -> Response:
        return self._respond(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
