"""Screen filters through the web server: every ``/api`` route and the websocket, on a
real Redis written by a real consumer, with real websocket clients.  The expected
figures are counted by brute force from the real messages fed."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from listener.core.envelope import category_of
from listener.core.filters import parse_filter
from listener.core.snapshot import build_snapshot
from listener.core.windows import Counts
from listener.webserver.hub import MAX_VIEWS
from tests.helpers.common import TIMEOUT_FACTOR
from tests.helpers.web import WebStack, get, recv_type, web_stack

T = TIMEOUT_FACTOR
P = "org.fedoraproject.prod."


@pytest.fixture
async def stack(redis_url: str, extractor: Any) -> Any:
    async with web_stack(redis_url, extractor) as s:
        yield s


async def feed(s: WebStack, bodies: list[dict[str, Any]], now: float) -> None:
    for body in bodies:
        s.consumer.intake.handle_body(body, now=now)
    await s.consumer.flush(now)


def recent_bodies(examples: list[Any], n: int, now: float, tag: str = "") -> list[dict[str, Any]]:
    """``n`` real messages with timestamps in the last minute (fresh msg_ids with ``tag``)."""
    out = []
    for i, ex in enumerate(examples[:n]):
        body = dict(ex.body, timestamp=now - 60 + i * 0.05)
        if tag:
            body["msg_id"] = f"{body.get('msg_id')}-{tag}-{i}"
        out.append(body)
    return out


def truth(bodies: list[dict[str, Any]], extractor: Any, keep: Any) -> Counts:
    """Brute force: the counts of the messages ``keep(topic, category, users)`` accepts."""
    c = Counts()
    for b in bodies:
        topic = b["topic"]
        users = sorted(extractor.usernames(b))
        if keep(topic, category_of(topic), users):
            c.add_message(topic, category_of(topic), users)
    return c


def q(**given: Any) -> str:
    return urlencode(given, doseq=True)


# -- HTTP API ------------------------------------------------------------------------


async def test_api_snapshot_shows_only_the_matching_messages(
    stack: WebStack, examples: list[Any], extractor: Any
) -> None:
    now = time.time()
    bodies = recent_bodies(examples, 400, now)
    await feed(stack, bodies, now)
    end = round(now, 3)
    cases = [
        ({"category": ["bodhi", "pagure"]}, lambda t, c, u: c in ("bodhi", "pagure")),
        ({"not_category": ["compose", "ci"]}, lambda t, c, u: c not in ("compose", "ci")),
        ({"topic": [P + "bodhi.update.*"]}, lambda t, c, u: t.startswith(P + "bodhi.update.")),
        ({"user": ["ralph"]}, lambda t, c, u: "ralph" in u),
        (
            {"not_user": ["bodhi"], "category": ["bodhi"]},
            lambda t, c, u: c == "bodhi" and "bodhi" not in u,
        ),
    ]
    for given, keep in cases:
        status, got = await get(stack.port, f"/api/snapshot?window=3600&end={end}&{q(**given)}")
        assert status == 200, got
        want = build_snapshot(3600, end, truth(bodies, extractor, keep), None)
        assert want["messages"] > 0, given
        assert got["filter"] == {k: sorted(v) for k, v in given.items()}
        for key in want:
            if key in got["unfiltered"]:
                assert got[key] is None, (given, key)
            else:
                assert got[key] == want[key], (given, key)
        assert "messages" not in got["unfiltered"] and "categories" not in got["unfiltered"]
    # category rules alone: the longtail follows (user x category counters)
    status, got = await get(stack.port, f"/api/snapshot?window=3600&end={end}&category=bodhi")
    assert got["unfiltered"] == ["last_message_at"] and got["longtail"] is not None


async def test_every_api_route_takes_the_filter(
    stack: WebStack, examples: list[Any], extractor: Any
) -> None:
    now = time.time()
    bodies = recent_bodies(examples, 300, now)
    bodies.sort(key=lambda b: category_of(b["topic"]) == "bodhi")  # bodhi in the ticker
    await feed(stack, bodies, now)
    await stack.consumer.publish_blink()
    await stack.consumer.step(now)
    end = round(now, 3)
    # radar: the shares among the matching messages only
    status, radar = await get(
        stack.port, f"/api/radar?window=3600&end={end}&category=bodhi&category=pagure"
    )
    assert status == 200 and set(radar["categories"]) <= {"bodhi", "pagure"}
    assert radar["filter"] == {"category": ["bodhi", "pagure"]} and radar["unfiltered"] == []
    for shares in radar["users"].values():
        assert all(0 <= s <= 1 for s in shares)
    status, radar = await get(stack.port, f"/api/radar?window=3600&end={end}&not_user=bodhi")
    assert (
        status == 200 and radar["users"] is None and radar["unfiltered"] == ["categories", "users"]
    )
    # diff: only the matching topics, or their categories
    status, diff = await get(stack.port, f"/api/diff?period=day&end={end}&topic={P}bodhi.*")
    want = Counter(b["topic"] for b in bodies if b["topic"].startswith(P + "bodhi."))
    assert status == 200 and {r["topic"]: r["current"] for r in diff["rows"]} == dict(want)
    status, diff = await get(
        stack.port, f"/api/diff?period=day&by=category&end={end}&not_category=bodhi"
    )
    want = Counter(category_of(b["topic"]) for b in bodies if category_of(b["topic"]) != "bodhi")
    assert {r["category"]: r["current"] for r in diff["rows"]} == dict(want)
    status, diff = await get(stack.port, f"/api/diff?period=day&end={end}&user=ralph")
    assert status == 200 and diff["rows"] is None and diff["unfiltered"] == ["rows"]
    # state: the snapshot event a filtered websocket gets
    for i in range(5):  # filters without a websocket leave nothing behind but the last
        assert (await get(stack.port, f"/api/state?category=c{i}"))[0] == 200
    assert stack.web.filtered.filters == {} and stack.web.filtered.cached() == {"category=c4"}
    status, state = await get(stack.port, "/api/state?category=bodhi")
    assert (
        status == 200 and state["type"] == "snapshot" and state["filter"] == {"category": ["bodhi"]}
    )
    ticker = [m for m in await stack.store.recent(stack.cfg.recent_len) if m["category"] == "bodhi"]
    assert state["recent"] == ticker and ticker
    assert state["history"] == {"3600": [], "86400": [], "604800": []}
    assert state["rate_per_min"] is None and "rate_per_min" in state["unfiltered"]
    assert state["windows"]["3600"]["messages"] == sum(
        1 for b in bodies if category_of(b["topic"]) == "bodhi"
    )


@pytest.mark.parametrize(
    "target, words",
    [
        ("/api/snapshot?category=%3Cscript%3E", "category: '<script>' is not"),
        ("/api/state?package=kernel", "package: this wallboard does not record"),
        ("/api/radar?not_user=a%00b", "not_user: 'a\\x00b' is not"),
        ("/api/diff?topic=a*b", "topic: 'a*b' is not"),
        ("/api/alerts?category=%3Cx%3E", "category: '<x>' is not"),
        ("/api/snapshot?" + "&".join(f"user=u{i}" for i in range(17)), "user: at most 16 values"),
        ("/api/snapshot?topic=" + "a" * 300, "topic: 'aaaaaaaa"),
    ],
)
async def test_api_refuses_hostile_filters(stack: WebStack, target: str, words: str) -> None:
    status, body = await get(stack.port, target)
    assert status == 400 and body["status"] == 400
    assert words in body["error"] and len(body["error"]) < 200


# -- websocket -----------------------------------------------------------------------


async def test_a_filtered_websocket_gets_only_its_own_events(
    stack: WebStack, examples: list[Any], extractor: Any
) -> None:
    now = time.time()
    older = [dict(b, timestamp=now - 3 * 3600) for b in recent_bodies(examples[300:], 150, now)]
    await feed(stack, older + recent_bodies(examples, 200, now), now)  # closed hours too
    await stack.consumer.publish_blink()
    await stack.consumer.step(now)
    base = f"ws://127.0.0.1:{stack.port}/ws"
    async with (
        connect(base) as plain,
        connect(base + "?category=bodhi&category=pagure") as cats,
        connect(base + "?user=ralph") as ralph,
    ):
        snap = await recv_type(cats, "snapshot")
        assert snap["filter"] == {"category": ["bodhi", "pagure"]}
        assert set(snap["windows"]["3600"]["categories"]) == {"bodhi", "pagure"}
        assert all(m["category"] in ("bodhi", "pagure") for m in snap["recent"])
        await recv_type(plain, "snapshot")
        await recv_type(ralph, "snapshot")
        assert stack.web.hub.views() == {"category=bodhi&category=pagure", "user=ralph"}
        # a batch without bodhi or pagure: nothing for the filtered screen
        fresh = [
            dict(ex.body, timestamp=time.time(), msg_id=f"live-{i}")
            for i, ex in enumerate(examples[200:260])
        ]
        other = [b for b in fresh if category_of(b["topic"]) not in ("bodhi", "pagure")][:10]
        mine = [b for b in fresh if category_of(b["topic"]) in ("bodhi", "pagure")][:3]
        assert len(other) == 10 and mine
        for b in other:
            stack.consumer.intake.handle_body(b)
        sent = await stack.consumer.publish_blink()
        assert (await recv_type(plain, "blink")) == json.loads(json.dumps(sent))
        for b in mine:
            stack.consumer.intake.handle_body(b)
        await stack.consumer.publish_blink()
        blink = await recv_type(cats, "blink")  # the first blink it gets is the second batch
        assert [m["msg_id"] for m in blink["msgs"]] == [b["msg_id"] for b in mine]
        assert blink["counts"] == dict(Counter(category_of(b["topic"]) for b in mine))
        assert blink["total"] == len(mine) and blink["omitted"] == 0
        # a tick: the filtered windows, read from Redis at the tick's end
        await stack.consumer.flush()
        tick = await stack.consumer.step()
        got = await recv_type(cats, "tick")
        assert got["end"] == tick["end"] and got["filter"] == {"category": ["bodhi", "pagure"]}
        status, api = await get(
            stack.port,
            f"/api/snapshot?window=3600&end={tick['end']}&category=bodhi&category=pagure",
        )
        for key in ("messages", "categories", "topics", "users", "top_users", "longtail", "ranks"):
            assert got["windows"]["3600"][key] == api[key], key
        # the hourly windows: closed hours' sum (cached) plus the open hour
        status, day = await get(
            stack.port,
            f"/api/snapshot?window=86400&end={tick['end']}&category=bodhi&category=pagure",
        )
        for key, value in day.items():
            if key != "topics":  # the events' topics are the top_topics
                assert got["windows"]["86400"][key] == value, key
        assert day["messages"] > got["windows"]["3600"]["messages"] > 0
        assert got["rate_per_min"] is None and "rate_per_min" in got["unfiltered"]
        rt = await recv_type(ralph, "tick")
        assert rt["windows"]["3600"]["longtail"] is None
        assert "longtail" in rt["windows"]["3600"]["unfiltered"]
        _, metrics = await get(stack.port, "/metrics", raw=True)
        assert "fedmsg_wallboard_web_filters 2.0" in metrics
        assert "fedmsg_wallboard_web_filter_ticks_total 2.0" in metrics
        # the unfiltered screen still gets the listener's own tick
        assert (await recv_type(plain, "tick"))["rate_per_min"] == tick["rate_per_min"]
    await asyncio.sleep(0)
    assert stack.web.hub.views() == set()


async def test_websocket_filter_refused_before_the_upgrade(stack: WebStack) -> None:
    base = f"ws://127.0.0.1:{stack.port}/ws"
    with pytest.raises(InvalidStatus) as exc:
        async with connect(base + "?user=%3Cimg%20src%3Dx%3E"):
            pass
    assert exc.value.response.status_code == 400
    assert b"user: '<img src=x>' is not" in exc.value.response.body
    # distinct filters per process are bounded: each one costs reads every tick
    opened = []
    try:
        for i in range(MAX_VIEWS):
            opened.append(await connect(f"{base}?category=c{i}"))
            await recv_type(opened[-1], "snapshot")  # it has joined the hub
        with pytest.raises(InvalidStatus) as exc:
            async with connect(base + "?category=one-too-many"):
                pass
        assert exc.value.response.status_code == 429
        async with connect(base + "?category=c0") as again:  # a filter already served
            assert (await recv_type(again, "snapshot"))["filter"] == {"category": ["c0"]}
        assert stack.web.rejected["filters"] == 1
    finally:
        for ws in opened:
            await ws.close()


@pytest.mark.parametrize(
    "flt",
    [
        {"not_category": ["compose"]},
        {"user": ["ralph"]},
        {"not_user": ["bodhi"], "not_category": ["ci"]},
        {"topic": [P + "bodhi.*", P + "pagure."]},
    ],
    ids=str,
)
async def test_filtered_windows_slide_with_time(
    stack: WebStack, examples: list[Any], flt: dict[str, list[str]]
) -> None:
    """A view keeps its windows' closed buckets summed and slides them, reading only
    what its filter needs: at every later end its windows equal the filtered
    ``/api/snapshot`` (all five hashes read whole)."""
    now = time.time()
    older = [dict(b, timestamp=now - 2 * 3600) for b in recent_bodies(examples[300:], 150, now)]
    await feed(stack, older + recent_bodies(examples, 250, now), now)
    views = stack.web.filtered
    seen = 0
    for later in (0, 60, 600, 3540, 3 * 3600, 3 * 3600 + 60):
        end = round(now + later, 3)
        got = await views.windows(parse_filter(flt), end)
        for w in ("3600", "86400"):
            _, api = await get(stack.port, f"/api/snapshot?window={w}&end={end}&{q(**flt)}")
            assert got[w]["unfiltered"] == api["unfiltered"]
            for key, value in api.items():
                if key != "topics":  # the events' topics are the top_topics
                    assert got[w][key] == value, (later, w, key)
            seen += api["messages"] or 0
    assert seen > 0
    assert got["3600"]["messages"] in (0, None)
