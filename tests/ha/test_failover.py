"""Failovers under a live replay (``make test-ha``): Redis Sentinel and the hot-standby
listener.

Each test runs a Sentinel group (3 redis-server, 3 sentinels), two listeners on it
(the lease holder and a hot standby, both reading the replay), one web node with a
websocket client recording ticks, and a ZeroMQ replay of real messages
(``python -m listener replay``, 100 msgs/s); it injects one fault, then prints
messages sent / counted / lost / double-counted per topic
(:meth:`tests.helpers.ha.HaRig.report`).  What must hold, per fault: no message
lost and none counted twice, in every topic; exactly one failover (of Redis, or of
the lease); the web node's client sees new ticks again within 15 s.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.common import TIMEOUT_FACTOR, run_cli, wait_for
from tests.helpers.ha import HaRig
from tests.helpers.sentinel import SentinelGroup

pytestmark = [pytest.mark.ha, pytest.mark.timeout(240 * TIMEOUT_FACTOR)]

#: The replay's pace, messages per second.
RATE = 100.0
#: How long after the fault the wall must show new ticks, seconds.
TICKS_WITHIN_S = 15


@pytest.fixture
def rig(sentinel_group: SentinelGroup, tmp_path: Path) -> Iterator[HaRig]:
    ha = HaRig(sentinel_group, tmp_path, count=int(RATE * 35), rate=RATE)
    try:
        ha.start()
        yield ha
    finally:
        ha.close()


def under_way(rig: HaRig) -> None:
    """Wait until the replay is a few seconds in (500 messages counted)."""
    wait_for(lambda: rig.counted()[2] >= 500, 60, interval=0.2, what="500 messages counted")


def new_ticks(rig: HaRig, fault: float, after: float | None = None) -> None:
    """The web node's client gets a tick computed after ``after`` (UNIX s, default
    ``fault``); prints how long after ``fault`` it came."""
    since = fault if after is None else after
    wait_for(
        lambda: rig.watcher is not None and rig.watcher.ticks_after(since) > 0,
        TICKS_WITHIN_S,
        interval=0.1,
        what=f"a new tick within {TICKS_WITHIN_S} s",
    )
    print(f"first new tick on the wall {time.time() - fault:.1f} s after the fault", flush=True)


def nothing_lost_or_doubled(rig: HaRig, title: str) -> None:
    rig.replay_done(120)
    rows = rig.report(title)
    bad = {t: r for t, r in rows.items() if r["lost"] or r["double"]}
    assert bad == {}
    assert sum(r["sent"] for r in rows.values()) == rig.count


def takeovers(rig: HaRig, n: int) -> int:
    return rig.log(n).count("taken: writing")


def test_sigkill_of_the_redis_master(rig: HaRig, sentinel_group: SentinelGroup) -> None:
    under_way(rig)
    holder = rig.holder()
    before = sentinel_group.failovers()
    old = sentinel_group.master_port()
    killed = time.time()
    sentinel_group.servers[old].send_signal(signal.SIGKILL)
    new = sentinel_group.wait_failover(before)
    switched = time.time()
    print(f"Redis failover announced {switched - killed:.1f} s after the kill", flush=True)
    assert new != old
    new_ticks(rig, killed, switched)
    nothing_lost_or_doubled(rig, "SIGKILL of the Redis master")
    assert sentinel_group.failovers() == before + 1
    assert rig.holder() == holder  # the listeners kept their roles
    # a tool finds the new master through the sentinels too
    res = run_cli(
        "snapshot",
        "--json",
        "--key-prefix",
        rig.prefix,
        *(f"--redis-sentinel={a}" for a in sentinel_group.addresses),
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["messages"] == rig.count


def test_sigstop_of_the_redis_master(rig: HaRig, sentinel_group: SentinelGroup) -> None:
    """Frozen past ``down-after-milliseconds``: the sentinels fail over; thawed, the
    old master comes back as a replica of the new one (what it held that the new
    one lacks is dropped: WAIT made sure no flush counted as written was there
    only)."""
    under_way(rig)
    before = sentinel_group.failovers()
    old = sentinel_group.master_port()
    stopped = time.time()
    sentinel_group.servers[old].send_signal(signal.SIGSTOP)
    try:
        sentinel_group.wait_failover(before)
        switched = time.time()
        print(f"Redis failover announced {switched - stopped:.1f} s after SIGSTOP", flush=True)
        new_ticks(rig, stopped, switched)
    finally:
        sentinel_group.servers[old].send_signal(signal.SIGCONT)
    sentinel_group.wait_healthy(60)
    web = (rig.tmp / "web.log").read_text()
    print(
        f"web node: {web.count('no event for')} silent subscription(s) made again, "
        f"{web.count('events subscription lost')} lost",
        flush=True,
    )
    nothing_lost_or_doubled(rig, "SIGSTOP of the Redis master")
    assert sentinel_group.failovers() == before + 1


def test_sigkill_of_the_active_listener(rig: HaRig, sentinel_group: SentinelGroup) -> None:
    kill_the_holder(rig, sentinel_group, "SIGKILL of the active listener")


def test_sigkill_of_the_active_listener_on_amqp(
    sentinel_group: SentinelGroup, tmp_path: Path, amqp_url: str
) -> None:
    """The same on AMQP: each listener reads its own UUID queue (exclusive,
    auto-deleted); the standby acknowledges what it keeps."""
    rig = HaRig(sentinel_group, tmp_path, count=int(RATE * 30), rate=RATE, amqp_url=amqp_url)
    try:
        rig.start()
        kill_the_holder(rig, sentinel_group, "SIGKILL of the active listener, AMQP")
    finally:
        rig.close()


def test_sigkill_of_the_active_listener_on_a_named_amqp_queue(
    sentinel_group: SentinelGroup, tmp_path: Path, amqp_url: str
) -> None:
    """A named (durable) queue shared by both listeners: only the lease holder
    consumes it; the broker returns the killed holder's unacknowledged deliveries to
    the queue, and the new holder consumes them with the rest."""
    rig = HaRig(
        sentinel_group,
        tmp_path,
        count=int(RATE * 30),
        rate=RATE,
        amqp_url=amqp_url,
        amqp_queue=f"wallboard-{uuid.uuid4()}",
    )
    try:
        rig.start()
        kill_the_holder(rig, sentinel_group, "SIGKILL of the active listener, named AMQP queue")
    finally:
        rig.close()


def kill_the_holder(rig: HaRig, sentinel_group: SentinelGroup, title: str) -> None:
    under_way(rig)
    holder = rig.holder()
    standby = 1 - holder
    killed = time.time()
    rig.signal(holder, signal.SIGKILL)
    wait_for(lambda: rig.holds(standby), TICKS_WITHIN_S, interval=0.2, what="the standby writing")
    print(f"the standby writes {time.time() - killed:.1f} s after the kill", flush=True)
    new_ticks(rig, killed)
    nothing_lost_or_doubled(rig, title)
    assert takeovers(rig, standby) == 1
    assert sentinel_group.failovers() == 0


def test_sigstop_of_the_active_listener_then_sigcont(
    rig: HaRig, sentinel_group: SentinelGroup
) -> None:
    """Frozen 20 s: the standby takes over; thawed, the old holder's writes are
    refused (the fence), and it stands by."""
    under_way(rig)
    holder = rig.holder()
    standby = 1 - holder
    stopped = time.time()
    rig.signal(holder, signal.SIGSTOP)
    try:
        wait_for(
            lambda: rig.holds(standby), TICKS_WITHIN_S, interval=0.2, what="the standby writing"
        )
        print(f"the standby writes {time.time() - stopped:.1f} s after SIGSTOP", flush=True)
        new_ticks(rig, stopped)
        time.sleep(max(0.0, stopped + 20 - time.time()))
    finally:
        rig.signal(holder, signal.SIGCONT)
    wait_for(
        lambda: "lost: standing by" in rig.log(holder),
        15,
        interval=0.2,
        what="the old holder standing by",
    )
    assert rig.holder() == standby
    print(
        f"writes of the thawed listener refused: {rig.log(holder).count('Redis refused')}",
        flush=True,
    )
    nothing_lost_or_doubled(rig, "SIGSTOP of the active listener for 20 s, then SIGCONT")
    assert rig.holder() == standby
    assert sentinel_group.failovers() == 0
