"""The integrity panel's last-hour line (pure)."""

from __future__ import annotations

import pytest

from listener.core.integrity import Ledger, confidence_text


def counters(counted: int, gaps: int = 0, dropped: int = 0) -> dict[str, int]:
    return {"counted": counted, "gaps": gaps, "dropped": dropped, "duplicates": 0, "rejected": 0}


def test_the_line_is_the_last_hours_increase() -> None:
    led = Ledger(window_s=3600, every_s=60)
    for minute in range(0, 121):  # two hours, 100 counted a minute, a gap at minute 90
        c = counters(100 * minute, gaps=3 if minute >= 90 else 0)
        led.sample(minute * 60.0, c)
    line = led.over_window(7200.0, counters(12000, gaps=3))
    assert line["span_s"] == 3600.0 and line["counted"] == 6000 and line["gaps"] == 3
    assert line["sent"] == 6003 and line["ratio"] == pytest.approx(6000 / 6003)
    assert len(led.samples) <= 62  # an hour of samples, and one older
    assert confidence_text(line) == "counted 99.95 % of what the bus sent in the last hour: 3 gaps"


def test_start_restart_and_nothing_sent() -> None:
    led = Ledger()
    assert led.over_window(10.0, counters(0))["ratio"] is None
    assert confidence_text(led.over_window(10.0, counters(0))) == "nothing sent in the last 1 min"
    led.sample(0.0, counters(500, gaps=2))
    line = led.over_window(600.0, counters(40, dropped=1))  # counters restarted from 0
    assert line["counted"] == 40 and line["dropped"] == 1 and line["gaps"] == 0
    assert confidence_text(line) == (
        "counted 97.56 % of what the bus sent in the last 10 min: 0 gaps, 1 dropped"
    )
    assert confidence_text({"span_s": 3600, "ratio": 0.999999, "gaps": 1}).startswith(
        "counted 99.99 % "
    )
