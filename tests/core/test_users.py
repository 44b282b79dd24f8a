"""Users from fedmsg.meta: the cached-processor path gives exactly msg2usernames."""

from __future__ import annotations

from typing import Any

import fedmsg.meta
import pytest

from listener.core.users import UserExtractor, clean_usernames


def test_examples_are_plentiful(examples: list[Any]) -> None:
    assert len(examples) >= 500
    assert len({e.body["msg_id"] for e in examples}) == len(examples)


def test_example_ids_are_the_same_in_every_process() -> None:
    """A replay of the examples in a second run counts nothing new: their msg_ids do
    not depend on content that changes per process (TestMeetingReminder puts the
    import time into its message)."""
    import json
    import subprocess
    import sys
    import time

    code = (
        "import json; from listener.tools.examples import builtin_examples as b; "
        "print(json.dumps({e.name: [e.body['msg_id'], json.dumps(e.body, sort_keys=True)] "
        "for e in b()}))"
    )
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        runs.append(json.loads(out))
        time.sleep(1.1)  # the reminder's time has whole seconds
    first, second = runs
    assert first.keys() == second.keys()
    assert first["TestMeetingReminder"][1] != second["TestMeetingReminder"][1]
    assert {n: v[0] for n, v in first.items()} == {n: v[0] for n, v in second.items()}


def test_examples_give_the_users_of_the_same_messages_off_a_file(
    examples: list[Any], extractor: UserExtractor, tmp_path: Any
) -> None:
    """``--builtin-examples`` and a JSONL file of the same messages count the same
    users (the study of one differed from the other's in 5 windows): fedoratagger's
    processor tests ``user is 'anonymous'``, true only for the test module's
    interned literal, so the examples come through JSON as the wire's do."""
    import json

    from listener.tools.examples import load_file

    path = tmp_path / "examples.jsonl"
    path.write_text("".join(json.dumps(e.body) + "\n" for e in examples))
    loaded = load_file(path)
    assert len(loaded) == len(examples)
    for ex, body in zip(examples, loaded, strict=True):
        assert extractor.usernames(body) == extractor.usernames(ex.body), ex.name
    anonymous = [e for e in examples if e.name.startswith("TestTagger") and "Anonymous" in e.name]
    assert len(anonymous) == 2
    assert all(extractor.usernames(e.body) == {"anonymous"} for e in anonymous)


def test_same_users_as_msg2usernames(
    examples: list[Any], extractor: UserExtractor, fedmsg_config: dict[str, Any]
) -> None:
    with_users = 0
    for ex in examples:
        expected = fedmsg.meta.msg2usernames(ex.body, **extractor.config)
        got = extractor.usernames(ex.body)
        assert got == clean_usernames(expected), ex.name
        with_users += bool(got)
    assert with_users > 300


def test_same_processor_as_msg2processor(examples: list[Any], extractor: UserExtractor) -> None:
    for ex in examples:
        expected = fedmsg.meta.msg2processor(ex.body, **extractor.config)
        assert extractor.processor(ex.body) is expected


def test_expected_usernames_of_the_shipped_tests(
    examples: list[Any], extractor: UserExtractor
) -> None:
    """The shipped tests' expectations hold, with their fake FAS cache loaded."""
    from fedmsg_meta_fedora_infrastructure import fasshim

    saved = dict(fasshim._fas_cache)
    fasshim._fas_cache.update(
        {
            "threebean": "ralph",
            "rbean@redhat.com": "ralph",
            "puiterwijk@gmail.com": "puiterwijk",
            "nicolas.mailhot@laposte.net": "nim",
        }
    )
    try:
        checked = mismatched = 0
        for ex in examples:
            if ex.expected_usernames is None:
                continue
            checked += 1
            if extractor.usernames(ex.body) != ex.expected_usernames:
                mismatched += 1
        assert checked > 400
        # Examples copied between test classes keep the class' other expectations;
        # the library's own suite has the same handful of known mismatches.
        assert mismatched <= 10
    finally:
        fasshim._fas_cache.clear()
        fasshim._fas_cache.update(saved)


@pytest.mark.parametrize(
    "body",
    [
        {"topic": "org.fedoraproject.prod.bodhi.update.comment", "msg": {}},
        {"topic": "org.fedoraproject.prod.buildsys.build.state.change", "msg": {"owner": None}},
        {"topic": "org.fedoraproject.prod.fas.user.update", "msg": {"user": {"x": 1}}},
        {"topic": "org.fedoraproject.prod.git.receive", "msg": {"commit": None}},
        {"topic": "org.fedoraproject.prod.copr.build.end", "msg": "a string"},
        {"topic": "org.fedoraproject.prod.bodhi.update.request.testing", "msg": None},
    ],
)
def test_poison_messages_give_a_set_and_never_raise(
    extractor: UserExtractor, body: dict[str, Any]
) -> None:
    users = extractor.usernames(body)
    assert isinstance(users, frozenset)
    assert all(isinstance(u, str) and u for u in users)


def test_processor_exception_is_counted(fedmsg_config: dict[str, Any]) -> None:
    ex = UserExtractor(fedmsg_config)
    before = ex.errors
    ex.usernames({"topic": "org.fedoraproject.prod.bodhi.update.comment", "msg": None})
    assert ex.errors == before + 1


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"a", None, "", "  ", "b"}, {"a", "b"}),
        (None, set()),
        ([1, "x"], {"x"}),
        (["u" * 64, "v" * 65, "w" * 100_000, " ralph "], {"u" * 64, "ralph"}),
    ],
)
def test_clean_usernames(raw: Any, expected: set[str]) -> None:
    assert clean_usernames(raw) == expected


def test_no_network_credentials_reach_processors(fedmsg_config: dict[str, Any]) -> None:
    cfg = dict(fedmsg_config, fas_credentials={"username": "u", "password": "p"}, fasjson=True)
    ex = UserExtractor(cfg)
    assert "fas_credentials" not in ex.config and "fasjson" not in ex.config


def test_fas_cache_is_never_empty_so_fasshim_does_not_rebuild_it(
    extractor: UserExtractor,
) -> None:
    """An empty cache makes fasshim log and try ``import fedora.client`` on every
    message naming a nick or an e-mail; the sentinel entry makes it return at once."""
    from fedmsg_meta_fedora_infrastructure import fasshim

    from listener.core.users import FAS_SENTINEL, install_fas_cache

    saved = dict(fasshim._fas_cache)
    try:
        install_fas_cache({}, replace=True)
        assert fasshim._fas_cache == {FAS_SENTINEL: FAS_SENTINEL}
        assert fasshim.make_fas_cache() is fasshim._fas_cache  # returned, not rebuilt
        # a nick or address not in the cache still maps to itself
        assert fasshim.nick2fas("threebean") == "threebean"
        assert fasshim.email2fas("someone@example.com") == "someone@example.com"
        install_fas_cache({"threebean": "ralph"}, replace=True)
        assert fasshim._fas_cache == {"threebean": "ralph"}
        assert fasshim.nick2fas("threebean") == "ralph"
    finally:
        fasshim._fas_cache.clear()
        fasshim._fas_cache.update(saved)


def test_processors_get_only_the_keys_they_read(extractor: UserExtractor) -> None:
    from listener.core.users import PROCESSOR_CONFIG_KEYS

    assert set(extractor.processor_config) <= set(PROCESSOR_CONFIG_KEYS)
    assert extractor.processor_config["topic_prefix_re"] == extractor.config["topic_prefix_re"]
