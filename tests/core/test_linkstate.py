"""The bus states and how inputs' states combine."""

from __future__ import annotations

import pytest

from listener.core.linkstate import LINK_STATES, best_state


@pytest.mark.parametrize(
    ("states", "best"),
    [
        (["dead", "ok"], "ok"),
        (["quiet", "connecting", "dead"], "quiet"),
        (["connecting", "dead"], "connecting"),
        (["dead", "dead"], "dead"),
        ([], "dead"),
    ],
)
def test_the_best_state_wins(states: list[str], best: str) -> None:
    assert best_state(states) == best
    assert best_state(iter(states)) == best


def test_states_are_ordered_best_first() -> None:
    assert LINK_STATES == ("ok", "quiet", "connecting", "dead")
