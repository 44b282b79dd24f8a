"""How often a repeated event is logged: a flood of bad messages, gaps or failures
must not flood the journal, and every one of them is still counted in a metric."""

from __future__ import annotations

import logging


def is_log_milestone(n: int) -> bool:
    """Whether the ``n``-th occurrence of a repeated event is logged at WARNING: the
    1st, 10th, 100th, 1,000th and every 10,000th (the others go to DEBUG)."""
    return n in (1, 10, 100, 1000) or n % 10000 == 0


def milestone_level(n: int) -> int:
    """The log level of the ``n``-th occurrence: WARNING at a milestone
    (:func:`is_log_milestone`), else DEBUG."""
    return logging.WARNING if is_log_milestone(n) else logging.DEBUG
