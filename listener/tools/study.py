"""``fedmsg-wallboard longtail``: the seed's longtail study as one fast command.

The seed (Ralph Bean's and Remy DeCausemaker's grokkingfedmsg hack session notes,
``longtail-gather.py`` and ``longtail-analyze.py``) takes N = 50 window ends ::

    range(int(now - whole_range), int(now), int(whole_range / N))

downloads, for each end, every message of the ``whole_range`` (one day) before
it from datagrepper, counts messages per user with ``fedmsg.meta`` (each message
adds 1 to each of its users) and plots the longtail metric of every window with
pygal.  Windows overlap, so each message is downloaded and parsed ~50 times.

Here every message is read once (a file, or datagrepper paged once over the
whole span), its users found once, and the N windows computed in one sliding
pass: messages sorted by timestamp, two pointers moved across the window ends,
adding and removing per-user counts.  Window ``k`` holds the messages with
``end_k - range_s < timestamp <= end_k``.  The metrics are
:func:`listener.core.longtail.stats` (the seed's exact ``longtail``, plus
``longtail_normalized`` and ``gini``).  :func:`recount_windows` is the
straightforward per-window recount, kept as the reference the tests and the
benchmark compare with.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson

from listener.core.errors import EXIT_INCOMPLETE, InputError
from listener.core.longtail import LongtailStats, stats
from listener.core.users import UserExtractor, clean_usernames, load_fedmsg_config
from listener.inputs.datagrepper import (
    DatagrepperClient,
    message_key,
    message_timestamp,
    progress_wanted,
)
from listener.runtime.options import (
    add_datagrepper_options,
    datagrepper_limits,
    epoch_seconds,
    http_url,
    plain_text,
)
from listener.tools.examples import builtin_examples, unwrap_record

log = logging.getLogger(__name__)

#: One message reduced to what the study needs: ``(timestamp, users)``.
Event = tuple[float, tuple[str, ...]]

DEFAULT_RANGE_S = 86400
DEFAULT_WINDOWS = 50


@dataclass(frozen=True)
class WindowPoint:
    """The metrics of one window.

    Attributes:
        end: the window's end, UNIX seconds (int, as the seed's ``range``).
        messages: messages with ``end - range_s < timestamp <= end``.
        stats: users, longtail (messages), longtail_normalized, gini, head, tail.
    """

    end: int
    messages: int
    stats: LongtailStats

    def as_dict(self) -> dict[str, Any]:
        """``{"end", "messages", "users", "longtail", "longtail_normalized", "gini",
        "head": [name, count] | None, "tail": [name, count] | None}``."""
        st = self.stats
        return {
            "end": self.end,
            "messages": self.messages,
            "users": st.users,
            "longtail": st.longtail,
            "longtail_normalized": st.longtail_normalized,
            "gini": st.gini,
            "head": list(st.head) if st.head else None,
            "tail": list(st.tail) if st.tail else None,
        }


# -- the computation (pure) ---------------------------------------------------


def window_ends(end: float, range_s: float, windows: int) -> list[int]:
    """The seed's window ends: ``range(int(end - range_s), int(end), int(range_s / windows))``.

    Args:
        end: the study's end, UNIX seconds (the seed's ``now``).
        range_s: each window's length, seconds (the seed's ``whole_range``).
        windows: N, the number of windows asked for.

    Returns:
        Window ends in ascending order, UNIX seconds.  There are exactly
        ``windows`` of them when ``range_s`` is a multiple of ``windows``, a few
        more otherwise (the seed's expression).  The first ends ``range_s`` before
        ``end``: the study covers ``2 * range_s`` of messages.

    Raises:
        ValueError: ``windows < 1`` or ``range_s / windows < 1`` (a zero step).
    """
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    step = int(range_s / windows)
    if step < 1:
        raise ValueError(
            f"range {range_s} s split in {windows} windows gives a step of 0 s; "
            "use a longer range or fewer windows"
        )
    return list(range(int(end - range_s), int(end), step))


def sliding_windows(
    events: Iterable[Event], ends: Sequence[int], range_s: float
) -> list[WindowPoint]:
    """All windows in one pass over the messages.

    Args:
        events: ``(timestamp, users)`` per message, any order; each message adds 1
            to each of its users (users of one message are distinct).
        ends: window ends, UNIX seconds, ascending.
        range_s: window length, seconds.

    Returns:
        One :class:`WindowPoint` per end, in order; identical to
        :func:`recount_windows`.

    Cost: one sort, then every message added once and removed once, plus
    :func:`listener.core.longtail.stats` per window.

    Raises:
        ValueError: ``ends`` not ascending.
    """
    if any(b < a for a, b in pairwise(ends)):
        raise ValueError("window ends must be ascending")
    evs = sorted(events, key=lambda e: e[0])
    stamps = [e[0] for e in evs]
    counts: dict[str, int] = {}
    n = len(evs)
    lo = hi = 0
    points = []
    for end in ends:
        while hi < n and stamps[hi] <= end:
            for u in evs[hi][1]:
                counts[u] = counts.get(u, 0) + 1
            hi += 1
        start = end - range_s
        while lo < hi and stamps[lo] <= start:
            for u in evs[lo][1]:
                c = counts[u] - 1
                if c:
                    counts[u] = c
                else:
                    del counts[u]
            lo += 1
        points.append(WindowPoint(int(end), hi - lo, stats(counts)))
    return points


def recount_windows(
    events: Sequence[Event], ends: Sequence[int], range_s: float
) -> list[WindowPoint]:
    """The straightforward reference: every window counted from scratch.

    Same arguments and result as :func:`sliding_windows`; the seed's way (one
    full count per window), kept for tests and the benchmark.
    """
    points = []
    for end in ends:
        start = end - range_s
        per_user: Counter[str] = Counter()
        messages = 0
        for ts, users in events:
            if start < ts <= end:
                messages += 1
                for u in users:
                    per_user[u] += 1
        points.append(WindowPoint(int(end), messages, stats(per_user)))
    return points


# -- reading messages ---------------------------------------------------------


def iter_file_bodies(path: str | Path, skipped: Counter[str]) -> Iterator[dict[str, Any]]:
    """The messages of a file: JSONL (envelopes, wrapper records as in the test
    corpus, or one datagrepper page per line), a datagrepper ``/raw`` page, or a JSON list.

    Lines that are not JSON objects are counted in ``skipped`` (``bad_json``,
    ``not_object``) and skipped, never fatal.

    Raises:
        InputError: the file cannot be read.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc}") from exc
    try:
        whole = orjson.loads(data)
    except orjson.JSONDecodeError:
        whole = None
    else:
        yield from _expand(whole, skipped)
        return
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            skipped["bad_json"] += 1
            log.warning("%s:%d: not JSON (%s); skipped", p, lineno, str(exc)[:80])
            continue
        yield from _expand(obj, skipped)


def _expand(obj: Any, skipped: Counter[str]) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict) and isinstance(obj.get("raw_messages"), list):
        items: list[Any] = obj["raw_messages"]
    elif isinstance(obj, list):
        items = obj
    else:
        items = [obj]
    for item in items:
        if isinstance(item, dict):
            yield unwrap_record(item)
        else:
            skipped["not_object"] += 1


class UsersOf:
    """``users`` of a message: datagrepper's list when present, else fedmsg.meta.

    The fedmsg.meta processors (about a second to load) are only loaded when a
    message without ``users`` comes.

    Args:
        fedmsg_config: a ``fedmsg.d`` folder; None: fedmsg's own search.
    """

    def __init__(self, fedmsg_config: str | None = None) -> None:
        self.fedmsg_config = fedmsg_config
        self._extractor: UserExtractor | None = None

    @property
    def extractor(self) -> UserExtractor:
        """The fedmsg.meta extractor (loaded on first use)."""
        if self._extractor is None:
            self._extractor = UserExtractor(load_fedmsg_config(self.fedmsg_config))
        return self._extractor

    def __call__(self, msg: Mapping[str, Any]) -> frozenset[str]:
        users = msg.get("users")
        if isinstance(users, list):
            return clean_usernames(users)
        return self.extractor.usernames(msg)


def collect_events(
    bodies: Iterable[Mapping[str, Any]],
    users_of: Callable[[Mapping[str, Any]], Iterable[str]],
    skipped: Counter[str],
    stamp: Callable[[int, Mapping[str, Any]], float | None] | None = None,
) -> list[Event]:
    """Reduce messages to ``(timestamp, users)`` events, each ``msg_id`` once.

    Args:
        bodies: fedmsg bodies or datagrepper entries.
        users_of: a message's users (e.g. :class:`UsersOf`).
        skipped: counts ``bad_timestamp`` and ``duplicate`` messages (skipped).
        stamp: ``(index, body) -> timestamp`` to use instead of the body's own
            (``--rebase``); None keeps the body's.
    """
    seen: set[str] = set()
    events: list[Event] = []
    for idx, body in enumerate(bodies):
        ts = stamp(idx, body) if stamp is not None else message_timestamp(body)
        if ts is None:
            skipped["bad_timestamp"] += 1
            # counted; one summary line at the end ("skipped: bad_timestamp N")
            log.debug("msg_id=%s: no valid timestamp; skipped", body.get("msg_id"))
            continue
        key = message_key(body)
        if key in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        events.append((ts, tuple(sorted(users_of(body)))))
    return events


def rebase(events: list[Event], start: float, end: float) -> list[Event]:
    """Spread events evenly over ``(start, end]``, keeping their order (demo data).

    Event ``i`` of ``n`` gets ``start + (i + 1) * (end - start) / n``.
    """
    n = len(events)
    if not n:
        return []
    step = (end - start) / n
    return [(start + (i + 1) * step, users) for i, (_, users) in enumerate(events)]


# -- output -------------------------------------------------------------------


def iso(ts: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _who(item: tuple[str, int] | None) -> str:
    return "-" if item is None else f"{item[0]} ({item[1]})"


def render_table(points: Sequence[WindowPoint], range_s: float) -> str:
    """A fixed-width text table, one line per window (the terminal output)."""
    rows = [
        (
            iso(p.end),
            str(p.messages),
            str(p.stats.users),
            _fmt(p.stats.longtail, 3),
            _fmt(p.stats.longtail_normalized, 4),
            _fmt(p.stats.gini, 4),
            _who(p.stats.head),
            _who(p.stats.tail),
        )
        for p in points
    ]
    head = (
        "window end (UTC)",
        "messages",
        "users",
        "longtail",
        "normalized",
        "gini",
        "head",
        "tail",
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {1, 2, 3, 4, 5}

    def line(r: Sequence[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    out = [f"longtail study: {len(points)} windows of {range_s:g} s", line(head)]
    out.extend(line(r) for r in rows)
    return "\n".join(out) + "\n"


def render_json(points: Sequence[WindowPoint], range_s: float) -> dict[str, Any]:
    """``{"range_s", "windows", "points": [WindowPoint.as_dict(), ...]}``;
    ``windows`` is the number of points."""
    return {
        "range_s": int(range_s) if float(range_s).is_integer() else range_s,
        "windows": len(points),
        "points": [p.as_dict() for p in points],
    }


CSV_FIELDS = (
    "end",
    "end_utc",
    "messages",
    "users",
    "longtail",
    "longtail_normalized",
    "gini",
    "head_user",
    "head_messages",
    "tail_user",
    "tail_messages",
)


def render_csv(points: Sequence[WindowPoint]) -> str:
    """CSV with a header row (:data:`CSV_FIELDS`); empty cells for empty windows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for p in points:
        st = p.stats
        w.writerow(
            [
                p.end,
                iso(p.end),
                p.messages,
                st.users,
                "" if st.longtail is None else repr(st.longtail),
                "" if st.longtail_normalized is None else repr(st.longtail_normalized),
                "" if st.gini is None else repr(st.gini),
                st.head[0] if st.head else "",
                st.head[1] if st.head else "",
                st.tail[0] if st.tail else "",
                st.tail[1] if st.tail else "",
            ]
        )
    return buf.getvalue()


def render_svg(points: Sequence[WindowPoint], range_s: float, title: str | None = None) -> str:
    """A pygal line chart like the seed's, with real titles and axis labels.

    The seed's longtail (messages) on the left axis; ``longtail_normalized`` and
    ``gini`` (dimensionless, 0..1) on the right.  No external JavaScript.

    Args:
        points: the windows, in order.
        range_s: window length, seconds (for the default title).
        title: the chart's title (default: names the window count and length).
    """
    # imported here: pygal only when an SVG is asked for
    import pygal

    n = len(points)
    chart = pygal.Line(
        title=title or f"Longtail of the Fedora message bus: {n} windows of {range_s / 3600:g} h",
        x_title="window end (UTC)",
        y_title="longtail (messages)",
        x_label_rotation=30,
        show_minor_x_labels=False,
        x_labels_major_every=max(1, n // 10),
        truncate_label=-1,
        legend_at_bottom=True,
        js=[],
        width=1000,
        height=500,
        secondary_range=(0, 1),
        value_formatter=lambda v: f"{v:.3g}",
    )
    chart.x_labels = [time.strftime("%m-%d %H:%M", time.gmtime(p.end)) for p in points]
    chart.add("longtail (messages)", [p.stats.longtail for p in points])
    chart.add(
        "longtail / head (right axis)",
        [p.stats.longtail_normalized for p in points],
        secondary=True,
    )
    chart.add("gini (right axis)", [p.stats.gini for p in points], secondary=True)
    svg: str = chart.render(is_unicode=True)
    return svg


# -- the command --------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register the ``longtail`` subcommand."""
    p = sub.add_parser(
        "longtail",
        help="the seed's longtail study: N overlapping windows, one pass",
        description=plain_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("messages (at least one source)")
    src.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="FILE",
        help="JSONL of fedmsg envelopes or datagrepper /raw JSON pages (repeatable)",
    )
    src.add_argument(
        "--datagrepper",
        metavar="URL",
        type=http_url,
        help="datagrepper base URL, e.g. https://apps.fedoraproject.org/datagrepper",
    )
    src.add_argument(
        "--builtin-examples",
        action="store_true",
        help="the real messages shipped in fedmsg_meta_fedora_infrastructure's tests",
    )
    p.add_argument(
        "--range",
        type=float,
        default=DEFAULT_RANGE_S,
        dest="range_s",
        metavar="SECONDS",
        help="window length (default 86400)",
    )
    p.add_argument(
        "--windows",
        type=int,
        default=DEFAULT_WINDOWS,
        metavar="N",
        help="number of windows (default 50)",
    )
    p.add_argument(
        "--end", type=epoch_seconds, metavar="EPOCH", help="study end, UNIX s (default now)"
    )
    p.add_argument(
        "--rebase",
        action="store_true",
        help="spread the messages evenly over the study's span, in input order "
        "(for recorded demo data)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--csv", action="store_true", help="print CSV")
    p.add_argument("--svg", metavar="FILE", help="also write a pygal SVG chart")
    p.add_argument("--title", help="the SVG chart's title")
    p.add_argument("--fedmsg-config", help="fedmsg.d folder (default: fedmsg's search)")
    add_datagrepper_options(p)
    p.add_argument(
        "--workers",
        type=int,
        default=4,
        help="threads paging datagrepper's range in slices (default 4; their requests "
        "share --rate and --concurrency)",
    )
    p.set_defaults(func=run)


def _unwritable(path: Path) -> str:
    """Why ``path`` cannot be written ("" when it can): checked before the study."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return "is a directory"
    if not folder.is_dir():
        return f"no such directory {folder}"
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        return "permission denied"
    return ""


def run(args: argparse.Namespace) -> int:
    """Run ``longtail``; returns 0, or 2 for a usage or input error (a file with no
    message, an ``--svg`` path that cannot be written)."""
    if not (args.input or args.datagrepper or args.builtin_examples):
        log.error("no messages: give --input FILE, --datagrepper URL or --builtin-examples")
        return 2
    if args.range_s <= 0:
        log.error("--range must be > 0")
        return 2
    end = args.end if args.end is not None else time.time()
    try:
        ends = window_ends(end, args.range_s, args.windows)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.svg:  # before the study: a typo in the path must not cost its minutes
        problem = _unwritable(Path(args.svg))
        if problem:
            log.error("cannot write %s: %s", args.svg, problem)
            return 2
    span_start, span_end = ends[0] - args.range_s, ends[-1]
    users_of = UsersOf(args.fedmsg_config)
    skipped: Counter[str] = Counter()
    short: list[tuple[float, float, int, int]] = []  # datagrepper ranges that came short
    t0 = time.perf_counter()

    def bodies() -> Iterator[Mapping[str, Any]]:
        for f in args.input:
            yield from iter_file_bodies(f, skipped)
        if args.builtin_examples:
            for ex in builtin_examples():
                yield ex.body
        if args.datagrepper:
            rate, concurrency = datagrepper_limits(args)
            client = DatagrepperClient(
                args.datagrepper,
                timeout_s=args.timeout_s,
                retries=max(0, args.retries),
                workers=max(1, args.workers),
                rate=rate,
                concurrency=concurrency,
                progress=progress_wanted(),
            )
            try:
                yield from client.iter_messages(span_start, span_end)
            finally:
                client.close()
            short.extend(client.stats.short_ranges)

    stamp = (lambda i, b: 0.0) if args.rebase else None
    events = collect_events(bodies(), users_of, skipped, stamp)
    if args.rebase:
        events = rebase(events, span_start, span_end)
    if skipped:
        log.warning("skipped: %s", ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    if not events and not args.datagrepper:
        # a file (or files) with no message in it: an input error, as for replay; an
        # empty datagrepper range is an answer (a warning below)
        log.error(
            "no messages in %s%s",
            ", ".join(args.input) or "the examples",
            f" ({n} line{'' if n == 1 else 's'} skipped)" if (n := sum(skipped.values())) else "",
        )
        return 2
    inside = sum(1 for ts, _ in events if span_start < ts <= span_end)
    if events and not inside:
        newest = max(ts for ts, _ in events)
        log.warning(
            "none of the %d messages falls in the windows (%s .. %s UTC); the newest is "
            "at %s UTC: pass --end %d, or --rebase",
            len(events),
            iso(span_start),
            iso(span_end),
            iso(newest),
            int(newest) + 1,
        )
    points = sliding_windows(events, ends, args.range_s)
    log.info(
        "%d messages (%d in the windows), %d windows in %.2f s",
        len(events),
        inside,
        len(points),
        time.perf_counter() - t0,
    )
    if args.svg:
        try:
            Path(args.svg).write_text(
                render_svg(points, args.range_s, args.title), encoding="utf-8"
            )
        except OSError as exc:
            log.error("cannot write %s: %s", args.svg, exc)
            return 2
    if args.json:
        sys.stdout.write(
            orjson.dumps(render_json(points, args.range_s), option=orjson.OPT_INDENT_2).decode()
            + "\n"
        )
    elif args.csv:
        sys.stdout.write(render_csv(points))
    else:
        sys.stdout.write(render_table(points, args.range_s))
    if short:
        missing = sum(total - got for _, _, total, got in short)
        log.error(
            "incomplete: datagrepper's total says %d more messages than it sent, in %d "
            "range%s; the figures above undercount",
            missing,
            len(short),
            "" if len(short) == 1 else "s",
        )
        return EXIT_INCOMPLETE
    return 0
