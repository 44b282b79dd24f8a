"""Today's Fedora bus in the tests: the corpus of real AMQP messages
(``shared/corpus/amqp/today_bus.jsonl``, see its README) and the users each one
is expected to count for.

* :func:`today_records`: the corpus path and its records (skips when absent;
  fails under CI, where ``shared/`` is always laid beside the clone).
* :func:`expected_users`: per record, the corpus' ``expected_usernames`` where it
  states them; else the AMQP input's rule computed in-process: the
  ``fedora_messaging_user_*`` headers, else the schema's ``usernames`` (the
  record published as ``amqp-replay --native`` publishes it), else fedmsg.meta.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from listener.core.users import UserExtractor, load_fedmsg_config
from listener.inputs.amqp.schemas import SchemaUsers
from listener.inputs.amqp.wire import Decoded, pick_users, to_fedmsg
from listener.tools.amqp_replay import native_headers, native_id, schema_names
from tests.helpers.common import CORPUS

TODAY_BUS = CORPUS / "amqp" / "today_bus.jsonl"


def today_records() -> tuple[Path, list[dict[str, Any]]]:
    """``(path, records)`` of the today's-bus corpus."""
    if not TODAY_BUS.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{TODAY_BUS} is missing")
        pytest.skip(f"{TODAY_BUS} is missing")
    records = [json.loads(line) for line in TODAY_BUS.read_text().splitlines() if line.strip()]
    return TODAY_BUS, records


def decode(
    rec: dict[str, Any], index: int, names: dict[str, str] | None = None
) -> tuple[Decoded, dict[str, Any]]:
    """A record as the AMQP input decodes it once published natively:
    ``(decoded, headers)``."""
    now = datetime.datetime.now(datetime.UTC)
    headers = native_headers(rec, now, names if names is not None else schema_names())
    decoded = to_fedmsg(
        rec["topic"], native_id(rec, index), headers, orjson.dumps(rec["body"]), now.timestamp()
    )
    assert isinstance(decoded, Decoded)
    return decoded, headers


def expected_users(records: list[dict[str, Any]]) -> list[frozenset[str]]:
    """The users each record counts for (module docstring)."""
    extractor = UserExtractor(load_fedmsg_config(None))
    schemas = SchemaUsers()
    names = schema_names()
    out = []
    for i, rec in enumerate(records):
        if rec.get("expected_usernames") is not None:
            out.append(frozenset(rec["expected_usernames"]))
            continue
        decoded, headers = decode(rec, i, names)
        users = pick_users(decoded, headers, schemas)
        if users is None:
            users = extractor.usernames(decoded.body)
        out.append(frozenset(users))
    return out
