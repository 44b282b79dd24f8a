"""Fan-out and bus -> browser latency through one ``fedmsg-wallboard web`` process.  I/O.

Processes: a redis-server, ``python -m listener web`` (one web process, as in
production, ``--max-clients-per-ip`` raised so one test host may open 1,000
websockets), ``python -m bench.wsclients`` (the clients), and for the live runs the
publisher and ``python -m listener listen``.

* **capacity** (per client count): ``events`` small ``blink`` events (three
  messages, about 1 KB each) are PUBLISHed straight into the events channel as
  fast as Redis takes them; deliveries per second = events x clients / seconds
  until the last client has them all; the web process's CPU per delivery.
* **live** (per client count and bus rate): the publisher sends the realistic mix
  at ``rate`` msgs/s for ``duration_s`` through the listener (which batches
  messages into a ``blink`` every ``blink_interval_s``: the default, 0.1 s, and
  0.25 s, the former default, for one extra case; at most ``blink_batch_max`` = 30
  messages shown in each); events delivered per second, the web process's CPU
  (cores), clients cut off, and the latency from publish to arrival in a ``blink``
  at a websocket client (``websockets`` library clients, in a process of their own:
  arrival time minus the message's ``timestamp``, corrected by the publisher's
  measured start), p50 and p99 in ms, over the messages shown; and once per
  blink for its ``first_ts``, the message that waited longest (shown or not):
  the p99 of those bounds every message's.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

import orjson

from bench.procs import (
    OUT,
    BenchError,
    LineProcess,
    Publisher,
    RedisServer,
    cpu_seconds,
    free_port,
    spawn,
    stop_process,
    wait_until,
)
from listener.core.config import Config


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))
    return ordered[k]


def probe_event(k: int) -> bytes:
    """A small, realistic ``blink`` event (docs/PROTOCOL.md) of three messages."""
    msgs = [
        {
            "topic": "org.fedoraproject.prod.buildsys.build.state.change",
            "category": "buildsys",
            "users": [f"fas{k % 97:05d}"],
            "summary": f"fas{k % 97:05d}'s python-foo-1.{k}-1.fc40 completed",
            "ts": time.time(),
            "msg_id": f"2026-{uuid.uuid4()}",
        }
        for _ in range(3)
    ]
    return orjson.dumps(
        {"type": "blink", "msgs": msgs, "counts": {"buildsys": 3}, "total": 3, "omitted": 0}
    )


class Stack:
    """redis-server + one web process (+ publisher and listener once :meth:`live`)."""

    def __init__(self, client_queue_max: int = 20_000) -> None:
        self.redis = RedisServer(OUT / "redis-fanout")
        self.prefix = f"fan{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.web = spawn(
            [
                "-m",
                "listener",
                "web",
                "--redis-url",
                self.redis.url,
                "--key-prefix",
                self.prefix,
                "--port",
                str(self.port),
                "--max-clients-per-ip",
                "5000",
                "--client-queue-max",
                str(client_queue_max),
            ],
            "web.log",
        )
        channel = "{" + self.prefix + "}:events"

        def subscribed() -> bool:
            if self.web.poll() is not None:
                raise BenchError("web process exited; see bench/out/web.log")
            return bool(self.redis.client.pubsub_numsub(channel)[0][1])

        wait_until(subscribed, 60, "the web process's subscription")
        self.channel = channel
        self.pub: Publisher | None = None
        self.listener: Any = None

    @property
    def url(self) -> str:
        """The websocket URL."""
        return f"ws://127.0.0.1:{self.port}/ws"

    def start_live(self, blink_interval_s: float | None = None) -> None:
        """(Re)start the listener, and the publisher the first time.

        Args:
            blink_interval_s: the listener's ``blink_interval_s`` (None: its default,
                ``listener.core.config.Config.blink_interval_s``), set through a TOML
                config file.
        """
        if self.pub is None:
            self.pub = Publisher(f"tcp://127.0.0.1:{free_port()}", hwm=0, n_users=5000)
        if self.listener is not None:
            stop_process(self.listener, 20)
        args = [
            "-m",
            "listener",
            "listen",
            "--redis-url",
            self.redis.url,
            "--endpoint",
            self.pub.endpoint,
            "--key-prefix",
            self.prefix,
        ]
        if blink_interval_s is not None:
            toml = OUT / f"fanout-blink-{blink_interval_s:g}.toml"
            toml.write_text(f"blink_interval_s = {blink_interval_s}\n")
            args += ["-c", str(toml)]
        self.listener = spawn(args, "listener-fanout.log")
        if not self.pub.cmd(cmd="wait_sub", timeout_s=90, wait_s=100)["got"]:
            raise BenchError("listener never subscribed; see bench/out/listener-fanout.log")
        time.sleep(0.5)

    def clients(self, n: int, latency: int) -> list[LineProcess]:
        """Connect ``n`` websocket clients: ``latency`` of them (``websockets``
        clients timing every blink) in a process of their own, so the many counting
        clients cannot delay their reading."""
        procs = []
        try:
            for count, lat in ((n - latency, 0), (latency, latency)):
                if count <= 0:
                    continue
                c = LineProcess(
                    [
                        "-m",
                        "bench.wsclients",
                        "--url",
                        self.url,
                        "--clients",
                        str(count),
                        "--latency-clients",
                        str(lat),
                    ],
                    f"wsclients-{count}-{lat}.log",
                    ready_s=120,
                )
                procs.append(c)
                if c.info.get("connected", 0) < count:
                    raise BenchError(
                        f"only {c.info.get('connected')} of {count} websockets connected"
                    )
        except Exception:
            for c in procs:
                c.close()
            raise
        return procs

    def close(self) -> None:
        """Stop everything (bounded)."""
        for proc in (self.listener, self.web):
            stop_process(proc, 20)
        if self.pub is not None:
            self.pub.close()
        self.redis.stop()


def _all(procs: list[LineProcess], **command: Any) -> list[dict[str, Any]]:
    return [c.cmd(**command) for c in procs]


def _merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "frames": sum(r["frames"] for r in reports),
        "bytes": sum(r["bytes"] for r in reports),
        "seconds": max(r["seconds"] for r in reports),
        "closed": sum(r["closed"] for r in reports),
        "latencies": [x for r in reports for x in r["latencies"]],
        "first_latencies": [x for r in reports for x in r.get("first_latencies", ())],
    }


def capacity(stack: Stack, n_clients: int, events: int) -> dict[str, Any]:
    """Deliveries per second when ``events`` events are published at once."""
    clients = stack.clients(n_clients, 0)
    try:
        _all(clients, cmd="mark")
        cpu0 = cpu_seconds(stack.web.pid)
        t0 = time.time()
        pipe = stack.redis.client.pipeline(transaction=False)
        for k in range(events):
            pipe.publish(stack.channel, probe_event(k))
            if k % 500 == 499:
                pipe.execute()
        pipe.execute()
        waits = _all(clients, cmd="wait", frames=events, timeout_s=120, wait_s=150)
        cpu = cpu_seconds(stack.web.pid) - cpu0
        rep = _merge(_all(clients, cmd="report"))
    finally:
        for c in clients:
            c.close()
    done = {
        "t_last": max(w["t_last"] for w in waits),
        "complete": all(w["complete"] for w in waits),
    }
    seconds = done["t_last"] - t0
    delivered = n_clients * events if done["complete"] else rep["frames"]
    return {
        "clients": n_clients,
        "events": events,
        "complete": done["complete"],
        "closed": rep["closed"],
        "seconds": round(seconds, 3),
        "deliveries_per_s": round(delivered / seconds),
        "web_cpu_us_per_delivery": round(cpu / max(1, delivered) * 1e6, 2),
        "web_cores": round(cpu / seconds, 2),
    }


def live(
    stack: Stack, n_clients: int, rate: float, duration_s: float, blink_s: float = 0.25
) -> dict[str, Any]:
    """Real traffic at ``rate`` msgs/s through the listener to ``n_clients`` clients
    (``blink_s``: the listener's blink interval, for the record)."""
    assert stack.pub is not None
    clients = stack.clients(n_clients, min(5, n_clients))
    try:
        count = int(rate * duration_s)
        prep = stack.pub.cmd(
            cmd="prepare", count=count, rate=rate, run_id=f"live-{uuid.uuid4().hex[:8]}"
        )
        _all(clients, cmd="mark")
        cpu0 = cpu_seconds(stack.web.pid)
        lcpu0 = cpu_seconds(stack.listener.pid)
        ccpu0 = sum(cpu_seconds(c.proc.pid) for c in clients)
        sent = stack.pub.cmd(cmd="go", rate=rate, wait_s=duration_s * 4 + 60)
        cpu = cpu_seconds(stack.web.pid) - cpu0
        lcpu = cpu_seconds(stack.listener.pid) - lcpu0
        ccpu = sum(cpu_seconds(c.proc.pid) for c in clients) - ccpu0
        time.sleep(1.0)  # the last blink
        rep = _merge(_all(clients, cmd="report", wait_s=60))
    finally:
        for c in clients:
            c.close()
    span = sent["end"] - sent["start"]
    offset = sent["start"] - prep["t0"]  # message k was stamped t0 + k/rate, sent ~start + k/rate
    lat_ms = [(x - offset) * 1000 for x in rep["latencies"]]
    p50, p99 = percentile(lat_ms, 0.5), percentile(lat_ms, 0.99)
    first_ms = [(x - offset) * 1000 for x in rep["first_latencies"]]
    f99 = percentile(first_ms, 0.99)
    return {
        "clients": n_clients,
        "rate": rate,
        "blink_s": blink_s,
        "seconds": round(span, 3),
        "deliveries_per_s": round(rep["frames"] / rep["seconds"]),
        "mbytes_per_s": round(rep["bytes"] / rep["seconds"] / 1e6, 2),
        "web_cores": round(cpu / span, 3),
        "listener_cores": round(lcpu / span, 3),
        "clients_cores": round(ccpu / span, 3),
        "closed": rep["closed"],
        "latency_samples": len(lat_ms),
        "p50_ms": None if p50 is None else round(p50, 1),
        "p99_ms": None if p99 is None else round(p99, 1),
        # per blink, the message that waited longest (shown or omitted)
        "first_samples": len(first_ms),
        "first_p99_ms": None if f99 is None else round(f99, 1),
        "first_max_ms": round(max(first_ms), 1) if first_ms else None,
    }


def run(quick: bool = False, reps: int = 3, log: Any = print) -> dict[str, Any]:
    """Capacity and live runs, ``reps`` times each; raw results (lists per case)."""
    sizes = (10, 100) if quick else (10, 100, 1000)
    rates = (100,) if quick else (100, 1000)
    duration_s = 2.0 if quick else 5.0
    events = {10: 10_000, 100: 2_000, 1000: 200}
    if quick:
        events = {10: 300, 100: 100}
        reps = 1
    out: dict[str, Any] = {"capacity": [], "live": [], "reps": reps}
    stack = Stack()
    try:
        for k in range(reps):
            for n in sizes:
                row = capacity(stack, n, events[n])
                out["capacity"].append(row)
                log(
                    f"  capacity rep {k + 1}, {n} clients: {row['deliveries_per_s']}/s, "
                    f"{row['web_cpu_us_per_delivery']} us CPU/delivery, load "
                    f"{os.getloadavg()[0]:.2f}"
                )
        # the listener's default blink interval, then the former default (0.25 s)
        # for the largest case
        default_s = Config().blink_interval_s
        cases = [(default_s, n, rate) for n in sizes for rate in rates]
        cases += [(0.25, sizes[-1], rates[-1])]
        for blink_s in (default_s, 0.25):
            stack.start_live(None if blink_s == default_s else blink_s)
            for k in range(reps):
                for b, n, rate in cases:
                    if b != blink_s:
                        continue
                    row = live(stack, n, rate, duration_s, blink_s)
                    out["live"].append(row)
                    log(
                        f"  live rep {k + 1}, {n} clients at {rate:.0f} msgs/s, blink "
                        f"{blink_s} s: {row['deliveries_per_s']} events/s, web "
                        f"{row['web_cores']} cores, p50 {row['p50_ms']} ms p99 "
                        f"{row['p99_ms']} ms, load {os.getloadavg()[0]:.2f}"
                    )
    finally:
        stack.close()
    return out


def medians(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Group rows by ``keys`` and take the median of every numeric field."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for f, v in rs[0].items():
            if f in keys:
                continue
            vals = [r[f] for r in rs if isinstance(r.get(f), (int, float)) and r[f] is not None]
            if isinstance(v, bool):
                row[f] = all(r[f] for r in rs)
            elif vals:
                row[f] = statistics.median(vals)
            else:
                row[f] = v
        row["runs"] = len(rs)
        out.append(row)
    return out
