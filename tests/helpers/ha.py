"""The failover rig (tests/ha): a Sentinel group (:mod:`tests.helpers.sentinel`), two
listeners (the lease holder and a hot standby), one web node, a live ZeroMQ replay
of the built-in real messages (``python -m listener replay``), a websocket client
that records the ticks, and the accounting: messages sent / counted / lost /
double-counted per topic.

What was sent is known exactly: the replay's plan is
:func:`listener.tools.replay.schedule` of the built-in examples (``--loop
--rebase-time --count N``: pass 0 keeps the recorded msg_ids, pass ``k`` adds
``-rk``).  What was counted is read from Redis: the topics of every 60 s bucket
(``P:b:60:<start>:t``) and the msg_id hash sets (``P:ids:<hour>:<shard>``).  Per topic: lost =
sent msg_ids whose hash is absent from the sets; double = counted - (sent msg_ids present).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from listener.core.envelope import topic_too_long
from listener.storage.store import id_hash
from listener.tools.examples import builtin_examples
from listener.tools.replay import schedule, wire_body
from tests.helpers.common import ROOT, TIMEOUT_FACTOR, free_port, wait_for
from tests.helpers.listener_proc import metrics
from tests.helpers.rigs import write_config
from tests.helpers.sentinel import SentinelGroup


def planned(count: int, rate: float, amqp: bool = False) -> dict[str, str]:
    """``{msg_id: topic}`` of the first ``count`` messages of the replay's plan
    (``amqp``: ``amqp-replay``'s, which skips topics that are no routing key)."""
    bodies = [wire_body(ex.body) for ex in builtin_examples()]
    if amqp:
        bodies = [b for b in bodies if not topic_too_long(b["topic"])]
    plan = schedule(bodies, rate, None, True, count, True, clock=lambda: 0.0)
    return {body["msg_id"]: body["topic"] for _, body in plan}


class TickWatcher:
    """A websocket client of a web node, in a thread: the arrival time
    (``time.time()``) and ``end`` of every ``tick``; reconnects if cut."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ticks: list[tuple[float, float]] = []
        self.snapshots = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(self.url, open_timeout=5) as ws:
                    while not self._stop.is_set():
                        try:
                            raw = ws.recv(timeout=0.5)
                        except TimeoutError:
                            continue
                        event = json.loads(raw)
                        if event.get("type") == "tick":
                            self.ticks.append((time.time(), float(event["end"])))
                        elif event.get("type") == "snapshot":
                            self.snapshots += 1
            except (OSError, WebSocketException):
                time.sleep(0.2)

    def ticks_after(self, t: float) -> int:
        """Ticks whose ``end`` (the listener's clock) is after ``t``."""
        return sum(1 for _, end in self.ticks if end > t)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class HaRig:
    """Two listeners, one web node and a replay on a :class:`SentinelGroup`.

    Args:
        group: the Sentinel group (started).
        tmp: a folder of this test.
        count / rate: messages the replay sends, and per second.
        amqp_url: the listeners read this broker (``--bus amqp``, each its own UUID
            queue) and the replay is ``amqp-replay``; empty: ZeroMQ.
        amqp_queue: a named queue instead, shared by the listeners (the lease holder
            consumes it).
    """

    def __init__(
        self,
        group: SentinelGroup,
        tmp: Path,
        count: int,
        rate: float,
        amqp_url: str = "",
        amqp_queue: str = "",
    ) -> None:
        self.amqp_url = amqp_url
        self.group = group
        self.tmp = tmp
        self.count = count
        self.rate = rate
        self.prefix = f"ha{uuid.uuid4().hex[:8]}"
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.config = write_config(
            tmp,
            redis_sentinels=group.addresses,
            step_s=1.0,
            redis_timeout_s=1.0,
            redis_wait_timeout_ms=500,
            heartbeat_ivl_s=1.0,
            heartbeat_timeout_s=3.0,
            reconnect_ivl_max_ms=500,
            amqp_queue=amqp_queue,
        )
        self.amqp_queue = amqp_queue
        self.listeners: list[subprocess.Popen[str]] = []
        self.metrics_ports: list[int] = []
        self.logs: list[Path] = []
        self.web: subprocess.Popen[bytes] | None = None
        self.web_port = free_port()
        self.replay: subprocess.Popen[bytes] | None = None
        self.watcher: TickWatcher | None = None

    # -- the parts ----------------------------------------------------------------

    def start_listener(self) -> int:
        """Start one more listener; returns its index."""
        port = free_port()
        n = len(self.listeners)
        log = self.tmp / f"listener{n}.log"
        with open(log, "w") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "listener",
                    "listen",
                    "-c",
                    str(self.config),
                    *(
                        ["--bus", "amqp", "--amqp-url", self.amqp_url]
                        if self.amqp_url
                        else ["--endpoint", self.endpoint]
                    ),
                    "--key-prefix",
                    self.prefix,
                    "--metrics-port",
                    str(port),
                ],
                cwd=str(ROOT),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.listeners.append(proc)
        self.metrics_ports.append(port)
        self.logs.append(log)
        wait_for(lambda: self._metrics(n), 30, what="listener metrics")
        if self.amqp_url and not (self.amqp_queue and n):  # a standby waits to consume
            # its queue is bound: what is published now reaches it
            wait_for(lambda: "AMQP connected" in self.log(n), 60, what="AMQP connected")
        return n

    def _metrics(self, n: int) -> dict[str, float]:
        try:
            return metrics(self.metrics_ports[n])
        except OSError:
            return {}

    def holds(self, n: int) -> bool:
        """Whether listener ``n`` says it holds the writer lease."""
        return self._metrics(n).get("fedmsg_wallboard_lease_held") == 1.0

    def holder(self) -> int:
        """The index of the one listener holding the lease (waits for one)."""
        found: list[int] = []

        def one() -> bool:
            found[:] = [
                n for n, p in enumerate(self.listeners) if p.poll() is None and self.holds(n)
            ]
            return len(found) == 1

        wait_for(one, 30, interval=0.2, what="exactly one lease holder")
        return found[0]

    def start_web(self) -> None:
        log = self.tmp / "web.log"
        with open(log, "w") as out:  # the child keeps its own descriptor
            self.web = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "listener",
                    "web",
                    "-c",
                    str(self.config),
                    "--key-prefix",
                    self.prefix,
                    "--port",
                    str(self.web_port),
                ],
                cwd=str(ROOT),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: "web: serving" in log.read_text(), 30, what="web node serving")
        self.watcher = TickWatcher(f"ws://127.0.0.1:{self.web_port}/ws")

    def start_replay(self) -> None:
        """``python -m listener replay`` of the built-in examples, once both
        listeners subscribed; ``amqp-replay`` with ``amqp_url``."""
        if self.amqp_url:
            self.replay = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "listener",
                    "amqp-replay",
                    "--amqp-url",
                    self.amqp_url,
                    "--rate",
                    str(self.rate),
                    "--count",
                    str(self.count),
                    "--loop",
                ],
                cwd=str(ROOT),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            return
        self.replay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "listener",
                "replay",
                "--builtin-examples",
                "--endpoint",
                self.endpoint,
                "--rate",
                str(self.rate),
                "--count",
                str(self.count),
                "--loop",
                "--rebase-time",
                "--wait-subscribers",
                str(len(self.listeners)),
            ],
            cwd=str(ROOT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """Listener 0 (it takes the lease), listener 1 (standby), the web node,
        the replay."""
        self.start_listener()
        wait_for(lambda: self.holds(0), 30, interval=0.2, what="listener 0 holding")
        self.start_listener()
        self.start_web()
        self.start_replay()

    def replay_done(self, timeout_s: float) -> None:
        assert self.replay is not None
        self.replay.wait(timeout_s * TIMEOUT_FACTOR)
        assert self.replay.returncode == 0

    def signal(self, n: int, sig: signal.Signals) -> None:
        self.listeners[n].send_signal(sig)

    # -- the accounting -------------------------------------------------------------

    def counted(self) -> tuple[Counter[str], set[str], int]:
        """What Redis holds: ``(messages per topic, msg_ids, messages_total)``."""
        p = "{" + self.prefix + "}"
        with self.group.master() as r:
            topics: Counter[str] = Counter()
            for key in r.scan_iter(match=f"{p}:b:60:*:t", count=1000):
                for topic, n in r.hgetall(key).items():
                    topics[topic.decode()] += int(n)
            ids: set[str] = set()
            for key in r.scan_iter(match=f"{p}:ids:*", count=1000):
                ids.update(m.decode() for m in r.smembers(key))
            total = int(r.hget(f"{p}:meta", "messages_total") or 0)
        return topics, ids, total

    def settled(self, timeout_s: float = 30) -> tuple[Counter[str], set[str], int]:
        """:meth:`counted` once ``messages_total`` reached what was sent or stopped
        moving for 3 s."""
        seen: list[Any] = [None, time.monotonic()]
        result: list[Any] = []

        def still() -> bool:
            try:
                now = self.counted()
            except redis.RedisError:
                return False
            result[:] = [now]
            if now[2] != seen[0]:
                seen[:] = [now[2], time.monotonic()]
            return now[2] >= self.count or time.monotonic() - seen[1] > 3

        wait_for(still, timeout_s, interval=0.5, what="the counts to settle")
        return tuple(result[0])  # type: ignore[return-value]

    def report(self, title: str) -> dict[str, dict[str, int]]:
        """Per topic ``{sent, counted, lost, double}``, printed as a table (the 10
        busiest topics, the others summed, the total)."""
        plan = planned(self.count, self.rate, bool(self.amqp_url))
        topics, ids, total = self.settled()
        sent: Counter[str] = Counter(plan.values())
        # the sets hold each msg_id's hash (listener.storage.store.id_hash)
        present: Counter[str] = Counter(t for m, t in plan.items() if str(id_hash(m)) in ids)
        rows: dict[str, dict[str, int]] = {}
        for topic in sorted(set(sent) | set(topics)):
            rows[topic] = {
                "sent": sent[topic],
                "counted": topics[topic],
                "lost": sent[topic] - present[topic],
                "double": topics[topic] - present[topic],
            }
        busiest = sorted(rows, key=lambda t: -rows[t]["sent"])[:10]
        others = [t for t in rows if t not in busiest]
        lines = [f"{title}: messages per topic ({len(rows)} topics, {total} counted in all)"]
        lines.append(f"{'topic':60} {'sent':>6} {'counted':>8} {'lost':>5} {'double':>6}")

        def line(name: str, picked: list[str]) -> str:
            s = {k: sum(rows[t][k] for t in picked) for k in ("sent", "counted", "lost", "double")}
            return f"{name:60} {s['sent']:>6} {s['counted']:>8} {s['lost']:>5} {s['double']:>6}"

        lines += [line(t, [t]) for t in busiest]
        lines.append(line(f"({len(others)} other topics)", others))
        lines.append(line("TOTAL", list(rows)))
        print("\n".join(lines), flush=True)
        return rows

    # -- the end --------------------------------------------------------------------

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        if self.replay is not None and self.replay.poll() is None:
            self.replay.kill()
            self.replay.wait()
        for proc in [*self.listeners, self.web]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen one cannot die of SIGTERM
                proc.terminate()
        for proc in [*self.listeners, self.web]:
            if proc is None:
                continue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self, n: int) -> str:
        """Listener ``n``'s log so far."""
        return self.logs[n].read_text()
