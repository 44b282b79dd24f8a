"""Today's schema packages (the ``fedora`` extra) on the corpus messages of their
topics, the order users are found in, the ticker's text, and the category rule on
every topic of today's bus.

No broker: each record is decoded as the AMQP input decodes it once published by
``amqp-replay --native`` (:func:`tests.helpers.todaybus.decode`).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter, defaultdict
from importlib.metadata import entry_points
from typing import Any

import orjson
import pika
import pytest
from fedora_messaging.message import Message

from listener.core.config import Config
from listener.core.envelope import category_of
from listener.core.intake import Intake
from listener.core.users import UserExtractor, load_fedmsg_config
from listener.inputs.amqp import AmqpInput, AmqpSettings
from listener.inputs.amqp.schemas import SchemaUsers
from listener.inputs.amqp.wire import pick_users
from listener.tools.amqp_replay import native_id, schema_names
from tests.helpers.todaybus import decode, expected_users, today_records

# -- which package answers for which record ----------------------------------------

#: ``{schema name: entry point}`` of the installed schema packages.
CLASSES = {ep.name: ep for ep in entry_points(group="fedora.messages")}


def _packages() -> dict[str, set[str]]:
    """``{schema name: distributions that register it}`` (``discourse.event.v1``
    is registered by discourse2fedmsg-messages and webhook-to-fedora-messaging-
    messages; fedora-messaging and the input load the last one listed)."""
    out: dict[str, set[str]] = defaultdict(set)
    for ep in entry_points(group="fedora.messages"):
        out[ep.name].add(ep.dist.name if ep.dist is not None else "?")
    return out


def _by_package() -> dict[str, list[tuple[int, dict[str, Any]]]]:
    _, records = today_records()
    names, dists = schema_names(), _packages()
    out: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for i, rec in enumerate(records):
        _, headers = decode(rec, i, names)
        schema = headers.get("fedora_messaging_schema")
        for dist in dists.get(schema, ()):
            out[dist].append((i, rec))
    return dict(out)


#: The schema packages with messages in the corpus (checked below to be all of
#: them): what fedora-messaging's wheel names them.
CORPUS_PACKAGES = [
    "anitya_schema",
    "bodhi-messages",
    "bugzilla2fedmsg-schema",
    "discourse2fedmsg-messages",
    "fedocal-messages",
    "fedora-messaging-git-hook-messages",
    "fedorainfra-ansible-messages",
    "journal-to-fedora-messaging-messages",
    "kerneltest-messages",
    "koji-fedoramessaging-messages",
    "koschei-messages",
    "mediawiki-messages",
    "meetbot-messages",
    "mirrormanager-messages",
    "noggin-messages",
    "tahrir-messages",
    "webhook-to-fedora-messaging-messages",
]


def test_every_schema_of_the_corpus_is_installed() -> None:
    """Every ``fedora_messaging_schema`` of the corpus has its package installed
    (the ``fedora`` extra), and the packages are the ones tested below."""
    _, records = today_records()
    names = schema_names()
    missing = {
        r["schema"]
        for r in records
        if r["schema"] and not (names.get(r["schema"]) or names.get(r["schema"].split(" ")[0]))
    }
    assert missing == {"infragit.receive.v1"}  # no package on PyPI registers it
    assert sorted(_by_package()) == sorted(CORPUS_PACKAGES)


@pytest.mark.parametrize("package", CORPUS_PACKAGES)
def test_schema_package_on_the_corpus_messages_of_its_topics(package: str) -> None:
    """For each corpus message of this package's schemas: users from the headers
    when there are any, else from the schema's ``usernames``, equal to what the
    corpus states; the ticker's text is the schema's ``summary`` where it has one;
    ``agent_name`` / ``packages`` are passed on; nothing raises."""
    schemas = SchemaUsers()
    names = schema_names()
    records = _by_package()[package]
    assert records
    summaries = 0
    for i, rec in records:
        decoded, headers = decode(rec, i, names)
        users = pick_users(decoded, headers, schemas)
        assert users is not None, rec["topic"]  # headers or the schema: never fedmsg.meta
        if rec["expected_usernames"] is not None:
            assert set(users) == set(rec["expected_usernames"]), rec["source"]
        describe = schemas.describe(decoded, headers)
        assert describe is not None
        info = describe()
        cls = CLASSES[headers["fedora_messaging_schema"]].load()
        with warnings.catch_warnings():  # anitya's v1 classes warn their publishers
            warnings.simplefilter("ignore", DeprecationWarning)
            msg = cls(body=rec["body"], topic=rec["topic"])
        if cls.summary is not Message.summary:
            assert info["summary"] == msg.summary and info["summary"].strip()
            summaries += 1
        else:
            assert info["summary"] is None
        if cls.agent_name is not Message.agent_name:
            assert info["agent"] == msg.agent_name
        assert info["packages"] == [p for p in msg.packages if isinstance(p, str)]
    assert schemas.errors == 0
    assert summaries >= 1 or package in ("fedorainfra-ansible-messages",)


def test_users_headers_first_then_schema_then_fedmsg_meta() -> None:
    """The order on the whole corpus: 2 messages name their users in headers, 100
    through their schema, 68 (no installed schema) through fedmsg.meta; the 67
    whose users the corpus states all match."""
    _, records = today_records()
    schemas = SchemaUsers()
    names = schema_names()
    sources: Counter[str] = Counter()
    for i, rec in enumerate(records):
        decoded, headers = decode(rec, i, names)
        from_headers = any(k.startswith("fedora_messaging_user_") for k in headers)
        users = pick_users(decoded, headers, schemas)
        sources["headers" if from_headers else "schema" if users is not None else "meta"] += 1
    assert sources == {"headers": 2, "schema": 100, "meta": 68}
    assert sum(r["expected_usernames"] is not None for r in records) == 67
    got = expected_users(records)
    for rec, users in zip(records, got, strict=True):
        if rec["expected_usernames"] is not None:
            assert users == frozenset(rec["expected_usernames"])


def test_a_schema_that_raises_on_an_odd_body_is_counted_and_falls_back() -> None:
    """bodhi's ``usernames``/``summary`` raise on a body without its fields: the
    input counts the error and falls back to fedmsg.meta, never crashes."""
    _, records = today_records()
    i, rec = next(
        (i, r) for i, r in enumerate(records) if r["schema"] == "bodhi.update.request.testing.v1"
    )
    odd = dict(rec, body={"unexpected": True}, headers={}, id="odd-1")
    schemas = SchemaUsers()
    decoded, headers = decode(odd, i)
    assert pick_users(decoded, headers, schemas) is None
    describe = schemas.describe(decoded, headers)
    assert describe is not None and describe()["summary"] is None
    assert schemas.errors >= 2
    extractor = UserExtractor(load_fedmsg_config(None))
    cfg = Config(bus="amqp")
    intake = Intake(cfg, extractor, time.time)
    inp = AmqpInput(cfg, intake, _NoWriter(), AmqpSettings(url="amqp://127.0.0.1:1/"))
    props = pika.BasicProperties(headers=headers, message_id=native_id(odd, i))
    assert inp.handle(odd["topic"], props, b'{"unexpected": true}', time.time())
    blink = intake.take_blink()
    assert blink is not None
    assert blink["msgs"][0]["summary"] == extractor.subtitle(decoded.body)
    assert inp.stats.users_from == {"fedmsg.meta": 1}


class _NoWriter:
    """A writer that writes nothing (``handle`` never asks it)."""

    def written(self, accepted: int) -> bool:
        return False

    async def flush(self) -> None:
        return None


def test_the_ticker_shows_the_schemas_summary_agent_and_packages() -> None:
    """A bodhi message through the AMQP input: the blink's ``summary`` is the
    schema's (fedmsg.meta's 2021 processors do not know this topic), with
    ``agent`` and ``packages``."""
    _, records = today_records()
    i, rec = next(
        (i, r) for i, r in enumerate(records) if r["schema"] == "bodhi.update.request.revoke.v1"
    )
    decoded, headers = decode(rec, i)
    cfg = Config(bus="amqp")
    extractor = UserExtractor(load_fedmsg_config(None))
    intake = Intake(cfg, extractor, time.time)
    inp = AmqpInput(cfg, intake, _NoWriter(), AmqpSettings(url="amqp://127.0.0.1:1/"))
    props = pika.BasicProperties(headers=headers, message_id=native_id(rec, i))
    assert inp.handle(rec["topic"], props, orjson.dumps(rec["body"]), time.time())
    blink = intake.take_blink()
    assert blink is not None
    shown = blink["msgs"][0]
    assert shown["summary"].startswith("lmacken revoked eclipseo's update FEDORA-2019-d64d0caab3")
    assert shown["agent"] == "lmacken"
    assert shown["packages"] == ["golang-github-SAP-go-hdb"]
    assert shown["users"] == ["eclipseo", "lmacken"]
    assert inp.stats.users_from == {"schema": 1}


# -- categories ------------------------------------------------------------------


def test_category_rule_on_every_topic_of_todays_bus() -> None:
    """Every topic of the corpus: the category is the service token after the
    environment (``prod``), never a fragment of the event; 26 categories, as the
    corpus' README counts them."""
    _, records = today_records()
    topics = {r["topic"] for r in records}
    assert len(topics) == 93
    for topic in topics:
        parts = topic.split(".")
        env = parts.index("prod")
        assert category_of(topic) == parts[env + 1], topic
        assert category_of(topic) not in parts[env + 2 :], topic
    cats = {category_of(t) for t in topics}
    assert len(cats) == 26
    assert {"bodhi", "buildsys", "anitya", "copr", "pagure", "forgejo", "discourse"} <= cats


@pytest.mark.parametrize(
    ("topic", "category"),
    [
        (
            "org.fedoraproject.prod.bodhi.update.status.testing.koji-build-group.build.complete",
            "bodhi",
        ),
        ("io.pagure.prod.pagure.pull-request.new", "pagure"),
        ("org.release-monitoring.prod.anitya.project.version.update.v2", "anitya"),
        ("org.centos.prod.ci.pipeline.allpackages-build.complete", "ci"),
        ("org.centos.stage.ci.pipeline.image.running", "ci"),
        ("org.fedoraproject.stg.buildsys.task.state.change", "buildsys"),
        ("/topic/VirtualTopic.eng.ci.koji-build.test.complete", "ci"),
        # no environment: no service to name, not the event's fragment
        ("pungi.compose.status.change", "Unclassified"),
        ("org.fedoraproject.prod", "Unclassified"),
        ("org.fedoraproject.prod..x", "Unclassified"),
    ],
)
def test_category_rule(topic: str, category: str) -> None:
    assert category_of(topic) == category
