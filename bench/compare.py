"""The listener's CPU per message on two checkouts, measured in alternating runs.

    python -m bench.compare OLD_CHECKOUT [--runs 4] [--count 50000]

Each run starts the listener of each checkout in turn (``python -m listener`` with
that checkout as its working directory), queues ``--count`` messages while it is
stopped, and times the drain (:meth:`bench.ingest.Session.drain`): CPU seconds of
the listener process per message counted, and messages a second.  Alternating the
two checkouts run by run cancels most of a shared host's drift.  Prints one JSON
line per drain and a summary (medians) at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.ingest import Session
from bench.procs import OUT, Publisher, RedisServer, free_port

HERE = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path, help="the other checkout (e.g. a git worktree)")
    ap.add_argument("--runs", type=int, default=4, help="alternating runs (default 4)")
    ap.add_argument("--count", type=int, default=50_000, help="messages per drain")
    args = ap.parse_args(argv)
    trees = {"old": str(args.old.resolve()), "new": str(HERE)}
    redis = RedisServer(OUT / "redis-compare")
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", hwm=0, n_users=10_000)
    cpu: dict[str, list[float]] = {k: [] for k in trees}
    rate: dict[str, list[float]] = {k: [] for k in trees}
    try:
        for run in range(args.runs):
            order = list(trees) if run % 2 == 0 else list(reversed(trees))
            for name in order:
                redis.client.flushall()
                s = Session(redis, pub, "listener", f"compare-{name}-{run}", trees[name])
                try:
                    d = s.drain(args.count)
                finally:
                    s.close()
                print(json.dumps({"run": run, "tree": name, **d}), flush=True)
                cpu[name].append(d["cpu_us_per_msg"])
                rate[name].append(d["rate"] or 0)
    finally:
        pub.close()
        redis.stop()
    summary = {
        k: {
            "cpu_us_per_msg_median": statistics.median(cpu[k]),
            "rate_median": statistics.median(rate[k]),
            "runs": len(cpu[k]),
        }
        for k in trees
    }
    summary["new_vs_old_cpu"] = round(
        summary["new"]["cpu_us_per_msg_median"] / summary["old"]["cpu_us_per_msg_median"], 3
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
