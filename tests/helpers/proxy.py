"""A small TCP proxy for fault injection: pass, blackhole, or cut.  Test helper.

Put it between a client and a real server (a ZeroMQ SUB and its PUB, the listener
and redis-server, ...) and change what the network does while both run:

* ``pass``: bytes flow both ways.
* ``blackhole``: bytes stop flowing without FIN or RST, in one direction or both
  (``up`` = client -> server, ``down`` = server -> client).  The proxy simply stops
  reading, so the sender's data sits in kernel buffers and nothing comes back: to
  both ends it looks like a network that drops every packet.  New connections are
  accepted (the kernel completes the TCP handshake) but nothing passes either.
  Back to ``pass``, held bytes flow again in order (TCP's retransmission would do
  the same after a partition heals).
* ``cut``: every connection is reset (``SO_LINGER`` 0, so the peers see RST) and,
  while ``refuse`` is on, new connections are closed at once.

One thread runs a ``selectors`` loop over every socket, non-blocking, with a
bounded buffer per direction (a peer that does not read slows only its own
connection).  Counters: ``accepted`` connections, ``bytes_up`` / ``bytes_down``.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

#: Most bytes buffered per direction before the proxy stops reading that source.
BUFFER_MAX = 1 << 20


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    server: socket.socket
    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_eof: bool = False
    server_eof: bool = False


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` with faults.

    Args:
        target_host / target_port: the real server.
        listen_host: where the proxy listens (port chosen by the kernel).

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((listen_host, 0))
        self.listener.listen(256)
        self.listener.setblocking(False)
        self.host = listen_host
        self.port: int = self.listener.getsockname()[1]
        self.block_up = False
        self.block_down = False
        self.refuse = False
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._pairs: set[_Pair] = set()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._lock = threading.Lock()
        self._stopping = False
        self._cut_requested = False
        self._thread = threading.Thread(target=self._loop, name="tcpproxy", daemon=True)

    # -- control --------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` of the proxy."""
        return f"{self.host}:{self.port}"

    def start(self) -> TcpProxy:
        """Start the proxy thread; returns self."""
        self._thread.start()
        return self

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def passthrough(self) -> None:
        """Let bytes flow both ways again (held bytes are delivered in order)."""
        with self._lock:
            self.block_up = self.block_down = False
            self.refuse = False
        self._wake()

    def blackhole(self, up: bool = True, down: bool = True) -> None:
        """Stop forwarding without closing anything (``up``: client -> server)."""
        with self._lock:
            self.block_up, self.block_down = up, down
        self._wake()

    def cut(self, refuse: bool = False) -> None:
        """Reset every open connection (RST); ``refuse``: close new ones at once too."""
        with self._lock:
            self.refuse = refuse
            self._cut_requested = True
        self._wake()
        deadline = time.monotonic() + 5
        while self._cut_requested and time.monotonic() < deadline:
            time.sleep(0.01)

    @property
    def connections(self) -> int:
        """Connections open through the proxy right now."""
        return len(self._pairs)

    def stop(self) -> None:
        """Close everything and join the thread (bounded)."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        for pair in list(self._pairs):
            self._close_pair(pair, reset=True)
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    # -- the loop ---------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _loop(self) -> None:
        sel = self._sel
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        while not self._stopping:
            self._update_interest()
            for key, events in sel.select(timeout=0.2):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                else:
                    pair, side = key.data
                    if pair not in self._pairs:
                        continue
                    if events & selectors.EVENT_READ:
                        self._read(pair, side)
                    if pair in self._pairs and events & selectors.EVENT_WRITE:
                        self._write(pair, side)
            if self._cut_requested:
                for pair in list(self._pairs):
                    self._close_pair(pair, reset=True)
                self._cut_requested = False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, OSError):
                return
            self.accepted += 1
            if self.refuse:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=2)
            except OSError:
                _reset(client)
                continue
            for s in (client, server):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, server)
            self._pairs.add(pair)
            self._sel.register(client, selectors.EVENT_READ, (pair, "client"))
            self._sel.register(server, selectors.EVENT_READ, (pair, "server"))

    def _update_interest(self) -> None:
        for pair in list(self._pairs):
            for side in ("client", "server"):
                sock = pair.client if side == "client" else pair.server
                ev = 0
                if side == "client":
                    room = len(pair.to_server) < BUFFER_MAX
                    if not self.block_up and not pair.client_eof and room:
                        ev |= selectors.EVENT_READ
                    if pair.to_client and not self.block_down:
                        ev |= selectors.EVENT_WRITE
                else:
                    room = len(pair.to_client) < BUFFER_MAX
                    if not self.block_down and not pair.server_eof and room:
                        ev |= selectors.EVENT_READ
                    if pair.to_server and not self.block_up:
                        ev |= selectors.EVENT_WRITE
                try:
                    key = self._sel.get_key(sock)
                except KeyError:
                    key = None
                except (ValueError, OSError):
                    self._close_pair(pair, reset=True)
                    break
                try:
                    if not ev:
                        if key is not None:
                            self._sel.unregister(sock)
                    elif key is None:
                        self._sel.register(sock, ev, (pair, side))
                    elif key.events != ev:
                        self._sel.modify(sock, ev, (pair, side))
                except (ValueError, OSError):
                    self._close_pair(pair, reset=True)
                    break

    def _read(self, pair: _Pair, side: str) -> None:
        sock = pair.client if side == "client" else pair.server
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._close_pair(pair, reset=True)
            return
        if not data:
            if side == "client":
                pair.client_eof = True
            else:
                pair.server_eof = True
            if not (pair.to_server if side == "client" else pair.to_client):
                self._close_pair(pair, reset=False)
            return
        if side == "client":
            pair.to_server += data
            self.bytes_up += len(data)
        else:
            pair.to_client += data
            self.bytes_down += len(data)

    def _write(self, pair: _Pair, side: str) -> None:
        sock = pair.client if side == "client" else pair.server
        buf = pair.to_client if side == "client" else pair.to_server
        try:
            n = sock.send(buf)
        except BlockingIOError:
            return
        except OSError:
            self._close_pair(pair, reset=True)
            return
        del buf[:n]
        if not buf and (pair.client_eof or pair.server_eof):
            self._close_pair(pair, reset=False)

    def _close_pair(self, pair: _Pair, reset: bool) -> None:
        self._pairs.discard(pair)
        for s in (pair.client, pair.server):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError, OSError):
                pass
            if reset:
                _reset(s)
            else:
                try:
                    s.close()
                except OSError:
                    pass


def _reset(sock: socket.socket) -> None:
    """Close with RST (``SO_LINGER`` on, timeout 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
