"""The fixed-bucket histogram behind the flush durations."""

from __future__ import annotations

from listener.core.histogram import FLUSH_BUCKETS_S, Histogram


def test_observations_fall_in_the_first_bucket_that_holds_them() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v)
    assert h.counts == [2, 2, 1]
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert (h.count, h.total) == (5, 4.65)


def test_an_empty_histogram_has_every_bucket_at_zero() -> None:
    h = Histogram()
    assert h.bounds == FLUSH_BUCKETS_S and h.count == 0 and h.total == 0.0
    assert h.cumulative()[-1] == ("+Inf", 0) and len(h.cumulative()) == len(FLUSH_BUCKETS_S) + 1
