"""Redis memory of the msg_id de-duplication sets over a whole 7-day window.

    python -m bench.dedupe_memory                   # 1,000,000 msg_ids (Fedora's week)
    python -m bench.dedupe_memory --per-day 200000  # the busiest days

Fills a real, empty redis-server (no persistence, a free port) with one week of
msg_ids spread evenly over 168 hourly sets, as :data:`listener.storage.store.FLUSH_LUA`
writes them, and reports ``INFO memory``'s ``used_memory`` growth for each
representation:

* **msg_id strings**: the ids as the bus gives them (fedora-messaging: a UUID4, 36
  characters), one set an hour;
* **64-bit hashes**: :func:`listener.storage.store.id_hash` of each id (a signed
  64-bit integer in decimal), one set an hour;
* **64-bit hashes, 64 sets an hour**: the same ids spread over
  :data:`listener.storage.store.ID_SHARDS` sets an hour so that each stays under
  ``set-max-intset-entries`` (512) and Redis keeps it as an intset (8 bytes a
  member): what the listener stores.

Fedora's rate: 100,000-200,000 messages a day (datagrepper's ``total`` over a day,
docs/BENCHMARKS.md), so ~1,000,000 msg_ids a week at 150,000 a day.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import uuid
from pathlib import Path

from bench.procs import RedisServer, redis_version
from listener.storage.store import ID_SHARDS, id_hash

HOURS = 168


def used(r: object) -> int:
    """``used_memory`` of the server, bytes."""
    info = r.info("memory")  # type: ignore[attr-defined]
    return int(info["used_memory"])


def fill(r: object, sets: dict[str, list[str]]) -> None:
    """SADD every set's members, 1,000 at a time, in one pipeline per set."""
    for key, members in sets.items():
        pipe = r.pipeline(transaction=False)  # type: ignore[attr-defined]
        for i in range(0, len(members), 1000):
            pipe.sadd(key, *members[i : i + 1000])
        pipe.expire(key, 8 * 86400)
        pipe.execute()


def measure(per_day: int, seed: int = 0) -> list[tuple[str, int, int, str]]:
    """``[(representation, bytes, bytes per msg_id, encoding)]`` for ``per_day * 7`` ids."""
    n = per_day * 7
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    per_hour = -(-n // HOURS)
    layouts: dict[str, dict[str, list[str]]] = {}
    layouts["msg_id strings, one set an hour"] = {
        f"{{b}}:ids:{h}": ids[h * per_hour : (h + 1) * per_hour] for h in range(HOURS)
    }
    hashed = [str(id_hash(i)) for i in ids]
    layouts["64-bit hashes, one set an hour"] = {
        f"{{b}}:ids:{h}": hashed[h * per_hour : (h + 1) * per_hour] for h in range(HOURS)
    }
    sharded: dict[str, list[str]] = {}
    for h in range(HOURS):
        for v in hashed[h * per_hour : (h + 1) * per_hour]:
            sharded.setdefault(f"{{b}}:ids:{h}:{int(v) % ID_SHARDS}", []).append(v)
    layouts[f"64-bit hashes, {ID_SHARDS} sets an hour (what the listener stores)"] = sharded
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        srv = RedisServer(Path(tmp))
        try:
            r = srv.client
            for name, sets in layouts.items():
                r.flushall()
                before = used(r)
                fill(r, sets)
                grown = used(r) - before
                enc = r.object("encoding", next(iter(sets)))
                out.append((name, grown, grown // n, enc.decode() if enc else "?"))
            r.flushall()
        finally:
            srv.client.close()
            srv.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-day", type=int, default=1_000_000 // 7, help="msg_ids a day")
    args = ap.parse_args()
    n = args.per_day * 7
    print(f"redis-server {redis_version()}, {n:,} msg_ids over {HOURS} hourly sets\n")
    print("| representation | Redis memory | per msg_id | encoding |")
    print("|---|---:|---:|---|")
    for name, grown, each, enc in measure(args.per_day):
        print(f"| {name} | {grown / 2**20:.1f} MiB | {each} B | {enc} |")


if __name__ == "__main__":
    main()
