"""Rigs for the bus tests: in-process and subprocess fedmsg publishers, a Consumer +
Bus on a fresh key prefix (:class:`Rig`, :class:`SenderRig`), async polling
(:func:`until`, :func:`join`) and a wallboard TOML writer (:func:`write_config`).

Shared by the test modules that drive a bus and a consumer in-process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from listener.core.config import Config
from listener.core.envelope import encode_frames
from listener.core.intake import Intake
from listener.daemon.consumer import Consumer
from listener.inputs.zmq import Bus
from listener.storage.store import Store
from tests.helpers.common import CORPUS, TIMEOUT_FACTOR, free_port

#: Settings that make heartbeats and silence checks fast enough for the fast suite.
FAST_LINK = dict(
    heartbeat_ivl_s=0.3,
    heartbeat_timeout_s=1.0,
    silence_s=3.0,
    reconnect_ivl_ms=100,
    reconnect_ivl_max_ms=500,
)


def template() -> dict[str, Any]:
    """A real prod message (the corpus' first bugzilla.bug.update), unsigned."""
    stream = CORPUS / "fedmsg_sample_datanommer_stream.jsonl"
    for line in stream.read_text(encoding="utf-8").splitlines():
        body = json.loads(line)["msg"]
        if body["topic"].endswith("bugzilla.bug.update"):
            return {k: body[k] for k in ("topic", "msg", "username") if k in body}
    raise AssertionError("no bugzilla message in the corpus")


class Sender:
    """An in-process fedmsg publisher: a PUB socket numbering its messages like
    ``fedmsg.core.FedMsgContext.publish`` (``i`` from 1, one per message)."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, sndhwm: int = 0) -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        deadline = time.monotonic() + 5
        while True:  # the previous publisher's port is released asynchronously
            try:
                self.sock.bind(endpoint)
                break
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    self.sock.close(linger=0)
                    raise
                time.sleep(0.05)
        self.body = template()
        self.tag = uuid.uuid4().hex[:8]
        self.i = 0

    def frames(self, username: str | None = None) -> list[bytes]:
        self.i += 1
        body = dict(
            self.body,
            i=self.i,
            msg_id=f"{self.tag}-{self.i}",
            timestamp=time.time(),
        )
        if username:
            body["username"] = username
        return encode_frames(body)

    def send(self, n: int = 1) -> None:
        for _ in range(n):
            self.sock.send_multipart(self.frames())

    def close(self) -> None:
        self.sock.close(linger=0)


#: A publisher process: binds a PUB, then for each stdin line ``N RATE`` sends N
#: messages (``i`` counting from 1 for this process) at RATE per second (0: at once)
#: and prints the last ``i``.
PUBLISHER = r"""
import json, sys, time, uuid, zmq
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.setsockopt(zmq.LINGER, 0)
pub.setsockopt(zmq.SNDHWM, int(sys.argv[2]))
pub.bind(sys.argv[1])
body = json.loads(sys.argv[3])
topic = body["topic"].encode()
head = json.dumps(body)[:-1]  # encoded once; each message appends its own fields
tag = uuid.uuid4().hex[:8]
i = 0
print("ready", flush=True)
for line in sys.stdin:
    n, rate = line.split()
    for _ in range(int(n)):
        i += 1
        tail = f', "i": {i}, "msg_id": "{tag}-{i}", "timestamp": {time.time()}}}'
        pub.send_multipart([topic, (head + tail).encode()])
        if float(rate):
            time.sleep(1 / float(rate))
    print(i, flush=True)
"""


class PublisherProcess:
    """A real publisher process (see :data:`PUBLISHER`)."""

    def __init__(self, endpoint: str, sndhwm: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, endpoint, str(sndhwm), json.dumps(template())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        try:
            assert self.proc.stdout.readline().strip() == "ready"
        except BaseException:
            self.kill()
            raise
        self.last_i = 0

    def send(self, n: int, rate: float = 0.0) -> int:
        """Send ``n`` messages; returns the last ``i`` (blocks until sent)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n} {rate}\n")
        self.proc.stdin.flush()
        self.last_i = int(self.proc.stdout.readline())
        return self.last_i

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Rig:
    """A Consumer + Bus (in this process) on a fresh key prefix; ``validator``: the
    intake's signature check (none by default)."""

    def __init__(
        self,
        redis_url: str,
        extractor: Any,
        endpoint: str,
        validator: Callable[[Any], str | None] | None = None,
        **cfg: Any,
    ) -> None:
        self.cfg = Config(
            redis_url=redis_url, key_prefix=f"b{uuid.uuid4().hex[:8]}", step_s=1.0, **cfg
        )
        self.store = Store.from_url(
            redis_url,
            prefix=self.cfg.key_prefix,
            buckets_s=self.cfg.buckets_s,
            windows_s=self.cfg.windows_s,
        )
        self.consumer = Consumer(
            self.cfg, Intake(self.cfg, extractor, time.time, validator), self.store
        )
        self.bus = Bus(
            self.cfg, [endpoint], "", self.consumer.intake, self.consumer.flush_wanted.set
        )
        self.link = self.bus.links[0]
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.warm_up()
        self.task = asyncio.create_task(self.bus.run())

    async def close(self) -> None:
        self.bus.stop()
        if self.task:
            await asyncio.wait_for(self.task, 5)
        self.bus.close()
        await self.store.close()


async def until(
    pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> float:
    """Wait (scaled timeout) until ``pred()`` is truthy; returns the seconds waited."""
    t0 = time.monotonic()
    deadline = t0 + timeout * TIMEOUT_FACTOR
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)
    return time.monotonic() - t0


async def join(rig: Rig, send: Callable[[], None], timeout: float = 10) -> None:
    """Send until the SUB has received one message (no sleep-and-hope)."""
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    base = rig.consumer.stats.received
    while rig.consumer.stats.received == base:
        assert time.monotonic() < deadline, "SUB never joined"
        send()
        await asyncio.sleep(0.05)


class SenderRig:
    """A :class:`Rig` on a fresh endpoint fed by an in-process :class:`Sender`,
    joined (one message received) on entry; all closed on exit."""

    def __init__(self, redis_url: str, extractor: Any) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.pub = Sender(self.ctx, self.endpoint)
        self.rig = Rig(redis_url, extractor, self.endpoint, **FAST_LINK)

    async def __aenter__(self) -> SenderRig:
        await self.rig.start()
        await join(self.rig, self.pub.send)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.rig.close()
        finally:
            self.pub.close()
            self.ctx.destroy(linger=0)


def write_config(tmp: Path, **values: Any) -> Path:
    """A wallboard TOML config with ``values``."""
    lines = []
    for k, v in values.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path = tmp / "wallboard.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
