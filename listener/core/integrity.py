"""How much of what the bus sent was counted, over the last hour: the integrity
panel's confidence line.  Pure: cumulative counters and times in, differences out.

The listener's counters (:class:`listener.core.intake.Stats`, the inputs' gaps) are
totals since it started.  :class:`Ledger` keeps one sample of them a minute for an
hour, so the heartbeat can say what happened in the last hour::

    sent    = counted + gaps + dropped    (what reached the listener or should have)
    ratio   = counted / sent              (None before anything was sent)

``gaps`` are messages missing by publisher sequence numbers (ZeroMQ; a high-water
mark drop on either side shows up there), ``dropped`` those dropped because the
pending buffer was full (Redis down too long).  Rejected messages (bad signature,
bad JSON...) and duplicates are deliberate, listed beside the line, not in it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

#: The counters the line is made of.
LINE_COUNTERS = ("counted", "gaps", "dropped", "duplicates", "rejected")


class Ledger:
    """Samples of cumulative counters, one per ``every_s``, over ``window_s``.

    Args:
        window_s: how far back :meth:`over_window` looks, seconds.
        every_s: sampling period, seconds.
    """

    def __init__(self, window_s: float = 3600.0, every_s: float = 60.0) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self.samples: deque[tuple[float, dict[str, int]]] = deque()

    def sample(self, now: float, counters: Mapping[str, int]) -> None:
        """Record the counters at ``now`` if the newest sample is ``every_s`` old;
        drop samples no longer needed (one older than the window is kept, so the
        window is covered)."""
        if not self.samples or now - self.samples[-1][0] >= self.every_s:
            self.samples.append((now, dict(counters)))
        while len(self.samples) > 1 and self.samples[1][0] <= now - self.window_s:
            self.samples.popleft()

    def over_window(self, now: float, counters: Mapping[str, int]) -> dict[str, Any]:
        """The counters' increase since the sample closest to ``window_s`` ago.

        Returns:
            ``{"span_s" (seconds covered, < window_s after a start), "counted",
            "gaps", "dropped", "duplicates", "rejected", "sent", "ratio"}`` (see the
            module docstring); a counter that went down (a restart) counts from 0.
        """
        base_t, base = self.samples[0] if self.samples else (now, dict(counters))
        out: dict[str, Any] = {"span_s": round(max(0.0, now - base_t), 3)}
        for name in LINE_COUNTERS:
            cur, old = int(counters.get(name, 0)), int(base.get(name, 0))
            out[name] = cur - old if cur >= old else cur
        sent = out["counted"] + out["gaps"] + out["dropped"]
        out["sent"] = sent
        out["ratio"] = None if sent == 0 else out["counted"] / sent
        return out


def confidence_text(line: Mapping[str, Any]) -> str:
    """The panel's sentence: ``"counted 99.97 % of what the bus sent in the last
    hour: 3 gaps"`` (percent floored to 2 decimals: 99.999 % is not 100 %)."""
    span = float(line.get("span_s") or 0)
    when = "in the last hour" if span >= 3540 else f"in the last {max(1, round(span / 60))} min"
    if line.get("ratio") is None:
        return f"nothing sent {when}"
    pct = int(float(line["ratio"]) * 10000) / 100
    gaps, dropped = int(line.get("gaps") or 0), int(line.get("dropped") or 0)
    missing = [f"{gaps} gap{'s' if gaps != 1 else ''}"]
    if dropped:
        missing.append(f"{dropped} dropped")
    return f"counted {pct:.2f} % of what the bus sent {when}: {', '.join(missing)}"
