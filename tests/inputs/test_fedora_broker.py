"""The AMQP input against a broker shaped like Fedora's, fed with today's bus.

The broker (``fedora_broker``, :mod:`listener.tools.fedora_broker`): Debian's
RabbitMQ 3.10, TLS only, a throwaway CA made by openssl, client-certificate login
(SASL EXTERNAL, ``rabbitmq_auth_mechanism_ssl``), vhost ``/public_pubsub``, user
``fedora`` allowed UUID-named queues bound to ``amq.topic`` only.  The messages:
the today's-bus corpus (``shared/corpus/amqp/today_bus.jsonl``, 170 real messages,
93 topics), published as native messages (body alone, recorded headers,
``fedora_messaging_schema``) by the user ``publisher`` with fedora-messaging's
publish API (``amqp-replay --native``, a subprocess: fedora-messaging keeps one
publisher per process).

The expected users of a message: the corpus' ``expected_usernames`` where it
states them (67 messages); else the AMQP input's rule computed in-process
(headers, schema, fedmsg.meta; :func:`tests.helpers.todaybus.expected_users`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest

from listener.core.config import Config
from listener.core.envelope import category_of
from listener.core.errors import EXIT_CONFIG, ConfigError
from listener.core.intake import Intake
from listener.core.longtail import longtail
from listener.core.users import UserExtractor, load_fedmsg_config
from listener.daemon.consumer import Consumer
from listener.inputs.amqp import AmqpInput, AmqpSettings, Backoff
from listener.inputs.amqp.settings import UUID_NAME
from listener.storage.store import Store
from listener.tools.amqp_replay import bridge_native
from listener.tools.fedora_broker import FedoraBroker, issue
from tests.helpers.common import ROOT, TIMEOUT_FACTOR, free_port, run_cli, wait_for
from tests.helpers.listener_proc import start_listener, stop_listener
from tests.helpers.todaybus import expected_users, today_records

# -- a listener process ----------------------------------------------------------


class Listen:
    """``python -m listener listen ...`` with its output collected."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.connected = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "listen", *args],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "AMQP connected" in line:
                self.connected.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def queue(self) -> str:
        line = next(ln for ln in self.lines if "AMQP connected" in ln)
        return line.split("queue ")[1].split()[0]

    def wait(self, timeout: float = 60) -> int:
        """Wait for it to exit by itself: its exit code."""
        try:
            return self.proc.wait(timeout * TIMEOUT_FACTOR)
        finally:
            self.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def docs_config(path: Path, broker: FedoraBroker, **changes: str) -> Path:
    """A wallboard.toml written as docs/AMQP.md says for Fedora's broker (this
    broker's host, port and certificates); ``changes`` replace settings."""
    t = broker.tls
    settings = {
        "bus": '"amqp"',
        "amqp_url": f'"{broker.url}"',
        "amqp_ca_cert": f'"{t / "ca.pem"}"',
        "amqp_certfile": f'"{t / "fedora.pem"}"',
        "amqp_keyfile": f'"{t / "fedora.key"}"',
        "amqp_bindings": '["#"]',
        "amqp_queue": '""',
    }
    settings.update(changes)
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    return path


def publish_corpus(broker: FedoraBroker, corpus: Path, *extra: str) -> str:
    """``amqp-replay --native`` as ``publisher`` (fedora-messaging's config file
    with its client certificate): its log."""
    env = {"FEDORA_MESSAGING_CONF": str(broker.publisher_conf())}
    res = run_cli("amqp-replay", "--native", str(corpus), *extra, timeout=180, env=env)
    assert res.returncode == 0, res.stderr
    return str(res.stderr)


def snapshot(redis_url: str, prefix: str) -> dict[str, Any]:
    res = run_cli(
        "snapshot", "--window", "3600", "--json", "--all-users",
        "--redis-url", redis_url, "--key-prefix", prefix,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


# -- today's bus, end to end ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_todays_corpus_counted_exactly_as_docs_configure_and_through_fedora_toml(
    fedora_broker: FedoraBroker, redis_url: str, tmp_path: Path
) -> None:
    """Two listeners on the Fedora-shaped broker, each on its own UUID queue: one
    configured as docs/AMQP.md says, one through ``FEDORA_MESSAGING_CONF`` (a
    fedora.toml of the same shape, no ``amqp_url``).  The corpus, published once,
    is counted exactly by both: per topic, per category, per user, and the
    longtail; every delivery is acknowledged."""
    corpus, records = today_records()
    users = expected_users(records)
    want_topics = Counter(r["topic"] for r in records)
    want_users: Counter[str] = Counter(u for us in users for u in us)
    docs = Listen(
        ["-c", str(docs_config(tmp_path / "wallboard.toml", fedora_broker)),
         "--redis-url", redis_url, "--key-prefix", "docs", "--step", "1"]
    )  # fmt: skip
    fm = Listen(
        ["--bus", "amqp", "--redis-url", redis_url, "--key-prefix", "fmconf", "--step", "1"],
        env={"FEDORA_MESSAGING_CONF": str(fedora_broker.listener_conf())},
    )
    try:
        for proc in (docs, fm):
            assert proc.connected.wait(90 * TIMEOUT_FACTOR), proc.output
            assert UUID_NAME.fullmatch(proc.queue()), proc.queue()
        log = publish_corpus(fedora_broker, corpus)
        assert f"published {len(records)} messages" in log
        for proc, prefix in ((docs, "docs"), (fm, "fmconf")):
            snap = wait_for(
                lambda p=prefix: (s := snapshot(redis_url, p))["messages"] >= len(records) and s,
                60,
                0.5,
                f"{prefix}: the corpus counted",
            )
            time.sleep(1.0)  # nothing more comes
            snap = snapshot(redis_url, prefix)
            assert snap["messages"] == len(records) == 170
            assert snap["topics_total"] == len(want_topics) == 93
            assert Counter(snap["categories"]) == Counter(
                category_of(t) for t in want_topics.elements()
            )
            assert dict(snap["top_users"]) == dict(want_users)
            assert snap["longtail"] == pytest.approx(longtail(want_users.values()))
            queue = proc.queue()
            wait_for(
                lambda q=queue: fedora_broker.queues().get(q) == (0, 0),  # type: ignore[misc]
                20,
                0.2,
                "every delivery acknowledged",
            )
        store_topics = asyncio_topics(redis_url, "docs")
        assert store_topics == want_topics
    finally:
        codes = [docs.stop(), fm.stop()]
    assert codes == [0, 0], docs.output + fm.output
    assert "Traceback" not in docs.output + fm.output


def asyncio_topics(redis_url: str, prefix: str) -> Counter[str]:
    """Every topic's count in the last hour, read from Redis (the snapshot shows
    the busiest ``top_topics`` only)."""

    async def read() -> Counter[str]:
        store = Store.from_url(redis_url, prefix=prefix)
        try:
            return (await store.read_window(3600, time.time() + 1)).topics
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_todays_corpus_over_zeromq_as_the_old_bridge_wrapped_it(
    redis_url: str, tmp_path: Path
) -> None:
    """The same corpus wrapped as fedmsg-migration-tools' ``amqp_to_zmq`` bridge
    put it on the ZeroMQ bus (``bridge_native``), replayed over ZeroMQ: the topic
    counts are the corpus' (as over AMQP); users there come from fedmsg.meta."""
    _, records = today_records()
    now = time.time()
    wrapped = tmp_path / "bridged.jsonl"
    wrapped.write_text(
        "".join(
            json.dumps(bridge_native(r, i, now - 60 + i * 0.1)) + "\n"
            for i, r in enumerate(records)
        )
    )
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "w.toml"
    config.write_text("")
    proc = start_listener(redis_url, endpoint, "zmqbridge", config, "--step", "1")
    try:
        res = run_cli(
            "replay", str(wrapped), "--endpoint", endpoint, "--wait-subscribers", "1",
            "--rate", "200", timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        wait_for(
            lambda: snapshot(redis_url, "zmqbridge")["messages"] >= len(records),
            60,
            0.5,
            "the bridged corpus counted",
        )
        assert asyncio_topics(redis_url, "zmqbridge") == Counter(r["topic"] for r in records)
    finally:
        out = stop_listener(proc)
    assert proc.returncode == 0, out


# -- configuration errors: one line naming the setting, exit 78 ------------------------


def _bad(broker: FedoraBroker, tmp: Path) -> dict[str, tuple[dict[str, str], str]]:
    t = broker.tls
    (tmp / "garbage.pem").write_text("not a certificate\n")
    return {
        "queue not a UUID": (
            {"amqp_queue": '"wallboard"'},
            "amqp_queue: 'wallboard' is not a UUID",
        ),
        "certificate missing": (
            {"amqp_certfile": f'"{tmp / "nope.pem"}"'},
            f"amqp_certfile: client certificate {tmp / 'nope.pem'} does not exist",
        ),
        "certificate unreadable": (
            {"amqp_certfile": f'"{tmp}"'},
            f"amqp_certfile: cannot read client certificate {tmp}",
        ),
        "certificate not PEM": (
            {"amqp_certfile": f'"{tmp / "garbage.pem"}"'},
            "amqp_certfile: " + str(tmp / "garbage.pem") + " is not a PEM certificate",
        ),
        "key missing": (
            {"amqp_keyfile": f'"{tmp / "nope.key"}"'},
            f"amqp_keyfile: client key {tmp / 'nope.key'} does not exist",
        ),
        "key of another certificate": (
            {"amqp_keyfile": f'"{t / "publisher.key"}"'},
            f"amqp_keyfile: {t / 'publisher.key'} is not the key of amqp_certfile",
        ),
        "certificate expired": (
            {
                "amqp_certfile": f'"{t / "fedora-expired.pem"}"',
                "amqp_keyfile": f'"{t / "fedora-expired.key"}"',
            },
            f"amqp_certfile: the certificate {t / 'fedora-expired.pem'} expired on",
        ),  # fmt: skip
        "wrong CA": (
            {"amqp_ca_cert": f'"{t / "wrong-ca.pem"}"'},
            f"amqp_ca_cert {t / 'wrong-ca.pem'}: the certificate of the broker "
            f"localhost:{broker.port} does not verify (self-signed certificate in "
            "certificate chain",
        ),
    }


BAD_CASES = [
    "queue not a UUID",
    "certificate missing",
    "certificate unreadable",
    "certificate not PEM",
    "key missing",
    "key of another certificate",
    "certificate expired",
    "wrong CA",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_listen_refuses_bad_tls_settings_in_one_line_exit_78(
    fedora_broker: FedoraBroker, redis_url: str, tmp_path: Path, case: str
) -> None:
    changes, message = _bad(fedora_broker, tmp_path)[case]
    config = docs_config(tmp_path / "wallboard.toml", fedora_broker, **changes)
    proc = Listen(["-c", str(config), "--redis-url", redis_url, "--key-prefix", "bad"])
    code = proc.wait(90)
    out = proc.output
    assert code == EXIT_CONFIG, out
    errors = [ln for ln in out.splitlines() if "configuration error" in ln]
    assert len(errors) == 1 and message in errors[0], out
    assert "Traceback" not in out and "pika" not in errors[0]


def _input(cfg: Config, settings: AmqpSettings, redis_url: str) -> tuple[AmqpInput, Store]:
    store = Store.from_url(redis_url, prefix=f"r{uuid.uuid4().hex[:6]}")
    intake = Intake(cfg, UserExtractor(load_fedmsg_config(None)), time.time)
    consumer = Consumer(cfg, intake, store)
    backoff = Backoff(0.05, 0.1, 0.0)
    return AmqpInput(cfg, intake, consumer, settings=settings, backoff=backoff), store


async def test_the_broker_itself_refuses_a_non_uuid_queue_and_an_expired_certificate(
    fedora_broker: FedoraBroker, redis_url: str
) -> None:
    """What the checks before connecting keep from happening, the broker refuses
    too (as Fedora's does): a queue not named by a UUID (``ACCESS_REFUSED``) and
    an expired client certificate (TLS alert); the input stops with a
    ConfigError naming the setting rather than retrying for ever."""
    t = fedora_broker.tls
    cfg = Config(bus="amqp")
    good = AmqpSettings(
        url=fedora_broker.url,
        ca_cert=str(t / "ca.pem"),
        certfile=str(t / "fedora.pem"),
        keyfile=str(t / "fedora.key"),
    )
    inp, store = _input(cfg, good, redis_url)
    try:
        inp.settings = dataclasses.replace(good, queue="wallboard")  # past the checks
        with pytest.raises(ConfigError) as err:
            await inp.run()
        assert str(err.value).startswith("amqp_queue 'wallboard': the broker refused it")
        assert (
            "access to queue 'wallboard' in vhost '/public_pubsub' refused for user 'fedora'"
            in (str(err.value))
        )
    finally:
        await store.close()
    inp, store = _input(cfg, good, redis_url)
    try:
        ctx = ssl.create_default_context(cafile=str(t / "ca.pem"))
        ctx.load_cert_chain(str(t / "fedora-expired.pem"), str(t / "fedora-expired.key"))
        inp.params.ssl_options = pika.SSLOptions(ctx, server_hostname="localhost")
        inp.settings = dataclasses.replace(good, certfile=str(t / "fedora-expired.pem"))
        with pytest.raises(ConfigError) as err:
            await inp.run()
        assert str(err.value) == (
            f"amqp_certfile: the broker localhost:{fedora_broker.port} refused the client "
            f"certificate {t / 'fedora-expired.pem'} (TLS alert: certificate expired)"
        )
    finally:
        await store.close()


# -- Fedora's own broker: --fedora and check-config ----------------------------------------


def test_check_config_fedora_verifies_the_shipped_files() -> None:
    res = run_cli("check-config", "--fedora")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    fedora = ROOT / "listener" / "fedora"
    assert out["bus"] == "fedora" and out["warnings"] == []
    assert out["amqp"] == {
        "url": "amqps://fedora:***@rabbitmq.fedoraproject.org/%2Fpublic_pubsub",
        "vhost": "/public_pubsub",
        "ca_cert": str(fedora / "cacert.pem"),
        "certfile": str(fedora / "fedora-cert.pem"),
        "keyfile": str(fedora / "fedora-key.pem"),
        "queue": "a fresh UUID per connection",
        "bindings": ["#"],
    }


def test_check_config_warns_30_days_before_a_certificate_expires(
    fedora_broker: FedoraBroker, tmp_path: Path
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = (fedora_broker.tls / "ca.pem", fedora_broker.tls / "ca.key")
    cert, key = issue(tmp_path, ca, "fedora", not_after=now + datetime.timedelta(days=10, hours=1))
    config = docs_config(
        tmp_path / "w.toml", fedora_broker, amqp_certfile=f'"{cert}"', amqp_keyfile=f'"{key}"'
    )
    res = run_cli("check-config", "-c", str(config))
    assert res.returncode == 0, res.stderr
    warnings = json.loads(res.stdout)["warnings"]
    assert warnings == [
        f"amqp_certfile: CN=fedora in {cert} expires on "
        f"{(now + datetime.timedelta(days=10, hours=1)):%Y-%m-%d} (10 days left)"
    ]
    assert warnings[0] in res.stderr and "WARNING" in res.stderr
    # fedora.toml's [tls], named as such when the URL comes from it
    empty = dict.fromkeys(("amqp_url", "amqp_certfile", "amqp_keyfile", "amqp_ca_cert"), '""')
    fm_conf = fedora_broker.listener_conf(tmp_path / "f.toml", "fedora-expired")
    res = run_cli(
        "check-config",
        "-c",
        str(docs_config(tmp_path / "x.toml", fedora_broker, **empty)),
        env={"FEDORA_MESSAGING_CONF": str(fm_conf)},
    )
    assert res.returncode == EXIT_CONFIG
    assert f"[tls] certfile of {tmp_path / 'f.toml'}: the certificate" in res.stderr
    assert "expired on" in res.stderr and "Traceback" not in res.stderr


def test_listen_fedora_is_one_command_from_the_shipped_files(redis_url: str) -> None:
    """``listen --fedora``: no other setting, nothing to fetch; it starts on Fedora's
    public broker (unreachable from here: it retries, never exits 78) and stops
    with 0 on SIGTERM."""
    proc = Listen(["--fedora", "--redis-url", redis_url, "--key-prefix", "fedora"])
    try:
        wait_for(
            lambda: "AMQP session to" in proc.output or "AMQP connected" in proc.output,
            60,
            0.2,
            "a first connection attempt",
        )
        assert proc.proc.poll() is None, proc.output
    finally:
        code = proc.stop()
    out = proc.output
    assert code == 0, out
    assert "listener ready: AMQP rabbitmq.fedoraproject.org/%2Fpublic_pubsub" in out
    assert "amqps://fedora:***@rabbitmq.fedoraproject.org/%2Fpublic_pubsub" in out
    assert "configuration error" not in out and "Traceback" not in out


async def test_a_refused_login_is_named_and_retried_not_fatal(
    fedora_broker: FedoraBroker, redis_url: str, tmp_path: Path, caplog: Any
) -> None:
    """A certificate the CA signed for a user the broker does not know (``CN=nobody``):
    the login is refused (SASL EXTERNAL); logged as an error naming ``amqp_url``,
    and retried (a booting broker refuses logins for a moment too)."""
    ca = (fedora_broker.tls / "ca.pem", fedora_broker.tls / "ca.key")
    cert, key = issue(tmp_path, ca, "nobody")
    settings = AmqpSettings(
        url=fedora_broker.url.replace("fedora:", "nobody:"),
        ca_cert=str(ca[0]),
        certfile=str(cert),
        keyfile=str(key),
    )
    inp, store = _input(Config(bus="amqp"), settings, redis_url)
    task = asyncio.create_task(inp.run())
    try:
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while inp.stats.reconnects < 2:
            assert time.monotonic() < deadline and not task.done(), caplog.text
            await asyncio.sleep(0.1)
        assert inp.stats.connects == 0
        assert (
            f"amqp_url: the broker localhost:{fedora_broker.port} refused the login of "
            f"amqps://nobody:***@localhost:{fedora_broker.port}/%2Fpublic_pubsub (Login was "
            "refused using authentication mechanism EXTERNAL." in caplog.text
        )
    finally:
        inp.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await inp.close()
        await store.close()
