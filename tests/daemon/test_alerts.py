"""The silence detector inside the listener's consumer, on a real Redis: a week of
hourly history in Redis, live messages through the intake, verdicts in the tick and
on ``/metrics``."""

from __future__ import annotations

import time
import uuid
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from listener.core.config import Config
from listener.core.intake import Intake
from listener.daemon.consumer import Consumer
from listener.daemon.inputs import Inputs
from listener.daemon.metrics import registry_for
from listener.storage.store import Store
from tests.helpers.history import seed_hours

BUSY = "buildsys"  # org.fedoraproject.prod.buildsys.tag: 3600 an hour, all week
RARE = "fas"  # one a day
TOPICS = {
    BUSY: "org.fedoraproject.prod.buildsys.tag",
    RARE: "org.fedoraproject.prod.fas.user.create",
}


def body(i: int, ts: float, tag: str) -> dict[str, Any]:
    return {
        "topic": TOPICS[BUSY],
        "msg": {
            "tag": "f40",
            "owner": "o",
            "name": "pkg",
            "version": "1",
            "release": "1",
            "build_id": i,
            "tag_id": 1,
            "instance": "primary",
        },
        "msg_id": f"{tag}-{i}",
        "timestamp": ts,
        "i": i,
        "username": "apache",
    }


async def consumer_with_week(redis_url: str, extractor: Any, now: float) -> Consumer:
    cfg = Config(redis_url=redis_url, key_prefix=f"a{uuid.uuid4().hex[:8]}", alert_min_gap_s=0.0)
    hour = int(now // 3600) * 3600
    first = hour - 168 * 3600
    hours = [{BUSY: 3600, RARE: 1 if i % 24 == 5 else 0} for i in range(168)]
    seed_hours(redis_url, cfg.key_prefix, first, hours, TOPICS)
    store = Store.from_url(redis_url, prefix=cfg.key_prefix)
    c = Consumer(cfg, Intake(cfg, extractor, time.time), store)
    await c.warm_up()
    return c


def gauges(c: Consumer) -> dict[str, float]:
    text = generate_latest(registry_for(c, Inputs(None, None))).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("fedmsg_wallboard_silent", "fedmsg_wallboard_bursting"):
                out[f"{s.name}:{s.labels['kind']}:{s.labels['name']}"] = s.value
    return out


async def test_a_busy_category_that_stops_is_silent_a_rare_one_never(
    redis_url: str, extractor: Any
) -> None:
    now = time.time()
    c = await consumer_with_week(redis_url, extractor, now)
    try:
        await c.step()  # the history read: the busiest topics are followed from now on
        assert c.intake.handle_body(body(1, now, "s"))
        assert await c.flush() == 1
        last = c.silence.seen_[("category", BUSY)].last
        assert last is not None and abs(last - time.time()) < 5
        tick = await c.step(last + 3)  # 3 expected at 1/s: P = e^-3, not silent
        assert tick["alerts"]["mode"] == "week" and tick["alerts"]["alerts"] == []
        assert tick["alerts"]["judged"] >= 2  # the category and its busy topic
        tick = await c.step(last + 8)  # 8 expected: P = e^-8 < 0.001
        silent = {(a["kind"], a["name"]) for a in tick["alerts"]["alerts"]}
        assert silent == {("category", BUSY), ("topic", TOPICS[BUSY])}
        a = next(a for a in tick["alerts"]["alerts"] if a["kind"] == "category")
        assert a["state"] == "silent" and a["usual_per_h"] == 3600.0
        assert a["expected"] >= 6.9 and a["p"] < 0.001
        assert c.silence.states[("category", RARE)] == "rare"
        g = gauges(c)
        assert g[f"fedmsg_wallboard_silent:category:{BUSY}"] == 1.0
        assert f"fedmsg_wallboard_silent:category:{RARE}" not in g  # not judged: no series
        stored = await c.store.state()
        assert stored is not None and stored["alerts"] == tick["alerts"]
    finally:
        await c.store.close()


async def test_a_burst_is_flagged(redis_url: str, extractor: Any) -> None:
    now = time.time()
    c = await consumer_with_week(redis_url, extractor, now)
    try:
        for i in range(2400):  # 600 expected in 10 min; 4x that at once
            assert c.intake.handle_body(body(i, now, "b"))
        while c.intake.pending:
            await c.flush()
        tick = await c.step()
        states = {(a["kind"], a["name"]): a["state"] for a in tick["alerts"]["alerts"]}
        assert states[("category", BUSY)] == "bursting"
        assert gauges(c)[f"fedmsg_wallboard_bursting:category:{BUSY}"] == 1.0
    finally:
        await c.store.close()


async def test_nothing_is_judged_while_the_history_is_short(redis_url: str, extractor: Any) -> None:
    cfg = Config(redis_url=redis_url, key_prefix=f"a{uuid.uuid4().hex[:8]}", alert_min_gap_s=0.0)
    store = Store.from_url(redis_url, prefix=cfg.key_prefix)
    c = Consumer(cfg, Intake(cfg, extractor, time.time), store)
    try:
        await c.warm_up()
        now = time.time()
        assert c.intake.handle_body(body(1, now, "w"))
        await c.flush()
        tick = await c.step(now + 3600)
        assert tick["alerts"]["mode"] == "warming_up" and tick["alerts"]["alerts"] == []
        tick = await c.step(now + 3600, bus_state="dead")
        assert tick["alerts"]["mode"] == "warming_up"
    finally:
        await c.store.close()
