"""Many websocket clients in one process, for the fan-out benchmark.  I/O.

``python -m bench.wsclients --url ws://127.0.0.1:P/ws --clients N --latency-clients L``
opens ``N`` websocket connections to a ``fedmsg-wallboard web`` process and obeys
one JSON command per line on stdin (answers: one JSON line on stdout):

=========================================  ==========================================
``{"cmd": "mark"}``                        start counting now: ``{"ok": "mark", "t"}``
``{"cmd": "wait", "frames": k,             until every open client got ``k`` frames
"timeout_s": s}``                          since the mark: ``{"ok": "wait", "t_last",
                                           "complete"}``
``{"cmd": "report"}``                      since the mark: ``{"frames", "bytes",
                                           "seconds", "min_frames", "closed",
                                           "latencies", "first_latencies"}``
``{"cmd": "quit"}``                        closes everything
=========================================  ==========================================

Two kinds of client, both real websocket clients of RFC 6455:

* ``L`` **latency clients** use the ``websockets`` library; they decode every
  ``blink`` event and record, for each message in it, arrival time minus the
  message's ``ts`` (its fedmsg ``timestamp``, set by the publisher), seconds;
* the other **counting clients** do the opening handshake themselves (checking
  ``Sec-WebSocket-Accept``) and then only split the byte stream into frames,
  counting them and answering pings, so that 1,000 of them in one Python process
  cost little CPU next to the server being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class Tally:
    """What one client received: complete data frames, payload bytes."""

    frames: int = 0
    bytes: int = 0
    closed: bool = False
    latencies: list[float] = field(default_factory=list)
    #: per blink, arrival - ``first_ts`` (the message that waited longest, shown or not)
    first: list[float] = field(default_factory=list)


async def counting_client(host: str, port: int, path: str, tally: Tally) -> None:
    """A minimal websocket client: handshake, then count frames until closed."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (path.encode(), host.encode(), port, key)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    if not head.startswith(b"HTTP/1.1 101") or accept not in head:
        raise ConnectionError(f"handshake refused: {head[:80]!r}")
    buf = bytearray()
    try:
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                break
            buf += chunk
            pos, end = 0, len(buf)
            while end - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                size, hdr = b1 & 0x7F, 2
                if size == 126:
                    if end - pos < 4:
                        break
                    size, hdr = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
                elif size == 127:
                    if end - pos < 10:
                        break
                    size, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
                if end - pos < hdr + size:
                    break
                opcode = b0 & 0x0F
                if opcode in (0, 1, 2):
                    tally.bytes += size
                    if b0 & 0x80:  # FIN: a whole message
                        tally.frames += 1
                elif opcode == 9:  # ping -> pong, masked with a zero key (RFC 6455 5.3)
                    payload = bytes(buf[pos + hdr : pos + hdr + size])
                    writer.write(bytes([0x8A, 0x80 | size]) + b"\0\0\0\0" + payload)
                elif opcode == 8:
                    return
                pos += hdr + size
            del buf[:pos]
    finally:
        tally.closed = True
        writer.close()


async def latency_client(url: str, tally: Tally) -> None:
    """A ``websockets`` client recording blink latencies: arrival - ``ts`` of every
    message shown, and arrival - ``first_ts`` once per blink (its longest wait)."""
    from websockets.asyncio.client import connect

    try:
        async with connect(url, compression=None, max_size=None) as ws:
            async for raw in ws:
                now = time.time()
                tally.frames += 1
                tally.bytes += len(raw)
                event = orjson.loads(raw)
                if event.get("type") == "blink":
                    tally.latencies.extend(now - m["ts"] for m in event.get("msgs", ()))
                    if event.get("first_ts"):
                        tally.first.append(now - event["first_ts"])
    finally:
        tally.closed = True


async def main_async(args: argparse.Namespace) -> int:
    """Connect every client, then serve stdin commands."""
    parts = urlsplit(args.url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    tallies = [Tally() for _ in range(args.clients)]
    tasks: list[asyncio.Task[None]] = []
    t0 = time.time()
    for k, tally in enumerate(tallies):
        if k < args.latency_clients:
            tasks.append(asyncio.create_task(latency_client(args.url, tally)))
        else:
            tasks.append(asyncio.create_task(counting_client(host, port, path, tally)))
        if k % 50 == 49:
            await asyncio.sleep(0.05)  # do not storm the accept queue
    # every client has its first frame (the snapshot)
    deadline = time.monotonic() + args.connect_timeout_s
    while any(t.frames == 0 and not t.closed for t in tallies):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say(
        {
            "ok": "ready",
            "connected": sum(1 for t in tallies if t.frames and not t.closed),
            "connect_s": round(time.time() - t0, 3),
        }
    )
    base = [(0, 0, 0, 0)] * len(tallies)
    mark_at = time.time()
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line).get("cmd")
        if cmd == "mark":
            base = [(t.frames, t.bytes, len(t.latencies), len(t.first)) for t in tallies]
            mark_at = time.time()
            say({"ok": "mark", "t": mark_at})
        elif cmd == "wait":
            c = json.loads(line)
            want, limit = int(c["frames"]), time.monotonic() + float(c.get("timeout_s", 30))
            while time.monotonic() < limit and any(
                t.frames - b[0] < want for t, b in zip(tallies, base, strict=True) if not t.closed
            ):
                await asyncio.sleep(0.002)
            done = all(
                t.frames - b[0] >= want for t, b in zip(tallies, base, strict=True) if not t.closed
            )
            say({"ok": "wait", "t_last": time.time(), "complete": done})
        elif cmd == "report":
            got = [(t.frames - b[0], t.bytes - b[1]) for t, b in zip(tallies, base, strict=True)]
            lat = [x for t, b in zip(tallies, base, strict=True) for x in t.latencies[b[2] :]]
            first = [x for t, b in zip(tallies, base, strict=True) for x in t.first[b[3] :]]
            say(
                {
                    "ok": "report",
                    "frames": sum(f for f, _ in got),
                    "bytes": sum(n for _, n in got),
                    "seconds": time.time() - mark_at,
                    "min_frames": min((f for f, _ in got), default=0),
                    "closed": sum(1 for t in tallies if t.closed),
                    "latencies": lat,
                    "first_latencies": first,
                }
            )
        elif cmd == "quit":
            break
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run; returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m bench.wsclients", description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--latency-clients", type=int, default=5)
    ap.add_argument("--connect-timeout-s", type=float, default=60.0)
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.clients + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.clients + 1000), hard))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
