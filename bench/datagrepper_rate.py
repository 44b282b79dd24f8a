"""The request rate datagrepper sees from one client, counted by the server.

    python -m bench.datagrepper_rate                 # 2,880 messages, default limits
    python -m bench.datagrepper_rate --rate 4 --workers 4

Serves ``--messages`` messages (one every 3 s, as at Fedora's ~30,000-a-day quiet
days) from the project's datagrepper stand-in (``tests/helpers/datagrepper.py``,
real HTTP on a free loopback port) and pages them once with
:class:`listener.inputs.datagrepper.DatagrepperClient`; the server logs each
request's arrival (``time.monotonic()``) and the most arrivals in any sliding
second are reported, with the number of requests and the wall time.
"""

from __future__ import annotations

import argparse
import time

from listener.inputs.datagrepper import DEFAULT_CONCURRENCY, DEFAULT_RATE, DatagrepperClient
from tests.helpers.datagrepper import FakeDatagrepper, max_per_second

T0 = 1_700_000_000.0


def measure(n: int, rate: float, concurrency: int, workers: int) -> dict[str, float]:
    """``{"messages", "requests", "seconds", "max_per_second"}`` of one paging."""
    msgs = [{"msg_id": f"m{i}", "timestamp": T0 + 3.0 * i, "topic": "org.x.y.z"} for i in range(n)]
    with FakeDatagrepper(msgs) as srv:
        client = DatagrepperClient(
            srv.url, rate=rate, concurrency=concurrency, workers=workers, progress=False
        )
        t = time.monotonic()
        got = sum(1 for _ in client.iter_messages(T0, T0 + 3.0 * n))
        seconds = time.monotonic() - t
        client.close()
        arrivals = list(srv.arrivals)
    return {
        "messages": got,
        "requests": len(arrivals),
        "seconds": seconds,
        "max_per_second": max_per_second(arrivals),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=2880)
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE)
    ap.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    print(f"limit {args.rate:g} requests/s, {args.concurrency} at once\n")
    print("| workers | messages | requests | wall time | most requests in one second |")
    print("|---:|---:|---:|---:|---:|")
    for w in args.workers:
        r = measure(args.messages, args.rate, args.concurrency, w)
        print(
            f"| {w} | {r['messages']:,.0f} | {r['requests']:.0f} | {r['seconds']:.1f} s "
            f"| {r['max_per_second']:.0f} |"
        )


if __name__ == "__main__":
    main()
