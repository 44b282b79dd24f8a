"""Wiring of the ``listen`` job: Redis, bus, consumer, periodic tasks, signals.

Start-up order: Redis (embedded, URL or Sentinel) answers -> windows loaded -> bus
sockets connected -> ``READY=1``.  Tasks: bus receive loop, the lease loop
(:func:`_lease_loop`: holds the writer lease or stands by for it), heartbeat
(watchdog + ``STATUS=``); the lease holder's writer tasks, started when it takes
the lease (windows loaded again first) and stopped when it loses it: flusher (every
``flush_interval_s``, with backoff while Redis is down), stepper (every ``step_s``),
blinker (every ``blink_interval_s``).

Shutdown (SIGTERM/SIGINT): ``STOPPING=1``, stop the bus, flush what is pending
(bounded by ``SHUTDOWN_FLUSH_S``), stop the tasks, close.  A second SIGINT exits
at once.  SIGHUP re-reads the config: the log level and ``fas_cache`` apply at
once, other changed settings are logged as needing a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from listener.core.config import Config, effective_bus
from listener.core.endpoints import resolve_endpoints
from listener.core.errors import EXIT_INTERRUPTED, TransientError
from listener.core.intake import Intake
from listener.core.integrity import Ledger
from listener.core.lograte import milestone_level
from listener.core.users import UserExtractor, load_fedmsg_config
from listener.daemon.backfill import backfill_after_gap
from listener.daemon.consumer import Consumer
from listener.daemon.inputs import Inputs
from listener.daemon.memory import hold_heap, tune_gc
from listener.daemon.metrics import serve_metrics
from listener.inputs.amqp import AmqpInput, AmqpSettings
from listener.inputs.signatures import check_signature_setup
from listener.inputs.zmq import Bus
from listener.runtime.systemd import Notifier, reload_settings
from listener.storage.connect import open_store_unless_stopped
from listener.storage.embedded import stop_embedded
from listener.storage.store import Store

log = logging.getLogger(__name__)

#: Longest time spent flushing pending counts at shutdown, seconds.
SHUTDOWN_FLUSH_S = 10.0
#: Longest wait for each later shutdown step (tasks, AMQP, Redis close), seconds.
SHUTDOWN_TASKS_S = 5.0


#: How long the writer lease (``P:writer``) lasts unless renewed, seconds.  A
#: standby takes over at most this long (plus :data:`LEASE_POLL_S`) after the
#: holder's last renewal: a holder that died, froze or lost Redis.
LEASE_TTL_S = 8.0
#: How often the holder renews the lease and a standby tries to claim it, seconds.
LEASE_POLL_S = 0.5


def _raise_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop.

    redis-py 8's asyncio pipeline may swallow the CancelledError that ``cancel()``
    threw into it (often, when the cancellation lands during ``execute()``), so a
    loop around it would go on and shutdown would wait ``SHUTDOWN_TASKS_S`` for it.
    ``Task.cancelling()`` still counts the request.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def _every(
    interval_s: float,
    fn: Callable[[], Awaitable[Any]],
    name: str,
    max_backoff_s: float = 10.0,
    wake: asyncio.Event | None = None,
) -> None:
    """Call ``fn`` every ``interval_s``; on error log and back off (doubling).

    ``wake``, when set, calls ``fn`` at once instead of at the end of the interval
    (not while backing off); it is cleared at each call.

    A Redis outage fails every task on every retry: of a run of failures, the 1st,
    10th, 100th... (:func:`listener.core.lograte.is_log_milestone`) are warnings, the rest
    DEBUG, and the first success after them is one INFO line with their count.
    """
    delay = interval_s
    failures, failing_since = 0, 0.0
    while True:
        if wake is None or delay > interval_s:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(wake.wait(), delay)
            except TimeoutError:
                pass
        if wake is not None:
            wake.clear()
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _raise_if_cancelled()
            delay = min(max_backoff_s, max(delay * 2, interval_s))
            failures += 1
            if failures == 1:
                failing_since = time.monotonic()
            log.log(
                milestone_level(failures),
                "%s failed (%s: %s); retry in %.1f s (%d failure(s) in a row)",
                name,
                type(exc).__name__,
                exc,
                delay,
                failures,
            )
        else:
            _raise_if_cancelled()
            delay = interval_s
            if failures:
                log.info(
                    "%s works again after %d failure(s) in %.0f s",
                    name,
                    failures,
                    time.monotonic() - failing_since,
                )
                failures = 0


@dataclass
class Listener:
    """One running listener: what :func:`run_listener` starts, runs and stops.

    Attributes:
        cfg: settings.  store / handle: the Redis namespace and the embedded
        server's handle (None with ``redis_url``).  me: this process's writer
        lease token.  intake, consumer: the message path.  bus, amqp: the inputs (None
        when not configured); inputs: both as one.  endpoints: the ZeroMQ
        endpoints.  metrics_server: the monitoring port's server, or None.
        ledger: the last hour's counters, for the integrity panel.
    """

    cfg: Config
    store: Store
    handle: Any
    me: str
    intake: Intake
    consumer: Consumer
    bus: Bus | None
    amqp: AmqpInput | None
    inputs: Inputs
    endpoints: list[str]
    metrics_server: Any = None
    ledger: Ledger = field(default_factory=Ledger)


def _signal_handlers(
    cfg: Config, stop: asyncio.Event, notifier: Notifier, reload: Callable[[], Config] | None
) -> None:
    """SIGTERM and SIGINT set ``stop`` (a second SIGINT exits at once); SIGHUP
    reloads the settings (:func:`listener.runtime.systemd.reload_settings`), or only
    the log level from ``$FEDMSG_WALLBOARD_LOG_LEVEL`` without ``reload``."""
    loop = asyncio.get_running_loop()
    interrupts = 0

    def _on_signal(sig: signal.Signals) -> None:
        nonlocal interrupts
        if sig == signal.SIGHUP and reload is not None:
            reload_settings(cfg, reload, notifier)
            return
        if sig == signal.SIGHUP:
            level = os.environ.get("FEDMSG_WALLBOARD_LOG_LEVEL")
            if level:
                logging.getLogger().setLevel(level.upper())
            log.info("SIGHUP: reloaded log level")
            return
        interrupts += 1
        if interrupts > 1 and sig == signal.SIGINT:
            log.warning("second interrupt: exiting now")
            os._exit(EXIT_INTERRUPTED)
        log.info("%s: shutting down", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, _on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass


async def _start(
    cfg: Config, fedmsg_config: dict[str, Any] | None, stop: asyncio.Event
) -> Listener | None:
    """Check the settings, open Redis, claim the namespace, build the message path
    and the inputs, serve the monitoring port, load the windows.

    Returns:
        The listener, or None when ``stop`` came first.

    Raises:
        listener.core.errors.ConfigError: bad configuration.
        listener.core.errors.TransientError: Redis unreachable.
        OSError: the monitoring port is taken.
    """
    fcfg = (
        fedmsg_config
        if fedmsg_config is not None
        else load_fedmsg_config(cfg.fedmsg_config or None)
    )
    validator = check_signature_setup(fcfg)
    if cfg.bus == "auto":
        bus_name = effective_bus("auto", bool(resolve_endpoints(cfg.endpoints, fcfg)))
        if bus_name == "fedora":
            log.info(
                'bus = "auto" and no ZeroMQ endpoint configured: reading Fedora\'s public '
                'AMQP broker (give --endpoint, or bus = "zmq", for a ZeroMQ bus)'
            )
        cfg = dataclasses.replace(cfg, bus=bus_name)
    endpoints = resolve_endpoints(cfg.endpoints, fcfg) if cfg.bus in ("zmq", "both") else []
    # the AMQP settings are checked before Redis is opened: bad ones exit 78 at once
    amqp_settings = AmqpSettings.from_config(cfg) if cfg.bus != "zmq" else None
    if amqp_settings is not None:
        amqp_settings.parameters()
    fas_cache = UserExtractor.load_fas_cache(cfg.fas_cache) if cfg.fas_cache else None
    extractor = UserExtractor(fcfg, fas_cache=fas_cache)
    opened = await open_store_unless_stopped(cfg, stop)
    if opened is None:
        log.info("stopped before Redis was reachable")
        return None
    store, handle = opened
    # the lease token: random (fencing compares it), then who holds it, for the logs
    me = f"{uuid.uuid4().hex}@{socket.gethostname()}:{os.getpid()}"
    intake = Intake(cfg, extractor, time.time, validator)
    consumer = Consumer(cfg, intake, store, lease=me)
    bus = (
        Bus(cfg, endpoints, cfg.topic_prefix, intake, consumer.flush_wanted.set)
        if cfg.bus in ("zmq", "both")
        else None
    )
    amqp = (
        AmqpInput(cfg, intake, consumer, settings=amqp_settings)
        if amqp_settings is not None
        else None
    )
    inputs = Inputs(bus, amqp)
    metrics_server = None
    if cfg.metrics_port:
        try:
            metrics_server = serve_metrics(consumer, inputs, cfg.metrics_port)
        except OSError:  # the port is taken: exit 69, and let a restart claim at once
            if bus is not None:
                bus.close()
            await store.close()
            stop_embedded(handle)
            raise
    await consumer.warm_up()  # Redis answers, its epoch is known (again at takeover)
    return Listener(
        cfg, store, handle, me, intake, consumer, bus, amqp, inputs, endpoints, metrics_server
    )


async def _heartbeat(lst: Listener, notifier: Notifier) -> None:
    """Feed the watchdog while the bus loop turns, say the role and the counts in
    ``STATUS=``, and (the lease holder only) record the health fields in Redis."""
    store, consumer, bus = lst.store, lst.consumer, lst.bus
    now = time.time()
    # fed only while the bus loop turns (listener.inputs.zmq.STUCK_S)
    if bus is None or bus.alive(now):
        notifier.watchdog()
    else:
        log.error("bus loop stuck for %.0f s: not feeding the watchdog", now - bus.loop_at)
    rate = consumer.rate_per_min(now)
    lag = (now - consumer.last_message_at) if consumer.last_message_at else None
    notifier.status(
        f"{rate:.0f} msgs/min, counted {consumer.stats.counted}, "
        f"pending {len(lst.intake.pending)}, "
        f"last message {'never' if lag is None else f'{lag:.0f} s ago'}, "
        f"redis {'ok' if consumer.redis_ok else 'DOWN'}"
        + ("" if consumer.holding else ", standby (another listener writes)")
    )
    if not consumer.holding:  # P:meta's health fields are the writer's
        return
    health = consumer.health(now)
    health["listener_links"] = len(bus.links) if bus is not None else 0
    if bus is not None:
        health.update(bus.health_fields(now))
    if lst.amqp is not None:
        health.update(lst.amqp.health_fields(now))
    health["listener_bus_state"] = lst.inputs.state(now)
    health["listener_redis_ok"] = int(consumer.redis_ok)
    health.update(_integrity_fields(lst, now))
    await store.set_health(health)


def _integrity_fields(lst: Listener, now: float) -> dict[str, Any]:
    """The integrity panel's fields of ``P:meta`` (``/api/integrity``): the
    counters since start and the last hour's line
    (:class:`listener.core.integrity.Ledger`), as JSON."""
    s = lst.consumer.stats
    rejected = dict(s.rejected)
    counters = {
        "counted": s.counted,
        "gaps": lst.inputs.gaps,
        "dropped": s.pending_overflow,
        "duplicates": s.duplicates,
        "rejected": sum(rejected.values()),
    }
    lst.ledger.sample(now, counters)
    return {
        "listener_integrity_json": json.dumps(
            {
                "totals": counters,
                "rejected": rejected,
                "blink_dropped": s.blink_dropped,
                "reconnects": lst.inputs.reconnects,
                "hour": lst.ledger.over_window(now, counters),
            }
        )
    }


def _writer_tasks(lst: Listener) -> list[asyncio.Task[Any]]:
    """The lease holder's periodic tasks: flush, step (ticks, judged with the bus's
    state), blink."""
    cfg, consumer = lst.cfg, lst.consumer

    async def step() -> None:
        await consumer.step(bus_state=lst.inputs.state(time.time()))

    return [
        asyncio.create_task(
            _every(cfg.flush_interval_s, consumer.flush, "flush", wake=consumer.flush_wanted),
            name="flush",
        ),
        asyncio.create_task(_every(cfg.step_s, step, "step"), name="step"),
        asyncio.create_task(
            _every(cfg.blink_interval_s, consumer.publish_blink, "blink"), name="blink"
        ),
    ]


async def _stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=SHUTDOWN_TASKS_S)


async def _lease_loop(lst: Listener) -> None:
    """Hold the writer lease, or stand by for it, until cancelled.

    Every :data:`LEASE_POLL_S`: claim or renew ``P:writer`` for :data:`LEASE_TTL_S`
    (:meth:`Store.claim_writer`).  A standby that gets it becomes the writer
    (:meth:`Consumer.hold`: windows re-read, what it kept flushed, the writer tasks
    started); a writer that finds another holder, or whose write Redis refused
    (:attr:`Consumer.fenced`), stops its writer tasks and stands by, keeping the
    bus's messages of the last ``standby_keep_s`` (:meth:`Consumer.expire_kept`).
    The inputs run all along, except an AMQP input on a named queue
    (``amqp_queue``): a queue shared by the listeners, consumed by the lease holder
    only, from when it takes the lease; a holder of such a queue that loses the lease
    stops (exit 69; systemd starts it again as a standby) and the broker hands its
    unacknowledged deliveries to the next holder.  A Redis error changes no role: a
    writer that cannot reach Redis cannot write either, and the lease expires by
    itself.

    Raises:
        listener.core.errors.TransientError: the lease of a named AMQP queue's
            consumer was lost.
    """
    store, consumer, me = lst.store, lst.consumer, lst.me
    prefix = store.p.strip("{}")
    shared_queue = lst.amqp if lst.amqp is not None and lst.cfg.amqp_queue else None
    queue_task: asyncio.Task[Any] | None = None
    tasks: list[asyncio.Task[Any]] = []
    last_holder: str | None = ""
    try:
        while True:
            holder: str | None = last_holder
            try:
                holder = await store.claim_writer(me, LEASE_TTL_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or failing over
                _raise_if_cancelled()
                log.debug("lease not renewed (%s: %s)", type(exc).__name__, exc)
            else:
                if holder is None and not tasks:
                    try:
                        await consumer.hold()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        _raise_if_cancelled()
                        consumer.stand_by()
                        log.warning("lease taken, windows not loaded (%s): retrying", exc)
                    else:
                        tasks = _writer_tasks(lst)
                        log.info("writer lease of Redis prefix %r taken: writing", prefix)
                        if shared_queue is not None and queue_task is None:
                            queue_task = asyncio.create_task(shared_queue.run(), name="amqp")
                elif holder is not None and holder != last_holder:
                    log.warning(
                        "another listener (%s) holds Redis prefix %r: standing by, keeping "
                        "the last %.0f s of messages",
                        holder,
                        prefix,
                        lst.cfg.standby_keep_s,
                    )
            if tasks and (holder is not None or consumer.fenced.is_set()):
                consumer.stand_by()
                await _stop_tasks(tasks)
                tasks = []
                if queue_task is not None:
                    raise TransientError(
                        f"writer lease of Redis prefix {prefix!r} lost, and AMQP queue "
                        f"{lst.cfg.amqp_queue!r} is for the holder: stopping"
                    )
                log.warning("writer lease of Redis prefix %r lost: standing by", prefix)
            last_holder = holder
            if not tasks:
                consumer.expire_kept(time.time())
                await asyncio.sleep(LEASE_POLL_S)
                continue
            with contextlib.suppress(TimeoutError):  # a refused write: at once
                await asyncio.wait_for(consumer.fenced.wait(), LEASE_POLL_S)
    finally:
        if queue_task is not None:
            tasks.append(queue_task)
        if tasks:
            await _stop_tasks(tasks)


def _tasks(lst: Listener, notifier: Notifier) -> list[asyncio.Task[Any]]:
    """Start the lease loop (which starts the writer tasks), the heartbeat and the
    inputs' receive loops."""

    async def heartbeat() -> None:
        await _heartbeat(lst, notifier)

    tasks = [
        asyncio.create_task(_lease_loop(lst), name="lease"),
        asyncio.create_task(
            _every(min(notifier.watchdog_interval_s or 2.0, 2.0), heartbeat, "heartbeat"),
            name="heartbeat",
        ),
    ]
    if lst.bus is not None:
        tasks.append(asyncio.create_task(lst.bus.run(), name="bus"))
    if lst.amqp is not None and not lst.cfg.amqp_queue:  # a named one: _lease_loop
        tasks.append(asyncio.create_task(lst.amqp.run(), name="amqp"))
    return tasks


def _start_backfill(lst: Listener) -> asyncio.Task[Any] | None:
    """The start-up backfill from datagrepper, outside the tasks: its end, or its
    failure, must not end the listener."""
    if not lst.cfg.datagrepper_url:
        return None
    task = asyncio.create_task(
        backfill_after_gap(lst.consumer, lst.cfg.datagrepper_url), name="backfill"
    )

    def _backfill_done(t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("start-up backfill failed: %s", t.exception())

    task.add_done_callback(_backfill_done)
    return task


async def _shutdown(
    lst: Listener,
    notifier: Notifier,
    tasks: list[asyncio.Task[Any]],
    stop_task: asyncio.Task[Any],
    backfill_task: asyncio.Task[Any] | None,
) -> None:
    """Stop the inputs, flush what is pending (bounded by :data:`SHUTDOWN_FLUSH_S`),
    acknowledge what was written, stop the tasks, release the claim and close."""
    consumer = lst.consumer
    notifier.stopping()
    if lst.bus is not None:
        lst.bus.stop()
    if lst.amqp is not None:
        lst.amqp.stop()
    if backfill_task is not None and not backfill_task.done():
        backfill_task.cancel()
    deadline = time.monotonic() + SHUTDOWN_FLUSH_S
    while consumer.unwritten() and time.monotonic() < deadline:
        try:
            # each call bounded too: a flush waiting on a stuck lock holder must not
            # keep the process past the deadline
            await asyncio.wait_for(consumer.flush(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            log.warning("final flush failed: %s", exc or type(exc).__name__)
            await asyncio.sleep(0.5)
    if consumer.unwritten():
        log.error("shutdown: %d messages could not be written", len(lst.intake.pending))
    if lst.amqp is not None:
        try:
            await asyncio.wait_for(lst.amqp.close(), SHUTDOWN_TASKS_S)  # acks what was written
        except Exception as exc:
            log.warning("AMQP close: %s", exc or type(exc).__name__)
    for t in tasks:
        t.cancel()
    stop_task.cancel()
    _, stuck = await asyncio.wait([*tasks, stop_task], timeout=SHUTDOWN_TASKS_S)
    for task in stuck:  # never expected: name it, with where it waits, and go on
        log.error("shutdown: task %s did not stop within %.0f s", task.get_name(), SHUTDOWN_TASKS_S)
        task.print_stack(file=sys.stderr)
    if lst.bus is not None:
        lst.bus.close()
    if lst.metrics_server is not None:
        lst.metrics_server.shutdown()
    try:
        await asyncio.wait_for(lst.store.release_writer(lst.me), SHUTDOWN_TASKS_S)
    except Exception as exc:  # it expires by itself (LEASE_TTL_S)
        log.warning("Redis: writer claim not released: %s", exc or type(exc).__name__)
    try:
        await asyncio.wait_for(lst.store.close(), SHUTDOWN_TASKS_S)
    except Exception as exc:
        log.warning("Redis close: %s", exc or type(exc).__name__)
    if lst.handle is not None:
        stop_embedded(lst.handle)
    notifier.close()


async def run_listener(
    cfg: Config,
    fedmsg_config: dict[str, Any] | None = None,
    notifier: Notifier | None = None,
    stop: asyncio.Event | None = None,
    reload: Callable[[], Config] | None = None,
) -> int:
    """Run the listener until ``stop`` is set or a signal arrives.

    ``reload`` rebuilds the config on SIGHUP (see
    :func:`listener.runtime.systemd.reload_settings`); None: SIGHUP only re-reads the log
    level from ``$FEDMSG_WALLBOARD_LOG_LEVEL``.

    Returns:
        The exit code: 0 after a clean shutdown.

    Raises:
        listener.core.errors.ConfigError: bad configuration (exit 78).
        listener.core.errors.TransientError: Redis unreachable at start-up.
    """
    notifier = notifier or Notifier()
    stop = stop or asyncio.Event()
    _signal_handlers(cfg, stop, notifier, reload)
    lst = await _start(cfg, fedmsg_config, stop)
    if lst is None:
        return 0
    tasks = _tasks(lst, notifier)
    backfill_task = _start_backfill(lst)
    tune_gc()  # start-up is done: the per-message path follows (listener.daemon.memory)
    hold_heap()  # a burst's memory stays in the heap until it is over, then trim_heap
    sources = [f"{len(lst.endpoints)} endpoint(s)"] if lst.bus is not None else []
    if lst.amqp is not None:
        sources.append(f"AMQP {lst.amqp.settings.url.split('@')[-1]}")
    where = ", ".join(sources)
    notifier.ready(f"listening on {where}")
    log.info("listener ready: %s, windows %s", where, list(cfg.windows_s))

    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
    crashed = [t for t in done if t is not stop_task and t.exception() is not None]
    await _shutdown(lst, notifier, tasks, stop_task, backfill_task)
    if crashed:
        error = crashed[0].exception()
        assert error is not None
        raise error
    log.info("listener stopped: counted %d messages", lst.consumer.stats.counted)
    return 0
