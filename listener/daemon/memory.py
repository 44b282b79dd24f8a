"""The listener's memory: the cyclic GC's cadence, and freed heap memory given
back to the system after a burst (through libc and the interpreter's GC).

**GC.**  Every message is decoded into a tree of dicts and lists that reference
counting frees as soon as the message is counted; what survives until the next
flush is a few small tuples per message.  With CPython's default thresholds
(700, 10, 10) those survivors set off a young collection every few hundred
messages and a full one (every object of the process, hundreds of thousands
after start-up, plus the windows' counters) every few tens of thousands, a sizeable share of the
listener's CPU during a drain (``docs/BENCHMARKS.md``).  :func:`tune_gc` moves what start-up
allocated out of the collector's sight (``gc.freeze``) and collects the young
generation every :data:`GC_GEN0_THRESHOLD` surviving allocations instead, so
full collections come far less often.  The process makes little cyclic
garbage (asyncio and redis-py internals); it is still collected, later.

A burst the listener cannot take at once waits in libzmq's receive queue (up to
``hwm`` messages, each with its copies): glibc keeps the freed memory in its
arenas once the queue has drained, so the process's RSS stays at its peak, several
times its steady size (``docs/BENCHMARKS.md``).  ``malloc_trim(0)`` (glibc, all
arenas) returns it.  Elsewhere (musl, macOS) :func:`trim_heap` does nothing.

**Automatic trimming.**  glibc also trims on its own: whenever the free space at
the top of an arena passes ``M_TRIM_THRESHOLD`` (128 KiB, raised as large blocks
come and go) it hands it back, and the next messages fault the same pages in
again.  libzmq's I/O thread allocates every received message in its own arena and
the main thread frees it, so during a burst that arena could shrink and regrow.
:func:`hold_heap` raises the threshold (:data:`TRIM_THRESHOLD_BYTES`), so memory
stays in the arenas while a burst lasts and :func:`trim_heap` returns it once the
burst is over (the consumer trims after a small flush, not mid-burst); this saves
CPU per message on libzmq's I/O thread and the others (``docs/BENCHMARKS.md``).
The I/O thread still takes page faults in each drain: the first touch of the
memory the queued messages occupy, handed back after each burst.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from typing import Any

log = logging.getLogger(__name__)

_libc: Any = None
_checked = False

#: Net allocations of GC-tracked objects between two young collections (CPython's
#: default is 700); the older generations keep their default multipliers.
GC_GEN0_THRESHOLD = 50_000

#: glibc's ``M_TRIM_THRESHOLD`` set by :func:`hold_heap`, bytes: free memory at
#: the top of an arena up to this size stays there until :func:`trim_heap`.
TRIM_THRESHOLD_BYTES = 256 << 20

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h


def tune_gc(gen0_threshold: int = GC_GEN0_THRESHOLD) -> tuple[int, int, int]:
    """Freeze what start-up allocated and collect less often (module docstring).

    Call once, after start-up (processors imported, Redis connected), before the
    first message.

    Args:
        gen0_threshold: net tracked allocations between young collections.

    Returns:
        The thresholds before the call (``gc.get_threshold()``).
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0_threshold, before[1], before[2])
    log.debug("gc: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())
    return before


def _load_libc() -> Any:
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
    return _libc


def hold_heap(threshold_bytes: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Stop glibc from trimming arenas on its own below ``threshold_bytes``
    (``mallopt(M_TRIM_THRESHOLD)``; module docstring): call once at start-up, and
    :func:`trim_heap` after a burst.

    Returns:
        True when the option was set; False without glibc.  Never raises.
    """
    lib = _load_libc()
    if lib is None or not hasattr(lib, "mallopt"):
        return False
    try:
        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.mallopt.restype = ctypes.c_int
        return bool(lib.mallopt(_M_TRIM_THRESHOLD, int(threshold_bytes)))
    except Exception:  # pragma: no cover - defensive
        return False


def trim_heap() -> bool:
    """Call glibc's ``malloc_trim(0)``.

    Returns:
        True when memory was returned to the system; False when there was none to
        return or glibc is not there.  Never raises.
    """
    lib = _load_libc()
    if lib is None:
        return False
    try:
        return bool(lib.malloc_trim(0))
    except Exception:  # pragma: no cover - defensive
        return False
