"""What both processes' ``/metrics`` carry besides their own counters: the process
and platform collectors, the build, and the exposition format the scraper asks for."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from listener import __version__
from listener.core.histogram import Histogram


class BuildInfo(Collector):
    """``fedmsg_wallboard_build_info{version, python, component} 1``."""

    def __init__(self, component: str) -> None:
        self.component = component

    def collect(self) -> Iterator[Any]:
        g = GaugeMetricFamily(
            "fedmsg_wallboard_build_info",
            "The running fedmsg-wallboard: its version, Python and process (always 1)",
            labels=["version", "python", "component"],
        )
        g.add_metric([__version__, platform.python_version(), self.component], 1)
        yield g


def process_registry(component: str) -> CollectorRegistry:
    """A registry of one process: ``process_*`` (CPU, memory, descriptors),
    ``python_info``, ``python_gc_*`` and ``fedmsg_wallboard_build_info``; the
    caller registers its own collectors beside them.

    Args:
        component: ``"listener"`` or ``"web"`` (the build info's label).
    """
    reg = CollectorRegistry(auto_describe=False)
    # the default registry's collectors read the process and the interpreter, not
    # any state of ours: registered in every registry of this process
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        reg.register(collector)
    reg.register(BuildInfo(component))
    return reg


def histogram_family(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    """A :class:`~listener.core.histogram.Histogram` as a Prometheus histogram."""
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], [(le, float(n)) for le, n in hist.cumulative()], hist.total)
    return family


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry's metrics in the format the ``Accept`` header asks for:
    OpenMetrics for ``application/openmetrics-text``, else Prometheus' text format.

    Returns:
        ``(body, content type)``.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
