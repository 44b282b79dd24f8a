"""Reference implementations ported from the seed project, to check ours against."""

from __future__ import annotations


def seed_longtail(data: dict[str, float]) -> float:
    """A line-by-line Python 3 port of the seed's longtail-analyze.py loop body."""
    comparator = lambda item: item[1]  # noqa: E731
    head = max(data.items(), key=comparator)
    tail = min(data.items(), key=comparator)
    x1, y1 = 0, head[1]
    x2, y2 = len(data), tail[1]
    slope = (y2 - y1) / (x2 - x1)
    intercept = y1
    metric = 0
    data_tuples = sorted(data.items(), key=comparator, reverse=True)
    for index, item in enumerate(data_tuples):
        username, actual = item
        ideal = slope * index + intercept
        diff = ideal - actual
        metric = metric + diff
    return metric / len(data)
