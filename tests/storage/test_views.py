"""Radar shares and daily/weekly +/- against a real Redis, with real Fedora messages.

The messages are the examples shipped with fedmsg_meta_fedora_infrastructure (real
bus messages), users from fedmsg.meta, spread over 14 days of timestamps ending
now.  Expected values are computed here by hand from the same message list, never
through :mod:`listener.core.views`, :mod:`listener.storage.readers` and
:mod:`listener.tools.radar_diff`.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from listener.core import views
from listener.core.counting import Counted
from listener.core.envelope import category_of
from listener.core.windows import Counts
from listener.storage import readers
from listener.storage.store import Store
from listener.tools import radar_diff
from tests.helpers.common import run_cli

HOUR = 3600
DAY = 86400
WEEK = 604800


@pytest.fixture
def prefix() -> str:
    return f"views-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(redis_url: str, prefix: str) -> Any:
    st = Store.from_url(redis_url, prefix=prefix)
    yield st
    await st.close()


@pytest.fixture(scope="module")
def templates(examples: list[Any], extractor: Any) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """``(msg_id, topic, category, users)`` of every real example message."""
    out = []
    for ex in examples:
        body = ex.body
        users = tuple(sorted(extractor.usernames(body)))
        out.append((body["msg_id"], body["topic"], category_of(body["topic"]), users))
    return out


def spread(
    templates: list[tuple[str, str, str, tuple[str, ...]]],
    stamps: list[int],
    seed: int,
) -> list[Counted]:
    """One Counted per timestamp, each a real message (unique msg_id per copy)."""
    rng = random.Random(seed)
    out = []
    for k, ts in enumerate(stamps):
        msg_id, topic, category, users = rng.choice(templates)
        out.append(Counted(f"{msg_id}-{k}", int(ts), topic, category, users))
    return out


# -- radar --------------------------------------------------------------------


def hand_radar(msgs: list[Counted]) -> tuple[Counter[tuple[str, str]], Counter[str], set[str]]:
    """(count(u, c), count(all users, c), every category) of a message list."""
    uc: Counter[tuple[str, str]] = Counter()
    den: Counter[str] = Counter()
    cats = set()
    for m in msgs:
        cats.add(m.category)
        for u in m.users:
            uc[(u, m.category)] += 1
            den[m.category] += 1
    return uc, den, cats


async def test_radar_shares_equal_hand_computed_values(store: Store, templates: Any) -> None:
    end = time.time()
    rng = random.Random(5)
    inside = [int(end - rng.uniform(0, 20 * HOUR)) for _ in range(900)]
    outside = [int(end - rng.uniform(30 * HOUR, 13 * DAY)) for _ in range(600)]
    msgs = spread(templates, inside + outside, seed=1)
    assert all(await store.flush(msgs))
    in_window = msgs[: len(inside)]
    uc, den, cats = hand_radar(in_window)
    # sanity: the data exercises multi-user messages and user-less categories
    assert any(len(m.users) > 1 for m in in_window)
    assert any(den[c] == 0 for c in cats)

    result = await readers.radar(store, DAY, end)
    assert set(result) == {"window_s", "end", "categories", "users"}
    assert result["window_s"] == DAY and result["end"] == end
    assert result["categories"] == sorted(cats, key=lambda c: (-den[c], c))
    # top 5 users by messages in the window, ties by name
    per_user: Counter[str] = Counter(u for m in in_window for u in m.users)
    top5 = sorted(per_user, key=lambda u: (-per_user[u], u))[:5]
    assert list(result["users"]) == top5
    for name in top5:
        expected = [uc[(name, c)] / den[c] if den[c] else 0.0 for c in result["categories"]]
        assert result["users"][name] == expected

    # every user: each category's shares sum to 1 (0 for user-less categories)
    everyone = await readers.radar(store, DAY, end, users=sorted(per_user))
    assert len(everyone["users"]) == len(per_user)
    for i, c in enumerate(everyone["categories"]):
        total = math.fsum(row[i] for row in everyone["users"].values())
        if den[c]:
            assert math.isclose(total, 1.0, rel_tol=1e-12), c
        else:
            assert total == 0.0, c

    # named users: order kept, duplicates dropped, absent names get zeros
    named = await readers.radar(store, DAY, end, users=["no-such-user", top5[1], top5[1]])
    assert list(named["users"]) == ["no-such-user", top5[1]]
    assert named["users"]["no-such-user"] == [0.0] * len(named["categories"])
    assert named["users"][top5[1]] == result["users"][top5[1]]

    top2 = await readers.radar(store, DAY, end, top=2)
    assert list(top2["users"]) == top5[:2]


async def test_radar_short_window_reads_minute_buckets(store: Store, templates: Any) -> None:
    end = time.time()
    minute_end = int(end // 60) * 60
    # the 1 h window is read from 60 s buckets: [minute_end - 3540, minute_end + 60)
    stamps = [minute_end - 3540 + s for s in range(0, 3540, 7)]
    stamps += [minute_end - 3541, minute_end - 7200]  # just outside
    stamps = [s for s in stamps if s <= end]
    msgs = spread(templates, stamps, seed=2)
    await store.flush(msgs)
    uc, den, cats = hand_radar([m for m in msgs if m.timestamp >= minute_end - 3540])
    result = await readers.radar(store, HOUR, end, users=["no-one", *sorted({u for u, _ in uc})])
    assert result["categories"] == sorted(cats, key=lambda c: (-den[c], c))
    for name, row in result["users"].items():
        assert row == [uc[(name, c)] / den[c] if den[c] else 0.0 for c in result["categories"]]


async def test_radar_empty_window_and_bad_window(store: Store) -> None:
    result = await readers.radar(store, DAY, time.time())
    assert result["categories"] == [] and result["users"] == {}
    named = await readers.radar(store, DAY, time.time(), users=["a"])
    assert named["users"] == {"a": []}
    with pytest.raises(ValueError, match="bucket"):
        await readers.radar(store, 90, time.time())


@pytest.mark.parametrize(
    ("users", "top", "want_users"),
    [
        (None, 5, ["b", "a", "c"]),  # b has most messages; a/c tie -> by name
        (None, 1, ["b"]),
        (None, 0, []),
        ([], 5, []),
        (["c", "zz"], 5, ["c", "zz"]),
    ],
)
def test_radar_from_counts_table(users: Any, top: int, want_users: list[str]) -> None:
    counts = Counts()
    counts.add_message("t.koji", "buildsys", ["a", "b"])
    counts.add_message("t.koji", "buildsys", ["b"])
    counts.add_message("t.koji", "buildsys", ["b"])
    counts.add_message("t.bodhi", "bodhi", ["c"])
    counts.add_message("t.bodhi", "bodhi", ["a"])
    counts.add_message("t.mail", "mailman", [])
    out = views.radar_from_counts(counts, 60, 10.0, users, top)
    assert out["categories"] == ["buildsys", "bodhi", "mailman"]  # 4, 2, 0 user-messages
    assert list(out["users"]) == want_users
    table = {"a": [0.25, 0.5, 0.0], "b": [0.75, 0.0, 0.0], "c": [0.0, 0.5, 0.0]}
    for name in want_users:
        assert out["users"][name] == table.get(name, [0.0, 0.0, 0.0])


def test_radar_from_counts_rejects_negative_top() -> None:
    with pytest.raises(ValueError, match="top"):
        views.radar_from_counts(Counts(), 60, 0.0, None, -1)


# -- diff ---------------------------------------------------------------------


def hand_diff(msgs: list[Counted], period_s: int, end: float, attr: str) -> list[dict[str, Any]]:
    """Rows computed from the messages and hour-aligned edges, by hand."""
    edge = (int(end) // HOUR + 1) * HOUR  # end rounded up to the end of its hour
    cur: Counter[str] = Counter()
    prev: Counter[str] = Counter()
    for m in msgs:
        name = getattr(m, attr)
        if edge - period_s <= m.timestamp < edge:
            cur[name] += 1
        elif edge - 2 * period_s <= m.timestamp < edge - period_s:
            prev[name] += 1
    rows = []
    for name in set(cur) | set(prev):
        d = cur[name] - prev[name]
        rows.append(
            {
                "current": cur[name],
                "previous": prev[name],
                "delta": d,
                "pct": 100 * d / prev[name] if prev[name] else None,
                "name": name,
            }
        )
    rows.sort(key=lambda r: (-abs(r["delta"]), r["name"]))
    return rows


@pytest.fixture
async def fortnight(store: Store, templates: Any) -> tuple[float, list[Counted]]:
    """Real messages over the last 14 days, denser in some weeks/days than others,
    plus messages on each hour-aligned period edge."""
    end = time.time()
    edge = (int(end) // HOUR + 1) * HOUR
    rng = random.Random(9)
    stamps = [int(end - rng.uniform(0, 14 * DAY - HOUR)) for _ in range(1400)]
    stamps += [int(end - rng.uniform(0, DAY)) for _ in range(300)]  # a busy last day
    stamps += [int(end - rng.uniform(8 * DAY, 9 * DAY)) for _ in range(200)]  # busy last week
    for p in (DAY, WEEK):
        stamps += [edge - p, edge - p - 1, edge - 2 * p, edge - 2 * p + 1]
    stamps += [edge - 2 * WEEK - 1]  # just before the previous week: never counted
    msgs = spread(templates, [s for s in stamps if s <= end], seed=3)
    flags = await store.flush(msgs)
    assert all(flags)
    return end, msgs


@pytest.mark.parametrize("period_s", [DAY, WEEK])
@pytest.mark.parametrize(("by", "attr"), [("topic", "topic"), ("category", "category")])
async def test_diff_equals_hand_computed_values(
    store: Store, fortnight: Any, period_s: int, by: str, attr: str
) -> None:
    end, msgs = fortnight
    result = await readers.diff(store, period_s, end, by)
    assert set(result) == {"period_s", "end", "by", "rows"}
    assert (result["period_s"], result["end"], result["by"]) == (period_s, end, by)
    want = hand_diff(msgs, period_s, end, attr)
    got = [
        {
            "current": r["current"],
            "previous": r["previous"],
            "delta": r["delta"],
            "pct": r["pct"],
            "name": r[by],
        }
        for r in result["rows"]
    ]
    assert got == want
    assert sum(r["current"] for r in got) > 0 and sum(r["previous"] for r in got) > 0
    assert any(r["pct"] is None for r in got) or by == "category"
    assert all(set(r) == {by, "current", "previous", "delta", "pct"} for r in result["rows"])
    limited = await readers.diff(store, period_s, end, by, limit=3)
    assert limited["rows"] == result["rows"][:3]


async def test_diff_rejects_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="by must be"):
        await readers.diff(store, DAY, time.time(), by="user")
    with pytest.raises(ValueError, match="bucket"):
        await readers.diff(store, 100, time.time())


@pytest.mark.parametrize(
    ("current", "previous", "want"),
    [
        ({}, {}, []),
        ({"a": 3}, {}, [("a", 3, 0, 3, None)]),
        ({}, {"a": 2}, [("a", 0, 2, -2, -100.0)]),
        (
            {"a": 5, "b": 1, "c": 4},
            {"a": 4, "b": 3, "c": 2, "d": 2},
            [
                ("b", 1, 3, -2, -200 / 3),
                ("c", 4, 2, 2, 100.0),
                ("d", 0, 2, -2, -100.0),
                ("a", 5, 4, 1, 25.0),
            ],
        ),
    ],
)
def test_diff_rows_table(current: Any, previous: Any, want: list[Any]) -> None:
    rows = views.diff_rows(current, previous, "topic")
    assert [(r["topic"], r["current"], r["previous"], r["delta"], r["pct"]) for r in rows] == want


def test_diff_bounds_are_hour_aligned() -> None:
    end = 1_700_000_123.5  # 2023-11-14 22:15:23 UTC
    cur, prev = views.diff_bounds(DAY, end, HOUR)
    edge = 1_700_002_800  # 23:00 UTC
    assert (cur[0], cur[-1] + HOUR) == (edge - DAY, edge)
    assert (prev[0], prev[-1] + HOUR) == (edge - 2 * DAY, edge - DAY)
    with pytest.raises(ValueError):
        views.diff_bounds(5000, end, HOUR)


@pytest.mark.parametrize(("text", "seconds"), [("day", 86400), ("week", 604800), ("7200", 7200)])
def test_parse_period(text: str, seconds: int) -> None:
    assert radar_diff.parse_period(text) == seconds


# -- CLI ----------------------------------------------------------------------


def test_cli_json_and_tables(redis_url: str, prefix: str, fortnight: Any, store: Store) -> None:
    import asyncio

    end, msgs = fortnight
    common = ["--redis-url", redis_url, "--key-prefix", prefix, "--end", str(end)]
    res = run_cli("radar", "--window", "86400", "--json", *common, timeout=60)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)

    async def direct() -> tuple[Any, Any, Any]:
        st = Store.from_url(redis_url, prefix=prefix)
        try:
            return (
                await readers.radar(st, DAY, end),
                await readers.diff(st, WEEK, end, "category"),
                await readers.diff(st, DAY, end, "topic"),
            )
        finally:
            await st.close()

    want_radar, want_week, want_day = asyncio.run(direct())
    assert got == want_radar and got["users"]

    res = run_cli("diff", "--period", "week", "--by", "category", "--json", *common, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == want_week

    res = run_cli("diff", "--period", "day", *common, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("topic +/-: [")
    body = [ln for ln in lines[2:] if ln.strip()]
    assert len(body) == len(want_day["rows"])
    for ln, row in zip(body, want_day["rows"], strict=True):
        mark = ln.split()[0]
        assert mark == ("\u25b2" if row["delta"] > 0 else "\u25bc" if row["delta"] < 0 else "=")
        assert ln.rstrip().endswith(row["topic"])

    res = run_cli("radar", "--window", "86400", "--users", "no-one", *common, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "no-one" in res.stdout and "0.0%" in res.stdout


def test_cli_bad_input_gives_clear_errors(redis_url: str, prefix: str) -> None:
    common = ["--redis-url", redis_url, "--key-prefix", prefix]
    res = run_cli("radar", "--window", "90", "--json", *common, timeout=60)
    assert res.returncode == 2
    assert "no bucket size" in res.stderr
    res = run_cli("diff", "--period", "fortnightly", *common, timeout=60)
    assert res.returncode == 2
    assert "period must be day, week or seconds" in res.stderr


async def test_text_output_shows_control_characters_escaped(
    redis_url: str, prefix: str, store: Store
) -> None:
    """A topic or username from the bus with an escape sequence or a newline is
    printed as ``\\x1b``/``\\x0a`` by ``snapshot``, ``radar`` and ``diff``: a
    terminal must not run it (``--json`` escapes it already)."""
    topic = "org.fedoraproject.prod.ansi\x1b[2J\x1b[31mRED.x"
    user = "ev|il\nuser\x1b[31m"
    now = int(time.time())
    await store.flush(
        [Counted(f"hostile-{k}", now - 60 * k, topic, "ansi\x1b[2J", (user,)) for k in range(3)]
    )
    common = ["--redis-url", redis_url, "--key-prefix", prefix]
    outs = [
        run_cli("snapshot", "--window", "3600", *common, timeout=60),
        run_cli("radar", "--window", "3600", "--users", user, *common, timeout=60),
        run_cli("diff", "--period", "day", *common, timeout=60),
    ]
    for res in outs:
        assert res.returncode == 0, res.stderr
        assert "\x1b" not in res.stdout and "ev|il\nuser" not in res.stdout, res.stdout
    assert "ansi\\x1b[2J\\x1b[31mRED" in outs[0].stdout
    assert "ev|il\\x0auser\\x1b[31m" in outs[0].stdout and "ev|il\\x0auser" in outs[1].stdout
    assert "ansi\\x1b[2J\\x1b[31mRED" in outs[2].stdout


def test_cli_radar_users_that_name_nobody_or_a_bad_name(redis_url: str) -> None:
    """``--users ,,,`` was quietly "no users" (the top ones shown); it names nobody:
    a usage error, as is a name longer than any counted."""
    common = ["--redis-url", redis_url, "--window", "3600"]
    res = run_cli("radar", "--users", ",,,", *common, timeout=60)
    assert res.returncode == 2 and "names no user" in res.stderr, res.stderr
    res = run_cli("radar", "--users", "a" * 65, *common, timeout=60)
    assert res.returncode == 2 and "longer than 64 characters" in res.stderr, res.stderr
    res = run_cli("radar", "--users", " ralph, ", "--json", *common, timeout=60)
    assert res.returncode == 0, res.stderr
    assert list(json.loads(res.stdout)["users"]) == ["ralph"]
