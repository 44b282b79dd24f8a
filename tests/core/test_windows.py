"""Bucket arithmetic and sliding windows (pure)."""

from __future__ import annotations

import pytest

from listener.core.windows import Counts, SlidingWindow, bucket_start, choose_bucket, window_buckets


@pytest.mark.parametrize(
    "ts, size, start",
    [(0, 60, 0), (59.999, 60, 0), (60, 60, 60), (1504643021.7, 3600, 1504641600), (-1, 60, -60)],
)
def test_bucket_start(ts: float, size: int, start: int) -> None:
    assert bucket_start(ts, size) == start


@pytest.mark.parametrize(
    "window, bucket", [(3600, 60), (86400, 3600), (604800, 3600), (600, 60), (7200, 60)]
)
def test_choose_bucket(window: int, bucket: int) -> None:
    assert choose_bucket(window, (60, 3600)) == bucket


def test_choose_bucket_rejects_odd_windows() -> None:
    with pytest.raises(ValueError):
        choose_bucket(90, (60, 3600))


def test_window_buckets_end_with_the_current_bucket() -> None:
    r = window_buckets(10_000.5, 3600, 60)
    assert len(r) == 60
    assert r[-1] == 9960 and r[0] == 9960 - 3540


def test_sliding_window_adds_and_removes_whole_buckets() -> None:
    w = SlidingWindow(180, 60)
    assert w.advance(1000) == []  # buckets 840, 900, 960
    c1 = Counts()
    c1.add_message("t.a", "a", ["u1", "u2"])
    assert w.add(960, c1)
    assert not w.add(600, c1)  # outside the window: ignored
    c2 = Counts()
    c2.add_message("t.b", "b", ["u1"])
    assert w.add(840, c2)
    assert w.totals.messages == 2 and w.totals.users["u1"] == 2
    gone = w.advance(1030)  # now 900, 960, 1020: 840 left
    assert gone == [840]
    w.remove(c2)
    assert w.totals.messages == 1
    assert dict(w.totals.users) == {"u1": 1, "u2": 1}
    assert "t.b" not in w.totals.topics  # zeros are dropped
    assert w.advance(1000) == []  # never backwards
    assert not w.totals.usercat and c1.usercat  # windows do not keep user x category


def test_counts_merge_subtract_round_trip() -> None:
    a = Counts()
    a.add_message("t.x", "x", ["p", "q"])
    b = a.copy()
    b.add_message("t.y", "y", [])
    b.merge(a, -1)
    assert b.messages == 1 and dict(b.topics) == {"t.y": 1} and not b.users and not b.usercat
