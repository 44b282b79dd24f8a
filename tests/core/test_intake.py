"""The intake, the per-message path, on its own: no Redis, no socket, a fixed clock."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from listener.core.config import Config
from listener.core.envelope import Rejected
from listener.core.intake import Intake

NOW = 1_700_000_000.0


def body(i: int, ts: float = NOW, topic: str = "org.fedoraproject.prod.buildsys.tag") -> Any:
    return {
        "topic": topic,
        "msg": {
            "tag": "f40",
            "owner": f"user{i}",
            "name": "pkg",
            "version": "1",
            "release": "1",
            "build_id": i,
            "tag_id": 1,
            "instance": "primary",
        },
        "msg_id": f"m-{i}",
        "timestamp": ts,
        "i": i,
        "username": "apache",
    }


def make(extractor: Any, validator: Any = None, **cfg: Any) -> Intake:
    return Intake(Config(**cfg), extractor, lambda: NOW, validator)


def test_accepted_messages_become_pending_rows_with_users_and_category(extractor: Any) -> None:
    intake = make(extractor)
    assert intake.handle_body(body(1))
    assert intake.handle_body(body(2, topic="org.fedoraproject.prod.git.receive"))
    rows = list(intake.pending)
    assert [(r.msg_id, r.timestamp, r.category) for r in rows] == [
        ("m-1", int(NOW), "buildsys"),
        ("m-2", int(NOW), "git"),
    ]
    assert rows[0].users == tuple(sorted(extractor.usernames(body(1))))
    assert (intake.stats.received, intake.stats.accepted) == (2, 2)
    assert intake.last_received_at == NOW


def test_a_msg_id_seen_is_a_duplicate_until_forgotten(extractor: Any) -> None:
    intake = make(extractor)
    assert intake.handle_body(body(1))
    assert not intake.handle_body(body(1))
    assert intake.stats.duplicates == 1 and len(intake.pending) == 1
    intake.forget_seen()
    assert intake.handle_body(body(1))  # Redis' id sets catch it at flush time
    assert len(intake.pending) == 2


def test_the_msg_id_memory_is_bounded(extractor: Any) -> None:
    intake = make(extractor, dedupe_memory=3)
    for i in range(5):
        assert intake.handle_body(body(i))
    assert intake.handle_body(body(0))  # pushed out of the memory
    assert not intake.handle_body(body(4))


def test_overflow_drops_the_oldest_and_forgets_its_id(extractor: Any) -> None:
    intake = make(extractor, max_pending=3)
    for i in range(5):
        assert intake.handle_body(body(i))
    assert [r.msg_id for r in intake.pending] == ["m-2", "m-3", "m-4"]
    assert intake.stats.pending_overflow == 2
    assert intake.handle_body(body(0))  # a redelivery of a dropped one is counted


def test_future_timestamps_are_clamped_and_old_ones_dropped(extractor: Any) -> None:
    intake = make(extractor, max_future_skew_s=300.0)
    assert intake.handle_body(body(1, NOW + 10))
    assert intake.handle_body(body(2, NOW + 86400))
    assert not intake.handle_body(body(3, NOW - 8 * 86400))
    assert intake.stats.future_clamped == 1 and intake.stats.rejected["too_old"] == 1
    assert [r.timestamp for r in intake.pending] == [int(NOW), int(NOW)]
    event = intake.take_blink()
    assert event is not None and [m["ts"] for m in event["msgs"]] == [NOW + 10, NOW]


def test_the_signature_check_applies_unless_told_otherwise(extractor: Any) -> None:
    intake = make(extractor, validator=lambda b: None if b["msg_id"] == "m-1" else "unsigned")
    assert intake.handle_body(body(1))
    assert not intake.handle_body(body(2))
    assert intake.handle_body(body(3), validate=False)
    assert intake.stats.rejected == Counter({"unsigned": 1})


def test_undecodable_frames_are_counted_and_skipped(extractor: Any) -> None:
    intake = make(extractor)
    topic = b"org.fedoraproject.prod.buildsys.tag"
    assert not intake.handle_frames([topic, b"{not json"])
    assert not intake.handle_frames([topic, b'"a string"'])
    assert intake.handle_frames([topic, orjson.dumps(body(7))])
    assert intake.stats.received == 3 and sum(intake.stats.rejected.values()) == 2


def test_a_rejected_message_from_an_input_is_counted_once(extractor: Any) -> None:
    intake = make(extractor)
    intake.reject(Rejected("bad_utf8", "not UTF-8", None), logged=False)
    intake.reject(Rejected("bad_utf8", "not UTF-8", None))
    assert intake.stats.received == 2 and intake.stats.rejected == Counter({"bad_utf8": 2})


def test_an_internal_error_never_escapes(extractor: Any) -> None:
    class Broken:
        errors = 0

        def usernames(self, body: Any) -> Any:
            raise RuntimeError("a bug")

    intake = Intake(Config(), Broken(), lambda: NOW)  # type: ignore[arg-type]
    assert not intake.handle_body(body(1))
    assert intake.stats.rejected == Counter({"internal_error": 1})


def test_known_users_are_cleaned_not_looked_up(extractor: Any) -> None:
    intake = make(extractor)
    assert intake.handle_body(body(1), users=["bob", "", None, "alice", "x" * 300])
    assert intake.pending[0].users == ("alice", "bob")


def test_blinks_and_the_live_rate_leave_backfill_out(extractor: Any) -> None:
    intake = make(extractor, blink_batch_max=2)
    assert intake.take_blink() is None
    for i in range(4):
        intake.handle_body(body(i, NOW - 10 + i))
    intake.handle_body(body(9), blink=False)
    event = intake.take_blink()
    assert event is not None
    assert [m["msg_id"] for m in event["msgs"]] == ["m-2", "m-3"]
    assert (event["total"], event["omitted"], event["first_ts"]) == (4, 2, NOW - 10)
    assert event["counts"] == {"buildsys": 4}
    assert intake.stats.blink_dropped == 2
    assert intake.rate_per_min(NOW) == 4.0
    assert intake.rate_per_min(NOW + 61) == 0.0


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_take_batch_hands_over_the_oldest_first(extractor: Any, limit: int) -> None:
    intake = make(extractor)
    for i in range(3):
        intake.handle_body(body(i))
    batch = intake.take_batch(limit)
    assert [r.msg_id for r in batch] == [f"m-{i}" for i in range(min(limit, 3))]
    assert len(intake.pending) == 3 - len(batch)


def test_a_schemas_description_is_shown_in_the_blink_and_never_breaks_it(
    extractor: Any,
) -> None:
    """``describe`` (the AMQP input's schema view): its summary (on one line, at
    most 200 characters), agent and packages are shown; called only for shown
    messages; one that raises or gives no summary leaves fedmsg.meta's text."""
    calls = []

    def good() -> dict[str, Any]:
        calls.append(1)
        return {"summary": "  a\nlong " + "x" * 300, "agent": "alice", "packages": ["p"] * 20}

    def broken() -> dict[str, Any]:
        raise KeyError("update")

    intake = make(extractor)
    assert intake.handle_body(body(1), NOW, describe=good)
    assert intake.handle_body(body(2), NOW, describe=broken)
    assert intake.handle_body(body(3), NOW, describe=lambda: {"summary": None})
    errors = intake.stats.processor_errors
    event = intake.take_blink()
    assert event is not None
    first, second, third = event["msgs"]
    assert first["summary"].startswith("a long xxx") and len(first["summary"]) == 200
    assert first["summary"].endswith("\u2026")
    assert first["agent"] == "alice" and first["packages"] == ["p"] * 10
    assert second["summary"] == extractor.subtitle(body(2)) and "agent" not in second
    assert third["summary"] == extractor.subtitle(body(3)) and "packages" not in third
    assert intake.stats.processor_errors == errors + 1 and calls == [1]
