"""The listener's monitoring port: Prometheus ``/metrics`` and ``/healthz``.

``/metrics`` is prometheus-client's text exposition format.  A custom collector
reads the live counters of one listener (consumer and inputs) at scrape
time, so no global metric objects are shared between consumers (tests run several
in one process).  Metric names: ``fedmsg_wallboard_<what>_total`` for counters
(messages unless named otherwise), gauges without ``_total``, times in seconds.

``/healthz`` (also ``/ready``) answers JSON, status 200 when ready, else 503::

    {"live": true, "ready": true, "redis_ok": true, "bus_state": "ok",
     "last_message_at": 1504643075.0,
     "last_message_age_s": 3.2, "lag_s": 0.4, "pending": 0, "received": 25,
     "counted": 25}

``live``: the event loop ran a no-op within :data:`PROBE_TIMEOUT_S`; ``redis_ok``:
Redis answered PING through the listener's own connection within that time;
``ready`` = both.  ``bus_state``: the inputs' best state (the ZeroMQ links',
:meth:`listener.inputs.zmq.Bus.state`, and AMQP's, :meth:`listener.inputs.amqp.AmqpInput.state`:
``ok``, ``quiet``, ``connecting`` or ``dead``), reported, not part of ``ready``: a
dead publisher is not fixed by restarting the listener, which reconnects by itself
(the web process's
``/healthz`` judges the whole: not ok while the bus is dead).
``last_message_at``: timestamp of the newest counted message (UNIX s);
``last_message_age_s``: seconds since the newest message *arrived*;
``lag_s``: seconds between a message's timestamp and its arrival, for the newest
one (bus + publisher delay; None before the first).  ``/live`` answers 200 while
the loop is live.  The server runs in a thread, so a stuck loop still gets
a (503) answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from listener.daemon.consumer import Consumer
from listener.daemon.inputs import Inputs
from listener.runtime.metrics import histogram_family, process_registry

#: Longest wait for the event loop / Redis in a health probe, seconds.
PROBE_TIMEOUT_S = 2.0


class ConsumerCollector(Collector):
    """Exports the listener's counters (read at scrape time).

    Args:
        consumer: the running consumer (its ``stats``, ``intake``, ``windows``,
            ``redis_ok``, ``last_message_at``, ``last_received_at``).
        inputs: the bus inputs (their gaps and reconnects).
    """

    def __init__(self, consumer: Consumer, inputs: Inputs) -> None:
        self.consumer = consumer
        self.inputs = inputs

    def collect(self) -> Iterator[Any]:
        """The metric families, from one read of the consumer's counters."""
        s = self.consumer.stats
        counters: tuple[tuple[str, str, int], ...] = (
            ("received", "Messages received from the bus (valid or not)", s.received),
            ("accepted", "Messages accepted for counting", s.accepted),
            ("counted", "Messages written to Redis as new", s.counted),
            ("duplicates", "Messages skipped as duplicate msg_id", s.duplicates),
            ("processor_errors", "fedmsg.meta processors that raised", s.processor_errors),
            ("future_clamped", "Timestamps far in the future, clamped", s.future_clamped),
            ("pending_overflow", "Messages dropped: pending buffer full", s.pending_overflow),
            ("flushes", "Successful Redis flushes", s.flushes),
            ("redis_errors", "Failed Redis flushes", s.flush_errors),
            ("blink_dropped", "Messages left out of blink batches", s.blink_dropped),
            ("gaps", "Messages missing by publisher sequence number", self.inputs.gaps),
            (
                "bus_reconnects",
                "ZeroMQ sockets recreated and AMQP sessions retried",
                self.inputs.reconnects,
            ),
            ("redis_resets", "Times Redis came back empty", s.redis_resets),
            ("heap_trims", "Times a burst's memory was handed back", s.heap_trims),
            (
                "standby_expired",
                "Messages a standby kept, then dropped as older than standby_keep_s",
                s.standby_expired,
            ),
        )
        for name, doc, value in counters:
            c = CounterMetricFamily(f"fedmsg_wallboard_{name}", doc)
            c.add_metric([], value)
            yield c
        rej = CounterMetricFamily(
            "fedmsg_wallboard_rejected", "Messages rejected, by reason", labels=["reason"]
        )
        # dict() copies atomically under the GIL; the loop may add a reason meanwhile
        for reason, n in sorted(dict(s.rejected).items()):
            rej.add_metric([reason], n)
        yield rej
        g = GaugeMetricFamily("fedmsg_wallboard_pending", "Messages waiting for Redis")
        g.add_metric([], len(self.consumer.intake.pending))
        yield g
        g = GaugeMetricFamily(
            "fedmsg_wallboard_flush_seconds", "Duration of the last successful flush, seconds"
        )
        g.add_metric([], s.flush_seconds)
        yield g
        yield histogram_family(
            "fedmsg_wallboard_flush_duration_seconds",
            "Duration of each successful flush, seconds",
            s.flush_durations,
        )
        g = GaugeMetricFamily(
            "fedmsg_wallboard_lease_held", "1 when this listener holds the writer lease"
        )
        g.add_metric([], 1.0 if self.consumer.holding else 0.0)
        yield g
        g = GaugeMetricFamily("fedmsg_wallboard_redis_up", "1 when the last Redis call worked")
        g.add_metric([], 1.0 if self.consumer.redis_ok else 0.0)
        yield g
        for name, doc, stamp in (
            (
                "last_message_timestamp_seconds",
                "Timestamp of the newest counted message (UNIX s)",
                self.consumer.last_message_at,
            ),
            (
                "last_received_timestamp_seconds",
                "Arrival time of the newest accepted message (UNIX s)",
                self.consumer.last_received_at,
            ),
        ):
            if stamp is not None:
                g = GaugeMetricFamily(f"fedmsg_wallboard_{name}", doc)
                g.add_metric([], float(stamp))
                yield g
        wm = GaugeMetricFamily(
            "fedmsg_wallboard_window_messages",
            "Messages in each sliding window",
            labels=["window_s"],
        )
        wu = GaugeMetricFamily(
            "fedmsg_wallboard_window_users",
            "Distinct users in each sliding window",
            labels=["window_s"],
        )
        for window_s, win in sorted(dict(self.consumer.windows).items()):
            totals = win.totals
            wm.add_metric([str(window_s)], totals.messages)
            wu.add_metric([str(window_s)], len(totals.users))
        yield wm
        yield wu
        g = GaugeMetricFamily(
            "fedmsg_wallboard_backfill_status",
            "1 for the state of the last datagrepper backfill (P:meta backfill_status)",
            labels=["status"],
        )
        status = self.consumer.store.backfill_status
        for name in ("running", "done", "incomplete"):
            g.add_metric([name], 1.0 if status == name else 0.0)
        yield g
        yield from self._alert_families()

    def _alert_families(self) -> Iterator[Any]:
        """The silence detector's verdicts (:mod:`listener.core.silence`): one gauge
        per judged category (and busy topic) for silent and for bursting, and
        whether it judges at all (not warming up, bus up)."""
        detector = self.consumer.silence
        states = dict(detector.states)  # replaced whole by each step: one read
        silent = GaugeMetricFamily(
            "fedmsg_wallboard_silent",
            "1 when a category (or busy topic) is silent beyond its usual rate",
            labels=["kind", "name"],
        )
        bursting = GaugeMetricFamily(
            "fedmsg_wallboard_bursting",
            "1 when a category (or busy topic) is far above its usual rate",
            labels=["kind", "name"],
        )
        for (kind, name), state in sorted(states.items()):
            if state == "rare":
                continue
            silent.add_metric([kind, name], 1.0 if state == "silent" else 0.0)
            bursting.add_metric([kind, name], 1.0 if state == "bursting" else 0.0)
        yield silent
        yield bursting
        mode = str(self.consumer.alerts.get("mode"))
        g = GaugeMetricFamily(
            "fedmsg_wallboard_alerts_judging",
            "1 when the silence detector judges (not warming up, bus link up)",
            labels=["mode"],
        )
        g.add_metric([mode], 0.0 if mode in ("warming_up", "bus_down") else 1.0)
        yield g


def registry_for(consumer: Consumer, inputs: Inputs) -> CollectorRegistry:
    """A registry of this listener's metrics and its process's
    (:func:`listener.runtime.metrics.process_registry`)."""
    reg = process_registry("listener")
    reg.register(ConsumerCollector(consumer, inputs))
    return reg


def _probe(loop: asyncio.AbstractEventLoop | None, coro_fn: Any) -> bool:
    """Run ``coro_fn()`` on ``loop`` from another thread; True if it returned truthy in time."""
    if loop is None or loop.is_closed():
        return False
    try:
        fut = asyncio.run_coroutine_threadsafe(coro_fn(), loop)
    except RuntimeError:  # loop closed meanwhile
        return False
    try:
        return bool(fut.result(timeout=PROBE_TIMEOUT_S))
    except Exception:
        fut.cancel()
        return False


def health(
    consumer: Consumer, inputs: Inputs, loop: asyncio.AbstractEventLoop | None, now: float
) -> dict[str, Any]:
    """The ``/healthz`` object (module docstring); probes the loop and Redis.

    Args:
        consumer: the running consumer.
        inputs: the bus inputs.
        loop: the event loop the consumer runs on (None: not live).
        now: UNIX seconds.
    """

    async def noop() -> bool:
        return True

    async def ping() -> bool:
        return bool(await consumer.store.ping())

    live = _probe(loop, noop)
    redis_ok = live and _probe(loop, ping)
    try:
        bus_state: str | None = inputs.state(now)
    except Exception:  # read from this thread while the loop changes the links
        bus_state = None
    last_at = consumer.last_message_at
    received_at = consumer.last_received_at
    return {
        "live": live,
        "ready": live and redis_ok,
        "redis_ok": redis_ok,
        "bus_state": bus_state,
        "last_message_at": last_at,
        "last_message_age_s": None if received_at is None else round(now - received_at, 3),
        "lag_s": (
            None
            if last_at is None or received_at is None
            else round(max(0.0, received_at - last_at), 3)
        ),
        "pending": len(consumer.intake.pending),
        "received": consumer.stats.received,
        "counted": consumer.stats.counted,
    }


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def shutdown(self) -> None:
        """Stop serving and close the listening socket."""
        super().shutdown()
        self.server_close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_app(consumer: Consumer, inputs: Inputs, loop: asyncio.AbstractEventLoop | None) -> Any:
    """The WSGI app: ``/healthz``, ``/ready``, ``/live`` and, on any other path,
    prometheus-client's ``/metrics`` app."""
    metrics_app = make_wsgi_app(registry_for(consumer, inputs))

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/ready", "/live"):
            obj = health(consumer, inputs, loop, time.time())
            ok = obj["live"] if path == "/live" else obj["ready"]
            body = json.dumps(obj).encode()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    return app


def serve_metrics(
    consumer: Consumer,
    inputs: Inputs,
    port: int,
    addr: str = "127.0.0.1",
    loop: asyncio.AbstractEventLoop | None = None,
) -> Any:
    """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` in a daemon thread.

    Args:
        consumer: the running consumer.
        inputs: the bus inputs.
        port: TCP port (0: any free one; read ``server.server_port``).
        addr: address to bind (default loopback only).
        loop: the consumer's event loop (default: the running loop, if any).

    Returns:
        The server; ``.shutdown()`` stops it and closes its socket.

    Raises:
        OSError: the port cannot be bound.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
    try:
        server = make_server(
            addr,
            port,
            make_app(consumer, inputs, loop),
            _ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
    except OSError as exc:  # "[Errno 98] Address already in use" names no port
        raise OSError(exc.errno, f"metrics port {addr}:{port}: {exc.strerror}") from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server
