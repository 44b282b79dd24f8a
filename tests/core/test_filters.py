"""Screen filters (pure): parsing and its bounds, message matching, and which stored
figures follow a filter, checked against a brute-force count of the matching
messages."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from listener.core.envelope import category_of
from listener.core.filters import (
    MAX_VALUES,
    MAX_VALUES_PER_PARAM,
    NO_FILTER,
    USER_FIGURES,
    Filter,
    FilterError,
    diff_by_category,
    filter_blink,
    filter_counts,
    filtered_alerts,
    filtered_diff,
    filtered_radar,
    filtered_snapshot,
    needed_kinds,
    parse_filter,
)
from listener.core.snapshot import build_snapshot
from listener.core.views import diff_rows, radar_from_counts
from listener.core.windows import Counts

P = "org.fedoraproject.prod."
TOPICS = [
    P + "buildsys.build.state.change",
    P + "buildsys.tag",
    P + "bodhi.update.comment",
    P + "bodhi.update.request.testing",
    P + "bodhi.buildroot_override.tag",
    P + "copr.build.end",
    P + "pagure.pull-request.new",
    "org.fedoraproject.stg.buildsys.tag",
    "/topic/VirtualTopic.eng.ci.koji-build.test.complete",
    "weird",
]
USERS = ["ralph", "threebean", "bodhi", "kevin", "pingou", "adamw", "zbyszek"]


def f(**given: Any) -> Filter:
    return parse_filter({k: v if isinstance(v, list) else [v] for k, v in given.items()})


# -- parsing -------------------------------------------------------------------


def test_no_filter_parameters_is_no_filter() -> None:
    assert parse_filter({}) is NO_FILTER
    assert parse_filter({"window": ["3600"], "category": [""]}) is NO_FILTER
    assert NO_FILTER.empty and NO_FILTER.key == "" and NO_FILTER.as_dict() == {}


def test_parse_repeatable_sorted_and_deduplicated() -> None:
    flt = parse_filter(
        {"category": ["koji", "bodhi", "koji"], "not_user": ["bodhi"], "topic": [P + "copr.*"]}
    )
    assert flt.categories == {"koji", "bodhi"}
    assert flt.as_dict() == {
        "category": ["bodhi", "koji"],
        "topic": [P + "copr.*"],
        "not_user": ["bodhi"],
    }
    assert flt.key == f"category=bodhi&category=koji&topic={P}copr.*&not_user=bodhi"
    same = parse_filter(
        {"not_user": ["bodhi"], "topic": [P + "copr.*"], "category": ["koji", "bodhi"]}
    )
    assert same.key == flt.key


@pytest.mark.parametrize(
    "query, words",
    [
        ({"package": ["kernel"]}, "package: this wallboard does not record"),
        ({"category": ["a b"]}, "category: 'a b' is not 1-64 of"),
        ({"category": ["a.b"]}, "category: 'a.b' is not"),
        ({"category": ["x" * 65]}, "category: 'xxxx"),
        ({"topic": ["org.*.x"]}, "topic: 'org.*.x' is not"),
        ({"topic": ["a" * 256]}, "topic:"),
        ({"not_topic": ["<script>"]}, "not_topic: '<script>' is not"),
        ({"user": ["<img src=x onerror=alert(1)>"]}, "user: '<img src=x onerror=alert(1)>'"),
        ({"not_user": ["a\x00b"]}, "not_user: 'a\\x00b' is not"),
        ({"user": ["é"]}, "user: 'é' is not"),
        ({"user": ["u" * 65]}, "user:"),
        ({"category": [f"c{i}" for i in range(MAX_VALUES_PER_PARAM + 1)]}, "at most 16 values"),
        (
            {
                p: [f"c{i}" for i in range(16)]
                for p in ("category", "not_category", "user", "not_user")
            },
            f"at most {MAX_VALUES} filter values in all",
        ),
    ],
)
def test_parse_refuses_hostile_values(query: dict[str, list[str]], words: str) -> None:
    with pytest.raises(FilterError) as exc:
        parse_filter(query)
    assert words in str(exc.value)
    assert len(str(exc.value)) < 200  # a long value is cut in the message


def test_values_at_the_bounds_are_accepted() -> None:
    flt = parse_filter(
        {"category": ["c" * 64], "topic": ["t" * 255 + "*"], "user": ["mbs/mbs.fedoraproject.org"]}
    )
    assert flt.topics.prefixes == ("t" * 255,)
    assert flt.users == {"mbs/mbs.fedoraproject.org"}


# -- matching ------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule, topic, ok",
    [
        (P + "bodhi.update.comment", P + "bodhi.update.comment", True),
        (P + "bodhi.update", P + "bodhi.update.comment", False),  # exact
        (P + "bodhi.update.", P + "bodhi.update.comment", True),  # prefix: final "."
        (P + "bodhi.update.*", P + "bodhi.update.comment", True),  # prefix: final "*"
        (P + "bodhi.update*", P + "bodhi.update.request.testing", True),
        (P + "bodhi.update.*", P + "bodhi.updates", False),
        (P + "bodhi.*", P + "bodhi.buildroot_override.tag", True),
        (P + "bodhi.*", "org.fedoraproject.stg.bodhi.update.comment", False),
    ],
)
def test_topic_rules(rule: str, topic: str, ok: bool) -> None:
    flt = f(topic=rule)
    assert flt.matches(topic, category_of(topic), ()) is ok
    assert f(not_topic=rule).matches(topic, category_of(topic), ()) is not ok


def test_values_of_one_parameter_or_parameters_and() -> None:
    flt = f(category=["bodhi", "copr"], user=["ralph", "kevin"], not_user="bodhi")
    assert flt.matches(P + "bodhi.update.comment", "bodhi", ["ralph"])
    assert flt.matches(P + "copr.build.end", "copr", ["kevin", "pingou"])
    assert not flt.matches(P + "buildsys.tag", "buildsys", ["ralph"])  # category
    assert not flt.matches(P + "bodhi.update.comment", "bodhi", ["pingou"])  # user
    assert not flt.matches(P + "bodhi.update.comment", "bodhi", [])  # no user
    assert not flt.matches(P + "bodhi.update.comment", "bodhi", ["ralph", "bodhi"])  # not_user
    assert f(not_category="bodhi").matches(P + "copr.build.end", "copr", [])
    assert not f(not_category="bodhi").matches(P + "bodhi.x", "bodhi", [])


def test_category_rules_use_the_counted_category() -> None:
    virtual = "/topic/VirtualTopic.eng.ci.koji-build.test.complete"
    assert category_of(virtual) == "ci"
    assert f(category="ci").topic_ok(virtual)
    assert f(category="Unclassified").topic_ok("weird")
    assert not f(not_category="buildsys").topic_ok(P + "buildsys.tag")


# -- stored figures: brute force -------------------------------------------------------


def messages(n: int, seed: int) -> list[tuple[str, str, tuple[str, ...]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        users = tuple(sorted(set(rng.sample(USERS, rng.choice([0, 1, 1, 1, 2, 3])))))
        out.append((topic, category_of(topic), users))
    return out


def count(msgs: list[tuple[str, str, tuple[str, ...]]]) -> Counts:
    c = Counts()
    for topic, cat, users in msgs:
        c.add_message(topic, cat, users)
    return c


FILTERS = [
    {"category": "bodhi"},
    {"category": ["bodhi", "copr"]},
    {"not_category": "buildsys"},
    {"category": ["buildsys", "ci"], "not_category": "ci"},
    {"topic": P + "bodhi.update.*"},
    {"topic": [P + "buildsys.tag", P + "copr."], "not_category": "copr"},
    {"not_topic": P + "bodhi.*"},
    {"category": "bodhi", "not_topic": P + "bodhi.update.comment"},
    {"user": "ralph"},
    {"user": "ralph", "category": ["bodhi", "buildsys"]},
    {"not_user": "bodhi"},
    {"not_user": "bodhi", "not_category": "pagure"},
    {"user": ["ralph", "kevin"]},
    {"not_user": ["bodhi", "kevin"]},
    {"user": "ralph", "not_user": "kevin"},
    {"user": "ralph", "topic": P + "bodhi.*"},
    {"category": "nothing-there"},
]


@pytest.mark.parametrize("given", FILTERS, ids=[str(g) for g in FILTERS])
@pytest.mark.parametrize("seed", [1, 2])
def test_followed_figures_equal_a_count_of_the_matching_messages(
    given: dict[str, Any], seed: int
) -> None:
    msgs = messages(600, seed)
    flt = f(**given)
    truth = count([m for m in msgs if flt.matches(*m)])
    got, unfiltered = filter_counts(count(msgs), flt)
    assert unfiltered <= {"messages", "topics", "categories", "users"}
    if "messages" not in unfiltered:
        assert got.messages == truth.messages
    if "topics" not in unfiltered:
        assert got.topics == truth.topics
    if "categories" not in unfiltered:
        assert got.categories == truth.categories
    if "users" not in unfiltered:
        assert got.users == truth.users and got.usercat == truth.usercat
    # the snapshot: every figure it shows is the matching messages' own
    snap = filtered_snapshot(3600, 1e9, count(msgs), flt)
    want = build_snapshot(3600, 1e9, truth, None)
    for key, value in snap.items():
        if key in ("unfiltered", "filter"):
            continue
        if key in snap["unfiltered"]:
            assert value is None
        else:
            assert value == want[key], key
    assert snap["filter"] == flt.as_dict()
    assert "last_message_at" in snap["unfiltered"]


@pytest.mark.parametrize(
    "given, unfiltered",
    [
        ({"category": "bodhi"}, set()),
        ({"not_category": "bodhi"}, set()),
        ({"topic": P + "bodhi.*"}, {"users"}),
        ({"user": "ralph"}, {"topics", "users"}),
        ({"not_user": "bodhi"}, {"topics", "users"}),
        ({"user": ["ralph", "kevin"]}, {"messages", "topics", "categories", "users"}),
        ({"user": "ralph", "topic": P + "bodhi.*"}, {"messages", "topics", "categories", "users"}),
    ],
)
def test_what_follows_which_filter(given: dict[str, Any], unfiltered: set[str]) -> None:
    assert filter_counts(count(messages(50, 3)), f(**given))[1] == unfiltered


def test_unfollowed_user_figures_are_null_not_unfiltered() -> None:
    snap = filtered_snapshot(3600, 1e9, count(messages(200, 4)), f(topic=P + "bodhi.*"))
    assert set(USER_FIGURES) <= set(snap["unfiltered"])
    assert all(snap[k] is None for k in USER_FIGURES)
    assert snap["messages"] > 0 and set(snap["categories"]) == {"bodhi"}


def test_radar_follows_category_rules_only() -> None:
    msgs = messages(400, 5)
    flt = f(category=["bodhi", "buildsys", "copr"])
    truth = count([m for m in msgs if flt.matches(*m)])
    radar = filtered_radar(count(msgs), 3600, 1e9, flt, None, 5)
    assert {k: v for k, v in radar.items() if k not in ("filter", "unfiltered")} == (
        radar_from_counts(truth, 3600, 1e9, None, 5)
    )
    assert radar["unfiltered"] == [] and set(radar["categories"]) == {"bodhi", "buildsys", "copr"}
    no = filtered_radar(count(msgs), 3600, 1e9, f(not_user="bodhi"), None, 5)
    assert no["users"] is None and no["categories"] is None
    assert no["unfiltered"] == ["categories", "users"]


def test_diff_follows_topic_rules_and_regroups_by_category() -> None:
    cur, prev = messages(300, 6), messages(250, 7)
    flt = f(not_topic=P + "bodhi.update.*", not_category="copr")
    by_topic = {
        "period_s": 86400,
        "end": 1e9,
        "by": "topic",
        "rows": diff_rows(Counter(m[0] for m in cur), Counter(m[0] for m in prev)),
    }
    out = filtered_diff(by_topic, flt)
    keep = [m for m in cur if flt.matches(*m)], [m for m in prev if flt.matches(*m)]
    assert out["rows"] == diff_rows(Counter(m[0] for m in keep[0]), Counter(m[0] for m in keep[1]))
    cats = diff_by_category(out)
    assert cats["by"] == "category"
    assert cats["rows"] == diff_rows(
        Counter(m[1] for m in keep[0]), Counter(m[1] for m in keep[1]), "category"
    )
    users = filtered_diff(by_topic, f(user="ralph"))
    assert users["rows"] is None and users["unfiltered"] == ["rows"]
    assert diff_by_category(users)["rows"] is None


# -- live events ---------------------------------------------------------------


def blink(msgs: list[tuple[str, str, tuple[str, ...]]], omitted: int = 0) -> dict[str, Any]:
    shown = [
        {"topic": t, "category": c, "users": list(u), "summary": "", "ts": 1.0, "msg_id": str(i)}
        for i, (t, c, u) in enumerate(msgs)
    ]
    counts = Counter(c for _, c, _ in msgs)
    counts["buildsys"] += omitted  # the omitted messages: all buildsys here
    return {
        "type": "blink",
        "msgs": shown,
        "counts": dict(counts),
        "total": len(msgs) + omitted,
        "omitted": omitted,
        "first_ts": 1.0,
    }


def test_blink_by_category_is_exact_even_with_omitted_messages() -> None:
    msgs = messages(30, 8)
    ev = blink(msgs, omitted=100)
    out = filter_blink(ev, f(category=["buildsys", "bodhi"]))
    assert out is not None
    assert all(m["category"] in ("buildsys", "bodhi") for m in out["msgs"])
    assert out["counts"] == {c: n for c, n in ev["counts"].items() if c in ("buildsys", "bodhi")}
    assert out["total"] == sum(out["counts"].values())
    assert out["omitted"] == out["total"] - len(out["msgs"]) and "partial" not in out
    assert out["first_ts"] == 1.0 and out["type"] == "blink"


def test_blink_by_user_is_partial_when_messages_were_omitted() -> None:
    msgs = messages(30, 9)
    flt = f(user="ralph")
    whole = filter_blink(blink(msgs), flt)
    assert whole is not None and "partial" not in whole
    assert [m["msg_id"] for m in whole["msgs"]] == [
        str(i) for i, m in enumerate(msgs) if "ralph" in m[2]
    ]
    assert whole["total"] == len(whole["msgs"]) and whole["omitted"] == 0
    part = filter_blink(blink(msgs, omitted=5), flt)
    assert part is not None and part["partial"] is True and part["omitted"] is None
    assert part["counts"] == dict(Counter(m["category"] for m in part["msgs"]))


def test_blink_with_nothing_matching_is_not_sent() -> None:
    assert filter_blink(blink(messages(10, 10)), f(category="nothing")) is None
    assert filter_blink({"type": "blink", "msgs": "junk", "counts": {}}, f(user="x")) is None


@pytest.mark.parametrize("given", FILTERS, ids=[str(g) for g in FILTERS])
def test_the_hashes_read_are_enough(given: dict[str, Any]) -> None:
    """Counts holding only :func:`needed_kinds`' hashes filter to the same figures
    as counts with every field (what the web process reads is enough)."""
    full = count(messages(500, 11))
    flt = f(**given)
    kinds = needed_kinds(flt)
    assert set(kinds) <= {"t", "c", "uc"}
    part = Counts()
    if "t" in kinds:
        part.topics = full.topics.copy()
    if "c" in kinds:
        part.categories = full.categories.copy()
    if "uc" in kinds:
        part.usercat = full.usercat.copy()
        for (u, _), n in full.usercat.items():
            part.users[u] += n
    assert filter_counts(part, flt) == filter_counts(full, flt)


def test_no_filter_and_a_user_with_every_message_of_a_category() -> None:
    full = count(messages(100, 12))
    assert filter_counts(full, NO_FILTER) == (full, frozenset())
    assert needed_kinds(f(user=["a", "b"])) == () and needed_kinds(f(user="a", topic="x")) == ()
    solo = count([(P + "copr.build.end", "copr", ("bot",))] * 3 + [(P + "git.receive", "git", ())])
    got, unfiltered = filter_counts(solo, f(not_user="bot"))
    assert got.categories == {"git": 1} and got.messages == 1 and unfiltered == {"topics", "users"}


# -- alerts ------------------------------------------------------------------------

ALERTS = {
    "mode": "week",
    "alerts": [
        {"kind": "category", "name": "bodhi", "state": "silent"},
        {"kind": "category", "name": "buildsys", "state": "bursting"},
        {"kind": "topic", "name": "org.fedoraproject.prod.bodhi.update.comment"},
        {"kind": "topic", "name": "org.fedoraproject.prod.buildsys.tag"},
    ],
}


@pytest.mark.parametrize(
    "query, kept",
    [
        (
            {},
            [
                "bodhi",
                "buildsys",
                "org.fedoraproject.prod.bodhi.update.comment",
                "org.fedoraproject.prod.buildsys.tag",
            ],
        ),
        ({"category": ["bodhi"]}, ["bodhi", "org.fedoraproject.prod.bodhi.update.comment"]),
        ({"not_category": ["bodhi"]}, ["buildsys", "org.fedoraproject.prod.buildsys.tag"]),
        # a prefix that fixes the category keeps that category's alert
        (
            {"topic": ["org.fedoraproject.prod.bodhi.*"]},
            ["bodhi", "org.fedoraproject.prod.bodhi.update.comment"],
        ),
        (
            {"topic": ["org.fedoraproject.prod.buildsys.tag"]},
            ["buildsys", "org.fedoraproject.prod.buildsys.tag"],
        ),
        # one that does not: every category may have matching topics
        (
            {"topic": ["org.fedoraproject."]},
            [
                "bodhi",
                "buildsys",
                "org.fedoraproject.prod.bodhi.update.comment",
                "org.fedoraproject.prod.buildsys.tag",
            ],
        ),
        (
            {"not_topic": ["org.fedoraproject.prod.buildsys."]},
            ["bodhi", "buildsys", "org.fedoraproject.prod.bodhi.update.comment"],
        ),
    ],
)
def test_alerts_follow_the_category_and_topic_rules(
    query: dict[str, list[str]], kept: list[str]
) -> None:
    out = filtered_alerts(ALERTS, parse_filter(query))
    assert [a["name"] for a in out["alerts"]] == kept
    assert out["mode"] == "week"
    assert out.get("unfiltered", []) == []


def test_user_rules_do_not_apply_to_alerts_and_say_so() -> None:
    out = filtered_alerts(ALERTS, parse_filter({"user": ["ralph"]}))
    assert len(out["alerts"]) == 4 and out["unfiltered"] == ["users"]
    assert out["filter"] == {"user": ["ralph"]}
    junk = filtered_alerts({"alerts": ["junk", None]}, parse_filter({"category": ["a"]}))
    assert junk["alerts"] == []
