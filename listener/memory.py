"""Give freed heap memory back to the system after a burst.  I/O (libc).

A burst the listener cannot take at once waits in libzmq's receive queue (up to
``hwm`` messages, ~2.5 KiB each with their copies): glibc keeps the freed memory
in its arenas once the queue has drained, so the process's RSS stays at its peak
(``docs/BENCHMARKS.md``: 93 MiB with 10,000 users and 7 days of counters, ~350 MiB
after a 100,000-message burst at full speed).  ``malloc_trim(0)`` (glibc, all
arenas) returns it.  Elsewhere (musl, macOS) :func:`trim_heap` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

_libc: Any = None
_checked = False


def trim_heap() -> bool:
    """Call glibc's ``malloc_trim(0)``.

    Returns:
        True when memory was returned to the system; False when there was none to
        return or glibc is not there.  Never raises.
    """
    global _libc, _checked
    if not _checked:
        _checked = True
        try:
            name = ctypes.util.find_library("c") or "libc.so.6"
            lib = ctypes.CDLL(name)
            if hasattr(lib, "malloc_trim"):
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                lib.malloc_trim.restype = ctypes.c_int
                _libc = lib
        except OSError as exc:
            log.debug("no malloc_trim: %s", exc)
    if _libc is None:
        return False
    try:
        return bool(_libc.malloc_trim(0))
    except Exception:  # pragma: no cover - defensive
        return False
