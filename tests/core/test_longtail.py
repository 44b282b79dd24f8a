"""The longtail metric: the seed's formula, exactly, and its companions."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listener.core.longtail import (
    gini,
    gini_from_histogram,
    longtail,
    longtail_closed_form,
    longtail_normalized,
    stats,
)
from tests.helpers.seed import seed_longtail


@pytest.mark.parametrize(
    "counts, expected",
    [
        ([10, 5, 1], 5 / 3),  # slope -3: ideals 10, 7, 4 -> diffs 0, 2, 3
        ([7], 0.0),  # one user: the line is flat at the head
        ([4, 4, 4, 4], 0.0),  # flat: slope 0, every diff 0
        ([2, 1], 0.25),  # slope -0.5: ideals 2, 1.5 -> diffs 0, 0.5
        # slope -24.75: ideals 100, 75.25, 50.5, 25.75
        ([100, 1, 1, 1], (0 + 74.25 + 49.5 + 24.75) / 4),
    ],
)
def test_hand_worked(counts: list[int], expected: float) -> None:
    assert longtail(counts) == pytest.approx(expected, rel=1e-12)


def test_empty_window_is_none() -> None:
    assert longtail([]) is None
    assert longtail_normalized([]) is None
    assert gini([]) is None
    assert longtail_closed_form(0, 0, 0, 0) is None
    assert stats({}).longtail is None


def test_order_of_input_does_not_matter() -> None:
    assert longtail([1, 10, 5]) == longtail([10, 5, 1])


@pytest.mark.parametrize("seed", range(25))
def test_matches_the_seed_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 400)
    data = {f"u{i}": float(rng.randint(1, 1000)) for i in range(n)}
    assert longtail(data.values()) == seed_longtail(data)


@pytest.mark.parametrize("seed", range(25))
def test_closed_form_equals_loop(seed: int) -> None:
    rng = random.Random(1000 + seed)
    values = [rng.paretovariate(1.2) * 3 for _ in range(rng.randint(1, 2000))]
    values = [float(int(v) + 1) for v in values]
    lt = longtail(values)
    cf = longtail_closed_form(len(values), max(values), min(values), sum(values))
    assert cf == pytest.approx(lt, rel=1e-9, abs=1e-9)


def test_normalized_is_longtail_over_head() -> None:
    assert longtail_normalized([10, 5, 1]) == pytest.approx((5 / 3) / 10)


@pytest.mark.parametrize(
    "counts, expected",
    [
        ([5, 5, 5], 0.0),
        ([0, 0, 10], 2 / 3),  # 1 - 1/n: one user has everything
        ([1, 2, 3, 4], 0.25),  # sum|xi-xj| = 20 over 2 n^2 mean = 2*16*2.5
    ],
)
def test_gini(counts: list[int], expected: float) -> None:
    assert gini(counts) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(10))
def test_gini_histogram_equals_gini(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.randint(1, 20) for _ in range(rng.randint(1, 500))]
    from collections import Counter

    assert gini_from_histogram(Counter(values)) == pytest.approx(gini(values), rel=1e-12)


def test_gini_mean_absolute_difference_definition() -> None:
    values = [3, 1, 4, 1, 5, 9, 2, 6]
    n = len(values)
    mad = sum(abs(a - b) for a in values for b in values) / (n * n)
    assert gini(values) == pytest.approx(mad / (2 * (sum(values) / n)))


def test_stats_head_tail_and_ties() -> None:
    st = stats({"b": 3, "a": 3, "z": 1, "y": 1, "gone": 0})
    assert st.users == 4
    assert st.head == ("a", 3)
    assert st.tail == ("y", 1)
    assert st.longtail == longtail([3, 3, 1, 1])
    assert math.isclose(st.longtail_normalized or 0, (st.longtail or 0) / 3)


@given(st.lists(st.integers(min_value=1, max_value=50), max_size=400))
def test_rank_profile_is_the_sorted_curve_at_its_ranks(values: list[int]) -> None:
    from collections import Counter

    from listener.core.longtail import PROFILE_HEAD_POINTS, PROFILE_POINTS, rank_profile

    ranked = sorted(values, reverse=True)
    prof = rank_profile(Counter(values))
    if not values:
        assert prof == ()
        return
    ranks = [r for r, _ in prof]
    assert ranks == sorted(set(ranks)) and ranks[0] == 1 and ranks[-1] == len(values)
    assert all(c == ranked[r - 1] for r, c in prof)  # exact at every rank it gives
    assert len(prof) <= PROFILE_HEAD_POINTS + PROFILE_POINTS + 1
    assert ranks[: min(len(values), PROFILE_HEAD_POINTS)] == list(
        range(1, min(len(values), PROFILE_HEAD_POINTS) + 1)
    )


def test_rank_profile_spans_all_users_of_a_large_window() -> None:
    from collections import Counter

    from listener.core.longtail import rank_profile

    values = [max(1, 1000 // r) for r in range(1, 10_001)]  # Zipf-like, 10,000 users
    prof = rank_profile(Counter(values))
    assert prof[0] == (1, 1000) and prof[-1] == (10_000, 1)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(prof[15:])]
    assert max(gaps) <= 10_000 // 47 + 1  # evenly spread, not only the head
