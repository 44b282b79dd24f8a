"""A local HTTP server that answers ``/raw`` the way datagrepper does.

Real HTTP (stdlib ``ThreadingHTTPServer`` in a thread, on a free port), serving
the messages it is given (the tests give it real recorded Fedora messages).
Semantics follow fedora-infra/datagrepper ``app.py`` ``raw()`` and datanommer's
``Message.grep``:

* ``start``/``end``/``delta`` combine as in datagrepper's ``assemble_timerange``;
  the filter is ``between(timestamp, start, end)``: both ends inclusive.
* ``order`` ``desc`` (default) or ``asc`` by timestamp; ``page`` 1-based (HTTP 400
  below 1); ``rows_per_page`` default 25, HTTP 400 above 100.
* Answer ``{"raw_messages", "total", "pages", "count", "arguments"}``.

Fault injection for the client's tests:

* ``faults``: a list consumed one per request: ``"500"``, ``"503"``, ``"429"``,
  ``"slow"`` (sleep ``slow_s`` before answering), ``"garbage"`` (200 with a
  non-JSON body), ``"drop"`` (close the connection without an answer), or
  ``None`` (answer normally).
* ``slow_span_s``: requests whose ``end - start`` exceeds it are slow (how a real
  datagrepper behaves on a wide range: its ``COUNT(*)`` times out).
* ``tie_order="shuffle"``: messages of equal timestamp come back in a random
  order on every request (PostgreSQL gives no order among ties).
* ``on_request(server, args)``: called before each query (e.g. to add messages
  while a client is paging).
* ``stray``: valid messages outside every range asked for (``timestamp`` past
  ``end``), added to every page 1 while ``total`` ignores them (a rows query that
  leaks past ``end``).
* ``ignore_order``: newest first whatever ``order`` says.
* ``hide``: the number of matching rows left out of every answer (the newest),
  while ``total`` still counts them (a ``total`` the pages never reach).
* ``retry_after``: the ``Retry-After`` header of the ``"429"``/``"503"`` faults
  (seconds or an HTTP date).

Every request's arrival is logged in :attr:`FakeDatagrepper.arrivals`
(``time.monotonic()``), for :func:`max_per_second`.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class FakeDatagrepper:
    """A datagrepper ``/raw`` on ``http://127.0.0.1:<free port>``.

    Args:
        messages: the stored messages (dicts with a numeric ``timestamp``).
        tie_order: ``"stable"`` (timestamp, then insertion order) or ``"shuffle"``.
        seed: random seed for ``"shuffle"``.

    Attributes:
        requests: every request's parsed arguments, with ``status`` added.
        faults: see the module docstring; consumed from the front.
    """

    def __init__(
        self,
        messages: Iterable[dict[str, Any]] = (),
        tie_order: str = "stable",
        seed: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._stored: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = 0
        self.tie_order = tie_order
        self._rng = random.Random(seed)
        self.requests: list[dict[str, Any]] = []
        self.faults: list[str | None] = []
        self.slow_s = 5.0
        self.slow_span_s: float | None = None
        self.on_request: Callable[[FakeDatagrepper, dict[str, Any]], None] | None = None
        #: entries that are not messages, added to the end of every page 1 (a
        #: broken datagrepper or proxy): the client must count them, not crash
        self.junk: list[Any] = []
        self.stray: list[dict[str, Any]] = []
        self.ignore_order = False
        self.hide = 0
        self.retry_after: str | None = None
        #: ``time.monotonic()`` at each request's arrival, in order
        self.arrivals: list[float] = []
        self._closing = threading.Event()
        self.add(messages)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL (``/raw`` is under it)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeDatagrepper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeDatagrepper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- data ----------------------------------------------------------------

    def add(self, messages: Iterable[dict[str, Any]]) -> None:
        """Store more messages (thread-safe; visible to the next request)."""
        with self._lock:
            for m in messages:
                self._stored.append((float(m["timestamp"]), self._seq, m))
                self._seq += 1

    def messages_between(self, start: float, end: float) -> list[dict[str, Any]]:
        """What datagrepper holds in ``[start, end]`` (inclusive), oldest first."""
        with self._lock:
            rows = sorted(r for r in self._stored if start <= r[0] <= end)
        return [r[2] for r in rows]

    # -- the /raw logic ------------------------------------------------------

    def query(self, args: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """Answer one ``/raw`` query: ``(HTTP status, JSON body)``."""

        def one(name: str, default: str | None = None) -> str | None:
            values = args.get(name)
            return values[0] if values else default

        try:
            start, end, delta = assemble_timerange(one("start"), one("end"), one("delta"))
            page = int(one("page", "1") or "1")
            rows = int(one("rows_per_page", "25") or "25")
        except ValueError as exc:  # datagrepper: an uncaught ValueError is a 500
            return 500, {"error": "internal_error", "detail": str(exc)}
        order = one("order", "desc")
        arguments = {
            "start": start,
            "delta": delta,
            "end": end,
            "page": page,
            "rows_per_page": rows,
            "order": order,
        }
        if page < 1:
            return 400, {"error": "page must be > 0", "arguments": arguments}
        if rows > 100:
            return 400, {"error": "rows_per_page must be <= 100", "arguments": arguments}
        if order not in ("asc", "desc"):
            return 400, {"error": "order must be either 'desc' or 'asc'", "arguments": arguments}
        with self._lock:
            if start is not None and end is not None:
                hits = [r for r in self._stored if start <= r[0] <= end]
            else:
                hits = list(self._stored)
            if self.tie_order == "shuffle":
                keyed = [(r[0], self._rng.random(), r[2]) for r in hits]
            else:
                keyed = [(r[0], r[1], r[2]) for r in hits]
        total = len(keyed)
        if self.hide:
            keyed.sort(key=lambda r: (r[0], r[1]))
            keyed = keyed[: max(0, len(keyed) - self.hide)]
        keyed.sort(key=lambda r: (r[0], r[1]), reverse=(order == "desc" or self.ignore_order))
        pages = int(math.ceil(total / float(rows))) if rows > 0 else 1
        chosen = [r[2] for r in keyed[rows * (page - 1) : rows * page]] if rows > 0 else []
        if page == 1:
            chosen = chosen + list(self.junk) + list(self.stray)
        return 200, {
            "raw_messages": chosen,
            "total": total,
            "pages": pages,
            "count": len(chosen),
            "arguments": arguments,
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                try:
                    self.send_response(status)
                    if status in (429, 503) and fake.retry_after is not None:
                        self.send_header("Retry-After", fake.retry_after)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client timed out and went away
                    pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path.rstrip("/") not in ("/raw", "/v2/search"):
                    self._send(404, b'{"error": "not_found"}')
                    return
                args = parse_qs(parts.query, keep_blank_values=True)
                record: dict[str, Any] = {k: v[0] if len(v) == 1 else v for k, v in args.items()}
                with fake._lock:
                    fake.arrivals.append(time.monotonic())
                    fault = fake.faults.pop(0) if fake.faults else None
                    fake.requests.append(record)
                if fake.on_request is not None:
                    fake.on_request(fake, record)
                slow = fault == "slow"
                if fake.slow_span_s is not None:
                    try:
                        span = float(record["end"]) - float(record["start"])
                        slow = slow or span > fake.slow_span_s
                    except (KeyError, TypeError, ValueError):
                        pass
                if slow:
                    record["status"] = "slow"
                    if fake._closing.wait(fake.slow_s):
                        return
                if fault in ("500", "503", "429"):
                    record["status"] = int(fault)
                    self._send(int(fault), b'{"error": "internal_error"}')
                    return
                if fault == "garbage":
                    record["status"] = "garbage"
                    self._send(200, b"<html>proxy error</html>", "text/html")
                    return
                if fault == "drop":
                    record["status"] = "drop"
                    self.close_connection = True
                    return
                status, body = fake.query(args)
                record.setdefault("status", status)
                self._send(status, json.dumps(body).encode())

        return Handler


def assemble_timerange(
    start: str | None, end: str | None, delta: str | None, now: float | None = None
) -> tuple[float | None, float | None, float | None]:
    """datagrepper's ``util.assemble_timerange``, in UNIX seconds.

    ``start`` + ``end``: as given.  ``delta`` with ``end``: ``start = end - delta``;
    ``delta`` with ``start``: ``end = start + delta``; ``delta`` alone: ending now.
    ``end`` or ``start`` without ``delta``: the other defaults to ``end - 600`` or now.

    Raises:
        ValueError: a value that is not a number.
    """
    now = time.time() if now is None else now
    if not delta and not start and not end:
        return None, None, None
    if delta:
        d = float(delta)
        if end is None:
            if start is None:
                e = now
            else:
                e = float(start) + d
        else:
            e = float(end)
        s = float(start) if start is not None else e - d
        return s, e, e - s
    e = float(end) if end is not None else now
    s = float(start) if start is not None else e - 600.0
    return s, e, e - s


def spread(
    bodies: Iterable[dict[str, Any]],
    start: float,
    end: float,
    seed: int = 0,
    users_of: Callable[[dict[str, Any]], Iterable[str]] | None = None,
) -> list[dict[str, Any]]:
    """Copies of real messages with float timestamps drawn uniformly in ``[start, end]``.

    Each copy keeps its content and ``msg_id``; with ``users_of`` it also gets a
    ``users`` list, as today's datagrepper serves.  Returned oldest first.
    """
    import copy

    rng = random.Random(seed)
    out = []
    for body in bodies:
        b = copy.deepcopy(body)
        b["timestamp"] = round(rng.uniform(start, end), 6)
        if users_of is not None:
            b["users"] = sorted(users_of(b))
        out.append(b)
    out.sort(key=lambda m: m["timestamp"])
    return out


def max_per_second(arrivals: list[float], window_s: float = 1.0) -> int:
    """The most requests that arrived within any ``window_s`` seconds (a sliding
    window ``[t, t + window_s)`` starting at each arrival)."""
    times = sorted(arrivals)
    most = 0
    j = 0
    for i, t in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < t + window_s:
            j += 1
        most = max(most, j - i)
    return most
