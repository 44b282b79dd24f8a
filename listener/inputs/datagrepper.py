"""A careful client of datagrepper's ``/raw`` API.

datagrepper (fedora-infra/datagrepper, ``app.py`` ``raw()``) serves the messages
datanommer stored.  The parts of its API used here:

* ``start`` and ``end``: UNIX seconds, always both, **never** ``delta`` (with
  ``delta`` the range moves with the server's clock).  datanommer's
  ``Message.grep`` filters ``between(timestamp, start, end)``: both ends are
  **inclusive**.
* ``order=asc``, ``page`` (1-based), ``rows_per_page`` (at most 100: datagrepper
  answers HTTP 400 above).
* The answer: ``{"raw_messages": [...], "total", "pages", "count", "arguments"}``.
  Today's datagrepper gives each message pre-computed ``users`` and ``packages``
  and a float ``timestamp``; older ones gave integer timestamps and no ``users``.

Paging is *keyset* paging, not ``page=1..N`` over one fixed range: after a full
page whose newest message has timestamp ``t``, the next request asks for
``start = t - overlap_s`` (``page=1`` again).  That keeps every request at offset
0 (datanommer orders by timestamp only, and a deep ``OFFSET`` is slow in
PostgreSQL), it cannot skip a message when the database returns messages of
equal timestamp in a different order from one request to the next, and a message
that arrives while we page is fetched if it lies ahead of the cursor.  Messages
are de-duplicated by ``msg_id`` (the overlap and the inclusive ends refetch a
few).  A page made only of one timestamp (more than ``rows_per_page`` messages
within ``overlap_s``) falls back to ``page=2, 3...`` at the same ``start``.

Rows outside the range asked for (a server that rounds ``end`` up) are dropped and
never move the cursor.  A server that ignores ``order=asc`` and answers newest
first is detected from the page's timestamps; the range is then paged downwards
(``end = oldest - overlap_s``).  The messages received for a range are compared
with the ``total`` of its first page: fewer is a *shortfall*
(:attr:`FetchStats.short`), logged at WARNING, which a backfill reports as
incomplete.

Politeness: every request of a process to one datagrepper goes through one
:class:`RequestLimiter` (:func:`shared_limiter`: at most ``rate`` requests a
second and ``concurrency`` at once, whatever the number of clients and worker
threads; defaults 2/s and 2), time-outs are at most
:data:`MAX_TIMEOUT_S`, and a ``Retry-After`` (seconds or an HTTP date) holds every
thread of the client back.

Failures: HTTP 5xx, 429, time-outs and connection errors are retried with
exponential backoff (``Retry-After`` honoured); a range whose requests keep
failing that way is split in two, recursively, down to ``min_split_s`` (except
for connection errors: a server that refuses or cannot be resolved fails after
one request's retries).  Other 4xx answers and bodies that are not a datagrepper
page raise at once.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import logging
import math
import queue
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NewConnectionError

from listener.core.config import (
    DATAGREPPER_CONCURRENCY,
    DATAGREPPER_MAX_TIMEOUT_S,
    DATAGREPPER_RATE,
)
from listener.core.errors import InputError, TransientError
from listener.core.lograte import milestone_level
from listener.core.users import UserExtractor, clean_usernames

log = logging.getLogger(__name__)

#: datagrepper refuses ``rows_per_page`` above this (HTTP 400).
MAX_ROWS_PER_PAGE = 100

#: The production instance (Fedora infrastructure).
FEDORA_DATAGREPPER = "https://apps.fedoraproject.org/datagrepper"

#: Longest time-out of one request, seconds: a slow range is split sooner, and a
#: retried range cannot hold a backfill for many minutes.
MAX_TIMEOUT_S = DATAGREPPER_MAX_TIMEOUT_S

#: Defaults of the shared limit: requests a second, requests at once.
DEFAULT_RATE = DATAGREPPER_RATE
DEFAULT_CONCURRENCY = DATAGREPPER_CONCURRENCY

#: Longest ``Retry-After`` waited, seconds (a longer one is waited this long).
MAX_RETRY_AFTER_S = 300.0

#: The limiter spaces requests ``SPACING_MARGIN / rate`` apart, so that the rate the
#: server sees stays under ``rate`` when one request of a run reaches it up to
#: ``0.2 / rate`` s late (on a loaded 2-core machine, arrivals at 2/s spaced 0.525 s
#: came 0.570 then 0.474 s apart): about 1.67 requests a second at the default 2.
SPACING_MARGIN = 1.2


class RequestLimiter:
    """At most ``rate`` request starts a second and ``concurrency`` requests at
    once, shared by every thread of a :class:`DatagrepperClient`.

    A token bucket of depth one: request starts are spaced ``SPACING_MARGIN /
    rate`` seconds apart, so any one-second window holds at most ``ceil(rate)``
    starts (no burst after an idle spell); a semaphore bounds the requests in
    flight.  :meth:`defer` (a ``Retry-After``) pushes the next start for every
    thread.

    Args:
        rate: requests a second, > 0.
        concurrency: requests in flight at once, >= 1.
        clock / sleep: ``time.monotonic`` and ``time.sleep`` (tests may replace them).

    Raises:
        ValueError: ``rate`` <= 0 or ``concurrency`` < 1.
    """

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        concurrency: int = DEFAULT_CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.rate = float(rate)
        self.concurrency = int(concurrency)
        self.interval_s = SPACING_MARGIN / self.rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0
        self._slots = threading.BoundedSemaphore(self.concurrency)

    def defer(self, seconds: float) -> None:
        """No request starts in the next ``seconds`` (a server's ``Retry-After``)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)

    def _wait_turn(self) -> None:
        with self._lock:
            now = self._clock()
            at = max(now, self._next)
            self._next = at + self.interval_s
        if at > now:
            self._sleep(at - now)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of ``concurrency`` places and wait for this request's turn."""
        with self._slots:
            self._wait_turn()
            yield


_LIMITERS: dict[tuple[str, float, int], RequestLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(url: str, rate: float, concurrency: int) -> RequestLimiter:
    """The process's one :class:`RequestLimiter` for datagrepper host ``url`` with
    these limits: clients made one after the other (two backfills, the study's
    and a backfill's) or side by side share it, so the host never sees more than
    ``rate`` a second from this process.

    Raises:
        ValueError: see :class:`RequestLimiter`.
    """
    key = (urlsplit(url).netloc.lower(), float(rate), int(concurrency))
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = RequestLimiter(rate, concurrency)
        return limiter


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """An HTTP ``Retry-After`` header (RFC 9110 10.2.3: delay-seconds or an
    HTTP-date) as seconds from ``now`` (UNIX seconds, default the clock), at
    least 0 and at most :data:`MAX_RETRY_AFTER_S`; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


class DatagrepperUnavailable(TransientError):
    """datagrepper kept failing (5xx, 429, time-outs, connection errors) after
    every retry and split (connection errors are not split: a server that cannot
    be reached fails after one request's retries).

    Args:
        message: what failed.
        splittable: whether a smaller range might succeed.
    """

    def __init__(self, message: str, splittable: bool = True) -> None:
        super().__init__(message)
        self.splittable = splittable


class DatagrepperBadResponse(InputError):
    """datagrepper answered with a client error (4xx other than 408/429) or a body
    that is not a ``/raw`` page: retrying would not help."""


def _request_error(exc: requests.RequestException) -> str:
    """A failed request's cause in one line, the cause first: requests wraps
    urllib3's error (``Max retries exceeded ... (Caused by NewConnectionError(
    '<...>: Failed to establish a new connection: [Errno 111] Connection
    refused'))``), whose ``reason`` says it; at most 200 characters."""
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", None)
    text = f"{type(exc).__name__}: {reason if reason is not None else exc}"
    return re.sub(r"<[^<>]*>: ", "", text)[:200]


def _cannot_connect(exc: Exception) -> bool:
    """The request never reached a server: refused, or the name did not resolve
    (urllib3's ``NewConnectionError`` inside requests' ``ConnectionError``).  A
    reset in the middle of an answer is not this: a smaller range may get through."""
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, NewConnectionError)


class _Retryable(Exception):
    """One failed attempt that a retry may fix; ``splittable`` when a smaller
    range might succeed where this one failed (not when the server cannot be
    reached at all)."""

    def __init__(
        self, reason: str, retry_after_s: float | None = None, splittable: bool = True
    ) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.splittable = splittable


@dataclass(frozen=True)
class RawPage:
    """One ``/raw`` answer.

    Attributes:
        messages: ``raw_messages``, in the server's order.
        total: messages matching the query (all pages).
        pages: ``ceil(total / rows_per_page)``.
        count: ``len(messages)``.
    """

    messages: list[dict[str, Any]]
    total: int
    pages: int
    count: int


@dataclass
class FetchStats:
    """What one :meth:`DatagrepperClient.iter_messages` call did.

    Attributes:
        requests: HTTP requests sent (including failed attempts).
        retries: attempts that failed and were retried.
        splits: ranges split in two because they kept failing.
        pages: successful page answers.
        messages: messages yielded (each msg_id once).
        duplicates: messages received again (overlap, inclusive ends) and dropped.
        bad: entries that were not objects or had no finite ``timestamp``.
        out_of_range: entries outside the requested ``[start, end]`` (dropped).
        expected: sum of ``total`` of the first page of each range (an estimate).
        short: messages missing against the ``total`` of a range's first page,
            summed over the ranges that came back short (0 when complete).
        short_ranges: ``(start, end, total, received)`` of each such range.
        descending: ranges whose server answered newest first despite ``order=asc``.
    """

    requests: int = 0
    retries: int = 0
    splits: int = 0
    pages: int = 0
    messages: int = 0
    duplicates: int = 0
    bad: int = 0
    out_of_range: int = 0
    expected: int = 0
    short: int = 0
    descending: int = 0
    short_ranges: list[tuple[float, float, int, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        """Add to counters (thread-safe)."""
        with self._lock:
            for name, value in deltas.items():
                setattr(self, name, getattr(self, name) + value)

    def add_short(self, start: float, end: float, total: int, received: int) -> None:
        """Record a range of ``total`` messages of which ``received`` came (thread-safe)."""
        with self._lock:
            self.short += total - received
            self.short_ranges.append((start, end, total, received))


def raw_url(base_url: str) -> str:
    """The ``/raw`` endpoint of a datagrepper base URL.

    ``https://apps.fedoraproject.org/datagrepper`` and ``.../datagrepper/raw``
    both give ``.../datagrepper/raw``.
    """
    url = base_url.rstrip("/")
    return url if url.endswith("/raw") else url + "/raw"


def message_timestamp(msg: Any) -> float | None:
    """A message's ``timestamp`` as float UNIX seconds, or None if missing/invalid
    (or ``msg`` is not an object: a page entry such as ``5`` or ``null``)."""
    if not isinstance(msg, Mapping):
        return None
    ts = msg.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return None
    return float(ts)


def message_key(msg: Mapping[str, Any]) -> str:
    """The de-duplication key: ``msg_id``, or a digest of the message when it has none."""
    mid = msg.get("msg_id")
    if isinstance(mid, str) and mid:
        return mid
    raw = repr((msg.get("topic"), msg.get("timestamp"), msg.get("i"), msg.get("msg")))
    return "sha1:" + hashlib.sha1(raw.encode("utf-8", "replace")).hexdigest()


def message_users(msg: Mapping[str, Any], extractor: UserExtractor | None) -> frozenset[str]:
    """The users of a message: datagrepper's ``users`` when present, else fedmsg.meta.

    Args:
        msg: a fedmsg body or a datagrepper ``raw_messages`` entry.
        extractor: asked when the message carries no ``users`` list; ``None``
            then means "no users known" (an empty set).
    """
    users = msg.get("users")
    if isinstance(users, list):
        return clean_usernames(users)
    if extractor is None:
        return frozenset()
    return extractor.usernames(msg)


def progress_wanted(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal: only then draw a bar."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class DatagrepperClient:
    """Fetch every message of a time range from datagrepper, each exactly once.

    Args:
        base_url: datagrepper's base URL (or its ``/raw`` URL).
        timeout_s: time-out of one HTTP request (connect and read), seconds, at
            most :data:`MAX_TIMEOUT_S`.
        retries: retries of one request after the first attempt.
        backoff_s / max_backoff_s: first and largest delay between attempts,
            seconds (doubling, with jitter in ``[delay/2, delay]``).
        rows_per_page: 1..100 (datagrepper's maximum).
        overlap_s: how far before the last timestamp of a full page the next
            request starts, seconds (covers ties and float rounding).
        min_split_s: ranges shorter than this are not split further, seconds.
        workers: ranges fetched in parallel threads (1 = one request at a time).
        rate / concurrency: the limit every request goes through (requests a
            second, requests at once), shared with every client of this process
            for the same host and limits (:func:`shared_limiter`); ignored when
            ``limiter`` is given.
        limiter: a :class:`RequestLimiter` of the caller's.
        progress: draw a tqdm bar on stderr; ``None``: only when stderr is a TTY.
        session_factory: builds one ``requests.Session`` per thread.
        sleep: the sleep function of the retries' backoff (tests may speed it up).

    Raises:
        ValueError: ``rows_per_page`` outside 1..100, ``workers`` < 1, a time-out
            outside ``(0, MAX_TIMEOUT_S]``, or a bad ``rate``/``concurrency``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        rows_per_page: int = MAX_ROWS_PER_PAGE,
        overlap_s: float = 0.001,
        min_split_s: float = 60.0,
        workers: int = 1,
        rate: float = DEFAULT_RATE,
        concurrency: int = DEFAULT_CONCURRENCY,
        limiter: RequestLimiter | None = None,
        progress: bool | None = None,
        session_factory: Callable[[], requests.Session] = requests.Session,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= rows_per_page <= MAX_ROWS_PER_PAGE:
            raise ValueError(f"rows_per_page must be 1..{MAX_ROWS_PER_PAGE}, got {rows_per_page}")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout_s must be > 0 and <= {MAX_TIMEOUT_S:g}, got {timeout_s}")
        self.limiter = (
            limiter if limiter is not None else shared_limiter(base_url, rate, concurrency)
        )
        self.url = raw_url(base_url)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.rows_per_page = rows_per_page
        self.overlap_s = overlap_s
        self.min_split_s = min_split_s
        self.workers = workers
        self.progress = progress
        self._session_factory = session_factory
        self._sleep = sleep
        self._local = threading.local()
        self._sessions: list[requests.Session] = []  # every thread's, for close()
        self._sessions_lock = threading.Lock()
        self.stats = FetchStats()

    # -- one request ---------------------------------------------------------

    def _session(self) -> requests.Session:
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = self._session_factory()
            s.headers.setdefault("Accept", "application/json")
            self._local.session = s
            with self._sessions_lock:
                self._sessions.append(s)
        return s

    def _attempt(self, params: dict[str, Any]) -> RawPage:
        try:
            with self.limiter.slot():
                self.stats.add(requests=1)
                resp = self._session().get(self.url, params=params, timeout=self.timeout_s)
        except requests.Timeout as exc:
            raise _Retryable(f"timed out after {self.timeout_s} s ({type(exc).__name__})") from exc
        except requests.RequestException as exc:  # refused, unresolvable, reset, chunking
            raise _Retryable(_request_error(exc), splittable=not _cannot_connect(exc)) from exc
        status = resp.status_code
        if status >= 500 or status in (408, 429):
            retry_after = retry_after_s(resp.headers.get("Retry-After"))
            if retry_after is not None:  # every thread of this client holds back
                self.limiter.defer(retry_after)
            raise _Retryable(f"HTTP {status}: {resp.text[:160]!r}", retry_after)
        if status != 200:
            raise DatagrepperBadResponse(
                f"datagrepper {self.url} answered HTTP {status} to {params}: {resp.text[:300]!r}"
            )
        try:
            data = resp.json()
        except ValueError as exc:  # a truncated body behind a proxy: retry
            raise _Retryable(f"invalid JSON in a 200 answer: {exc}"[:200]) from exc
        if not isinstance(data, dict) or not isinstance(data.get("raw_messages"), list):
            raise DatagrepperBadResponse(
                f"datagrepper {self.url} answered something that is not a /raw page: "
                f"{str(data)[:200]!r}"
            )
        msgs = data["raw_messages"]
        total = data.get("total")
        pages = data.get("pages")
        return RawPage(
            messages=msgs,
            total=int(total) if isinstance(total, int) else len(msgs),
            pages=int(pages) if isinstance(pages, int) else 1,
            count=len(msgs),
        )

    def get_page(self, start: float, end: float, page: int = 1, order: str = "asc") -> RawPage:
        """One ``/raw`` page of ``[start, end]`` (both inclusive), with retries.

        Args:
            start / end: UNIX seconds (sent as ``start``/``end``; never ``delta``).
            page: 1-based page number.
            order: ``asc`` or ``desc``.

        Raises:
            DatagrepperUnavailable: still failing after ``retries`` retries.
            DatagrepperBadResponse: a 4xx answer or a body that is not a page.
        """
        params = {
            "start": repr(float(start)),
            "end": repr(float(end)),
            "order": order,
            "page": page,
            "rows_per_page": self.rows_per_page,
        }
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                result = self._attempt(params)
                self.stats.add(pages=1)
                return result
            except _Retryable as exc:
                if attempt >= self.retries:
                    raise DatagrepperUnavailable(
                        f"datagrepper {self.url} failed {attempt + 1} times for "
                        f"start={params['start']} end={params['end']} page={page}: {exc}",
                        splittable=exc.splittable,
                    ) from exc
                self.stats.add(retries=1)
                if exc.retry_after_s is not None:  # the limiter waits it out
                    wait = 0.0
                else:
                    wait = min(self.max_backoff_s, delay) * (0.5 + random.random() / 2)
                log.warning(
                    "datagrepper: %s; retry %d/%d in %.2f s%s",
                    exc,
                    attempt + 1,
                    self.retries,
                    wait if exc.retry_after_s is None else exc.retry_after_s,
                    "" if exc.retry_after_s is None else " (Retry-After)",
                )
                if wait:
                    self._sleep(wait)
                delay = min(self.max_backoff_s, delay * 2)
        raise AssertionError("unreachable")  # pragma: no cover

    def _skip(self, what: str) -> None:
        """Count an entry of a page that is not a message (``stats.bad``); its 1st,
        10th, 100th... logged at WARNING, the rest at DEBUG."""
        self.stats.add(bad=1)
        n = self.stats.bad
        log.log(milestone_level(n), "datagrepper: skipped %s; %d skipped so far", what, n)

    # -- one range, keyset paging -------------------------------------------

    def _pages(
        self,
        start: float,
        end: float,
        stop: threading.Event,
        depth: int = 0,
        parent: set[str] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield the pages of ``[start, end]``, splitting the rest of the range in
        two when its requests keep failing.

        Keyset paging in the server's order: upwards (``start`` moves to the newest
        in-range timestamp of a full page) or, for a server that answers newest
        first despite ``order=asc``, downwards (``end`` moves to the oldest).  Rows
        outside ``[start, end]`` never move either end.  At the end, the messages
        received (in range or not, each key once, ``parent`` gets them too) are
        compared with the first page's ``total``: fewer is recorded in
        :attr:`FetchStats.short`.
        """
        lo, hi, page = start, end, 1
        total: int | None = None
        got: set[str] = set()
        complete = False
        try:
            while not stop.is_set():
                try:
                    result = self.get_page(lo, hi, page)
                except DatagrepperUnavailable as exc:
                    # a server that cannot be reached is not helped by smaller ranges
                    if not exc.splittable or hi - lo < max(self.min_split_s, 2 * self.overlap_s):
                        raise
                    result = None
                if result is None:
                    mid = lo + (hi - lo) / 2
                    self.stats.add(splits=1)
                    log.warning(
                        "datagrepper: range %.3f..%.3f keeps failing; splitting at %.3f",
                        lo,
                        hi,
                        mid,
                    )
                    yield from self._pages(lo, mid, stop, depth + 1, got)
                    yield from self._pages(mid, hi, stop, depth + 1, got)
                    complete = not stop.is_set()
                    return
                if total is None:
                    total = result.total
                    self.stats.add(expected=result.total)
                stamps: list[float] = []
                for m in result.messages:
                    ts = message_timestamp(m)
                    if ts is None:
                        continue
                    got.add(message_key(m))
                    if lo <= ts <= hi:
                        stamps.append(ts)
                yield result.messages
                if result.count < self.rows_per_page or page >= result.pages:
                    complete = True
                    return
                descending = len(stamps) > 1 and stamps[0] > stamps[-1]
                if descending and hi == end and lo == start and page == 1:
                    self.stats.add(descending=1)
                    log.warning(
                        "datagrepper: %s answers newest first despite order=asc; "
                        "paging this range downwards",
                        self.url,
                    )
                if descending and min(stamps) + self.overlap_s < hi:
                    hi, page = min(stamps) + self.overlap_s, 1
                elif not descending and stamps and max(stamps) - self.overlap_s > lo:
                    lo, page = max(stamps) - self.overlap_s, 1
                else:  # a full page of one timestamp, or of rows out of range
                    page += 1
        finally:
            if parent is not None:
                parent |= got
            if complete and total is not None and len(got) < total:
                self._short(start, end, total, len(got))

    def _short(self, start: float, end: float, total: int, received: int) -> None:
        """Record a range that came back with fewer messages than its ``total``."""
        self.stats.add_short(start, end, total, received)
        log.warning(
            "datagrepper: range %.3f..%.3f: %d messages received, the server's total "
            "is %d: %d missing",
            start,
            end,
            received,
            total,
            total - received,
        )

    def _slices(self, start: float, end: float) -> list[tuple[float, float]]:
        n = 1 if self.workers == 1 else self.workers * 4
        step = (end - start) / n
        edges = [start + i * step for i in range(n)] + [end]
        return [(edges[i], edges[i + 1]) for i in range(n) if edges[i + 1] >= edges[i]]

    def iter_messages(self, start: float, end: float) -> Generator[dict[str, Any], None, None]:
        """Every message with ``start <= timestamp <= end``, each ``msg_id`` once.

        Args:
            start / end: UNIX seconds; the range is fixed for the whole call, so
                paging is stable when ``end`` is in the past.

        Yields:
            ``raw_messages`` entries (dicts), oldest first within each worker's
            slice (with ``workers > 1`` slices interleave).  Entries that are not
            objects, have no finite timestamp, or fall outside the range are
            counted in :attr:`stats` and skipped.

        Raises:
            DatagrepperUnavailable / DatagrepperBadResponse: see :meth:`get_page`.
        """
        if end < start:
            raise ValueError(f"end {end} is before start {start}")
        self.stats = FetchStats()
        seen: set[str] = set()
        bar = None
        if self.progress if self.progress is not None else progress_wanted():
            # imported here: tqdm only when a progress bar is shown
            from tqdm import tqdm

            bar = tqdm(total=0, unit="msg", desc="datagrepper", file=sys.stderr, leave=False)
        try:
            for batch in self._batches(start, end):
                fresh = 0
                for msg in batch:
                    if not isinstance(msg, dict):
                        self._skip(f"an entry that is not an object: {str(msg)[:60]!r}")
                        continue
                    ts = message_timestamp(msg)
                    if ts is None:
                        self._skip(f"msg_id={msg.get('msg_id')!s:.80} has no valid timestamp")
                        continue
                    if not start <= ts <= end:
                        self.stats.add(out_of_range=1)
                        continue
                    key = message_key(msg)
                    if key in seen:
                        self.stats.add(duplicates=1)
                        continue
                    seen.add(key)
                    fresh += 1
                    self.stats.add(messages=1)
                    yield msg
                if bar is not None:
                    if bar.total != max(self.stats.expected, self.stats.messages):
                        bar.total = max(self.stats.expected, self.stats.messages)
                        bar.refresh()
                    bar.update(fresh)
                if self.stats.pages % 50 == 1:
                    log.info(
                        "datagrepper: page %d, %d messages so far (about %d in range)",
                        self.stats.pages,
                        self.stats.messages,
                        self.stats.expected,
                    )
        finally:
            if bar is not None:
                bar.close()
        log.info(
            "datagrepper: %d messages in %d pages (%d requests, %d retries, %d splits, "
            "%d duplicates dropped)",
            self.stats.messages,
            self.stats.pages,
            self.stats.requests,
            self.stats.retries,
            self.stats.splits,
            self.stats.duplicates,
        )

    def _batches(self, start: float, end: float) -> Iterator[list[dict[str, Any]]]:
        stop = threading.Event()
        slices = self._slices(start, end)
        if len(slices) == 1:
            yield from self._pages(start, end, stop)
            return
        out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self.workers * 4)
        todo: queue.Queue[tuple[float, float]] = queue.Queue()
        for s in slices:
            todo.put(s)

        def put(item: tuple[str, Any]) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                while not stop.is_set():
                    try:
                        lo, hi = todo.get_nowait()
                    except queue.Empty:
                        break
                    for msgs in self._pages(lo, hi, stop):
                        if not put(("page", msgs)):
                            return
            except BaseException as exc:  # handed to the consumer thread
                put(("error", exc))
            finally:
                put(("done", None))

        threads = [
            threading.Thread(target=work, name=f"datagrepper-{i}", daemon=True)
            for i in range(min(self.workers, len(slices)))
        ]
        for t in threads:
            t.start()
        running = len(threads)
        try:
            while running:
                kind, item = out.get()
                if kind == "page":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    running -= 1
        finally:
            stop.set()

    def close(self) -> None:
        """Close the HTTP sessions of every thread that sent a request (the worker
        threads' too); a later request opens a new one."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()
        self._local = threading.local()
