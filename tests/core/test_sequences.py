"""Publisher sequence numbers: what counts as a gap, what does not."""

from __future__ import annotations

import pytest

from listener.core.sequences import SequenceTracker


@pytest.mark.parametrize(
    ("seq", "gaps"),
    [
        (list(range(1, 101)), 0),
        (list(range(1, 11)) + list(range(20, 31)), 9),  # a jump: 11..19 missing
        (list(range(1, 101)) + list(range(1, 51)), 0),  # a restart is not a gap
        (list(range(5, 9)) + list(range(1, 6)), 0),  # a restart below the old sequence
        ([1, 5, 6, 7], 0),  # a jump before the sequence is confirmed: not counted
        ([1, 2, 3, 3, 4, 4, 5], 0),  # duplicates
        ([1, 2, 3, 50_000], 49_996),  # one confirmed sequence: any jump counts
        # two threads of one publisher, interleaved (fedmsg: one context per thread)
        ([100, 5000, 101, 5001, 102, 5002, 103, 5003, 110], 6),
        # a third thread appears far ahead of two confirmed ones: not a gap
        ([100, 5000, 101, 5001, 102, 5002, 3000, 103], 0),
        ([0, 0, 0], 0),  # no sequence number
    ],
)
def test_sequence_tracker(seq: list[int], gaps: int) -> None:
    t = SequenceTracker()
    assert sum(t.observe("pub", i) for i in seq) == gaps
    assert t.gaps == gaps


def test_a_gap_needs_a_confirmed_sequence_and_a_near_step_among_several() -> None:
    t = SequenceTracker(confirm=2, join_max=10)
    for i in (1000, 1001, 1002, 1, 2, 3):  # two sequences of one publisher
        t.observe("pub", i)
    assert t.observe("pub", 20) == 0  # 17 ahead of 3: another thread, not a gap
    assert t.observe("pub", 1005) == 2  # near its confirmed sequence: a gap of 2
    assert (t.gaps, t.streams_started) == (2, 3)


def test_a_restart_at_one_is_counted_as_such() -> None:
    t = SequenceTracker()
    for i in (1, 2, 3, 1, 2):
        t.observe("pub", i)
    assert (t.gaps, t.restarts) == (0, 1)


def test_identities_and_their_sequences_are_bounded() -> None:
    t = SequenceTracker(max_streams=2, max_identities=2)
    for name in ("a", "b", "c"):  # "a" is the least recently used: dropped
        t.observe(name, 1)
    assert t.observe("a", 5) == 0 and t.streams_started == 4  # "a" starts afresh
    for i in (10, 20, 30):  # three sequences of "b": the oldest is dropped
        t.observe("b", i)
    assert t.observe("b", 3) == 0  # 1 and 2 are gone: a new sequence, not a gap
