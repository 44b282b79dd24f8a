"""``/api/integrity`` and ``/api/alerts`` of a real web process, reading what a real
listener process recorded: messages, a sequence gap, a duplicate and a bad frame
sent over real ZeroMQ, the backfill state set as ``backfill`` sets it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from listener.webserver import api as webapi
from tests.helpers.bus_stack import BusStack
from tests.helpers.common import wait_for


class Stack(BusStack):
    def integrity(self) -> Any:
        return self.get("/api/integrity")


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(redis_url, tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_integrity_counts_what_was_caused(stack: Stack) -> None:
    # joined: one message counted (a SUB misses what is sent before it connects)
    def joined() -> bool:
        stack.pub.send()
        x = stack.integrity()
        return bool(x and x["hour"] and x["hour"]["counted"] >= 1)

    wait_for(joined, 30, 0.3, "the listener counting")
    seen: list[int] = []

    def steady() -> Any:  # the join's messages in flight are counted (2 heartbeats)
        x = stack.integrity()
        seen.append(x["hour"]["counted"])
        return x if len(seen) > 2 and seen[-1] == seen[-2] == seen[-3] else None

    base = wait_for(steady, 30, 2.0, "the count to settle")
    assert base["gaps"] == 0 and base["duplicates"] == 0
    stack.pub.send(5)
    stack.pub.i += 3  # three messages the bus never delivered: a gap of 3
    frames = stack.pub.frames()
    stack.pub.sock.send_multipart(frames)
    stack.pub.sock.send_multipart(frames)  # the same msg_id again: a duplicate
    stack.pub.sock.send_multipart([frames[0], b"{not json"])  # rejected: bad_json
    stack.pub.send(4)

    def settled() -> Any:
        x = stack.integrity()
        return x if x and x["hour"]["counted"] - base["hour"]["counted"] == 10 else None

    x = wait_for(settled, 30, 0.3, "10 more messages counted")
    x = wait_for(lambda: (y := stack.integrity()) and y["duplicates"] == 1 and y, 10, 0.3, "dup")
    assert x["gaps"] == 3 and x["hour"]["gaps"] == 3
    assert x["rejected"] == {"bad_json": 1} and x["signature_failures"] == 0
    assert x["bus"]["links"][0]["endpoint"] == stack.endpoint
    assert x["bus"]["links"][0]["gaps"] == 3
    assert x["redis"] == {"ok": True, "listener_ok": True}
    assert x["backfill"]["state"] == "never"
    sent = x["hour"]["counted"] + 3
    assert x["hour"]["ratio"] == pytest.approx(x["hour"]["counted"] / sent)
    assert x["confidence"].startswith("counted ") and x["confidence"].endswith(": 3 gaps")
    # the backfill's state, as `backfill` records it and its lock says it runs
    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.hset(
            f"{{{stack.prefix}}}:meta",
            mapping={
                "backfill_done_at": "1700000000",
                "backfill_last": json.dumps({"status": "incomplete"}),
            },
        )
        assert stack.integrity()["backfill"]["state"] == "incomplete"
        client.set(f"{{{stack.prefix}}}:backfill_lock", "x", ex=60)
        assert stack.integrity()["backfill"]["state"] == "running"
    finally:
        client.close()


def test_alerts_route_answers_the_listener_report(stack: Stack) -> None:
    def fresh() -> Any:
        a = stack.get("/api/alerts")
        return a if a and a["fresh"] else None

    a = wait_for(fresh, 30, 0.3, "a fresh alerts report")
    # a new namespace: no history, the listener just started (alert_warmup_s = 6 h)
    assert a["mode"] == "warming_up" and a["alerts"] == [] and a["judged"] == 0
    assert a["window_s"] == 600
    # a filtered screen's report says its filter, and what cannot follow it
    f = stack.get("/api/alerts?category=bodhi&not_user=bodhi")
    assert f["filter"] == {"category": ["bodhi"], "not_user": ["bodhi"]}
    assert f["unfiltered"] == ["users"] and f["mode"] == "warming_up"


# -- pure parts ------------------------------------------------------------------


def test_alerts_of_a_stale_or_missing_tick_is_unknown() -> None:
    report = {"mode": "week", "time": 100.0, "judged": 3, "window_s": 600, "alerts": []}
    tick = {"type": "tick", "end": 100.0, "windows": {}, "alerts": report}
    assert webapi.alerts_of(tick, 104.0, 5.0) == {**report, "fresh": True}
    assert webapi.alerts_of(tick, 200.0, 5.0)["mode"] == "unknown"  # the listener stopped
    assert webapi.alerts_of(None, 200.0, 5.0)["fresh"] is False
    assert webapi.alerts_of({**tick, "alerts": "junk"}, 104.0, 5.0)["alerts"] == []


def test_integrity_of_a_meta_without_a_listener_or_with_junk() -> None:
    health = webapi.health(None, 100.0, 5.0, True, True, 0)
    empty = webapi.integrity(None, health, False)
    assert empty["gaps"] == 0 and empty["backfill"]["state"] == "never"
    assert empty["confidence"] is None and empty["bus"]["links"] == []
    junk = {"listener_integrity_json": "{not json", "listener_links_json": "[1, 2]"}
    assert webapi.integrity(junk, health, False)["rejected"] == {}
    signed = {
        "listener_integrity_json": json.dumps(
            {"totals": {"gaps": 2}, "rejected": {"bad_signature": 3, "unsigned": 1, "bad_json": 4}}
        ),
        "backfill_last": json.dumps({"status": "done"}),
        "backfill_done_at": "123.5",
    }
    x = webapi.integrity(signed, health, False)
    assert x["signature_failures"] == 4 and x["gaps"] == 2
    assert x["backfill"] == {"state": "done", "at": 123.5, "last": {"status": "done"}}
