"""Fill the Redis counters of a gap from datagrepper (Redis, and HTTP in a thread).

``fedmsg-wallboard backfill --datagrepper URL --since SECONDS`` (or ``--gap``:
from the newest message counted) pages datagrepper's ``/raw`` once over the gap
(:class:`listener.inputs.datagrepper.DatagrepperClient`) and feeds every message to a
:class:`listener.daemon.consumer.Consumer` with ``blink=False``: counted in the buckets,
never shown as live traffic.  The consumer's flush script de-duplicates by
``msg_id`` against everything already counted, live messages included, so a
backfill over a period the listener already saw changes nothing, and two
overlapping backfills count each message once.

* Bounded: never further back than the longest window (older buckets are never
  read), and never further back than the msg_id sets remember (``dedupe_s``,
  by default the longest window + 1 h): an older range is refused, since it
  could be counted twice.
* One at a time: a Redis lock ``{prefix}:backfill_lock`` (``SET NX PX``, renewed
  by its own heartbeat every third of its life, whatever the batches do,
  released only by its owner).  A second backfill while one runs returns
  ``status="busy"`` at once.
* Loud: ``backfill_status`` in ``P:meta`` is ``running``, then ``done`` or
  ``incomplete`` (the lock was lost, datagrepper kept failing, or a range came
  back with fewer messages than datagrepper's ``total``); ``incomplete`` keeps
  ``backfill_resume_from``, where the next start-up backfill starts at the
  latest: a second before the newest message counted, when one
  worker paged in order and stopped early, else the range's start.  ``/metrics``
  shows it (``fedmsg_wallboard_backfill_status``).
* A range that comes back empty although the listener counted messages in it is
  a WARNING.
* Polite: every request goes through the client's limit (``--rate``,
  ``--concurrency``; ``datagrepper_rate``, ``datagrepper_concurrency``).
* In the listener: :func:`backfill_after_gap` with the listener's own consumer
  (its live windows then include the backfilled counts at the next step).

Exit codes of the command: 0 done (or nothing to do), 3 incomplete (the lock
was lost or a range came back short: run it again), 75 (``EX_TEMPFAIL``)
another backfill holds the lock (try later), 2 usage error (a range older than
the de-duplication covers), 69 datagrepper (status ``incomplete``) or Redis
unavailable, 78 bad config; 1 is a crash, as for every command.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass
from typing import Any

from listener.core.errors import (
    EXIT_INCOMPLETE,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    PermanentError,
    TransientError,
)
from listener.core.intake import Intake
from listener.core.users import UserExtractor, load_fedmsg_config
from listener.daemon.consumer import Consumer
from listener.daemon.memory import tune_gc
from listener.inputs.datagrepper import (
    DatagrepperClient,
    DatagrepperUnavailable,
    message_timestamp,
    progress_wanted,
)
from listener.runtime.options import (
    add_common,
    add_datagrepper_options,
    datagrepper_limits,
    http_url,
    load_config,
    plain_text,
)
from listener.storage.connect import open_store
from listener.storage.store import Store

log = logging.getLogger(__name__)

#: Redis key (under the store's prefix) of the one-backfill-at-a-time lock.
LOCK_NAME = "backfill_lock"

#: ``backfill_status`` of ``P:meta``: a backfill runs, ended complete, ended with
#: part of its range not known to be counted.
RUNNING, DONE, INCOMPLETE = "running", "done", "incomplete"

#: A backfill's range must start this long after the oldest msg_id Redis still
#: remembers, seconds: room for the backfill's own run time.
DEDUPE_SAFETY_S = 600

#: How far back of the newest message counted an interrupted backfill resumes,
#: seconds: messages of nearly equal timestamps may come in any order.
ORDER_SLACK_S = 1.0

_EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class BackfillRefused(PermanentError):
    """A range older than the msg_id sets remember (``dedupe_s``): backfilling it
    could count messages twice."""


@dataclass
class BackfillResult:
    """What a backfill did.

    Attributes:
        status: ``done``; ``busy`` (another backfill holds the lock: nothing
            fetched); ``incomplete`` (stopped early or short: see ``reason``).
        start / end: the range fetched, UNIX seconds (both inclusive).
        reason: why ``incomplete``: ``lost_lock`` (the lock was taken from us:
            stopped), ``unavailable`` (datagrepper kept failing), ``short``
            (fewer messages than datagrepper's ``total``); else "".
        missing: messages datagrepper's ``total`` counts that never came.
        resume_from: where the next start-up backfill starts at the latest, UNIX
            seconds (None: nothing known incomplete).
        fetched: messages received from datagrepper (each msg_id once).
        accepted: messages the consumer accepted (valid, not a duplicate it
            remembers, not older than the longest window).
        counted: messages the backfill's flushes wrote as new; duplicates of
            messages already in Redis are not counted.  In a running listener the
            periodic flush may write some of them first (they are then not here).
        rejected: messages the consumer rejected (invalid, too old, duplicates it
            remembered).
        skipped: entries of datagrepper's pages that are not messages at all (not
            a JSON object, no finite timestamp): never handed to the consumer.
        requests: HTTP requests sent to datagrepper (retries included).
        seconds: wall time, seconds.
    """

    status: str
    start: float
    end: float
    reason: str = ""
    missing: int = 0
    resume_from: float | None = None
    fetched: int = 0
    accepted: int = 0
    counted: int = 0
    rejected: int = 0
    skipped: int = 0
    requests: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)


class BackfillLock:
    """The ``{prefix}:backfill_lock`` key: ``SET NX PX`` with a random owner token.

    Args:
        store: the Redis namespace.
        ttl_s: lifetime of the lock, seconds (renewed by :meth:`extend`, which
            :meth:`heartbeat` calls every third of it); a crashed backfill frees
            it after this.
    """

    def __init__(self, store: Store, ttl_s: float = 300) -> None:
        self.store = store
        self.key = store.key(LOCK_NAME)
        self.ttl_s = float(ttl_s)
        self.ttl_ms = max(1, int(self.ttl_s * 1000))
        self.token = uuid.uuid4().hex

    async def acquire(self) -> bool:
        """Take the lock; False when another backfill holds it."""
        return bool(await self.store.r.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def extend(self) -> bool:
        """Renew the lock's lifetime; False when it is no longer ours."""
        return bool(await self.store.r.eval(_EXTEND_LUA, 1, self.key, self.token, self.ttl_ms))

    async def heartbeat(self, lost: asyncio.Event) -> None:
        """Renew the lock every third of its life until cancelled; set ``lost`` and
        return when it is no longer ours, or when Redis did not renew it for a
        whole lifetime (it may have expired: another backfill may hold it).  Each
        renewal also writes ``backfill_heartbeat_at`` (UNIX s) in ``P:meta``."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                ours = await self.extend()
            except Exception as exc:  # redis ConnectionError/TimeoutError
                if time.monotonic() - renewed < self.ttl_s:
                    log.warning("backfill: could not renew the lock (%s); retrying", exc)
                    continue
                ours = False
            if not ours:
                log.error("backfill: lost the lock %s; stopping", self.key)
                lost.set()
                return
            renewed = time.monotonic()
            with contextlib.suppress(Exception):  # a field for the eyes only
                await self.store.set_health({"backfill_heartbeat_at": time.time()})

    async def release(self) -> None:
        """Delete the lock if it is still ours (errors are logged, not raised)."""
        try:
            await self.store.r.eval(_RELEASE_LUA, 1, self.key, self.token)
        except Exception as exc:  # Redis gone: the lock expires by itself
            log.warning(
                "backfill: could not release the lock (%s); it expires in %d s", exc, self.ttl_s
            )


async def _batches(
    client: DatagrepperClient, start: float, end: float, batch_size: int, lost: asyncio.Event
) -> AsyncGenerator[list[dict[str, Any]], None]:
    """Messages of ``[start, end]`` in batches, fetched by a daemon thread (the
    HTTP client is blocking) and handed over through a bounded queue; ends early
    (without error) once ``lost`` is set."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        try:
            fut = asyncio.run_coroutine_threadsafe(q.put(item), loop)
        except RuntimeError:  # the loop is closed
            return False
        while True:
            try:
                fut.result(timeout=0.5)
                return True
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    fut.cancel()
                    return False

    def produce() -> None:
        gen = client.iter_messages(start, end)
        try:
            batch: list[dict[str, Any]] = []
            for msg in gen:
                if stop.is_set():
                    return
                batch.append(msg)
                if len(batch) >= batch_size:
                    if not put(("batch", batch)):
                        return
                    batch = []
            if batch and not put(("batch", batch)):
                return
            put(("done", None))
        except BaseException as exc:  # handed to the event loop
            put(("error", exc))
        finally:
            gen.close()

    thread = threading.Thread(target=produce, name="backfill-datagrepper", daemon=True)
    thread.start()
    lost_wait = asyncio.ensure_future(lost.wait())
    try:
        while True:
            get = asyncio.ensure_future(q.get())
            await asyncio.wait((get, lost_wait), return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                return
            kind, item = get.result()
            if kind == "batch":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        stop.set()
        lost_wait.cancel()


def _handle(consumer: Consumer, msg: dict[str, Any], validate: bool) -> bool:
    users = msg.get("users")
    known = users if isinstance(users, list) else None
    # datagrepper is trusted (HTTPS) and keeps no signature for fedora-messaging
    # era messages: the bus's signature check applies only when asked for
    return consumer.intake.handle_body(msg, users=known, blink=False, validate=validate)


async def _flush_all(consumer: Consumer, attempts: int, backoff_s: float) -> int:
    """Flush until nothing of ours is pending; retries with backoff on Redis errors.

    Raises:
        TransientError: Redis still failing after ``attempts`` tries.
    """
    new = 0
    delay = backoff_s
    failures = 0
    while consumer.unwritten():
        try:
            new += await consumer.flush()
            failures = 0
        except Exception as exc:  # redis ConnectionError/TimeoutError
            failures += 1
            if failures >= attempts:
                raise TransientError(
                    f"backfill: Redis flush failed {failures} times: {exc}"
                ) from exc
            log.warning("backfill: flush failed (%s); retry in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    return new


def dedupe_horizon(consumer: Consumer, now: float | None = None) -> float:
    """The oldest timestamp a backfill may start at, UNIX seconds: msg_ids older
    than ``now - dedupe_s`` (+ :data:`DEDUPE_SAFETY_S`) are no longer remembered."""
    now = time.time() if now is None else now
    return now - consumer.store.dedupe_s + DEDUPE_SAFETY_S


async def _counted_between(store: Store, start: float, end: float) -> int:
    """Messages already counted in Redis in buckets lying wholly inside
    ``[start, end]`` (the coarsest size that has one; 0 when none does)."""
    for size in sorted(store.buckets_s, reverse=True):
        first = int(start) - int(start) % size + (size if int(start) % size else 0)
        starts = list(range(first, int(end) - size + 1, size))
        if starts:
            return sum(c.messages for c in await store.read_buckets(size, starts, usercat=False))
    return 0


async def _record(store: Store, fields: dict[str, Any]) -> None:
    """Write backfill fields to ``P:meta``; a Redis error is logged, not raised (the
    result is still returned and the exit code still tells)."""
    try:
        await store.set_health(fields)
    except Exception as exc:  # redis ConnectionError/TimeoutError
        log.error("backfill: could not record %s in Redis: %s", sorted(fields), exc)
    status = fields.get("backfill_status")
    if status is not None:
        store.backfill_status = status


async def backfill_gap(
    consumer: Consumer,
    base_url: str,
    since_s: float,
    until: float | None = None,
    *,
    client: DatagrepperClient | None = None,
    batch_size: int = 500,
    lock_ttl_s: float = 300,
    validate: bool = False,
    flush_attempts: int = 5,
) -> BackfillResult:
    """Count the messages of ``[until - since_s, until]`` from datagrepper into Redis.

    Args:
        consumer: the listener's consumer (or a fresh one, warmed up).
        base_url: datagrepper's base URL (``https://apps.fedoraproject.org/datagrepper``).
        since_s: how far back from ``until``, seconds; bounded to the consumer's
            longest window.
        until: end of the range, UNIX seconds; default: the consumer's clock (now).
        client: a configured :class:`DatagrepperClient` (default: one for
            ``base_url`` with the consumer's ``datagrepper_rate`` and
            ``datagrepper_concurrency``, a progress bar only on a terminal).
        batch_size: messages fed to the consumer between flushes.
        lock_ttl_s: lifetime of the lock, seconds, renewed every third of it by
            its own heartbeat.
        validate: run the consumer's signature check on backfilled messages
            (default False: datagrepper is trusted).
        flush_attempts: Redis flush attempts per batch before giving up.

    Returns:
        A :class:`BackfillResult`: ``busy`` when another backfill runs,
        ``incomplete`` when the lock was lost or a range came back short of
        datagrepper's ``total`` (both recorded in ``P:meta``).

    Raises:
        BackfillRefused: the range starts before :func:`dedupe_horizon`.
        listener.inputs.datagrepper.DatagrepperUnavailable: datagrepper kept
            failing (recorded as ``incomplete``, reason ``unavailable``, first).
        listener.inputs.datagrepper.DatagrepperBadResponse: datagrepper answered 4xx.
        listener.core.errors.TransientError: Redis kept failing.
    """
    t0 = time.monotonic()
    until = consumer.clock() if until is None else float(until)
    bound = consumer.cfg.longest_window_s
    if since_s > bound:
        log.info("backfill: %g s asked, bounded to the longest window (%d s)", since_s, bound)
    since_s = max(0.0, min(float(since_s), float(bound)))
    start = until - since_s
    horizon = dedupe_horizon(consumer)
    if start < horizon:
        raise BackfillRefused(
            f"backfill: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(start))} UTC is older "
            f"than the msg_ids Redis remembers ({consumer.store.dedupe_s} s, dedupe_s): "
            f"its messages could be counted twice. Start at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(horizon))} UTC or later "
            f"(--since {max(0, int(until - horizon))} at most), or raise dedupe_s"
        )
    result = BackfillResult(DONE, start, until)
    lock = BackfillLock(consumer.store, lock_ttl_s)
    if not await lock.acquire():
        log.warning("backfill: another backfill holds %s; not starting", lock.key)
        result.status = "busy"
        return result
    own_client = client is None
    if client is None:
        client = DatagrepperClient(
            base_url,
            rate=consumer.cfg.datagrepper_rate,
            concurrency=consumer.cfg.datagrepper_concurrency,
            progress=progress_wanted(),
        )
    log.info(
        "backfill: %s .. %s (%.0f s) from %s, at most %g requests/s",
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)),
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(until)),
        since_s,
        client.url,
        client.limiter.rate,
    )
    store = consumer.store
    previous = (await store.meta()).get("backfill_resume_from")
    resume_before = float(previous) if previous else None
    await _record(
        store,
        {
            "backfill_status": RUNNING,
            "backfill_started_at": time.time(),
            "backfill_heartbeat_at": time.time(),
        },
    )
    lost = asyncio.Event()
    heartbeat = asyncio.create_task(lock.heartbeat(lost), name="backfill-lock")
    failure: BaseException | None = None
    # messages up to ``complete_until`` are counted (one worker, ascending order)
    in_order = client.workers == 1
    newest = start
    complete_until = start
    try:
        batches = 0
        stream = _batches(client, start, until, batch_size, lost)
        async with contextlib.aclosing(stream):
            async for batch in stream:
                batches += 1
                result.fetched += len(batch)
                for msg in batch:
                    if _handle(consumer, msg, validate):
                        result.accepted += 1
                    else:
                        result.rejected += 1
                    ts = message_timestamp(msg)
                    if ts is not None:
                        # one worker pages upwards: everything before the newest
                        # message flushed is fetched, unless the order ever breaks
                        in_order = in_order and ts >= newest - ORDER_SLACK_S
                        newest = max(newest, ts)
                result.counted += await _flush_all(consumer, flush_attempts, 0.5)
                if in_order:
                    complete_until = newest - ORDER_SLACK_S
                (log.info if batches % 10 == 1 else log.debug)(
                    "backfill: %d messages fetched, %d new so far", result.fetched, result.counted
                )
                if lost.is_set():
                    break
        if lost.is_set():
            result.status, result.reason = INCOMPLETE, "lost_lock"
        elif client.stats.short:
            result.status, result.reason = INCOMPLETE, "short"
            result.missing = client.stats.short
        elif result.fetched == 0 and (live := await _counted_between(store, start, until)):
            log.warning(
                "backfill: datagrepper has no message in %s .. %s UTC, where this "
                "wallboard counted %d: is %s the right datagrepper, and up to date?",
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(until)),
                live,
                client.url,
            )
    except DatagrepperUnavailable as exc:
        result.status, result.reason = INCOMPLETE, "unavailable"
        failure = exc
        raise
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        await lock.release()
        result.requests = client.stats.requests
        result.skipped = client.stats.bad
        if own_client:
            client.close()
        result.seconds = time.monotonic() - t0
        if result.status == INCOMPLETE:
            # what came before was counted (a short range: not known where the
            # missing messages are, from ``start``); the next start-up backfill
            # starts there at the latest
            known = start if result.reason == "short" or not in_order else complete_until
            known = max(start, known)
            result.resume_from = known if resume_before is None else min(known, resume_before)
        elif resume_before is not None and start > resume_before:
            result.resume_from = resume_before  # an older hole is still open
        if result.status in (DONE, INCOMPLETE):
            await _record(
                store,
                {
                    "backfill_status": result.status,
                    "backfill_last": json.dumps(result.as_dict()),
                    "backfill_resume_from": ""
                    if result.resume_from is None
                    else repr(result.resume_from),
                },
            )
        log.log(
            logging.ERROR if result.status == INCOMPLETE else logging.INFO,
            "backfill %s%s: %d fetched, %d accepted, %d rejected, %d new, %d skipped "
            "(not messages), %d missing in %.1f s%s",
            result.status,
            f" ({result.reason})" if result.reason else "",
            result.fetched,
            result.accepted,
            result.rejected,
            result.counted,
            result.skipped,
            result.missing,
            result.seconds,
            f"; {failure}" if failure else "",
        )
    return result


async def backfill_after_gap(
    consumer: Consumer,
    base_url: str,
    now: float | None = None,
    *,
    min_gap_s: float = 60.0,
    margin_s: float = 60.0,
    **kwargs: Any,
) -> BackfillResult | None:
    """Backfill the gap since the newest message counted, when there is one.

    The gap is ``now - last_message_at`` (``store.meta()``), plus ``margin_s``
    to cover messages in flight, bounded to the longest window; a Redis that
    never counted a message gets the whole longest window.  An earlier backfill
    that ended ``incomplete`` left ``backfill_resume_from``: the range then starts
    there at the latest (whatever the gap).  A range older than the msg_ids
    remembered (:func:`dedupe_horizon`) is cut there, with a WARNING.

    Args:
        consumer: the listener's consumer, after ``warm_up()``.
        base_url: datagrepper's base URL.
        now: UNIX seconds (default: the consumer's clock).
        min_gap_s: gaps shorter than this are left alone (returns None), seconds.
        margin_s: extra seconds fetched before the newest counted message.
        kwargs: passed to :func:`backfill_gap`.

    Returns:
        The :class:`BackfillResult`, or None when the gap is under ``min_gap_s``.
    """
    now = consumer.clock() if now is None else now
    meta = await consumer.store.meta()
    bound = float(consumer.cfg.longest_window_s)
    last = meta.get("last_message_at")
    resume = meta.get("backfill_resume_from")
    if last:
        gap = now - float(last)
        if gap < min_gap_s and not resume:
            log.info("backfill: gap of %.0f s is under %.0f s; nothing to do", gap, min_gap_s)
            return None
        since = min(bound, gap + margin_s)
    else:
        since = bound
    if resume:
        log.warning(
            "backfill: the last backfill was incomplete from %s UTC; resuming there",
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(resume))),
        )
        since = min(bound, max(since, now - float(resume)))
    horizon = dedupe_horizon(consumer)
    if now - since < horizon:
        log.warning(
            "backfill: not before %s UTC: older msg_ids are no longer remembered "
            "(dedupe_s = %d s), their messages could be counted twice",
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(horizon)),
            consumer.store.dedupe_s,
        )
        since = max(0.0, now - horizon - 60)  # a minute for the clock to move on
    return await backfill_gap(consumer, base_url, since, now, **kwargs)


# -- the command --------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register the ``backfill`` subcommand."""
    p = sub.add_parser(
        "backfill",
        help="fill the Redis counters of a gap from datagrepper",
        description=plain_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument(
        "--datagrepper",
        required=True,
        metavar="URL",
        type=http_url,
        help="datagrepper base URL, e.g. https://apps.fedoraproject.org/datagrepper",
    )
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--since",
        type=float,
        metavar="SECONDS",
        help="backfill this many seconds before --until (bounded to the longest window)",
    )
    when.add_argument(
        "--gap",
        action="store_true",
        help="backfill from the newest message counted (whole longest window if none)",
    )
    p.add_argument("--until", type=float, metavar="EPOCH", help="end, UNIX s (default now)")
    add_datagrepper_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


async def _run(args: argparse.Namespace) -> BackfillResult | None:
    cfg = load_config(args)
    fcfg = load_fedmsg_config(cfg.fedmsg_config or None)
    fas = UserExtractor.load_fas_cache(cfg.fas_cache) if cfg.fas_cache else None
    extractor = UserExtractor(fcfg, fas_cache=fas)
    store, handle = await open_store(cfg)
    try:
        consumer = Consumer(cfg, Intake(cfg, extractor, time.time), store)
        await consumer.warm_up()
        tune_gc()  # start-up done: every page goes through the per-message path
        rate, concurrency = datagrepper_limits(args, cfg)
        client = DatagrepperClient(
            args.datagrepper,
            timeout_s=args.timeout_s,
            retries=max(0, args.retries),
            rate=rate,
            concurrency=concurrency,
            progress=progress_wanted(),
        )
        if args.gap:
            result = await backfill_after_gap(consumer, args.datagrepper, args.until, client=client)
        else:
            result = await backfill_gap(
                consumer, args.datagrepper, args.since, args.until, client=client
            )
        if result is not None and result.counted:
            # A running listener keeps its window totals in memory: this field
            # tells it the buckets changed under it (re-read its windows).
            await store.set_health({"backfill_done_at": time.time()})
        return result
    finally:
        await store.close()
        del handle


def run(args: argparse.Namespace) -> int:
    """Run ``backfill``; returns the exit code (module docstring)."""
    if args.since is not None and args.since <= 0:
        log.error("--since must be > 0")
        return 2
    try:
        result = asyncio.run(_run(args))
    except BackfillRefused as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result.as_dict() if result else {"status": "nothing"}, indent=2))
    elif result is None:
        print("backfill: no gap to fill")
    else:
        print(
            f"backfill {result.status}{f' ({result.reason})' if result.reason else ''}: "
            f"{result.fetched} fetched, {result.accepted} accepted, "
            f"{result.rejected} rejected, {result.counted} new, {result.skipped} skipped "
            f"(not messages), {result.missing} missing, {result.requests} requests in "
            f"{result.seconds:.1f} s"
        )
    if result is not None and result.status == "busy":
        return EXIT_TEMPFAIL  # 1 is a crash for every command (docs/CONFIG.md)
    if result is not None and result.status == INCOMPLETE:
        return EXIT_INCOMPLETE
    return 0
