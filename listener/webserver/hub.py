"""Fan-out of events to websocket clients with a bounded queue per client.

Every client has its own queue of encoded events and one sender task that writes
them in order with ``websocket.send`` (which waits while the socket's write buffer
is above websockets' ``write_limit``).  :meth:`Hub.broadcast` never waits.  A client
that is keeping up (nothing queued, nothing being sent, its transport's write buffer
at most ``direct_max_bytes``) gets the event written at once, with websockets'
own ``broadcast()`` (one frame per connection, no task switch, no await): much less
of the web process's CPU than waking every client's sender task, and the last
client of a broadcast is reached sooner (``docs/BENCHMARKS.md``).  Under a flood
the buffers fill and the queues take over.  Every other client gets the same
``bytes`` object appended to its queue, so order is kept and its memory stays
bounded.  A client whose queue passes
``queue_max`` events or ``queue_max_bytes`` bytes is cut off (closed with 1013,
"try again later"; the page reconnects and gets a fresh ``snapshot``) and counted,
so a client that never reads cannot slow the others or grow the server's memory
past ``queue_max_bytes`` + websockets' ``write_limit`` + the kernel's socket buffer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import broadcast as ws_broadcast
from websockets.protocol import State

OPEN = State.OPEN

log = logging.getLogger(__name__)

#: Close code for a client cut off for a backlog (RFC 6455 registry: Try Again Later).
CLOSE_TOO_SLOW = 1013
#: Most distinct filters (views) served by one web process: each costs a read of
#: its windows every tick (docs/PROTOCOL.md, "Filters").
MAX_VIEWS = 32
#: Seconds given to a cut-off client's closing handshake before the TCP connection
#: is aborted (its write buffer may be full, so the close frame may never leave).
CUT_TIMEOUT_S = 2.0


@dataclass(eq=False)
class Client:
    """One connected websocket.

    Attributes:
        websocket: the ``websockets`` ServerConnection.
        address: the peer's IP address.
        queue: encoded events waiting to be sent, oldest first.
        queued_bytes: their total size, bytes.
        sent: events sent so far.
        cut: True once the client was cut off (nothing more is queued).
        sending: the sender task is inside ``websocket.send`` (waiting for the
            write buffer to drain).
        view: the key of the client's filter (``listener.core.filters.Filter.key``;
            "" for none): a broadcast to a view reaches only its clients.
    """

    websocket: Any
    address: str
    queue: deque[bytes] = field(default_factory=deque)
    queued_bytes: int = 0
    sent: int = 0
    cut: bool = False
    sending: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    view: str = ""


@dataclass
class HubStats:
    """Counters since start: ``broadcasts`` (events fanned out), ``sent`` (frames
    written), ``direct`` (of those, written at once by :meth:`Hub.broadcast` rather
    than through a client's queue), ``cut`` (clients closed for a backlog),
    ``connections`` (accepted)."""

    broadcasts: int = 0
    sent: int = 0
    direct: int = 0
    cut: int = 0
    connections: int = 0


class Hub:
    """The set of connected clients and their queues.

    Args:
        queue_max: most events queued for one client before it is cut off.
        queue_max_bytes: most bytes queued for one client before it is cut off.
        direct_max_bytes: a client whose transport holds more unsent bytes than
            this gets events through its queue, not written at once (websockets'
            default ``write_limit``, 32 KiB).
    """

    def __init__(
        self,
        queue_max: int = 256,
        queue_max_bytes: int = 16 << 20,
        direct_max_bytes: int = 2**15,
    ) -> None:
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.direct_max_bytes = direct_max_bytes
        self.clients: set[Client] = set()
        self.stats = HubStats()
        self._tasks: set[asyncio.Task[None]] = set()

    def per_address(self, address: str) -> int:
        """Clients currently connected from ``address``."""
        return sum(1 for c in self.clients if c.address == address)

    def views(self) -> set[str]:
        """The filter keys of the connected clients ("" excluded)."""
        return {c.view for c in self.clients if c.view}

    def add(self, websocket: Any, address: str, view: str = "") -> Client:
        """Register a client (events broadcast from now on are queued for it);
        ``view``: its filter's key ("" for none)."""
        client = Client(websocket, address, view=view)
        self.clients.add(client)
        self.stats.connections += 1
        return client

    def remove(self, client: Client) -> None:
        """Forget a client and drop its queue."""
        self.clients.discard(client)
        client.queue.clear()
        client.queued_bytes = 0
        client.wakeup.set()

    def enqueue(self, client: Client, data: bytes) -> bool:
        """Queue one encoded event for one client; cut it off past the bounds.

        Returns:
            False when the client was (or is now) cut off.
        """
        if client.cut:
            return False
        client.queue.append(data)
        client.queued_bytes += len(data)
        if len(client.queue) > self.queue_max or client.queued_bytes > self.queue_max_bytes:
            self.cut_off(client)
            return False
        client.wakeup.set()
        return True

    def broadcast(self, data: bytes, view: str | None = None) -> int:
        """Queue ``data`` (one encoded event) for every client; never waits.

        ``view``: only the clients of that filter key ("" the unfiltered ones);
        None: every client.

        Returns:
            The number of clients it was queued for.
        """
        self.stats.broadcasts += 1
        n = 0
        direct = []
        limit = self.direct_max_bytes
        for client in list(self.clients):
            if client.cut or (view is not None and client.view != view):
                continue
            if not client.queue and not client.sending and client.websocket.state is OPEN:
                transport = client.websocket.transport
                if transport is not None and transport.get_write_buffer_size() <= limit:
                    direct.append(client)
                    continue
            if self.enqueue(client, data):
                n += 1
        if direct:
            ws_broadcast([c.websocket for c in direct], data, text=True)
            for c in direct:
                c.sent += 1
            self.stats.sent += len(direct)
            self.stats.direct += len(direct)
            n += len(direct)
        return n

    def cut_off(self, client: Client) -> None:
        """Close a client whose backlog passed the bounds (code 1013), and count it."""
        if client.cut:
            return
        client.cut = True
        self.stats.cut += 1
        backlog = (len(client.queue), client.queued_bytes)
        self.remove(client)
        log.warning(
            "websocket %s cut off: backlog of %d events / %d bytes", client.address, *backlog
        )
        task = asyncio.get_running_loop().create_task(self._close(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _close(client: Client) -> None:
        ws = client.websocket
        try:
            async with asyncio.timeout(CUT_TIMEOUT_S):
                await ws.close(CLOSE_TOO_SLOW, "backlog too large: client too slow")
        except Exception:  # timeout, or the connection died meanwhile
            pass
        finally:
            transport = getattr(ws, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.abort()

    async def pump(self, client: Client) -> None:
        """Send a client's queued events in order until it is removed or closed.

        Raises:
            websockets.exceptions.ConnectionClosed: the connection closed while
                sending (the caller removes the client).
        """
        while not client.cut and client in self.clients:
            if not client.queue:
                client.wakeup.clear()
                await client.wakeup.wait()
                continue
            data = client.queue.popleft()
            client.queued_bytes -= len(data)
            client.sending = True
            try:
                await client.websocket.send(data, text=True)
            finally:
                client.sending = False
            client.sent += 1
            self.stats.sent += 1

    def queued(self) -> tuple[int, int, int]:
        """``(events, bytes, largest per-client bytes)`` queued right now."""
        events = sum(len(c.queue) for c in self.clients)
        sizes = [c.queued_bytes for c in self.clients]
        return events, sum(sizes), max(sizes, default=0)

    async def close_tasks(self) -> None:
        """Wait (bounded) for cut-off clients' close tasks."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CUT_TIMEOUT_S + 1)
