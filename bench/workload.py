"""A realistic bus mix for the benchmarks: real messages as templates, Zipf users.

Templates are real Fedora messages: the ~553 shipped in
``fedmsg_meta_fedora_infrastructure``'s tests (:func:`listener.tools.examples.builtin_examples`)
and the 25 consecutive prod messages of ``shared/corpus`` (one minute of the real
bus, 2017-09-05).  In each template the usernames fedmsg.meta finds are replaced by
placeholders; every generated message gets users drawn from a Zipf-like
distribution (``P(rank k) ~ 1 / k**zipf_s``) over ``n_users`` users, a fresh
``msg_id``, a ``timestamp`` and the publisher's sequence number ``i``.  A template
is kept only if fedmsg.meta finds exactly the substituted users in it (checked
once, with the real processors), so the expected per-user counts are known
without running fedmsg.meta again.

Topic mix (:data:`TOPIC_MIX`): the real bus is dominated by koji (``buildsys``),
copr, dist-git (``git``) and bodhi: in the corpus minute buildsys is 13 of 25
messages and copr 5.  The weights below follow that; the remaining share is spread
evenly over the templates of every other category.
"""

from __future__ import annotations

import random
import re
from bisect import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import orjson

from listener.core.envelope import category_of
from listener.tools.examples import builtin_examples, load_file
from listener.tools.replay import wire_body

#: Share of messages per category; the rest (0.22) goes evenly to other templates.
TOPIC_MIX = {"buildsys": 0.40, "copr": 0.20, "git": 0.10, "bodhi": 0.08}

#: The corpus minute (real, consecutive prod messages), when present.
CORPUS_STREAM = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "corpus"
    / "fedmsg_sample_datanommer_stream.jsonl"
)

_SLOT = re.compile(rb'"@@(ID|TS|I|U\d+)@@"')


@dataclass(frozen=True)
class Template:
    """One real message with placeholders.

    Attributes:
        topic: the full topic (frame 1, bytes).
        category: datagrepper's category of the topic.
        fmt: the JSON body as a bytes ``%`` format with one ``%b`` per slot.
        slots: what fills each ``%b``: ``-1`` the msg_id, ``-2`` the timestamp,
            ``-3`` the sequence number ``i``, ``k >= 0`` the k-th user.
        n_users: how many distinct users the message is about (0..n).
        identity: the publishing process as the bus tells them apart (envelope
            ``username``, ``certificate``): each has its own ``i`` sequence.
    """

    topic: bytes
    category: str
    fmt: bytes
    slots: tuple[int, ...]
    n_users: int
    identity: tuple[str, str]

    def render(self, msg_id: str, ts: float, i: int, users: Sequence[str]) -> bytes:
        """The JSON body with the slots filled (``users[k]`` for user slot ``k``)."""
        return self.fmt % tuple(_fill(s, msg_id, ts, i, users) for s in self.slots)


def _fill(slot: int, msg_id: str, ts: float, i: int, users: Sequence[str]) -> bytes:
    if slot == -1:
        return orjson.dumps(msg_id)
    if slot == -2:
        return repr(float(ts)).encode()
    if slot == -3:
        return b"%d" % i
    return orjson.dumps(users[slot])


_SLOT_CODES = {b"ID": -1, b"TS": -2, b"I": -3}


def template_sources() -> list[dict[str, Any]]:
    """The real messages used as templates: the shipped examples, then the corpus."""
    bodies = [ex.body for ex in builtin_examples()]
    if CORPUS_STREAM.exists():
        bodies.extend(load_file(CORPUS_STREAM))
    return bodies


def build_templates(extractor: Any, bodies: Iterable[dict[str, Any]]) -> tuple[list[Template], int]:
    """Turn real messages into templates, keeping those whose users can be swapped.

    Args:
        extractor: a :class:`listener.core.users.UserExtractor`.
        bodies: fedmsg bodies (extra fields are dropped, as on the wire).

    Returns:
        ``(templates, dropped)``: ``dropped`` counts messages whose users come from
        somewhere a whole-string substitution cannot reach (e.g. an e-mail).
    """
    out: list[Template] = []
    dropped = 0
    for body in bodies:
        body = orjson.loads(orjson.dumps(wire_body(body)))  # as decoded from the wire
        users = sorted(extractor.usernames(body))
        probe = dict(body, msg_id="@@ID@@", timestamp="@@TS@@", i="@@I@@")
        if "username" in body:  # the publisher's account: never a swapped user
            probe["username"] = "@@NAME@@"
        raw = orjson.dumps(probe)
        for k, u in enumerate(users):
            raw = raw.replace(orjson.dumps(u), b'"@@U%d@@"' % k)
        raw = raw.replace(b'"@@NAME@@"', orjson.dumps(body.get("username")))
        pieces = _SLOT.split(raw)
        slots = tuple(_SLOT_CODES.get(s) or int(s[1:]) for s in pieces[1::2])
        tmpl = Template(
            topic=body["topic"].encode(),
            category=category_of(body["topic"]),
            fmt=b"%b".join(p.replace(b"%", b"%%") for p in pieces[0::2]),
            slots=slots,
            n_users=len(users),
            identity=(str(body.get("username") or ""), str(body.get("certificate") or "")),
        )
        if {-1, -2, -3} - set(slots):
            dropped += 1
            continue
        trial = [f"zzbench{k}x" for k in range(len(users))]
        check = orjson.loads(tmpl.render("x", 1.0, 1, trial))
        if set(extractor.usernames(check)) != set(trial):
            dropped += 1
            continue
        out.append(tmpl)
    return out, dropped


def user_names(n_users: int) -> list[str]:
    """``n_users`` distinct FAS-like usernames, rank order (the first is the head)."""
    return [f"fas{k:05d}" for k in range(n_users)]


@dataclass
class Batch:
    """Messages ready to publish, and what they should count as.

    Attributes:
        frames: ``[(topic, body), ...]`` in publication order.
        users: expected ``{username: messages}``.
        topics: expected ``{topic: messages}``.
    """

    frames: list[tuple[bytes, bytes]] = field(default_factory=list)
    users: Counter[str] = field(default_factory=Counter)
    topics: Counter[str] = field(default_factory=Counter)


class Workload:
    """Draws messages from the templates with the topic mix and Zipf users.

    Args:
        templates: from :func:`build_templates`.
        n_users: size of the user population.
        zipf_s: Zipf exponent (1.0: the k-th user sends ~1/k of the head's messages).
        seed: random seed (runs are reproducible).
        mix: share of messages per category (:data:`TOPIC_MIX`).
    """

    def __init__(
        self,
        templates: Sequence[Template],
        n_users: int = 5000,
        zipf_s: float = 1.0,
        seed: int = 9,
        mix: dict[str, float] | None = None,
    ) -> None:
        if not templates:
            raise ValueError("no templates")
        mix = TOPIC_MIX if mix is None else mix
        self.templates = list(templates)
        self.rng = random.Random(seed)
        self.names = user_names(n_users)
        self.user_cum = list(accumulate(1.0 / (k + 1) ** zipf_s for k in range(n_users)))
        per_cat = Counter(t.category for t in self.templates)
        others = [t for t in self.templates if t.category not in mix]
        rest = max(0.0, 1.0 - sum(v for c, v in mix.items() if per_cat[c]))
        weights = [
            mix[t.category] / per_cat[t.category] if t.category in mix else rest / len(others)
            for t in self.templates
        ]
        self.tmpl_cum = list(accumulate(weights))
        #: next sequence number ``i`` of each publishing identity
        self.next_i: Counter[tuple[str, str]] = Counter()

    def draw_users(self, k: int, first: str | None = None) -> list[str]:
        """``k`` distinct users drawn by Zipf rank (``first`` given: it leads)."""
        got: list[str] = [first] if first is not None and k > 0 else []
        total = self.user_cum[-1]
        while len(got) < k:
            name = self.names[bisect(self.user_cum, self.rng.random() * total)]
            if name not in got:
                got.append(name)
        return got

    def batch(
        self,
        count: int,
        run_id: str,
        t0: float,
        rate: float = 0.0,
        spread_s: float = 0.0,
        cover_users: bool = False,
    ) -> Batch:
        """Generate ``count`` messages.

        Args:
            run_id: makes msg_ids unique (``<run_id>-<n>``).
            t0: UNIX seconds of the first message (``rate``) or the end of the span
                (``spread_s``).
            rate: messages per second the timestamps are spaced by (0: all ``t0``).
            spread_s: if > 0, timestamps uniform over ``[t0 - spread_s, t0)``,
                sorted (a backfill of that span).
            cover_users: give every user at least one message (when ``count`` allows).
        """
        out = Batch()
        rng = self.rng
        tmpl_total = self.tmpl_cum[-1]
        if spread_s > 0:
            stamps = sorted(t0 - spread_s * rng.random() for _ in range(count))
        else:
            step = 1.0 / rate if rate > 0 else 0.0
            stamps = [t0 + n * step for n in range(count)]
        with_users = [t for t in self.templates if t.n_users]
        cover = list(self.names) if cover_users else []
        for n in range(count):
            if cover:
                tmpl = with_users[n % len(with_users)]
                users = self.draw_users(tmpl.n_users, cover.pop())
            else:
                tmpl = self.templates[bisect(self.tmpl_cum, rng.random() * tmpl_total)]
                users = self.draw_users(tmpl.n_users)
            self.next_i[tmpl.identity] += 1  # each publisher numbers its own messages
            body = tmpl.render(f"{run_id}-{n}", stamps[n], self.next_i[tmpl.identity], users)
            out.frames.append((tmpl.topic, body))
            out.users.update(users)
            out.topics[tmpl.topic.decode()] += 1
        return out
