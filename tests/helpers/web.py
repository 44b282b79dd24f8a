"""A web server and a consumer on one real Redis namespace, and raw clients for them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from listener.core.config import Config
from listener.core.intake import Intake
from listener.daemon.consumer import Consumer
from listener.storage.store import Store
from listener.webserver.server import WebServer
from tests.helpers.common import TIMEOUT_FACTOR

T = TIMEOUT_FACTOR


@dataclass
class WebStack:
    """A started :class:`WebServer` and a :class:`Consumer` sharing a namespace."""

    cfg: Config
    store: Store
    consumer: Consumer
    web: WebServer

    @property
    def port(self) -> int:
        return self.web.port


@asynccontextmanager
async def web_stack(redis_url: str, extractor: Any) -> AsyncIterator[WebStack]:
    """A consumer and a started web server on a fresh key prefix of ``redis_url``."""
    cfg = Config(redis_url=redis_url, key_prefix="t" + uuid.uuid4().hex[:8])

    def store() -> Store:
        return Store.from_url(
            cfg.redis_url, prefix=cfg.key_prefix, buckets_s=cfg.buckets_s, windows_s=cfg.windows_s
        )

    reader = store()
    consumer = Consumer(cfg, Intake(cfg, extractor, time.time), store())
    await consumer.warm_up()
    web = WebServer(cfg, reader)
    await web.start("127.0.0.1", 0)
    try:
        await web.wait_subscribed(10 * T)
        yield WebStack(cfg, reader, consumer, web)
    finally:
        await web.stop()
        await reader.close()
        await consumer.store.close()


async def get(port: int, target: str, raw: bool = False) -> tuple[int, Any]:
    """``GET target`` (sent byte for byte) -> ``(status, decoded JSON body)``
    (``raw``: the body as text)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10 * T)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    body = await asyncio.wait_for(reader.readexactly(length), 10 * T)
    writer.close()
    await writer.wait_closed()
    if raw:
        return int(status_line.split()[1]), body.decode()
    return int(status_line.split()[1]), json.loads(body) if body else None


async def recv_type(ws: Any, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next event of type ``kind`` on a websocket (others are skipped)."""
    deadline = time.monotonic() + timeout * T
    while True:
        left = max(0.1, deadline - time.monotonic())
        ev: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), left))
        if ev["type"] == kind:
            return ev
