"""Bidirectional controls from the bus never reach what the wall shows."""

from __future__ import annotations

from collections import Counter
from typing import Any

from listener.core.bidi import BIDI_CONTROLS, strip_bidi, strip_bidi_counts
from listener.core.config import Config
from listener.core.intake import Intake
from listener.core.snapshot import build_snapshot, live_snapshot
from listener.core.views import diff_rows, radar_from_counts
from listener.core.windows import Counts
from listener.runtime.options import printable
from listener.tools.gource import clean_name, clean_part

RLO = "\u202e"
NOW = 1_700_000_000.0


def test_every_control_is_removed_and_nothing_else() -> None:
    assert len(BIDI_CONTROLS) == 12
    for c in BIDI_CONTROLS:
        assert strip_bidi(f"a{c}b") == "ab"
    assert strip_bidi(RLO + "detelpmoc") == "detelpmoc"
    # right-to-left letters, other formatting (ZWJ) and accents are kept
    for kept in ("مرحبا", "שלום", "e\u0301", "a\u200db", "plain"):
        assert strip_bidi(kept) == kept
    assert strip_bidi_counts({RLO + "x": 2, "x": 3, "y": 1}) == {"x": 5, "y": 1}


def hostile_counts() -> Counts:
    c = Counts()
    c.messages = 3
    c.topics = Counter({f"org.fedoraproject.prod.{RLO}detelpmoc": 2, "org.x": 1})
    c.categories = Counter({f"{RLO}detelpmoc": 2, "x": 1})
    c.users = Counter({f"{RLO}kcab": 2, "ralph": 1})
    c.usercat = Counter({(f"{RLO}kcab", f"{RLO}detelpmoc"): 2, ("ralph", "x"): 1})
    return c


def test_snapshots_radar_and_diff_show_no_control() -> None:
    c = hostile_counts()
    for snap in (build_snapshot(3600, NOW, c, NOW), live_snapshot(3600, NOW, c, NOW)):
        assert not any(ch in str(snap) for ch in BIDI_CONTROLS)
        assert snap["categories"] == {"detelpmoc": 2, "x": 1}
        assert snap["top_users"][0] == ["kcab", 2] and snap["head"] == ["kcab", 2]
        assert snap["messages"] == 3
    radar = radar_from_counts(c, 3600, NOW)
    assert radar["categories"] == ["detelpmoc", "x"]
    assert radar["users"]["kcab"] == [1.0, 0.0]
    rows = diff_rows(dict(c.categories), {}, "category")
    assert {r["category"] for r in rows} == {"detelpmoc", "x"}


def test_the_ticker_gets_no_control(extractor: Any) -> None:
    intake = Intake(Config(), extractor, lambda: NOW)
    body = {
        "topic": f"org.fedoraproject.prod.{RLO}detelpmoc.tag",
        "msg": {"user": f"{RLO}kcab"},
        "msg_id": "bidi-1",
        "timestamp": NOW,
        "users": [f"{RLO}kcab"],
    }
    assert intake.handle_body(body, users=[f"{RLO}kcab"])
    event = intake.take_blink()
    assert event is not None
    shown = event["msgs"][0]
    assert shown["category"] == "detelpmoc" and shown["users"] == ["kcab"]
    assert RLO not in shown["topic"] and RLO not in shown["summary"]
    assert event["counts"] == {"detelpmoc": 1}
    # what is counted keeps the bus's text: only what is shown is cleaned
    assert intake.pending[0].category == f"{RLO}detelpmoc"


def test_gource_and_the_terminal() -> None:
    assert clean_name(f"{RLO}kcab") == "kcab"
    assert clean_part(f"{RLO}det/elpmoc") == "det_elpmoc"
    assert printable(f"{RLO}detelpmoc\x1b") == "\\u202edetelpmoc\\x1b"
