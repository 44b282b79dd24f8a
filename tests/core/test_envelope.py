"""Frame decoding: the fedmsg wire format, and every malformed variant rejected by reason."""

from __future__ import annotations

import json

import pytest

from listener.core.envelope import Envelope, Rejected, category_of, decode_frames, encode_frames

GOOD = {
    "topic": "org.fedoraproject.prod.buildsys.tag",
    "msg": {"tag": "f40", "owner": "ralph"},
    "msg_id": "2024-abc",
    "timestamp": 1504643021.0,
    "i": 3,
    "username": "apache",
}


def frames(body: object, topic: str | None = None) -> list[bytes]:
    t = topic if topic is not None else GOOD["topic"]
    return [t.encode(), json.dumps(body).encode()]


def test_good_message_decodes() -> None:
    env = decode_frames(frames(GOOD))
    assert isinstance(env, Envelope)
    assert (env.topic, env.msg_id, env.timestamp, env.i, env.username) == (
        GOOD["topic"],
        "2024-abc",
        1504643021.0,
        3,
        "apache",
    )
    assert env.msg == {"tag": "f40", "owner": "ralph"}


def test_encode_then_decode_round_trips() -> None:
    env = decode_frames(encode_frames(GOOD))
    assert isinstance(env, Envelope) and env.body == GOOD


@pytest.mark.parametrize(
    "fs, reason",
    [
        ([b"org.fedoraproject.prod.x.y"], "frame_count"),
        ([b"t", b"{}", b"extra"], "frame_count"),
        ([], "frame_count"),
        ([GOOD["topic"].encode(), b"{not json"], "bad_json"),
        ([GOOD["topic"].encode(), b"[1, 2]"], "not_object"),
        ([GOOD["topic"].encode(), b'"a string"'], "not_object"),
        (frames({**GOOD, "msg": None}), "bad_msg"),
        (frames({**GOOD, "msg": "a string body"}), "bad_msg"),
        (frames({k: v for k, v in GOOD.items() if k != "msg"}), "bad_msg"),
        (frames({**GOOD, "topic": 7}), "bad_msg"),
        (frames({**GOOD, "topic": "t" * 100_000}, topic="t" * 100_000), "bad_topic"),
        (frames({**GOOD, "topic": "t" * 256}, topic="t" * 256), "bad_topic"),
        (frames({**GOOD, "msg_id": "2024-" + "x" * 1_000_000}), "bad_msg_id"),
        (frames({**GOOD, "msg_id": "x" * 256}), "bad_msg_id"),
        (frames(GOOD, topic="org.fedoraproject.prod.other"), "topic_mismatch"),
        ([b"\xff\xfe", json.dumps(GOOD).encode()], "bad_utf8"),
        ([GOOD["topic"].encode(), b'{"a": "\xff"}'], "bad_utf8"),
        (frames({**GOOD, "timestamp": "yesterday"}), "bad_timestamp"),
        (frames({**GOOD, "timestamp": None}), "bad_timestamp"),
        (frames({**GOOD, "timestamp": True}), "bad_timestamp"),
    ],
)
def test_malformed_frames_are_rejected_by_reason(fs: list[bytes], reason: str) -> None:
    res = decode_frames(fs)
    assert isinstance(res, Rejected)
    assert res.reason == reason


def test_longest_msg_id_accepted_and_a_longer_one_not_logged_whole() -> None:
    env = decode_frames(frames({**GOOD, "msg_id": "m" * 255}))
    assert isinstance(env, Envelope) and len(env.msg_id) == 255
    res = decode_frames(frames({**GOOD, "msg_id": "m" * 100_000}))
    assert isinstance(res, Rejected) and res.msg_id is not None and len(res.msg_id) < 100


def test_longest_topic_accepted() -> None:
    """255 bytes (AMQP's routing-key limit) is accepted; 256 is not (above)."""
    topic = "org.fedoraproject.prod." + "x" * (255 - 23)
    env = decode_frames(frames({**GOOD, "topic": topic}, topic=topic))
    assert isinstance(env, Envelope) and len(env.topic) == 255


def test_topic_limit_is_in_bytes_of_utf8() -> None:
    """The prefix (23 bytes) and 116 "é" (2 bytes each) make 255 bytes: accepted;
    117 make 257: not a routing key, rejected though only 140 characters."""
    for n, ok in ((100, True), (116, True), (117, False), (150, False)):
        topic = "org.fedoraproject.prod." + "\u00e9" * n
        res = decode_frames(frames({**GOOD, "topic": topic}, topic=topic))
        assert isinstance(res, Envelope) is ok, (n, res)
        if not ok:
            assert isinstance(res, Rejected) and res.reason == "bad_topic"
            assert f"{23 + 2 * n} bytes" in res.detail


def test_ten_megabyte_body_is_rejected_before_parsing() -> None:
    big = {**GOOD, "msg": {"blob": "x" * (10 * 1024 * 1024)}}
    res = decode_frames(frames(big))
    assert isinstance(res, Rejected) and res.reason == "too_large"


def test_nan_timestamp_rejected() -> None:
    body = json.dumps(GOOD).replace("1504643021.0", "NaN").encode()
    res = decode_frames([GOOD["topic"].encode(), body])
    assert isinstance(res, Rejected) and res.reason in ("bad_json", "bad_timestamp")


@pytest.mark.parametrize(
    "topic, category",
    [
        ("org.fedoraproject.prod.buildsys.build.state.change", "buildsys"),
        ("org.fedoraproject.stg.bodhi.update.comment", "bodhi"),
        ("org.fedoraproject.prod.copr.build.end", "copr"),
        ("io.pagure.prod.pagure.issue.new", "pagure"),
        ("/topic/VirtualTopic.eng.ci.koji-build.test.complete", "ci"),
        ("short.topic", "Unclassified"),
    ],
)
def test_category_is_datanommers(topic: str, category: str) -> None:
    assert category_of(topic) == category


def test_rebased_replay_numbers_each_publisher_from_one() -> None:
    """``replay --rebase-time``: ``i`` counts per publisher (username, certificate),
    as fedmsg does per publishing process, so the listener sees no false gaps."""
    from collections import defaultdict

    from listener.tools.examples import builtin_examples
    from listener.tools.replay import schedule, wire_body

    bodies = [wire_body(e.body) for e in builtin_examples()]
    seen: dict[tuple[object, object], list[int]] = defaultdict(list)
    for _, body in schedule(bodies, 0, None, False, None, True, clock=lambda: 1.0e9):
        seen[(body.get("username"), body.get("certificate"))].append(body["i"])
    assert len(seen) > 3  # the shipped examples come from many publishers
    for numbers in seen.values():
        assert numbers == list(range(1, len(numbers) + 1))
