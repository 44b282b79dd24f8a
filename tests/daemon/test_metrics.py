"""The listener's ``/metrics`` and ``/healthz`` against a real replay.

A real ``python -m listener listen`` subprocess (real Redis, real ZeroMQ) counts
the recorded corpus published by ``python -m listener replay``; ``/metrics`` is
parsed with prometheus-client's own text parser and its counters are compared
with ``fedmsg-wallboard snapshot --json`` (what is in Redis) and with the messages
sent.  Malformed frames come from a real PUB socket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.common import CORPUS, ROOT, TIMEOUT_FACTOR, free_port, run_cli, wait_for

STREAM = CORPUS / "fedmsg_sample_datanommer_stream.jsonl"
CORPUS_MESSAGES = 25
CORPUS_USERS = 7  # distinct usernames in the corpus (shared/corpus/README.md)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` parsed by prometheus-client: ``{name{label=value}: value}``."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    return status, json.loads(body)


class Listener:
    """``python -m listener listen`` on a free endpoint with a free metrics port."""

    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.redis_url = redis_url
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.metrics_port = free_port()
        self.key_prefix = f"m{uuid.uuid4().hex[:8]}"
        self.stderr_path = tmp / "listener.err"
        # libzmq backs off reconnecting up to reconnect_ivl_max_ms (10 s by default)
        # while no publisher is bound; each replay binds anew, so keep it short
        config = tmp / "wallboard.toml"
        config.write_text("reconnect_ivl_max_ms = 200\n", encoding="utf-8")
        # the child has its own copy of the descriptor: ours is closed at once
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "listener",
                    "listen",
                    "--config",
                    str(config),
                    "--redis-url",
                    redis_url,
                    "--endpoint",
                    self.endpoint,
                    "--metrics-port",
                    str(self.metrics_port),
                    "--key-prefix",
                    self.key_prefix,
                    "--state-dir",
                    str(tmp / "state"),
                    "--fedmsg-config",
                    str(ROOT / "fedmsg.d"),
                    "--step",
                    "0.5",
                ],
                cwd=str(ROOT),
                env=dict(os.environ),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

        def up() -> bool:
            assert self.proc.poll() is None, self.stderr
            try:
                return healthz(self.metrics_port)[0] == 200
            except OSError:
                return False

        try:
            wait_for(up, 30, interval=0.2, what="listener /healthz")
        except BaseException:
            self.stop()
            raise

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def wait_metric(self, name: str, value: float, timeout: float = 30) -> dict[str, float]:
        def reached() -> dict[str, float] | bool:
            try:
                m = self.metrics()
            except OSError:  # a scrape that timed out on a loaded machine: retry
                return False
            return m.get(name) == value and m

        return wait_for(
            reached,
            timeout,
            interval=0.1,
            what=f"{name} == {value}",
        )

    def replay(self, *extra: str) -> None:
        r = run_cli(
            "replay",
            str(STREAM),
            "--endpoint",
            self.endpoint,
            "--wait-timeout",
            "20",
            *extra,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert f"published {CORPUS_MESSAGES} messages" in r.stderr

    def snapshot(self) -> dict[str, Any]:
        r = run_cli(
            "snapshot",
            "--redis-url",
            self.redis_url,
            "--key-prefix",
            self.key_prefix,
            "--window",
            "3600",
            "--json",
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def stop(self) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(30 * TIMEOUT_FACTOR)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def listener(redis_url: str, tmp_path: Path) -> Iterator[Listener]:
    lst = Listener(redis_url, tmp_path)
    yield lst
    lst.stop()


def test_metrics_match_the_snapshot_after_a_replay(listener: Listener) -> None:
    before = listener.metrics()
    assert before["fedmsg_wallboard_received_total"] == 0
    assert before["fedmsg_wallboard_redis_up"] == 1

    listener.replay("--rebase-time")
    m = listener.wait_metric("fedmsg_wallboard_counted_total", CORPUS_MESSAGES)
    snap = listener.snapshot()
    assert snap["messages"] == CORPUS_MESSAGES
    assert m["fedmsg_wallboard_counted_total"] == snap["messages"]
    assert m["fedmsg_wallboard_received_total"] == CORPUS_MESSAGES
    assert m["fedmsg_wallboard_accepted_total"] == CORPUS_MESSAGES
    assert m["fedmsg_wallboard_duplicates_total"] == 0
    # the replay numbers each recorded publisher's messages 1, 2, ...: no false gaps
    assert m["fedmsg_wallboard_gaps_total"] == 0
    assert not [k for k in m if k.startswith("fedmsg_wallboard_rejected_total")]
    assert m["fedmsg_wallboard_window_messages{window_s=3600}"] == snap["messages"]
    assert m["fedmsg_wallboard_window_users{window_s=3600}"] == snap["users"] == CORPUS_USERS
    assert m["fedmsg_wallboard_pending"] == 0
    assert m["fedmsg_wallboard_flushes_total"] >= 1
    assert m["fedmsg_wallboard_flush_seconds"] > 0
    flushes = m["fedmsg_wallboard_flushes_total"]
    assert m["fedmsg_wallboard_flush_duration_seconds_count"] == flushes
    assert m["fedmsg_wallboard_flush_duration_seconds_bucket{le=+Inf}"] == flushes
    assert 0 < m["fedmsg_wallboard_flush_duration_seconds_sum"] < flushes * 10
    assert m["process_resident_memory_bytes"] > 0 and m["process_cpu_seconds_total"] > 0
    assert any(k.startswith("python_gc_objects_collected_total") for k in m)
    build = [k for k in m if k.startswith("fedmsg_wallboard_build_info")]
    assert len(build) == 1 and "component=listener" in build[0] and m[build[0]] == 1
    # OpenMetrics for a scraper that asks for it
    req = urllib.request.Request(
        f"http://127.0.0.1:{listener.metrics_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.read().decode().endswith("# EOF\n")
    assert m["fedmsg_wallboard_redis_errors_total"] == 0
    assert abs(m["fedmsg_wallboard_last_message_timestamp_seconds"] - time.time()) < 60

    status, health = healthz(listener.metrics_port)
    assert status == 200
    assert health["live"] is health["ready"] is health["redis_ok"] is True
    assert health["counted"] == CORPUS_MESSAGES and health["received"] == CORPUS_MESSAGES
    assert 0 <= health["last_message_age_s"] < 60
    assert 0 <= health["lag_s"] < 60
    # the replay has unbound: the link goes dead (<= 5 s), reported but still ready
    # (restarting the listener would not bring a publisher back)
    status, health = wait_for(
        lambda: (h := healthz(listener.metrics_port))[1]["bus_state"] == "dead" and h,
        30,
        interval=0.3,
        what="bus_state dead",
    )
    assert status == 200 and health["ready"] is True

    # the same file again: same msg_ids, all duplicates, nothing counted twice
    listener.replay("--rebase-time")
    m = listener.wait_metric("fedmsg_wallboard_duplicates_total", CORPUS_MESSAGES)
    assert m["fedmsg_wallboard_received_total"] == 2 * CORPUS_MESSAGES
    assert m["fedmsg_wallboard_counted_total"] == CORPUS_MESSAGES
    assert listener.snapshot()["messages"] == CORPUS_MESSAGES

    # malformed frames from a real PUB socket: counted by reason, never counted
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(listener.endpoint)
    try:
        topic = b"org.fedoraproject.prod.wallboard.test"

        def first_arrived() -> bool:  # republish until the SUB has reconnected
            pub.send_multipart([topic, b"{not json"])
            return listener.metrics().get("fedmsg_wallboard_rejected_total{reason=bad_json}", 0) > 0

        wait_for(first_arrived, 20, interval=0.2, what="first malformed frame")
        time.sleep(0.3)  # let republished copies still in flight arrive
        bad_json = listener.metrics()["fedmsg_wallboard_rejected_total{reason=bad_json}"]
        for _ in range(5):
            pub.send_multipart([topic, b"[1, 2, 3]"])
        for _ in range(3):
            pub.send_multipart(
                [topic, json.dumps({"topic": topic.decode(), "msg": {}, "timestamp": "x"}).encode()]
            )
        m = listener.wait_metric("fedmsg_wallboard_rejected_total{reason=bad_timestamp}", 3)
    finally:
        pub.close()
        ctx.term()
    assert m["fedmsg_wallboard_rejected_total{reason=not_object}"] == 5
    assert m["fedmsg_wallboard_rejected_total{reason=bad_json}"] == bad_json
    assert m["fedmsg_wallboard_received_total"] == 2 * CORPUS_MESSAGES + bad_json + 5 + 3
    assert m["fedmsg_wallboard_counted_total"] == CORPUS_MESSAGES

    assert listener.stop() == 0
    log = listener.stderr
    # bad messages are logged at WARNING, the 1st, 10th, 100th... of each reason
    # (listener.core.lograte.is_log_milestone); counted ones are not logged at INFO
    from listener.core.lograte import is_log_milestone

    milestones = sum(is_log_milestone(k) for k in range(1, int(bad_json) + 1))
    assert log.count("WARNING listener.core.intake: rejected") == milestones + 1 + 1
    assert "5 rejected as not_object" not in log  # the 5th: DEBUG
    first_id = json.loads(STREAM.read_text().splitlines()[0])["msg"]["msg_id"]  # an envelope
    assert first_id not in log


@pytest.mark.faults
def test_healthz_and_metrics_while_redis_is_down(listener: Listener, redis_server: Any) -> None:
    """Redis stops: /healthz says not ready (503) but live; pending messages and
    Redis errors show on /metrics; after Redis is back everything is counted."""
    redis_server.stop()
    try:
        status, health = wait_for(
            lambda: (h := healthz(listener.metrics_port))[0] == 503 and h, 15, what="503"
        )
        assert health["live"] is True and health["redis_ok"] is False
        assert health["ready"] is False
        listener.replay("--rebase-time")
        m = wait_for(
            lambda: (x := listener.metrics())["fedmsg_wallboard_redis_errors_total"] > 0 and x,
            20,
            what="a failed flush",
        )
        assert m["fedmsg_wallboard_redis_up"] == 0
        assert m["fedmsg_wallboard_pending"] + m["fedmsg_wallboard_counted_total"] <= 25
        assert m["fedmsg_wallboard_accepted_total"] == CORPUS_MESSAGES
    finally:
        redis_server.start()  # same port
    m = listener.wait_metric("fedmsg_wallboard_counted_total", CORPUS_MESSAGES, timeout=30)
    assert m["fedmsg_wallboard_redis_up"] == 1 and m["fedmsg_wallboard_pending"] == 0
    status, health = wait_for(
        lambda: (h := healthz(listener.metrics_port))[0] == 200 and h, 15, what="200"
    )
    assert health["ready"] is True
    assert listener.stop() == 0


def test_a_metrics_port_in_use_exits_69_naming_the_port(redis_url: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        prefix = f"m{uuid.uuid4().hex[:8]}"
        r = run_cli(
            "listen",
            "--redis-url",
            redis_url,
            "--key-prefix",
            prefix,
            "--endpoint",
            f"tcp://127.0.0.1:{free_port()}",
            "--metrics-port",
            str(port),
            "--state-dir",
            str(tmp_path / "state"),
            "--fedmsg-config",
            str(ROOT / "fedmsg.d"),
            timeout=60,
        )
    assert r.returncode == 69, r.stderr
    assert f"metrics port 127.0.0.1:{port}: Address already in use" in r.stderr
    assert "Traceback" not in r.stderr
    # its writer claim is released: a restart on a free port need not wait 15 s for it
    import redis

    assert redis.Redis.from_url(redis_url).exists(f"{{{prefix}}}:writer") == 0
