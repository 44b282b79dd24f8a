"""The naive loop the listener is measured against.

What a first version of the wallboard would do, per message: a blocking
``recv_multipart`` on a SUB socket left at libzmq's default high-water mark
(1,000), stdlib ``json.loads``, ``fedmsg.meta.msg2usernames`` (the linear scan for
the processor), and one Redis round trip per counter.  It writes the same
counters as the listener (``listener/storage/store.py``'s key layout: per bucket size,
``:n`` messages, ``:t`` topic, ``:c`` category, ``:u`` user, ``:uc`` user x
category, and ``P:meta messages_total``) so the same read says whether a message
was counted.  No de-duplication, no key expiry: that only makes it faster.

``python -m bench.naive --endpoint tcp://127.0.0.1:P --redis-url URL --key-prefix X``
runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import redis
import zmq

from listener.core.envelope import category_of

#: Bucket sizes written, seconds (the listener's defaults).
BUCKETS_S = (60, 3600)


def main(argv: list[str] | None = None) -> int:
    """Run the naive loop until SIGTERM; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m bench.naive", description=__doc__)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--key-prefix", default="naive")
    ap.add_argument("--hwm", type=int, help="receive high-water mark (default: libzmq's)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    import fedmsg.config
    import fedmsg.meta

    config: dict[str, Any] = fedmsg.config.load_config([], None)
    fedmsg.meta.make_processors(**config)
    r = redis.Redis.from_url(args.redis_url)
    p = "{" + args.key_prefix + "}"
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    if args.hwm is not None:
        sock.setsockopt(zmq.RCVHWM, args.hwm)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(args.endpoint)
    print("naive loop ready", flush=True)
    while True:
        topic_b, body_b = sock.recv_multipart()
        msg = json.loads(body_b)
        topic = msg["topic"]
        users = fedmsg.meta.msg2usernames(msg, **config)
        category = category_of(topic)
        ts = int(msg["timestamp"])
        for size in BUCKETS_S:
            base = f"{p}:b:{size}:{ts - ts % size}"
            r.hincrby(base + ":n", "messages", 1)
            r.hincrby(base + ":t", topic, 1)
            r.hincrby(base + ":c", category, 1)
            for u in filter(None, users):
                r.hincrby(base + ":u", u, 1)
                r.hincrby(base + ":uc", f"{u}\x1f{category}", 1)
        r.hincrby(p + ":meta", "messages_total", 1)


if __name__ == "__main__":
    sys.exit(main())
