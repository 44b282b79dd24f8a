"""Prometheus metrics (prometheus-client) built from a consumer's :class:`Stats`.

A custom collector reads the live counters at scrape time, so no global metric
objects are shared between consumers (tests run several in one process).
Metric names: ``fedmsg_wallboard_<what>_total`` for counters (messages unless
named otherwise), gauges without ``_total``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class ConsumerCollector(Collector):
    """Exports a :class:`listener.consumer.Consumer`'s counters."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer

    def collect(self) -> Iterator[Any]:
        s = self.consumer.stats
        for name, doc, value in (
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
            ("gaps", "Messages missing by publisher sequence number", s.gaps),
            ("bus_reconnects", "SUB sockets recreated", s.bus_reconnects),
            ("redis_resets", "Times Redis came back empty", s.redis_resets),
        ):
            c = CounterMetricFamily(f"fedmsg_wallboard_{name}", doc)
            c.add_metric([], value)
            yield c
        rej = CounterMetricFamily(
            "fedmsg_wallboard_rejected", "Messages rejected, by reason", labels=["reason"]
        )
        for reason, n in sorted(s.rejected.items()):
            rej.add_metric([reason], n)
        yield rej
        g = GaugeMetricFamily("fedmsg_wallboard_pending", "Messages waiting for Redis")
        g.add_metric([], len(self.consumer.pending))
        yield g
        g = GaugeMetricFamily("fedmsg_wallboard_flush_seconds", "Duration of the last flush")
        g.add_metric([], s.flush_seconds)
        yield g
        g = GaugeMetricFamily("fedmsg_wallboard_redis_up", "1 when the last Redis call worked")
        g.add_metric([], 1.0 if self.consumer.redis_ok else 0.0)
        yield g


def registry_for(consumer: Any) -> CollectorRegistry:
    """A registry holding only this consumer's metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ConsumerCollector(consumer))
    return reg


def serve_metrics(consumer: Any, port: int, addr: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on ``addr:port`` in a thread; returns the server (``.shutdown()``)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry_for(consumer))
    return server
