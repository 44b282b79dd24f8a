"""Capacity of one web node: websocket clients per core at a bus rate.  I/O.

    python -m bench.webnode                                   # 250..2000 clients, 1,000 msgs/s
    python -m bench.webnode --clients 500,1000 --rate 1000 --duration 20
    python -m bench.webnode --write docs/BENCHMARKS.md        # also rewrite its section

The real pipeline, as :mod:`bench.fanout`'s live part runs it: a redis-server, the
benchmark publisher sending the realistic mix at ``rate`` msgs/s over ZeroMQ,
``python -m listener listen`` counting them and publishing its events into Redis
(a ``blink`` every ``blink_interval_s``, 0.1 s, a ``tick`` every 5 s), one
``python -m listener web`` (the node measured; ``--max-clients-per-ip`` raised so
one host may open thousands of websockets) and ``python -m bench.wsclients``
processes holding ``N`` websocket clients (5 of them decode every ``blink`` and
time it).  Per ``N``, over ``duration`` seconds of steady traffic (the clients'
handshakes and first snapshots are done before the window opens):

* the web process's CPU (user + system, all threads, :mod:`psutil`), in cores;
  **clients per core** = ``N`` / those cores (what one core of a node would hold at
  this rate, at that CPU per client);
* its resident memory (RSS, psutil), MB, and its growth per client added since the
  previous (smaller) case, KB;
* delivery lag: arrival at a client minus the message's ``timestamp`` (corrected by
  the publisher's measured start), p50 / p99 over the messages shown, and the
  p99 of each blink's longest wait (``first_ts``);
* events delivered per second and clients cut off (slow: 1013) or closed.

``N`` is *sustained* when no client was cut off or closed, every client got its
events, and the first-wait p99 stays under 1 s.  Everything shares the host's
cores (publisher, listener, Redis, the client processes): the web process's own CPU
is what is divided.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.fanout import Stack, percentile
from bench.procs import OUT, BenchError

HEADING = "## Capacity per web node (clients per core)"
#: A case is sustained when the p99 of each blink's longest wait is below this, ms.
SUSTAINED_FIRST_P99_MS = 1000.0


def ask_all(procs: list[Any], **command: Any) -> list[dict[str, Any]]:
    """One command to every client process; their replies."""
    return [c.cmd(**command) for c in procs]


def measure(stack: Stack, n_clients: int, rate: float, duration_s: float) -> dict[str, Any]:
    """One case: ``n_clients`` clients at ``rate`` msgs/s for ``duration_s``."""
    assert stack.pub is not None
    web = psutil.Process(stack.web.pid)
    clients = stack.clients(n_clients, min(5, n_clients))
    try:
        time.sleep(2.0)  # the handshakes' and snapshots' work is over
        count = int(rate * duration_s)
        prep = stack.pub.cmd(
            cmd="prepare", count=count, rate=rate, run_id=f"node-{uuid.uuid4().hex[:8]}"
        )
        ask_all(clients, cmd="mark")
        cpu0 = web.cpu_times()
        t0 = time.monotonic()
        sent = stack.pub.cmd(cmd="go", rate=rate, wait_s=duration_s * 4 + 60)
        cpu1 = web.cpu_times()
        span = time.monotonic() - t0
        rss = web.memory_info().rss
        time.sleep(1.0)  # the last blink
        reports = ask_all(clients, cmd="report", wait_s=60)
    finally:
        for c in clients:
            c.close()
    frames = sum(r["frames"] for r in reports)
    seconds = max(r["seconds"] for r in reports)
    closed = sum(r["closed"] for r in reports)
    low = min(r["min_frames"] for r in reports)
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    cores = cpu / span
    offset = sent["start"] - prep["t0"]
    lat_ms = [(x - offset) * 1000 for r in reports for x in r["latencies"]]
    first_ms = [(x - offset) * 1000 for r in reports for x in r.get("first_latencies", ())]
    p50, p99, f99 = (
        percentile(lat_ms, 0.5),
        percentile(lat_ms, 0.99),
        percentile(first_ms, 0.99),
    )
    sustained = closed == 0 and low > 0 and f99 is not None and f99 < SUSTAINED_FIRST_P99_MS
    return {
        "clients": n_clients,
        "rate": rate,
        "seconds": round(span, 2),
        "web_cores": round(cores, 3),
        "clients_per_core": round(n_clients / cores) if cores > 0 else None,
        "web_rss_mb": round(rss / 1e6, 1),
        "deliveries_per_s": round(frames / seconds),
        "closed": closed,
        "min_frames": low,
        "p50_ms": None if p50 is None else round(p50, 1),
        "p99_ms": None if p99 is None else round(p99, 1),
        "first_p99_ms": None if f99 is None else round(f99, 1),
        "sustained": sustained,
        "load_1m": round(os.getloadavg()[0], 2),
    }


def run(sizes: list[int], rate: float, duration_s: float, log: Any = print) -> list[dict[str, Any]]:
    """Every size in turn on one stack (one listener, one publisher, one web node)."""
    rows = []
    stack = Stack(client_queue_max=256)  # the production default: a slow client is cut
    try:
        stack.start_live()
        for n in sizes:
            row = measure(stack, n, rate, duration_s)
            rows.append(row)
            log(json.dumps(row))
    finally:
        stack.close()
    return rows


def num(v: Any) -> str:
    return "–" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:g}"


def section(rows: list[dict[str, Any]], command: str, when: str) -> str:
    """The report's section (markdown), with the command that produced it."""
    lines = [
        HEADING,
        "",
        "`bench/webnode.py`: one `python -m listener web` process (production settings: "
        "`client_queue_max` 256; `--max-clients-per-ip` raised so one host may open "
        "thousands of websockets) fed by the real listener at the given bus rate (a "
        "`blink` every 0.1 s, at most 30 messages shown, a `tick` every 5 s), N "
        "websocket clients (`bench/wsclients.py`: 5 decode and time every `blink`, the "
        "others count frames).  Web CPU: user + system of the web process over the "
        "steady window (handshakes and first snapshots excluded), from psutil; clients "
        "per core = N / web cores.  Lag: arrival - the message's timestamp.  "
        "*Sustained*: nobody cut off or closed, every client got events, and the p99 of "
        "each blink's longest wait under 1 s.  Publisher, listener, Redis and the client "
        "processes (up to 4,000 clients in one Python process) share the host's cores "
        "with the node, so the lag of the largest cases includes their contention; *load* "
        "is the host's 1-minute load average at the end of the case.",
        "",
        f"Command: `{command}` ({when}).",
        "",
        "| clients | msgs/s | web cores | clients per core | web RSS | RSS per added client "
        "| events delivered/s | p50 lag | p99 lag | first-wait p99 | cut or closed "
        "| sustained | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    prev: dict[str, Any] | None = None
    for r in rows:
        # memory per client: the growth from the previous (smaller) case
        per_client = "–"
        if prev is not None and r["clients"] > prev["clients"]:
            grown_kb = (r["web_rss_mb"] - prev["web_rss_mb"]) * 1e3
            per_client = f"{grown_kb / (r['clients'] - prev['clients']):.1f} KB"
        prev = r
        lines.append(
            f"| {num(r['clients'])} | {num(int(r['rate']))} | {r['web_cores']:.3f} "
            f"| {num(r['clients_per_core'])} | {r['web_rss_mb']:g} MB "
            f"| {per_client} | {num(r['deliveries_per_s'])} "
            f"| {num(r['p50_ms'])} ms | {num(r['p99_ms'])} ms | {num(r['first_p99_ms'])} ms "
            f"| {r['closed']} | {'yes' if r['sustained'] else 'no'} | {r['load_1m']:g} |"
        )
    lines += ["", summary(rows)]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict[str, Any]]) -> str:
    """One sentence: the largest case sustained, and clients per core across cases."""
    held = [r for r in rows if r["sustained"]]
    per_core = [r["clients_per_core"] for r in rows if r["clients_per_core"]]
    if not held or not per_core:
        return "No case was sustained."
    top = max(held, key=lambda r: r["clients"])
    text = (
        f"Largest case sustained: {top['clients']:,} clients on {top['web_cores']:.3f} cores of "
        f"the web process ({top['clients_per_core']:,} clients per core); across the cases, "
        f"{min(per_core):,}-{max(per_core):,} clients per core."
    )
    lost = [r for r in rows if not r["sustained"]]
    if lost:
        text += (
            " Not sustained: "
            + ", ".join(
                f"{r['clients']:,} clients (first-wait p99 {num(r['first_p99_ms'])} ms, "
                f"{r['closed']} cut or closed, {r['web_cores']:.3f} web cores)"
                for r in lost
            )
            + "."
        )
    return text


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of ``path`` (or add it after the fan-out,
    before ``## Page memory``)."""
    existing = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text + "\n", existing, count=1)
    else:  # after the fan-out, where bench/report.py keeps it
        anchor = next((a for a in ("\n## Page memory", "\n## Notes\n") if a in existing), None)
        if anchor is None:
            updated = existing.rstrip("\n") + "\n\n" + text
        else:
            updated = existing.replace(anchor, "\n" + text + anchor, 1)
    path.write_text(updated, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.webnode", description=__doc__)
    ap.add_argument("--clients", default="250,500,1000,2000", help="client counts, comma-separated")
    ap.add_argument("--rate", type=float, default=1000.0, help="bus rate, msgs/s")
    ap.add_argument("--duration", type=float, default=15.0, help="steady window per case, s")
    ap.add_argument("--write", type=Path, help="rewrite this benchmark's section of this file")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.clients.split(",") if x.strip()]
    try:
        rows = run(sizes, args.rate, args.duration)
    except BenchError as exc:
        print(f"webnode: {exc}", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "webnode.json").write_text(json.dumps(rows, indent=1))
    command = "python -m bench.webnode " + " ".join(argv if argv is not None else sys.argv[1:])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = section(rows, command.strip(), when)
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
