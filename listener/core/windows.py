"""Time buckets and sliding windows.

Counts are kept in *buckets*: a bucket of ``bucket_s`` seconds starting at
``start = floor(timestamp / bucket_s) * bucket_s`` (UNIX seconds, UTC) holds every
message whose own fedmsg ``timestamp`` falls in ``[start, start + bucket_s)``.
Several bucket sizes are kept at once (default 60 s and 3600 s).

A *window* of ``window_s`` seconds ending at ``end`` is read from the bucket size
chosen by :func:`choose_bucket` and covers the ``window_s / bucket_s`` buckets that
end with the bucket holding ``end``: the buckets starting at
``bucket_start(end) - window_s + bucket_s ... bucket_start(end)``.  So a window is
exact at bucket granularity: its oldest edge moves one bucket at a time (at most
``bucket_s`` of extra history; 60 s for the 1 h window, 1 h for 24 h and 7 d).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: Separator of user and category in per-user-per-category fields.
UC_SEP = "\x1f"


def bucket_start(timestamp: float, bucket_s: int) -> int:
    """Start (UNIX s) of the ``bucket_s`` bucket holding ``timestamp``."""
    return int(timestamp // bucket_s) * bucket_s


def choose_bucket(window_s: int, buckets_s: Sequence[int], max_buckets: int = 200) -> int:
    """The finest bucket size that divides ``window_s`` into at most ``max_buckets``.

    Args:
        window_s: window length, seconds.
        buckets_s: available bucket sizes, seconds.

    Raises:
        ValueError: no bucket size divides the window evenly within the limit.
    """
    for b in sorted(buckets_s):
        if window_s % b == 0 and window_s // b <= max_buckets:
            return b
    raise ValueError(
        f"no bucket size in {list(buckets_s)} divides a {window_s} s window "
        f"into <= {max_buckets} buckets"
    )


def window_buckets(end: float, window_s: int, bucket_s: int) -> range:
    """Starts of the buckets that make up the window ending at ``end``.

    Returns a ``range`` of ``window_s // bucket_s`` bucket starts, oldest first.
    """
    last = bucket_start(end, bucket_s)
    first = last - window_s + bucket_s
    return range(first, last + 1, bucket_s)


@dataclass
class Counts:
    """Message counts of one bucket or one window.

    Attributes:
        messages: messages counted (each message once).
        topics: ``{topic: messages}``.
        categories: ``{category: messages}``.
        users: ``{username: messages}`` (a message adds 1 to each of its users).
        usercat: ``{(username, category): messages}``.
    """

    messages: int = 0
    topics: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    users: Counter[str] = field(default_factory=Counter)
    usercat: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add_message(self, topic: str, category: str, users: Iterable[str]) -> None:
        """Count one message."""
        self.messages += 1
        self.topics[topic] += 1
        self.categories[category] += 1
        for u in users:
            self.users[u] += 1
            self.usercat[(u, category)] += 1

    def merge(self, other: Counts, sign: int = 1, usercat: bool = True) -> None:
        """Add (``sign=1``) or subtract (``sign=-1``) another Counts; drops zeros.

        ``usercat=False`` leaves ``usercat`` alone (what :class:`SlidingWindow` keeps).
        """
        self.messages += sign * other.messages
        for mine, theirs in (
            (self.topics, other.topics),
            (self.categories, other.categories),
            (self.users, other.users),
        ):
            _merge_counter(mine, theirs, sign)
        if usercat:
            _merge_counter(self.usercat, other.usercat, sign)

    def copy(self) -> Counts:
        """A deep copy."""
        return Counts(
            self.messages,
            Counter(self.topics),
            Counter(self.categories),
            Counter(self.users),
            Counter(self.usercat),
        )


def _merge_counter(mine: Counter, theirs: Counter, sign: int) -> None:  # type: ignore[type-arg]
    for k, v in theirs.items():
        n = mine.get(k, 0) + sign * v
        if n:
            mine[k] = n
        else:
            mine.pop(k, None)


class SlidingWindow:
    """Running totals of one window, kept by adding and removing whole buckets.

    The totals hold ``messages``, ``topics``, ``categories`` and ``users``: what the
    step's snapshot reads.  ``usercat`` stays empty: the radar reads it from the
    buckets in Redis, and keeping it here would add a large share to every flush's
    merging (it is the largest of the counters) for nothing.

    The I/O shell feeds it: :meth:`add` for counts just written to a bucket,
    :meth:`advance` to move the end, which returns the bucket starts that left the
    window; the shell reads those buckets' counts back and calls :meth:`remove`.
    Counts for buckets outside the window are ignored by :meth:`add`.

    Args:
        window_s: window length, seconds; bucket_s: bucket size, seconds.
    """

    def __init__(self, window_s: int, bucket_s: int) -> None:
        if window_s % bucket_s:
            raise ValueError(f"window {window_s} s is not a multiple of bucket {bucket_s} s")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.totals = Counts()
        self.first: int | None = None  # oldest bucket start in the window
        self.last: int | None = None  # newest bucket start in the window

    def contains(self, start: int) -> bool:
        """Whether bucket ``start`` is inside the window now."""
        return self.first is not None and self.last is not None and self.first <= start <= self.last

    def advance(self, end: float) -> list[int]:
        """Move the window's end to ``end`` (never backwards).

        Returns:
            Bucket starts that were in the window and no longer are, oldest first.
        """
        rng = window_buckets(end, self.window_s, self.bucket_s)
        new_first, new_last = rng[0], rng[-1]
        if self.first is None or self.last is None:
            self.first, self.last = new_first, new_last
            return []
        if new_last <= self.last:
            return []
        gone = [b for b in range(self.first, self.last + 1, self.bucket_s) if b < new_first]
        self.first, self.last = new_first, new_last
        return gone

    def add(self, start: int, counts: Counts) -> bool:
        """Add a bucket's new counts if the bucket is in the window; returns whether it was."""
        if not self.contains(start):
            return False
        self.totals.merge(counts, 1, usercat=False)
        return True

    def remove(self, counts: Counts) -> None:
        """Subtract a departed bucket's counts (as read back from the store)."""
        self.totals.merge(counts, -1, usercat=False)

    def reset(self, totals: Counts, end: float) -> None:
        """Replace the totals (a fresh read of every bucket of the window ending at
        ``end``; its ``usercat`` is dropped)."""
        rng = window_buckets(end, self.window_s, self.bucket_s)
        self.first, self.last = rng[0], rng[-1]
        totals.usercat.clear()
        self.totals = totals
