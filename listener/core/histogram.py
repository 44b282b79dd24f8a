"""A fixed-bucket histogram of durations, the shape Prometheus exposes
(``_bucket{le=...}`` cumulative counts, ``_sum``, ``_count``)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Upper bounds of a flush's duration buckets, seconds (a flush of a live batch takes
#: about a millisecond; a backlog's batches up to a few hundred).
FLUSH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    """Observations counted per bucket.

    Attributes:
        bounds: the buckets' upper bounds, ascending (``+Inf`` is implied).
        counts: observations per bucket, not cumulative; the last one is ``+Inf``'s.
        total: the sum of the observations.
    """

    bounds: Sequence[float] = FLUSH_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one observation (a value equal to a bound falls in that bucket)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, observations <= le), ..., ("+Inf", count)]``, as Prometheus lists
        the buckets."""
        out, running = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
