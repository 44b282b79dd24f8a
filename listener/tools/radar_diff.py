"""``fedmsg-wallboard radar`` and ``fedmsg-wallboard diff``: the computed views
(:mod:`listener.core.views`) of the listener's Redis, as text or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any

from listener.core.users import MAX_USERNAME_LEN
from listener.core.views import DIFF_BY, PERIODS_S, category_totals, radar_from_counts
from listener.core.windows import bucket_start, choose_bucket
from listener.runtime.options import add_common, epoch_seconds, load_config, positive_int, printable
from listener.storage.connect import open_store
from listener.storage.readers import diff, read_radar_counts

log = logging.getLogger(__name__)


def parse_period(text: str) -> int:
    """``day``, ``week`` or a number of seconds -> seconds.

    Raises:
        argparse.ArgumentTypeError: anything else, or not positive.
    """
    if text in PERIODS_S:
        return PERIODS_S[text]
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"period must be day, week or seconds, not {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("period must be > 0 seconds")
    return value


def add_parser(sub: Any) -> None:
    """Register the ``radar`` and ``diff`` subcommands."""
    p = sub.add_parser(
        "radar",
        help="per-user share of each category in a window (radar chart data)",
        description="share(u, c) = count(u, c) / count(all users, c) over the window.",
    )
    add_common(p)
    p.add_argument("--window", type=positive_int, default=86400, help="window, seconds")
    p.add_argument("--end", type=epoch_seconds, help="window end, UNIX seconds (default now)")
    p.add_argument("--users", help="comma-separated names (default: the top --top users)")
    p.add_argument("--top", type=positive_int, default=5, help="users when --users is absent")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_radar)

    p = sub.add_parser(
        "diff",
        help="daily/weekly +/- of message counts per topic or category",
        description="current period minus the one before, from hour-aligned buckets.",
    )
    add_common(p)
    p.add_argument(
        "--period", type=parse_period, default=86400, help="day, week or seconds (default day)"
    )
    p.add_argument("--by", choices=sorted(DIFF_BY), default="topic", help="group by")
    p.add_argument("--end", type=epoch_seconds, help="period end, UNIX seconds (default now)")
    p.add_argument("--limit", type=positive_int, help="show only the first N rows")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_diff)


async def _with_store(args: argparse.Namespace, fn: Any) -> Any:
    cfg = load_config(args)
    store, handle = await open_store(cfg, read_only=True)
    try:
        return await fn(store, cfg)
    finally:
        await store.close()
        del handle


def _fmt_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def run_radar(args: argparse.Namespace) -> int:
    """Run ``radar``; returns 0, or 2 for a window no bucket size fits or a
    ``--users`` list that names nobody (``,,,``) or a name longer than any counted
    (:data:`listener.core.users.MAX_USERNAME_LEN`).  Unlike ``/api/radar``, a name with
    control characters is taken: the bus may carry one, and the output escapes it."""
    end = args.end if args.end is not None else time.time()
    users = None
    if args.users is not None:
        users = list(dict.fromkeys(u.strip() for u in args.users.split(",") if u.strip()))
        if not users:
            log.error("--users %r names no user (comma-separated names)", args.users)
            return 2
        if any(len(u) > MAX_USERNAME_LEN for u in users):
            log.error(
                "--users: a name longer than %d characters is never counted", MAX_USERNAME_LEN
            )
            return 2

    async def go(store: Any, cfg: Any) -> Any:
        counts = await read_radar_counts(store, args.window, end)
        return counts, radar_from_counts(counts, args.window, end, users, args.top)

    try:
        counts, result = asyncio.run(_with_store(args, go))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    # one row per category (the radar's axes), one column per user
    totals = category_totals(counts)
    names = list(result["users"])
    shown = {n: printable(n) for n in names}
    print(f"radar: window {result['window_s']} s ending {_fmt_time(end)} UTC")
    print("share(u, c) = count(u, c) / count(all users, c), in percent")
    if not result["categories"]:
        print("(no message in this window)")
        return 0
    width = max(8, *(len(printable(c)) for c in result["categories"]))
    cols = [max(7, len(shown[n])) for n in names]
    print(
        f"{'category':<{width}} {'all users':>9}"
        + "".join(f" {shown[n]:>{w}}" for n, w in zip(names, cols, strict=True))
    )
    for i, c in enumerate(result["categories"]):
        shares = [result["users"][n][i] for n in names]
        print(
            f"{printable(c):<{width}} {totals[c]:>9}"
            + "".join(f" {100 * s:>{w - 1}.1f}%" for s, w in zip(shares, cols, strict=True))
        )
    return 0


#: Marks of the readable diff table.
UP, DOWN, SAME = "\u25b2", "\u25bc", "="


def run_diff(args: argparse.Namespace) -> int:
    """Run ``diff``; returns 0, or 2 for a period no bucket size fits."""
    end = args.end if args.end is not None else time.time()

    async def go(store: Any, cfg: Any) -> Any:
        if 2 * args.period > cfg.retention_s:
            log.warning(
                "two periods (%d s) exceed retention_s (%d s): the previous period is "
                "partly expired",
                2 * args.period,
                cfg.retention_s,
            )
        bucket_s = choose_bucket(args.period, store.buckets_s)
        return bucket_s, await diff(store, args.period, end, args.by, args.limit)

    try:
        bucket_s, result = asyncio.run(_with_store(args, go))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    top = bucket_start(end, bucket_s) + bucket_s
    p = result["period_s"]
    print(
        f"{args.by} +/-: [{_fmt_time(top - p)}, {_fmt_time(top)}) vs "
        f"[{_fmt_time(top - 2 * p)}, {_fmt_time(top - p)}) UTC"
    )
    if not result["rows"]:
        print("(no messages in either period)")
        return 0
    print(f"  {'':1} {'current':>9} {'previous':>9} {'delta':>8} {'pct':>8}  {args.by}")
    for r in result["rows"]:
        mark = UP if r["delta"] > 0 else DOWN if r["delta"] < 0 else SAME
        pct = "new" if r["pct"] is None else f"{r['pct']:+.1f}%"
        print(
            f"  {mark} {r['current']:>9} {r['previous']:>9} {r['delta']:>+8} {pct:>8}"
            f"  {printable(r[args.by])}"
        )
    return 0
