"""``fedmsg-wallboard web``: the wall page, its websocket and a small HTTP API.

One port (websockets' asyncio server; HTTP answered in ``process_request``):

==============================  =================================================
``GET /`` and page files        the page (``web/``), from a fixed list only
``GET /ws``                     websocket: ``snapshot``, ``blink``, ``tick``,
                                ``status`` events (docs/PROTOCOL.md)
``GET /api/snapshot?window=S``  the same JSON as ``fedmsg-wallboard snapshot
                                --window S --json`` (optional ``end=``)
``GET /api/state``              the ``snapshot`` event a new websocket gets
``GET /api/radar?window=S&users=a,b``  per-user category shares
``GET /api/diff?period=day|week``      topic (``by=category``) risers and fallers
``GET /healthz``                Redis, listener and bus status (200 or 503)
``GET /livez``                  this process serves (200; no Redis, listener or bus)
``GET /metrics``                Prometheus metrics of this web process
==============================  =================================================

The web process never writes counters: it reads Redis and re-broadcasts the
listener's events from one Redis pub/sub subscription, so any number of web
processes may run against one Redis.  Fan-out goes through :class:`listener.webserver.hub.Hub`
(a bounded queue per client; a client that falls behind is cut off with 1013).
If the subscription drops, it is re-established with jittered backoff and every
client gets a fresh ``snapshot``.  SIGTERM: ``STOPPING=1``, websockets closed with
1001, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Origin

from listener import __version__
from listener.core.config import Config
from listener.core.errors import ConfigError
from listener.core.snapshot import build_snapshot
from listener.runtime.metrics import process_registry
from listener.runtime.options import add_common, ip_network, load_config, plain_text
from listener.runtime.systemd import Notifier, reload_settings
from listener.storage.connect import open_store_unless_stopped
from listener.storage.store import Store
from listener.webserver import api as webapi
from listener.webserver.filtered import FilteredViews
from listener.webserver.hub import Hub
from listener.webserver.proxies import connection_client
from listener.webserver.routes import Routes

log = logging.getLogger(__name__)


def _default_web_root() -> Path:
    """``web/`` beside the ``listener`` package (a checkout or editable install), else
    the copy ``setup.py`` installs as data under ``<prefix>/share/fedmsg-wallboard/web``."""
    beside = Path(__file__).resolve().parents[2] / "web"
    if (beside / "index.html").exists():
        return beside
    return Path(sys.prefix) / "share" / "fedmsg-wallboard" / "web"


DEFAULT_WEB_ROOT = _default_web_root()
#: Largest inbound websocket frame, bytes (clients send nothing useful; 1009 above).
MAX_INBOUND_BYTES = 1024
#: A ``snapshot`` event is rebuilt at most this often, seconds (reconnect storms).
SNAPSHOT_CACHE_S = 1.0
#: Period of ``status`` events, the Redis check and ``WATCHDOG=1``, seconds.
STATUS_INTERVAL_S = 5.0
#: Longest backoff between pub/sub reconnection attempts, seconds.
RESUBSCRIBE_MAX_S = 10.0
#: Steps (``step_s``) without any event after which the events subscription is
#: made again (a subscription gone silent, as after a Redis failover).
SILENT_STEPS = 3


class _Silent(Exception):
    """The events subscription carried nothing for ``SILENT_STEPS`` steps."""


#: What a web process applies on SIGHUP (it finds no users: no FAS cache).
WEB_RELOADABLE = frozenset({"log_level"})
#: Longest wait for websockets to close at shutdown, seconds.
SHUTDOWN_S = 5.0
#: Most bytes queued for one websocket before it is cut off.
CLIENT_QUEUE_MAX_BYTES = 16 << 20


class WebServer:
    """The page, websocket and API server of one web process.

    Args:
        cfg: settings (``web_host``, ``web_port``, ``allowed_origins``,
            ``max_clients_per_ip``, ``client_queue_max``, ``ping_interval_s``,
            ``ping_timeout_s``, ``top_users``, ``windows_s``, ``step_s``,
            ``trusted_proxies``...).
        store: the Redis namespace (read only, plus the events subscription).
        web_root: the page folder (default :data:`DEFAULT_WEB_ROOT`).
        notifier: sd_notify sender (a no-op without ``$NOTIFY_SOCKET``).
        clock: returns UNIX seconds.

    Raises:
        listener.core.errors.ConfigError: a page file is missing.
    """

    def __init__(
        self,
        cfg: Config,
        store: Store,
        web_root: str | Path | None = None,
        notifier: Notifier | None = None,
        clock: Any = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.assets = webapi.load_assets(web_root or DEFAULT_WEB_ROOT)
        #: the snapshot's ``version``: the package's and a hash of the page's files
        self.version = webapi.page_version(__version__, self.assets)
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.hub = Hub(cfg.client_queue_max, CLIENT_QUEUE_MAX_BYTES)
        self.registry = process_registry("web")
        self.pubsub_ok = False
        self.redis_ok = False
        self.resubscribes = 0
        #: subscriptions dropped and made again for their silence (:data:`SILENT_STEPS`)
        self.silent_resubscribes = 0
        self.bad_events = 0
        #: websockets refused, by reason (the routes count ``per_address`` too)
        self.rejected: Counter[str] = Counter()
        #: the filtered screens' events (docs/PROTOCOL.md, "Filters")
        self.filtered = FilteredViews(cfg, store, self.hub, self.health, clock)
        self.routes = Routes(
            cfg,
            store,
            self.assets,
            self.hub,
            self.registry,
            clock,
            self.snapshot_bytes,
            self.health,
            self.rejected,
            self.filtered.snapshot_bytes,
        )
        self.registry.register(WebCollector(self))
        self.server: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot: tuple[float, bytes] | None = None
        self._snapshot_lock = asyncio.Lock()
        self._subscribed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------

    async def _serve(self, host: str, port: int) -> Any:
        return await serve(
            self.handler,
            host,
            port,
            process_request=self.routes.process_request,
            compression=None,
            origins=[Origin(o) for o in self.cfg.allowed_origins] or None,
            max_size=MAX_INBOUND_BYTES,
            ping_interval=self.cfg.ping_interval_s,
            ping_timeout=self.cfg.ping_timeout_s,
            close_timeout=SHUTDOWN_S,
            server_header="fedmsg-wallboard",
        )

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Bind the port, subscribe to events, start the status loop.

        Args:
            host / port: override ``cfg.web_host`` / ``cfg.web_port`` (port 0: any).

        Raises:
            OSError: the port cannot be bound (the message names host:port).
            listener.core.errors.ConfigError: the host name does not resolve.
        """
        host = host or self.cfg.web_host
        port = self.cfg.web_port if port is None else port
        try:
            self.server = await self._serve(host, port)
        except socket.gaierror as exc:  # a typo in web_host / --host
            raise ConfigError(f"web host {host!r}: {exc.strerror or exc}") from exc
        except OSError as exc:  # "[Errno 98] Address already in use" names no port
            raise OSError(exc.errno, f"web {host}:{port}: {exc.strerror or exc}") from exc
        self._tasks = [
            asyncio.create_task(self._subscribe_loop(), name="web-pubsub"),
            asyncio.create_task(self._status_loop(), name="web-status"),
        ]

    @property
    def port(self) -> int:
        """The bound TCP port."""
        for sock in self.server.sockets:
            return int(sock.getsockname()[1])
        raise RuntimeError("server not started")

    async def wait_subscribed(self, timeout_s: float = 10.0) -> None:
        """Wait until the events subscription is live (tests, READY=1).

        Raises:
            TimeoutError: not subscribed within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            await self._subscribed.wait()

    async def stop(self) -> None:
        """Close every websocket with 1001 (going away), stop the tasks (bounded)."""
        if self.server is not None:
            self.server.close()
            try:
                async with asyncio.timeout(SHUTDOWN_S + 1):
                    await self.server.wait_closed()
            except TimeoutError:
                log.warning("websockets did not close within %.0f s", SHUTDOWN_S + 1)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.filtered.close()
        await self.hub.close_tasks()

    # -- events -------------------------------------------------------------

    async def snapshot_event(self) -> dict[str, Any]:
        """The ``snapshot`` event, read from Redis now (docs/PROTOCOL.md).

        Windows come from the listener's latest tick when it is fresh, else they
        are computed from the buckets (``read_window`` + ``build_snapshot``).

        Raises:
            redis.exceptions.RedisError: Redis unreachable.
        """
        now = self.clock()
        state = await self.store.state()
        meta = await self.store.meta()
        if webapi.state_is_fresh(state, now, self.cfg.step_s):
            assert state is not None
            windows = dict(state["windows"])
            source = "tick"
        else:
            last = float(meta["last_message_at"]) if meta.get("last_message_at") else None
            started = float(meta["epoch_started_at"]) if meta.get("epoch_started_at") else now
            windows = {}
            for w in self.cfg.windows_s:
                counts = await self.store.read_window(w, now)
                snap = build_snapshot(w, now, counts, last, self.cfg.top_users, self.cfg.top_topics)
                snap["warming_up"] = now - w < started
                windows[str(w)] = snap
            source = "redis"
        history = {
            str(w): await self.store.history(w, self.cfg.history_len) for w in self.cfg.windows_s
        }
        recent = await self.store.recent(self.cfg.recent_len)
        health = webapi.health(
            meta, now, self.cfg.step_s, True, self.pubsub_ok, len(self.hub.clients)
        )
        return webapi.snapshot_event(
            windows, history, recent, state, health, now, source, self.version
        )

    async def snapshot_bytes(self, fresh: bool = False) -> bytes:
        """The encoded ``snapshot`` event, rebuilt at most every :data:`SNAPSHOT_CACHE_S`."""
        async with self._snapshot_lock:
            now = time.monotonic()
            if not fresh and self._snapshot and now - self._snapshot[0] < SNAPSHOT_CACHE_S:
                return self._snapshot[1]
            data = orjson.dumps(await self.snapshot_event())
            self._snapshot = (now, data)
            return data

    def on_event(self, data: bytes) -> bool:
        """Re-broadcast one pub/sub message if it is a ``blink`` or ``tick`` event.

        Returns:
            True when broadcast; anything else is counted (``bad_events``) and dropped.
        """
        try:
            event = orjson.loads(data)
            kind = event.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            kind = None
        if kind not in ("blink", "tick"):
            self.bad_events += 1
            log.warning("dropped a pub/sub message that is not an event (%d bytes)", len(data))
            return False
        # filtered clients get their own events (FilteredViews), not the listener's
        views = bool(self.filtered.filters)
        self.hub.broadcast(data, "" if views else None)
        if views:
            self.filtered.on_event(event)
        return True

    async def _subscribe_loop(self) -> None:
        """Keep one subscription to the events channel; resubscribe with backoff.

        A ``subscribe`` confirmation after the first one (redis-py reconnected by
        itself, or this loop did) pushes a fresh ``snapshot`` to every client: the
        events missed meanwhile are lost, the snapshot replaces them.

        A subscription that carried nothing for :data:`SILENT_STEPS` x ``step_s``
        (the listener ticks every ``step_s``) is dropped and made again: after a
        Redis failover a connection may stay open to a server nobody publishes on
        any more, and a new one goes to the master Sentinel names now.
        """
        delay = 0.5
        confirmations = 0
        loop = asyncio.get_running_loop()
        silent_s = SILENT_STEPS * self.cfg.step_s
        while True:
            pubsub = self.store.r.pubsub()
            try:
                await pubsub.subscribe(self.store.events_channel)
                heard = loop.time()
                while True:
                    msg = await pubsub.get_message(timeout=min(1.0, silent_s))
                    if msg is None:
                        if loop.time() - heard > silent_s:
                            raise _Silent()
                        continue
                    heard = loop.time()
                    if msg["type"] == "subscribe":
                        confirmations += 1
                        self.pubsub_ok = True
                        self._subscribed.set()
                        delay = 0.5
                        if confirmations > 1:
                            self.resubscribes += 1
                            log.info("events subscription re-established: fresh snapshots")
                            await self._push_snapshot()
                        else:
                            log.info("subscribed to %s", self.store.events_channel)
                    elif msg["type"] == "message":
                        self.on_event(msg["data"])
            except asyncio.CancelledError:
                raise
            except _Silent:  # made again at once; the subscription itself worked
                self.silent_resubscribes += 1
                log.info("no event for %.0f s: subscribing again", silent_s)
            except Exception as exc:  # redis ConnectionError/TimeoutError, OSError
                self.pubsub_ok = False
                wait = delay * (0.5 + random.random() / 2)
                log.warning(
                    "events subscription lost (%s: %s); retry in %.1f s",
                    type(exc).__name__,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
                delay = min(RESUBSCRIBE_MAX_S, delay * 2)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except Exception:
                    pass

    async def _push_snapshot(self, attempts: int = 5) -> None:
        """Broadcast a fresh ``snapshot``; retried (pooled connections may be stale
        right after a Redis restart)."""
        for i in range(attempts):
            try:
                data = await self.snapshot_bytes(fresh=True)
            except Exception as exc:
                log.warning("cannot build a fresh snapshot (%s: %s)", type(exc).__name__, exc)
                await asyncio.sleep(0.2 * 2**i)
                continue
            self.hub.broadcast(data, "")
            await self.filtered.push_snapshots()
            return

    async def _status_loop(self) -> None:
        """Every :data:`STATUS_INTERVAL_S`: check Redis, broadcast ``status``, WATCHDOG=1."""
        interval_s = min(STATUS_INTERVAL_S, self.notifier.watchdog_interval_s or STATUS_INTERVAL_S)
        while True:
            self.notifier.watchdog()
            health = await self.health()
            self.hub.broadcast(orjson.dumps(webapi.status_event(health)))
            await asyncio.sleep(interval_s)

    async def health(self) -> dict[str, Any]:
        """The ``/healthz`` object (see :func:`listener.webserver.api.health`); never raises."""
        meta: dict[str, str] | None = None
        try:
            meta = await self.store.meta()
            self.redis_ok = True
        except Exception as exc:
            if self.redis_ok:
                log.warning("Redis unreachable: %s", exc)
            self.redis_ok = False
        clients = len(self.hub.clients)
        now = self.clock()
        return webapi.health(meta, now, self.cfg.step_s, self.redis_ok, self.pubsub_ok, clients)

    # -- websocket ------------------------------------------------------------

    async def handler(self, websocket: ServerConnection) -> None:
        """One websocket: a ``snapshot`` first, then every broadcast event in order.

        Inbound frames are read and ignored (the limit is :data:`MAX_INBOUND_BYTES`).
        """
        address = connection_client(websocket, self.routes.trusted)
        if self.hub.per_address(address) >= self.cfg.max_clients_per_ip:
            self.rejected["per_address"] += 1
            await websocket.close(1008, "too many connections from this address")
            return
        target = websocket.request.path if websocket.request is not None else "/ws"
        try:
            flt = webapi.parse_filter(webapi.split_target(target)[1])
        except webapi.ApiError as exc:  # process_request refused it first
            await websocket.close(1008, str(exc)[:100])
            return
        try:
            if flt.empty:
                snap = await self.snapshot_bytes()
            else:
                snap = await self.filtered.snapshot_bytes(flt)
        except Exception as exc:
            self.rejected["redis"] += 1
            log.warning("no snapshot for a new websocket: %s", exc)
            await websocket.close(1013, "Redis unavailable, retry later")
            return
        client = self.hub.add(websocket, address, flt.key)
        if not flt.empty:  # after add: a view without a client is forgotten
            self.filtered.register(flt)
        self.hub.enqueue(client, snap)
        log.debug("websocket from %s (%d open)", address, len(self.hub.clients))
        pump = asyncio.create_task(self.hub.pump(client))
        try:
            async for _ in websocket:
                pass  # clients have nothing to say
        except Exception:  # ConnectionClosedError, 1009 on a large frame
            pass
        finally:
            self.hub.remove(client)
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)


class WebCollector(Collector):
    """Prometheus metrics of one :class:`WebServer` (read at scrape time)."""

    def __init__(self, web: WebServer) -> None:
        self.web = web

    def collect(self) -> Iterator[Any]:
        w = self.web
        hub = w.hub
        for name, doc, value in (
            ("web_connections", "Websockets accepted", hub.stats.connections),
            ("web_broadcasts", "Events fanned out to websockets", hub.stats.broadcasts),
            ("web_frames_sent", "Websocket frames sent", hub.stats.sent),
            (
                "web_frames_direct",
                "Websocket frames written at once (client keeping up)",
                hub.stats.direct,
            ),
            ("web_clients_cut", "Websockets closed for a backlog (slow)", hub.stats.cut),
            ("web_resubscribes", "Redis pub/sub subscriptions re-established", w.resubscribes),
            (
                "web_silent_resubscribes",
                "Redis pub/sub subscriptions made again after 3 steps without an event",
                w.silent_resubscribes,
            ),
            ("web_bad_events", "Pub/sub messages that were not events", w.bad_events),
            ("web_filter_ticks", "Filtered ticks sent (one per filter)", w.filtered.ticks),
            (
                "web_filter_read_seconds",
                "Seconds spent reading and filtering windows for filtered screens",
                w.filtered.reads_s,
            ),
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
        for status, n in sorted(w.routes.http_status.items()):
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
            ("web_filters", "Distinct screen filters served", len(w.filtered.filters)),
        ):
            g = GaugeMetricFamily(f"fedmsg_wallboard_{name}", doc)
            g.add_metric([], value)
            yield g


async def run_web(
    cfg: Config,
    host: str | None = None,
    port: int | None = None,
    web_root: str | Path | None = None,
    notifier: Notifier | None = None,
    stop: asyncio.Event | None = None,
    reload: Callable[[], Config] | None = None,
) -> int:
    """Run a web process until ``stop`` is set or SIGTERM/SIGINT arrives.

    Start-up: Redis answers -> port bound -> subscribed -> ``READY=1``.  SIGHUP
    re-reads the config with ``reload`` and applies its ``log_level``; the other
    changed settings are logged as needing a restart
    (:func:`listener.runtime.systemd.reload_settings`).

    Returns:
        0 after a clean shutdown.

    Raises:
        listener.core.errors.TransientError: Redis unreachable at start-up (exit 69).
        listener.core.errors.ConfigError: a page file is missing (exit 78).
        OSError: the port cannot be bound.
    """
    notifier = notifier or Notifier()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if not log.isEnabledFor(logging.DEBUG):
        # websockets logs every HTTP response and connection at INFO: too chatty
        # for a wall that reconnects and polls; our own INFO lines remain.
        logging.getLogger("websockets.server").setLevel(logging.WARNING)
    handlers: dict[signal.Signals, Callable[[], object]] = {
        signal.SIGTERM: stop.set,
        signal.SIGINT: stop.set,
    }
    if reload is not None:
        handlers[signal.SIGHUP] = lambda: reload_settings(
            cfg, reload, notifier, reloadable=WEB_RELOADABLE
        )
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    opened = await open_store_unless_stopped(cfg, stop)
    if opened is None:
        log.info("web: stopped before Redis was reachable")
        notifier.close()
        return 0
    store, handle = opened
    web = WebServer(cfg, store, web_root, notifier)
    try:
        await web.start(host, port)
        try:
            await web.wait_subscribed(max(cfg.redis_timeout_s, 10.0))
        except TimeoutError:
            log.warning("events subscription not live yet; serving anyway")
        shown = host or cfg.web_host
        log.info(
            "web: serving http://%s:%d/ (websocket /ws, page version %s)",
            shown,
            web.port,
            web.version,
        )
        notifier.ready(f"serving on {shown}:{web.port}")
        await stop.wait()
        log.info("web: shutting down (%d websockets)", len(web.hub.clients))
        notifier.stopping()
    finally:
        await web.stop()
        await store.close()
        del handle
        notifier.close()
    return 0


def add_parser(sub: Any) -> None:
    """Register the ``web`` subcommand."""
    p = sub.add_parser(
        "web",
        help="serve the wall page, its websocket and the HTTP API",
        description=plain_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8080; 0: any free port)")
    p.add_argument("--web-root", help="page folder (default: the checkout's web/)")
    p.add_argument(
        "--allowed-origin",
        action="append",
        help="websocket Origin allowed (repeatable; default: any)",
    )
    p.add_argument("--max-clients-per-ip", type=int, help="websockets per client address")
    p.add_argument("--client-queue-max", type=int, help="events queued per websocket")
    p.add_argument("--ping-interval", type=float, help="websocket keepalive ping, seconds")
    p.add_argument("--step", type=float, dest="step_s", help="the listener's tick period, s")
    p.add_argument(
        "--trusted-proxy",
        action="append",
        type=ip_network,
        metavar="ADDRESS|NETWORK",
        help="load balancer whose X-Forwarded-For is believed (repeatable; default: none)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``web``; returns the exit code."""
    overrides = {
        "web_host": args.host,
        "web_port": args.port,
        "allowed_origins": tuple(args.allowed_origin) if args.allowed_origin else None,
        "max_clients_per_ip": args.max_clients_per_ip,
        "client_queue_max": args.client_queue_max,
        "ping_interval_s": args.ping_interval,
        "step_s": args.step_s,
        "trusted_proxies": tuple(args.trusted_proxy) if args.trusted_proxy else None,
    }
    cfg = load_config(args, **overrides)
    return asyncio.run(
        run_web(cfg, web_root=args.web_root, reload=lambda: load_config(args, **overrides))
    )
