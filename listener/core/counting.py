"""What a flush adds: messages as :class:`Counted` rows, aggregated per bucket.
Pure: the same rows give the same :class:`~listener.core.windows.Counts`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import chain
from typing import NamedTuple

from listener.core.windows import Counts


class Counted(NamedTuple):
    """One message ready to be written: the unit of a flush.

    A named tuple (immutable, built on every message: cheaper than a frozen
    dataclass).

    Attributes:
        msg_id: fedmsg msg_id ("" when missing: then never de-duplicated).
        timestamp: UNIX seconds (already clamped), int.
        topic / category: as in the envelope.
        users: usernames (may be empty).
    """

    msg_id: str
    timestamp: int
    topic: str
    category: str
    users: tuple[str, ...]


def aggregate(
    batch: Iterable[Counted],
    buckets_s: Iterable[int],
    oldest: dict[int, int] | None = None,
) -> dict[tuple[int, int], Counts]:
    """Per-bucket counts of a batch: what a flush adds to Redis.

    Args:
        batch: messages (duplicates included: the flush takes them out).
        buckets_s: bucket sizes, seconds.
        oldest: per bucket size, the oldest bucket start wanted
            (:meth:`listener.storage.store.Store.oldest_starts`); older buckets are left out.

    Returns:
        ``{(bucket_s, bucket start): Counts}`` for every bucket a message falls in.
    """
    batch = list(batch)
    if not batch:
        return {}
    stamps = [int(m.timestamp) for m in batch]
    lo, hi = min(stamps), max(stamps)
    out: dict[tuple[int, int], Counts] = {}
    whole: Counts | None = None  # the whole batch's counts, once computed
    for b in buckets_s:
        if lo - lo % b == hi - hi % b:  # one bucket: live traffic, nearly always
            groups = {lo - lo % b: batch}
        else:
            groups = {}
            for m, ts in zip(batch, stamps, strict=True):
                group = groups.get(ts - ts % b)
                if group is None:
                    groups[ts - ts % b] = [m]
                else:
                    group.append(m)
        first = oldest.get(b) if oldest else None
        for start, group in groups.items():
            if first is not None and start < first:
                continue
            if group is batch:  # the batch fits one bucket of this size too
                if whole is None:
                    whole = _bucket_counts(batch)
                    out[(b, start)] = whole
                else:
                    out[(b, start)] = whole.copy()
            else:
                out[(b, start)] = _bucket_counts(group)
    return out


def _bucket_counts(group: list[Counted]) -> Counts:
    # columns by zip(*) and Counter(iterable) count in C: much cheaper than one
    # Counter increment per message and field
    _, _, topics, categories, users = zip(*group, strict=True)
    return Counts(
        len(group),
        Counter(topics),
        Counter(categories),
        Counter(chain.from_iterable(users)),
        Counter([(u, c) for us, c in zip(users, categories, strict=True) for u in us]),
    )
