"""``fedmsg-wallboard snapshot``: one window's counts and longtail, read from the
listener's Redis buckets (text, or JSON with ``--json``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any

from listener.core.config import Config
from listener.core.errors import EXIT_OK, EXIT_USAGE, ConfigError
from listener.core.snapshot import build_snapshot
from listener.core.windows import choose_bucket
from listener.runtime.options import add_common, epoch_seconds, load_config, positive_int, printable
from listener.storage.connect import open_store

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    """Register the ``snapshot`` subcommand."""
    p = sub.add_parser("snapshot", help="print one window's counts and longtail")
    add_common(p)
    p.add_argument("--window", type=positive_int, default=3600, help="window length, seconds")
    p.add_argument("--end", type=epoch_seconds, help="window end, UNIX seconds (default now)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--all-users", action="store_true", help="all users, not the top 20")
    p.set_defaults(func=_run_snapshot)


async def read_snapshot(
    cfg: Config, window_s: int, end: float, all_users: bool = False
) -> dict[str, Any]:
    """The snapshot object of one window, read from Redis buckets.

    Raises:
        ConfigError: ``window_s`` fits no bucket size.
    """
    store, handle = await open_store(cfg, read_only=True)
    try:
        try:
            counts = await store.read_window(window_s, end)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        meta = await store.meta()
        last = float(meta["last_message_at"]) if meta.get("last_message_at") else None
        return build_snapshot(window_s, end, counts, last, None if all_users else cfg.top_users)
    finally:
        await store.close()
        del handle


def _run_snapshot(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:  # before touching Redis: a window no bucket size fits is a usage error
        choose_bucket(args.window, cfg.buckets_s)
    except ValueError as exc:
        log.error("--window %d: %s", args.window, exc)
        return EXIT_USAGE
    end = args.end if args.end is not None else time.time()
    snap = asyncio.run(read_snapshot(cfg, args.window, end, args.all_users))
    if args.json:
        print(json.dumps(snap, indent=2))
        return EXIT_OK
    ending = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(snap["end"]))
    print(f"window {snap['window_s']} s ending {ending} UTC")
    print(f"messages {snap['messages']}  users {snap['users']}")

    def fmt(v: float | None, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    print(
        f"longtail {fmt(snap['longtail'], 3)}  normalized {fmt(snap['longtail_normalized'], 4)}"
        f"  gini {fmt(snap['gini'], 4)}"
    )
    print("top topics:")
    for topic, n in list(snap["topics"].items())[:15]:
        print(f"  {n:8d}  {printable(topic)}")
    print("top users:")
    for name, n in snap["top_users"]:
        print(f"  {n:8d}  {printable(name)}")
    return EXIT_OK
