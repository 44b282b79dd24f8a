"""Real recorded Fedora messages: the examples shipped with fedmsg_meta, and files.

``fedmsg_meta_fedora_infrastructure`` ships ~557 real bus messages as the ``msg``
attribute of its ``tests/`` classes, each with the usernames fedmsg.meta must
find (``expected_usernames``); 553 of them are distinct (the rest are copies
between test classes): those are loaded here, at run time (not copied).
Some examples lack a ``msg_id``: those get a stable one derived from their test
class's name (``example-<sha1>``) so a replay is de-duplicated like real traffic; an
example that reuses another's ``msg_id`` with different content gets a suffix, also
from its class's name.  Not from the content: one example
(``TestMeetingReminder``) puts the import time into its message, so its content
differs in every process, and an id derived from it would let a second replay of
the examples count it again.

The bodies are copied through JSON, so they give the users a bus message gives.
fedoratagger's processor drops an anonymous vote's user with ``user is
'anonymous'``, which only the interned literal of the test module passes: off the
wire (and in datagrepper's ``users``, and in the seed's own study) an anonymous vote
names a user "anonymous", and so it does here, in memory too.  Its two anonymous
examples expect no user; the other expectations are unchanged.

Files: JSONL (one fedmsg envelope per line, or one wrapper record per line as in
the test corpus of prod messages from datanommer: see :func:`unwrap_record`) or a
datagrepper ``/raw`` JSON page (``{"raw_messages": [...]}``; datagrepper API).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from listener.core.errors import InputError


@dataclass(frozen=True)
class Example:
    """One shipped example: the fedmsg body and the usernames its test expects.

    ``expected_usernames`` is None when the test does not state them.
    ``name`` is the test class name.
    """

    name: str
    body: dict[str, Any]
    expected_usernames: frozenset[str] | None


def builtin_examples() -> list[Example]:
    """All distinct example messages of fedmsg_meta_fedora_infrastructure's tests.

    Returns:
        Examples in a stable order (by class name), one per distinct message; each
        body is a copy made through JSON (as off the wire: see below) with a
        ``msg_id`` (original, or ``example-<sha1>`` of the class name), the same in
        every process.

    Raises:
        InputError: the tests package cannot be imported.
    """
    try:
        # imported here: fedmsg_meta's processors load the fedmsg config at import
        import fedmsg_meta_fedora_infrastructure.tests as tests_pkg
        from fedmsg.tests.test_meta import Base
    except Exception as exc:  # pragma: no cover - depends on the install
        raise InputError(f"cannot import fedmsg_meta tests: {exc}") from exc
    seen: dict[str, Example] = {}
    used_ids: set[str] = set()
    for name in sorted(vars(tests_pkg)):
        cls = getattr(tests_pkg, name)
        if not (inspect.isclass(cls) and issubclass(cls, Base)):
            continue
        msg = getattr(cls, "msg", None)
        if not isinstance(msg, dict) or not isinstance(msg.get("topic"), str):
            continue
        # through JSON, as the bus and every file deliver it, not a deep copy: a
        # processor that compares with ``is`` (fedoratagger's ``user is
        # 'anonymous'``) sees the test module's interned literal in memory, and a
        # fresh string off the wire; the examples must count as the wire does
        body = json.loads(json.dumps(msg))
        digest = hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
        if digest in seen:
            continue
        named = hashlib.sha1(name.encode()).hexdigest()
        if not isinstance(body.get("msg_id"), str) or not body.get("msg_id"):
            body["msg_id"] = f"example-{named}"
        elif body["msg_id"] in used_ids:
            # ~120 examples are edited copies of another test's message that keep
            # its msg_id; on a real bus they would be distinct messages.
            body["msg_id"] = f"{body['msg_id']}-{named[:12]}"
        used_ids.add(body["msg_id"])
        body.setdefault("i", 1)
        body.setdefault("username", "fedmsg")
        exp = getattr(cls, "expected_usernames", None)
        expected = frozenset(exp) if isinstance(exp, (set, frozenset)) else None
        seen[digest] = Example(name, body, expected)
    return list(seen.values())


def unwrap_record(obj: dict[str, Any]) -> dict[str, Any]:
    """The fedmsg envelope of one JSONL record.

    A record is either the envelope itself, or a wrapper that keeps the whole
    envelope under ``msg`` beside derived fields (the stream format of the test
    corpus, prod messages from datanommer: ``{"seq", "topic", "msg": <envelope>,
    "processor", "usernames", "packages"}``).  A wrapper is recognised by having
    no ``timestamp`` while its ``msg`` has ``topic``, ``msg`` and ``timestamp``.
    """
    inner = obj.get("msg")
    if (
        "timestamp" not in obj
        and isinstance(inner, dict)
        and "topic" in inner
        and "msg" in inner
        and "timestamp" in inner
    ):
        return inner
    return obj


def load_file(path: str | Path) -> list[dict[str, Any]]:
    """Read fedmsg bodies from a JSONL file or a datagrepper ``/raw`` JSON page.

    Returns:
        The bodies in file order (a datagrepper page is returned oldest first,
        whatever its ``order``).  JSONL lines that carry extra fields (``seq``,
        ``usernames``...) are returned as they are.

    Raises:
        InputError: unreadable file, invalid JSON, a JSONL line without a
            ``topic`` (not a fedmsg message), or no messages in it.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {p}: {exc}") from exc
    stripped = text.lstrip()
    bodies: list[dict[str, Any]] = []
    if stripped.startswith("{") and '"raw_messages"' in text[:200000]:
        try:
            page = json.loads(text)
        except ValueError:
            page = None
        if isinstance(page, dict) and isinstance(page.get("raw_messages"), list):
            bodies = [m for m in page["raw_messages"] if isinstance(m, dict)]
            for k, m in enumerate(bodies):
                _check_timestamp(m, f"{p}: raw_messages[{k}]")
            bodies.sort(key=lambda m: float(m.get("timestamp") or 0))
            if not bodies:
                raise InputError(f"{p}: datagrepper page without messages")
            return bodies
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            # orjson, as the bus decodes: strict JSON (a lone surrogate escape such
            # as "\ud800" is refused here, not when the message is encoded again)
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{p}:{lineno}: invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{p}:{lineno}: not a JSON object")
        body = unwrap_record(obj)
        topic = body.get("topic")
        if not isinstance(topic, str) or not topic:
            # what every message needs to be published or counted; a missing
            # timestamp is left to the caller (replay --rebase-time sets one)
            raise InputError(f"{p}:{lineno}: not a fedmsg message (no topic)")
        _check_timestamp(body, f"{p}:{lineno}")
        bodies.append(body)
    if not bodies:
        raise InputError(f"{p}: no messages")
    return bodies


def _check_timestamp(body: dict[str, Any], where: str) -> None:
    """A ``timestamp``, when there is one, is a finite number (UNIX seconds).

    Raises:
        InputError: naming ``where`` (``file:line``).
    """
    ts = body.get("timestamp")
    if ts is None:
        return
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise InputError(f"{where}: timestamp {str(ts)[:40]!r} is not a number of seconds")


def iter_sources(
    files: list[str], builtin: bool
) -> Iterator[dict[str, Any]]:  # pragma: no cover - thin
    """Bodies from the given files, then the built-in examples if asked."""
    for f in files:
        yield from load_file(f)
    if builtin:
        for ex in builtin_examples():
            yield ex.body
