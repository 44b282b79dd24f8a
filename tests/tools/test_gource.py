"""``fedmsg-wallboard gource``: Gource's custom log from the live bus, checked by
Debian's real ``gource`` (headless, under Xvfb) and parsed field by field.

Real components only: a real listener and replay (ZeroMQ), real Redis pub/sub, the
datagrepper-like HTTP server, real Fedora messages and real subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from listener.core.envelope import category_of
from listener.storage.store import Store
from listener.tools import gource
from listener.tools.replay import wire_body
from tests.helpers.common import CORPUS, ROOT, TIMEOUT_FACTOR, free_port, run_cli, wait_for
from tests.helpers.datagrepper import FakeDatagrepper, spread

LINE = re.compile(r"^(\d+)\|([^|]+)\|([AMD])\|([^|]+)\|([0-9A-F]{6})$")

needs_gource = pytest.mark.skipif(
    not (shutil.which("gource") and shutil.which("xvfb-run")),
    reason="Debian gource and xvfb are needed (make sysdeps)",
)


def parse(text: str) -> list[tuple[int, str, str, str, str]]:
    """Every line as (timestamp, username, type, file, colour); fails on a bad line."""
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        assert m, f"not a Gource custom log line: {line!r}"
        out.append((int(m[1]), m[2], m[3], m[4], m[5]))
    return out


def expected_lines(msgs: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, str, str, str]]:
    """(username, type, file, colour) per user per message, computed by hand:
    file = category + the topic's parts after it, A the first time a file appears."""
    seen: set[str] = set()
    out = []
    for topic, users in msgs:
        category = category_of(topic)
        parts = topic.split(".")
        path = "/".join([category, *parts[4:]]) if len(parts) > 4 else f"{category}/{category}"
        kind = "M" if path in seen else "A"
        seen.add(path)
        for name in sorted(users) or [category]:
            out.append((name, kind, path, gource.category_colour(category)))
    return out


def run_gource(log_path: Path, out_ppm: Path) -> subprocess.CompletedProcess[bytes]:
    """Debian's gource reading a custom log headless, writing a PPM stream."""
    return subprocess.run(
        ["xvfb-run", "-a", *GOURCE_ARGS, "--stop-at-end", "-o", str(out_ppm), str(log_path)],
        capture_output=True,
        timeout=60 * TIMEOUT_FACTOR,
    )


#: Fast, small, headless: ~3 s for a short log.
GOURCE_ARGS = [
    "gource",
    "--log-format",
    "custom",
    "-160x120",
    "--seconds-per-day",
    "0.1",
    "--time-scale",
    "4",
    "-r",
    "25",
    "--disable-input",
]


def assert_frames(ppm: Path) -> int:
    """The PPM stream holds whole 160x120 frames; returns how many."""
    data = ppm.read_bytes()
    assert data.startswith(b"P6\n160 120 255\n")
    frame = len(b"P6\n160 120 255\n") + 160 * 120 * 3
    assert len(data) % frame == 0
    return len(data) // frame


# -- pure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "path"),
    [
        ("org.fedoraproject.prod.buildsys.build.state.change", "buildsys/build/state/change"),
        ("org.fedoraproject.stg.bodhi.update.comment", "bodhi/update/comment"),
        ("org.fedoraproject.prod.buildsys", "buildsys/buildsys"),
        ("/topic/VirtualTopic.eng.ci.koji-build.test.complete", "ci/koji-build/test/complete"),
        ("weird", "Unclassified/weird"),
        ("org.fedoraproject.prod.x.a|b..c/d", "x/a_b/c_d"),
    ],
)
def test_topic_path(topic: str, path: str) -> None:
    assert gource.topic_path(topic, category_of(topic)) == path


def test_category_colour_is_stable_hex_and_distinct() -> None:
    cats = ["buildsys", "bodhi", "copr", "git", "pagure", "fas", "wiki", "mailman"]
    colours = [gource.category_colour(c) for c in cats]
    assert all(re.fullmatch(r"[0-9A-F]{6}", c) for c in colours)
    assert len(set(colours)) == len(cats)
    # same in a fresh interpreter with another hash seed (no use of hash())
    code = (
        "from listener.tools.gource import category_colour as c; print(c('buildsys'), c('bodhi'))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        cwd=str(ROOT),
    )
    assert res.stdout.split() == colours[:2]


def test_gource_log_lines() -> None:
    log = gource.GourceLog()
    e = gource.Entry
    topic = "org.fedoraproject.prod.copr.build.start"
    a = log.lines(e(100.7, topic, "copr", ("bob", "alice")))
    b = log.lines(e(99.0, topic, "copr", ()))  # older: keeps the previous time
    c = log.lines(e(101.0, "org.fedoraproject.prod.copr.build.end", "copr", ("a|b", "\n", "m/x")))
    colour = gource.category_colour("copr")
    assert a == [f"100|bob|A|copr/build/start|{colour}", f"100|alice|A|copr/build/start|{colour}"]
    assert b == [f"100|copr|M|copr/build/start|{colour}"]
    assert c == [f"101|a_b|A|copr/build/end|{colour}", f"101|m/x|A|copr/build/end|{colour}"]


@pytest.mark.parametrize(
    "item",
    [
        None,
        [],
        {"topic": 3, "ts": 1},
        {"topic": "a.b.c.d", "ts": "x"},
        {"topic": "a.b.c.d", "ts": float("nan")},
        {"topic": "a.b.c.d"},
        {"ts": 1.0},
    ],
)
def test_entry_from_blink_rejects_malformed_items(item: Any) -> None:
    assert gource.entry_from_blink(item) is None


def test_entry_from_blink_fills_category_and_cleans_users() -> None:
    got = gource.entry_from_blink(
        {"topic": "org.fedoraproject.prod.git.receive", "ts": 5, "users": ["b", None, "", "a"]}
    )
    assert got == gource.Entry(5.0, "org.fedoraproject.prod.git.receive", "git", ("a", "b"), "")


# -- end to end ---------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"gource-{uuid.uuid4().hex[:8]}"


def popen_cli(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, "-m", "listener", *args],
        cwd=str(ROOT),
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


def subscribers(redis_url: str, prefix: str) -> int:
    import redis

    r = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        channel = "{" + prefix + "}:events"
        return int(dict(r.pubsub_numsub(channel))[channel.encode()])
    finally:
        r.close()


def close_pipes(proc: subprocess.Popen[Any]) -> None:
    """communicate() closes them only when it ran to the end."""
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill it if it still runs; close its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
    close_pipes(proc)


def finish(proc: subprocess.Popen[Any], timeout: float = 60) -> tuple[Any, str]:
    try:
        out, err = proc.communicate(timeout=timeout * TIMEOUT_FACTOR)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"timed out; stderr: {err.decode()[-2000:]}") from None
    return out, err.decode()


@needs_gource
@pytest.mark.slow
def test_redis_source_from_a_real_listener_plays_in_gource(
    redis_url: str, prefix: str, examples: list[Any], extractor: Any, tmp_path: Path
) -> None:
    n = 120
    bodies = [wire_body(ex.body) for ex in examples[:n]]
    want = expected_lines([(b["topic"], tuple(extractor.usernames(b))) for b in bodies])
    log_path = tmp_path / "bus.log"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with open(log_path, "wb") as fh:
        stream = popen_cli(
            "gource",
            "--redis-url",
            redis_url,
            "--key-prefix",
            prefix,
            "--count",
            str(n),
            stdout=fh,
        )
        listener = popen_cli(
            "listen",
            "--redis-url",
            redis_url,
            "--endpoint",
            endpoint,
            "--key-prefix",
            prefix,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: subscribers(redis_url, prefix) >= 1, 30, what="gource subscribed")
            t0 = int(time.time())
            res = run_cli(
                "replay",
                "--builtin-examples",
                "--endpoint",
                endpoint,
                "--rebase-time",
                "--rate",
                "200",
                "--count",
                str(n),
                "--wait-subscribers",
                "1",
                timeout=60,
            )
            assert res.returncode == 0, res.stderr
            _, err = finish(stream)
            assert stream.returncode == 0, err
            t1 = int(time.time())
        finally:
            for p in (stream, listener):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.communicate(timeout=30)
                close_pipes(p)
    lines = parse(log_path.read_text())
    assert [(u, k, f, c) for _, u, k, f, c in lines] == want
    stamps = [ts for ts, *_ in lines]
    assert stamps == sorted(stamps) and t0 - 1 <= stamps[0] and stamps[-1] <= t1 + 1
    assert f"{n} message(s), {len(want)} line(s)" in err

    ppm = tmp_path / "out.ppm"
    res = run_gource(log_path, ppm)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert assert_frames(ppm) >= 10
    # Gource's own reading of the log: every line, same fields
    parsed = tmp_path / "parsed.log"
    res = subprocess.run(
        [
            "xvfb-run",
            "-a",
            "gource",
            "--log-format",
            "custom",
            "--output-custom-log",
            str(parsed),
            str(log_path),
        ],
        capture_output=True,
        timeout=60 * TIMEOUT_FACTOR,
    )
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert parsed.read_text().splitlines() == [f"{t}|{u}|{k}|/{f}" for t, u, k, f, _ in lines]


@needs_gource
@pytest.mark.slow
def test_bus_source_piped_into_gource(examples: list[Any], extractor: Any, tmp_path: Path) -> None:
    """``fedmsg-wallboard gource --endpoint E | gource --log-format custom -``: Gource
    plays the live pipe (headless, ``--stop-at-time``: on a pipe it never reaches an
    end) and writes frames; ``tee`` keeps what went through for parsing."""
    n = 80
    bodies = [wire_body(ex.body) for ex in examples[200 : 200 + n]]
    want = expected_lines([(b["topic"], tuple(extractor.usernames(b))) for b in bodies])
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    src = tmp_path / "msgs.jsonl"
    src.write_bytes(b"".join(orjson.dumps(b) + b"\n" for b in bodies))
    log_path, ppm = tmp_path / "bus.log", tmp_path / "out.ppm"
    replay = popen_cli(
        "replay",
        str(src),
        "--endpoint",
        endpoint,
        "--rebase-time",
        "--rate",
        "200",
        "--wait-subscribers",
        "1",
        "--wait-timeout",
        "60",
    )
    with open(tmp_path / "pipeline.err", "wb") as err_fh:
        pipeline = subprocess.Popen(
            [
                "bash",
                "-o",
                "pipefail",
                "-c",
                f"{sys.executable} -m listener gource --endpoint {endpoint} --count {n}"
                f" | tee {log_path} | xvfb-run -a {' '.join(GOURCE_ARGS)}"
                f" --stop-at-time 8 -o {ppm} -",
            ],
            cwd=str(ROOT),
            stdout=subprocess.DEVNULL,
            stderr=err_fh,
            start_new_session=True,  # so a hung pipeline can be killed whole
        )
        try:
            _, err = finish(replay)
            assert replay.returncode == 0, err
            assert pipeline.wait(60 * TIMEOUT_FACTOR) == 0, (tmp_path / "pipeline.err").read_text()
        finally:
            reap(replay)
            if pipeline.poll() is None:
                os.killpg(pipeline.pid, signal.SIGKILL)
                pipeline.wait()
    lines = parse(log_path.read_text())
    assert [(u, k, f, c) for _, u, k, f, c in lines] == want
    assert assert_frames(ppm) >= 10


async def publish_blink(store: Store, msgs: list[dict[str, Any]]) -> None:
    """The listener's ``blink`` event shape (listener.core.intake.Intake.take_blink)."""
    await store.publish(
        {"type": "blink", "msgs": msgs, "counts": {}, "total": len(msgs), "omitted": 0}
    )


def blink_item(body: dict[str, Any], users: Any, ts: float) -> dict[str, Any]:
    return {
        "topic": body["topic"],
        "category": category_of(body["topic"]),
        "users": sorted(users),
        "summary": "",
        "ts": ts,
        "msg_id": body["msg_id"],
    }


def test_since_replays_redis_history_then_follows_without_repeats(
    redis_url: str, prefix: str, examples: list[Any], extractor: Any
) -> None:
    now = time.time()
    bodies = [ex.body for ex in examples[300:310]]
    items = [blink_item(b, extractor.usernames(b), now - 100 + i) for i, b in enumerate(bodies)]
    old = blink_item(examples[311].body, ["old"], now - 5000)  # before --since: left out

    async def seed() -> None:
        st = Store.from_url(redis_url, prefix=prefix)
        await st.push_recent([old, *items[:6]], 50)
        await st.close()

    asyncio.run(seed())
    common = ["--redis-url", redis_url, "--key-prefix", prefix, "--since", "3600"]
    res = run_cli("gource", *common, "--no-follow", timeout=60)
    assert res.returncode == 0, res.stderr
    want = expected_lines([(i["topic"], tuple(i["users"])) for i in items[:6]])
    assert [(u, k, f, c) for _, u, k, f, c in parse(res.stdout)] == want

    # follow: history first; live repeats of replayed msg_ids are skipped; bad events
    # are counted and skipped; --count ends the stream
    stream = popen_cli("gource", *common, "--count", "10")
    try:
        wait_for(lambda: subscribers(redis_url, prefix) >= 1, 30, what="gource subscribed")

        async def live() -> None:
            st = Store.from_url(redis_url, prefix=prefix)
            await st.r.publish(st.events_channel, b"not json")
            await st.publish({"type": "tick", "end": now})
            await publish_blink(st, [{"topic": 5}, *items[4:8]])  # 4, 5 replayed already
            await publish_blink(st, items[8:])
            await st.close()

        asyncio.run(live())
        out, err = finish(stream)
    finally:
        reap(stream)
    assert stream.returncode == 0, err
    want = expected_lines([(i["topic"], tuple(i["users"])) for i in items])
    got = parse(out.decode())
    assert [(u, k, f, c) for _, u, k, f, c in got] == want
    assert [ts for ts, *_ in got] == sorted(ts for ts, *_ in got)
    assert "skipped 2 bad" in err and "2 already replayed" in err


def test_since_from_datagrepper(tmp_path: Path, extractor: Any) -> None:
    from listener.tools.examples import load_file

    now = time.time()
    corpus = load_file(CORPUS / "fedmsg_sample_datanommer_stream.jsonl")
    with_users = spread(corpus[:15], now - 1800, now - 60, seed=4, users_of=extractor.usernames)
    without = spread(corpus[15:], now - 1800, now - 60, seed=5)  # users from fedmsg.meta
    too_old = spread(corpus[:3], now - 9000, now - 7300, seed=6)
    msgs = sorted(with_users + without, key=lambda m: m["timestamp"])
    with FakeDatagrepper(msgs + too_old) as dg:
        res = run_cli(
            "gource", "--since", "3600", "--no-follow", "--datagrepper", dg.url, timeout=60
        )
    assert res.returncode == 0, res.stderr
    want = expected_lines([(m["topic"], tuple(extractor.usernames(m))) for m in msgs])
    got = parse(res.stdout)
    assert [(u, k, f, c) for _, u, k, f, c in got] == want
    assert [ts for ts, *_ in got] == [
        int(m["timestamp"]) for m in msgs for _ in (sorted(extractor.usernames(m)) or [0])
    ]


def test_closed_pipe_exits_zero(redis_url: str, prefix: str, examples: list[Any]) -> None:
    stream = popen_cli("gource", "--redis-url", redis_url, "--key-prefix", prefix)
    try:
        wait_for(lambda: subscribers(redis_url, prefix) >= 1, 30, what="gource subscribed")
        items = [blink_item(ex.body, ["u"], time.time()) for ex in examples[:3]]

        async def pub(batch: list[dict[str, Any]]) -> None:
            st = Store.from_url(redis_url, prefix=prefix)
            await publish_blink(st, batch)
            await st.close()

        asyncio.run(pub(items[:1]))
        assert stream.stdout is not None
        first = stream.stdout.readline()
        assert parse(first.decode())[0][1] == "u"
        stream.stdout.close()  # Gource went away
        # keep publishing until the writer notices the closed pipe
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while stream.poll() is None and time.monotonic() < deadline:
            asyncio.run(pub(items[1:]))
            time.sleep(0.2)
        _, err = finish(stream)
    finally:
        reap(stream)
    assert stream.returncode == 0, err
    assert "closed the pipe" in err and "Traceback" not in err


def test_sigterm_exits_zero_and_bad_usage_exits_two(redis_url: str, prefix: str) -> None:
    stream = popen_cli("gource", "--redis-url", redis_url, "--key-prefix", prefix)
    try:
        wait_for(lambda: subscribers(redis_url, prefix) >= 1, 30, what="gource subscribed")
        stream.send_signal(signal.SIGTERM)
        out, err = finish(stream)
    finally:
        reap(stream)
    assert stream.returncode == 0, err
    assert out == b""
    res = run_cli("gource", "--no-follow", timeout=60)
    assert res.returncode == 2 and "--no-follow needs --since" in res.stderr
    res = run_cli("gource", "--since", "-5", timeout=60)
    assert res.returncode == 2 and "must be >= 0" in res.stderr
