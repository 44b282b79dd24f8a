"""The datagrepper client against a real local HTTP server that behaves like
datagrepper, serving real recorded Fedora messages."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from typing import Any

import pytest
import requests

from listener.core.errors import TransientError
from listener.inputs.datagrepper import (
    DatagrepperBadResponse,
    DatagrepperClient,
    DatagrepperUnavailable,
    RequestLimiter,
    message_users,
    progress_wanted,
    raw_url,
    retry_after_s,
)
from tests.helpers.common import CORPUS
from tests.helpers.datagrepper import FakeDatagrepper, max_per_second, spread

T0 = 1_700_000_000.0
SPAN = 6 * 3600.0


@pytest.fixture(scope="module")
def day(examples: list[Any]) -> list[dict[str, Any]]:
    """The ~553 real example messages spread over 6 h (float timestamps)."""
    return spread([ex.body for ex in examples], T0, T0 + SPAN, seed=1)


def client(url: str, **kw: Any) -> DatagrepperClient:
    kw.setdefault("rate", 1000.0)  # the tests of the limit set their own
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("progress", False)
    return DatagrepperClient(url, **kw)


def ids(msgs: list[dict[str, Any]]) -> Counter[str]:
    return Counter(m["msg_id"] for m in msgs)


def test_fake_server_speaks_datagrepper(day: list[dict[str, Any]]) -> None:
    """The fake itself: between() inclusive, paging, 400 above 100 rows."""
    with FakeDatagrepper(day) as srv:
        lo, hi = day[10]["timestamp"], day[40]["timestamp"]
        r = requests.get(
            srv.url + "/raw",
            params={"start": lo, "end": hi, "order": "asc", "rows_per_page": 7, "page": 2},
            timeout=5,
        )
        body = r.json()
        assert r.status_code == 200
        assert body["total"] == 31 and body["pages"] == 5 and body["count"] == 7
        assert [m["msg_id"] for m in body["raw_messages"]] == [m["msg_id"] for m in day[17:24]]
        r = requests.get(
            srv.url + "/raw", params={"start": lo, "end": hi, "rows_per_page": 101}, timeout=5
        )
        assert r.status_code == 400
        assert "rows_per_page" in r.json()["error"]


def test_every_message_exactly_once(day: list[dict[str, Any]]) -> None:
    with FakeDatagrepper(day) as srv:
        c = client(srv.url)
        got = list(c.iter_messages(T0, T0 + SPAN))
    assert ids(got) == ids(day)
    assert max(ids(got).values()) == 1
    assert c.stats.messages == len(day)
    # ascending order with one worker
    stamps = [m["timestamp"] for m in got]
    assert stamps == sorted(stamps)
    # explicit start/end, order=asc, <= 100 rows, never delta
    for req in srv.requests:
        assert "delta" not in req
        assert req["order"] == "asc"
        assert int(req["rows_per_page"]) <= 100
        assert float(req["end"]) == T0 + SPAN
    assert len(srv.requests) == c.stats.requests


def test_both_ends_inclusive_like_datanommer(day: list[dict[str, Any]]) -> None:
    lo, hi = day[100]["timestamp"], day[300]["timestamp"]
    with FakeDatagrepper(day) as srv:
        got = list(client(srv.url).iter_messages(lo, hi))
    assert ids(got) == ids(day[100:301])


def test_parallel_workers_same_messages(day: list[dict[str, Any]]) -> None:
    with FakeDatagrepper(day) as srv:
        c = client(srv.url, workers=3)
        got = list(c.iter_messages(T0, T0 + SPAN))
        slices = {(r["start"], r["end"]) for r in srv.requests}
    assert ids(got) == ids(day)
    assert len(slices) == 12  # 3 workers x 4 slices, each its own range


def test_unstable_order_of_ties_loses_nothing(examples: list[Any]) -> None:
    """PostgreSQL returns equal timestamps in any order: 553 messages on 40
    distinct whole seconds, shuffled on every request."""
    msgs = spread([ex.body for ex in examples], T0, T0 + 40, seed=2)
    for m in msgs:
        m["timestamp"] = float(int(m["timestamp"]))
    with FakeDatagrepper(msgs, tie_order="shuffle", seed=3) as srv:
        got = list(client(srv.url).iter_messages(T0, T0 + 40))
        # control: plain page=1..N paging over the same range loses and repeats some
        naive: Counter[str] = Counter()
        for page in range(1, 7):
            r = requests.get(
                srv.url + "/raw",
                timeout=5,
                params={
                    "start": T0,
                    "end": T0 + 40,
                    "order": "asc",
                    "rows_per_page": 100,
                    "page": page,
                },
            )
            naive.update(m["msg_id"] for m in r.json()["raw_messages"])
    assert ids(got) == ids(msgs)
    assert set(naive) < set(ids(msgs)) and max(naive.values()) > 1


def test_a_page_of_one_timestamp_pages_on(examples: list[Any]) -> None:
    """More than 100 messages with the same timestamp: page=2, 3... at one start."""
    msgs = spread([ex.body for ex in examples[:250]], T0, T0, seed=4)
    with FakeDatagrepper(msgs) as srv:
        got = list(client(srv.url).iter_messages(T0 - 1, T0 + 1))
        pages = [int(r["page"]) for r in srv.requests]
    assert ids(got) == ids(msgs)
    assert max(pages) == 3


def test_500s_are_retried(day: list[dict[str, Any]]) -> None:
    with FakeDatagrepper(day) as srv:
        srv.faults = ["500", None, "503", "503", "garbage", "drop", None, "429"]
        c = client(srv.url)
        got = list(c.iter_messages(T0, T0 + SPAN))
        statuses = [r.get("status") for r in srv.requests]
    assert ids(got) == ids(day)
    assert c.stats.retries == 6
    assert statuses.count(500) == 1 and statuses.count(503) == 2 and statuses.count(429) == 1


def test_slow_page_times_out_and_is_retried(day: list[dict[str, Any]]) -> None:
    with FakeDatagrepper(day) as srv:
        srv.slow_s = 3.0
        srv.faults = [None, "slow"]
        c = client(srv.url, timeout_s=0.5)
        t = time.monotonic()
        got = list(c.iter_messages(T0, T0 + SPAN))
        elapsed = time.monotonic() - t
    assert ids(got) == ids(day)
    assert c.stats.retries == 1
    assert elapsed < 2.5  # the slow page was abandoned after the 0.5 s time-out


def test_a_range_that_keeps_timing_out_is_split(day: list[dict[str, Any]]) -> None:
    """Like a real datagrepper whose COUNT(*) over a wide range times out."""
    with FakeDatagrepper(day) as srv:
        srv.slow_s = 2.0
        srv.slow_span_s = SPAN / 3  # only ranges narrower than 2 h answer in time
        c = client(srv.url, timeout_s=0.3, retries=1, min_split_s=60)
        got = list(c.iter_messages(T0, T0 + SPAN))
        spans = [
            float(r["end"]) - float(r["start"]) for r in srv.requests if r.get("status") == 200
        ]
    assert ids(got) == ids(day)
    assert c.stats.splits >= 3
    assert spans and max(spans) <= SPAN / 3


def test_gives_up_with_a_transient_error(day: list[dict[str, Any]]) -> None:
    with FakeDatagrepper(day) as srv:
        srv.faults = ["500"] * 50
        c = client(srv.url, retries=2, min_split_s=SPAN * 2)
        with pytest.raises(DatagrepperUnavailable) as info:
            list(c.iter_messages(T0, T0 + SPAN))
    assert isinstance(info.value, TransientError)
    assert c.stats.requests == 3


def test_a_server_that_refuses_is_not_split_for_ever() -> None:
    """Connection refused: one request's retries, then the error; no range splits
    (a smaller range cannot help a server that is not there)."""
    import socket

    with socket.socket() as s:  # a port with nobody listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = client(f"http://127.0.0.1:{port}", retries=2, min_split_s=60)
    with pytest.raises(DatagrepperUnavailable, match="failed 3 times") as info:
        list(c.iter_messages(T0, T0 + SPAN))
    assert not info.value.splittable
    assert c.stats.requests == 3 and c.stats.splits == 0


def test_client_errors_are_not_retried(day: list[dict[str, Any]]) -> None:
    with FakeDatagrepper(day) as srv:
        c = client(srv.url + "/nothing-here")
        with pytest.raises(DatagrepperBadResponse, match="HTTP 404"):
            list(c.iter_messages(T0, T0 + SPAN))
        assert c.stats.requests == 1
    with pytest.raises(ValueError, match="rows_per_page"):
        DatagrepperClient("http://127.0.0.1:1", rows_per_page=101)


def test_arrivals_while_paging_neither_repeat_nor_vanish(day: list[dict[str, Any]]) -> None:
    """New messages land while the client pages: older ones at the head of the
    table shift nothing (end fixed, order asc); ones ahead of the cursor are fetched
    once; ones after ``end`` are never fetched."""
    end = T0 + SPAN / 2
    before = [m for m in day if m["timestamp"] <= end]
    late = [dict(m, msg_id=m["msg_id"] + "-late") for m in day[:60]]
    for i, m in enumerate(late):  # 30 after end, 30 inside the range near its end
        m["timestamp"] = end + 1 + i if i < 30 else end - 30 + (i - 30) * 0.5
    arrived = threading.Event()

    def on_request(srv: FakeDatagrepper, args: dict[str, Any]) -> None:
        if len(srv.requests) == 2 and not arrived.is_set():
            arrived.set()
            srv.add(late)

    with FakeDatagrepper(day) as srv:
        srv.on_request = on_request
        got = list(client(srv.url).iter_messages(T0, end))
    counts = ids(got)
    assert arrived.is_set()
    assert max(counts.values()) == 1
    assert set(ids(before)) <= set(counts)
    assert not any(m["timestamp"] > end for m in got)
    assert set(counts) == set(ids(before)) | {m["msg_id"] for m in late[30:]}


def test_real_recorded_page(extractor: Any) -> None:
    """The corpus's real datagrepper answer (2017, integer timestamps, no ``users``)."""
    page = json.loads((CORPUS / "fedmsg_sample_datanommer_response.json").read_text())
    msgs = page["raw_messages"]
    a = page["arguments"]
    with FakeDatagrepper(msgs) as srv:
        got = list(client(srv.url, rows_per_page=10).iter_messages(a["start"], a["end"]))
    assert ids(got) == ids(msgs)
    users = Counter(u for m in got for u in message_users(m, extractor))
    # the corpus README's table of usernames
    assert users == {
        "mbs/mbs.fedoraproject.org": 6,
        "dvdmuckle": 4,
        "yaneti": 3,
        "autopen": 2,
        "nobody": 2,
        "koschei": 1,
        "przemof": 1,
    }


def test_users_field_wins_over_fedmsg_meta(examples: list[Any], extractor: Any) -> None:
    body = next(ex.body for ex in examples if ex.expected_usernames)
    assert message_users(body, extractor) == extractor.usernames(body)
    assert message_users(dict(body, users=["someone", "", None]), extractor) == {"someone"}
    assert message_users(dict(body, users=[]), extractor) == frozenset()
    assert message_users(body, None) == frozenset()


def test_progress_bar_only_on_a_terminal(tmp_path: Any) -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert progress_wanted(tty) is True
    finally:
        os.close(master)
        os.close(slave)
    with open(tmp_path / "log", "w") as f:
        assert progress_wanted(f) is False


def test_raw_url() -> None:
    assert raw_url("https://apps.fedoraproject.org/datagrepper/") == (
        "https://apps.fedoraproject.org/datagrepper/raw"
    )
    assert raw_url("http://h/raw") == "http://h/raw"


def test_rows_past_end_neither_count_nor_end_the_paging(day: list[dict[str, Any]]) -> None:
    """A rows query that leaks a row past ``end`` into every first page: the row is
    dropped, and the paging goes on from the newest row in range."""
    with FakeDatagrepper(day) as srv:
        srv.stray = [dict(day[0], msg_id="stray-after-end", timestamp=T0 + SPAN + 3600)]
        c = client(srv.url)
        got = list(c.iter_messages(T0, T0 + SPAN))
    assert ids(got) == ids(day)
    assert c.stats.out_of_range >= 1 and c.stats.short == 0


def test_a_server_that_ignores_order_is_paged_downwards(day: list[dict[str, Any]]) -> None:
    with FakeDatagrepper(day) as srv:
        srv.ignore_order = True
        c = client(srv.url)
        got = list(c.iter_messages(T0, T0 + SPAN))
    assert ids(got) == ids(day)
    assert c.stats.descending == 1 and c.stats.short == 0


def test_fewer_messages_than_the_total_is_a_shortfall(day: list[dict[str, Any]]) -> None:
    with FakeDatagrepper(day) as srv:
        srv.hide = 2  # the newest 2 of every query never come
        c = client(srv.url)
        got = list(c.iter_messages(T0, T0 + SPAN))
    assert len(got) == len(day) - 2
    assert c.stats.short == 2
    assert c.stats.short_ranges == [(T0, T0 + SPAN, len(day), len(day) - 2)]


def test_the_server_never_sees_more_than_the_limit(day: list[dict[str, Any]]) -> None:
    """Counted from the server's own arrival log, per sliding second: 4 worker
    threads, retries included, stay within 2 requests a second."""
    few = day[:240]
    with FakeDatagrepper(few) as srv:
        srv.faults = [None, "500", None, "503"]
        c = client(srv.url, rate=2.0, concurrency=2, workers=4, rows_per_page=40)
        got = list(c.iter_messages(T0, few[-1]["timestamp"]))
        arrivals = list(srv.arrivals)
    assert ids(got) == ids(few)
    assert len(arrivals) >= 8
    assert max_per_second(arrivals) <= 2


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_holds_every_request_back(day: list[dict[str, Any]], form: str) -> None:
    import email.utils

    with FakeDatagrepper(day[:50]) as srv:
        srv.retry_after = (
            "2" if form == "seconds" else email.utils.formatdate(time.time() + 3, usegmt=True)
        )
        srv.faults = ["429"]
        c = client(srv.url)
        got = list(c.iter_messages(T0, T0 + SPAN))
        arrivals = list(srv.arrivals)
    assert ids(got) == ids(day[:50])
    assert c.stats.retries == 1
    # the server's log: the retry came after the date or delay it asked for
    assert arrivals[1] - arrivals[0] >= 1.0


def test_retry_after_values() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert retry_after_s("1e9") == 300.0  # bounded
    assert retry_after_s("soon") is None and retry_after_s(None) is None
    assert retry_after_s("nan") is None


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        DatagrepperClient("http://127.0.0.1:1", timeout_s=60)
    with pytest.raises(ValueError, match="rate"):
        RequestLimiter(rate=0)
    with pytest.raises(ValueError, match="concurrency"):
        RequestLimiter(concurrency=0)
