"""Per-screen filters: which messages a wall shows, and which stored figures follow.

The parameters are datagrepper's (``/raw``): ``category``, ``topic``, ``user``,
``package``, ``not_category``, ``not_topic``, ``not_user``, each repeatable
(``?category=koji&category=bodhi&not_user=bodhi``).  A message **matches** when

* its category is one of the ``category`` values (when any is given) and none of
  the ``not_category`` ones;
* its topic matches one of the ``topic`` rules (when any) and none of the
  ``not_topic`` ones.  A rule ending with ``*`` or ``.`` is a **prefix**
  (``org.fedoraproject.prod.buildsys.*`` and ``org.fedoraproject.prod.buildsys.``
  both match every topic starting with ``org.fedoraproject.prod.buildsys.``;
  ``org.fedoraproject.prod.bodhi.update*`` matches ``...bodhi.update.comment`` and
  ``...bodhi.update.request.testing``); any other rule is **exact**;
* one of its users is a ``user`` value (when any) and none is a ``not_user`` one.

Values of one parameter are ORed, parameters are ANDed, ``not_*`` exclude:
datagrepper's rule.  ``package`` is refused (:class:`FilterError`): neither input
records a message's packages (fedmsg.meta's ``msg2packages`` is not run), so no
message could be said to match.

**Bounds** (hostile URLs): at most :data:`MAX_VALUES_PER_PARAM` values per
parameter and :data:`MAX_VALUES` in all; categories are 1-64 characters of
``[A-Za-z0-9_-]``; topic rules 1-255 (:data:`listener.core.envelope.MAX_TOPIC_BYTES`)
of ``[A-Za-z0-9_.+-]`` with one optional final ``*``; users 1-64
(:data:`listener.core.users.MAX_USERNAME_LEN`) of ``[A-Za-z0-9_.@/+-]``.

**What follows a filter.**  Live events (``blink``, the ticker) are filtered message
by message.  Stored figures come from the per-bucket counters (per topic, category,
user, user x category; :mod:`listener.storage.store`) and follow a filter only where
those counters give the exact figure of the matching messages
(:func:`filter_counts`); every other figure is ``null`` and named in the answer's
``unfiltered`` list, never an unfiltered number:

==========================================  =========================================
filter                                      exact figures
==========================================  =========================================
``category`` / ``not_category`` only        all (messages, topics, categories, users
                                            and longtail: user x category counters)
with ``topic`` / ``not_topic``              messages, topics, categories; not the
                                            per-user figures (no user x topic counter)
``user=U`` (one user), no topic rule        messages, categories (``U``'s counts)
``not_user=U`` (one user), no topic rule    messages, categories (all minus ``U``'s)
any other user rule                         none (a message's users are not stored
                                            together: two users' shares overlap)
==========================================  =========================================

"Per-user figures" (:data:`USER_FIGURES`) are ``users``, ``top_users``,
``longtail``, ``longtail_normalized``, ``gini``, ``head``, ``tail`` and ``ranks``;
under a user rule they never follow: the users of the matching messages (the
listed users' co-authors included) are not stored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from listener.core.envelope import MAX_TOPIC_BYTES, category_of
from listener.core.snapshot import build_snapshot
from listener.core.users import MAX_USERNAME_LEN
from listener.core.views import diff_rows, radar_from_counts
from listener.core.windows import Counts

#: The filter parameters, in their canonical order (URLs, ``filter`` objects).
FILTER_PARAMS = (
    "category",
    "topic",
    "user",
    "package",
    "not_category",
    "not_topic",
    "not_user",
)
#: Most values of one parameter.
MAX_VALUES_PER_PARAM = 16
#: Most values of all the filter parameters of one request.
MAX_VALUES = 48
#: Longest category accepted.
MAX_CATEGORY_LEN = 64

_CATEGORY = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_CATEGORY_LEN}}}")
_TOPIC = re.compile(rf"[A-Za-z0-9_.+-]{{1,{MAX_TOPIC_BYTES}}}\*?")
_USER = re.compile(rf"[A-Za-z0-9_.@/+-]{{1,{MAX_USERNAME_LEN}}}")

#: The snapshot keys computed from per-user counts (one group: all or none follow).
USER_FIGURES = (
    "users",
    "top_users",
    "longtail",
    "longtail_normalized",
    "gini",
    "head",
    "tail",
    "ranks",
)


class FilterError(ValueError):
    """A filter parameter refused: the message names the parameter (a 400)."""


@dataclass(frozen=True)
class TopicRules:
    """Topic rules of one parameter: ``exact`` topics and topic ``prefixes``."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def match(self, topic: str) -> bool:
        """True when ``topic`` is one of the exact topics or starts with a prefix."""
        return topic in self.exact or (bool(self.prefixes) and topic.startswith(self.prefixes))

    @classmethod
    def parse(cls, values: Iterable[str]) -> TopicRules:
        """Rules from ``topic`` values: a final ``*`` or ``.`` makes a prefix
        (``*`` dropped), else the value is an exact topic."""
        exact: set[str] = set()
        prefixes: set[str] = set()
        for v in values:
            if v.endswith("*"):
                prefixes.add(v[:-1])
            elif v.endswith("."):
                prefixes.add(v)
            else:
                exact.add(v)
        return cls(frozenset(exact), tuple(sorted(prefixes)))


@dataclass(frozen=True)
class Filter:
    """One screen's filter (see the module docstring for the rule).

    Attributes:
        categories / not_categories: category names (empty: no rule).
        topics / not_topics: topic rules.
        users / not_users: usernames.
        query: the filter's values as given, ``{param: [values, sorted]}``,
            only the parameters given: the ``filter`` object of the answers.
    """

    categories: frozenset[str] = frozenset()
    not_categories: frozenset[str] = frozenset()
    topics: TopicRules = TopicRules()
    not_topics: TopicRules = TopicRules()
    users: frozenset[str] = frozenset()
    not_users: frozenset[str] = frozenset()
    query: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing is filtered."""
        return not self.query

    @property
    def key(self) -> str:
        """A canonical string of the filter ("" when empty): equal filters, equal keys."""
        return "&".join(f"{p}={v}" for p, vs in self.query for v in vs)

    def as_dict(self) -> dict[str, list[str]]:
        """``{param: [values]}``, the parameters given only (JSON ``filter``)."""
        return {p: list(vs) for p, vs in self.query}

    @property
    def has_topic_rules(self) -> bool:
        """A ``topic`` or ``not_topic`` rule is set."""
        return bool(self.topics or self.not_topics)

    @property
    def has_user_rules(self) -> bool:
        """A ``user`` or ``not_user`` rule is set."""
        return bool(self.users or self.not_users)

    @property
    def single_user(self) -> str | None:
        """The user of a rule on one user alone (``user=U`` or ``not_user=U``, not
        both), else None: the user rules whose figures the counters give."""
        if len(self.users) == 1 and not self.not_users:
            return next(iter(self.users))
        if len(self.not_users) == 1 and not self.users:
            return next(iter(self.not_users))
        return None

    @property
    def category_only(self) -> bool:
        """Only ``category`` / ``not_category`` rules (or none)."""
        return not (self.has_topic_rules or self.has_user_rules)

    def category_ok(self, category: str) -> bool:
        """The category rules alone."""
        if self.categories and category not in self.categories:
            return False
        return category not in self.not_categories

    def topic_ok(self, topic: str) -> bool:
        """The category and topic rules of a topic (its category is
        :func:`listener.core.envelope.category_of`, as counted)."""
        if (self.categories or self.not_categories) and not self.category_ok(category_of(topic)):
            return False
        if self.topics and not self.topics.match(topic):
            return False
        return not (self.not_topics and self.not_topics.match(topic))

    def users_ok(self, users: Iterable[str]) -> bool:
        """The user rules of a message's users."""
        if not self.has_user_rules:
            return True
        names = set(users)
        if self.users and not (names & self.users):
            return False
        return not (names & self.not_users)

    def matches(self, topic: str, category: str, users: Iterable[str]) -> bool:
        """True when a message with this topic, category and users matches.

        ``category`` is the message's own (``category_of(topic)`` for every message
        the listener counts).
        """
        if not self.category_ok(category):
            return False
        if self.topics and not self.topics.match(topic):
            return False
        if self.not_topics and self.not_topics.match(topic):
            return False
        return self.users_ok(users)


#: The filter that keeps everything.
NO_FILTER = Filter()


def parse_filter(query: Mapping[str, Sequence[str]]) -> Filter:
    """The filter of a request's query (other parameters are ignored).

    Args:
        query: ``{name: [values]}`` (``urllib.parse.parse_qs``); blank values are
            ignored, repeated values kept once.

    Returns:
        The :class:`Filter` (:data:`NO_FILTER` when no filter parameter is given).

    Raises:
        FilterError: ``package`` given, too many values, or a value too long or
            with a character outside its parameter's set (the message names the
            parameter and shows at most 40 characters of the value, as ``repr``).
    """
    given: dict[str, tuple[str, ...]] = {}
    total = 0
    for param in FILTER_PARAMS:
        values = sorted({v for v in query.get(param, ()) if v != ""})
        if not values:
            continue
        if param == "package":
            raise FilterError(
                "package: this wallboard does not record a message's packages, "
                "so it cannot filter by package"
            )
        if len(values) > MAX_VALUES_PER_PARAM:
            raise FilterError(f"{param}: at most {MAX_VALUES_PER_PARAM} values")
        total += len(values)
        if total > MAX_VALUES:
            raise FilterError(f"at most {MAX_VALUES} filter values in all")
        kind = param.removeprefix("not_")
        pattern, what = {
            "category": (_CATEGORY, f"1-{MAX_CATEGORY_LEN} of A-Z a-z 0-9 _ -"),
            "topic": (_TOPIC, f"1-{MAX_TOPIC_BYTES} of A-Z a-z 0-9 _ . + -, then an optional *"),
            "user": (_USER, f"1-{MAX_USERNAME_LEN} of A-Z a-z 0-9 _ . @ / + -"),
        }[kind]
        for v in values:
            if not pattern.fullmatch(v):
                raise FilterError(f"{param}: {v[:40]!r} is not {what}")
        given[param] = tuple(values)
    if not given:
        return NO_FILTER
    return Filter(
        categories=frozenset(given.get("category", ())),
        not_categories=frozenset(given.get("not_category", ())),
        topics=TopicRules.parse(given.get("topic", ())),
        not_topics=TopicRules.parse(given.get("not_topic", ())),
        users=frozenset(given.get("user", ())),
        not_users=frozenset(given.get("not_user", ())),
        query=tuple(given.items()),
    )


# -- stored figures ----------------------------------------------------------------


def filter_counts(counts: Counts, flt: Filter) -> tuple[Counts, frozenset[str]]:
    """The counts of the messages ``flt`` matches, as far as the counters give them.

    Args:
        counts: one window's counts, every field read (``usercat`` included).
        flt: the filter.

    Returns:
        ``(filtered, unfiltered)``: ``filtered`` holds the exact counts of the
        matching messages for every field whose name is not in ``unfiltered``
        (a subset of ``{"messages", "topics", "categories", "users"}``; ``users``
        stands for ``users`` and ``usercat``); the fields named there are left
        empty and must not be shown (module docstring, "What follows a filter").
    """
    if flt.empty:
        return counts, frozenset()
    out = Counts()
    unfiltered: set[str] = set()
    topic_rules = flt.has_topic_rules
    if not flt.has_user_rules:
        out.topics = Counter({t: n for t, n in counts.topics.items() if flt.topic_ok(t)})
        if topic_rules:
            for t, n in out.topics.items():
                out.categories[category_of(t)] += n
            unfiltered.add("users")
        else:
            out.categories = Counter(
                {c: n for c, n in counts.categories.items() if flt.category_ok(c)}
            )
            for (u, c), n in counts.usercat.items():
                if flt.category_ok(c):
                    out.usercat[(u, c)] = n
                    out.users[u] += n
        out.messages = sum(out.categories.values())
        return out, frozenset(unfiltered)
    unfiltered.update(("topics", "users"))
    if topic_rules or flt.single_user is None:
        unfiltered.update(("messages", "categories"))
        return out, frozenset(unfiltered)
    if flt.users:
        (name,) = flt.users
        for (u, c), n in counts.usercat.items():
            if u == name and flt.category_ok(c) and n:
                out.categories[c] += n
    else:
        (name,) = flt.not_users
        for c, n in counts.categories.items():
            if flt.category_ok(c):
                left = n - counts.usercat.get((name, c), 0)
                if left:
                    out.categories[c] = left
    out.messages = sum(out.categories.values())
    return out, frozenset(unfiltered)


def hide_unfiltered(snap: dict[str, Any], unfiltered: Iterable[str]) -> dict[str, Any]:
    """Null the figures of a snapshot object that could not follow a filter.

    Args:
        snap: a snapshot object (:mod:`listener.core.snapshot`), modified in place.
        unfiltered: :func:`filter_counts`'s names.

    Returns:
        ``snap``, with ``unfiltered``: the sorted list of the snapshot keys now null.
    """
    keys: set[str] = set()
    for name in unfiltered:
        if name == "users":
            keys.update(USER_FIGURES)
        elif name == "topics":
            keys.update(("topics", "topics_total"))
        else:
            keys.add(name)
    for k in keys:
        snap[k] = None
    snap["unfiltered"] = sorted(keys)
    return snap


def needed_kinds(flt: Filter) -> tuple[str, ...]:
    """The bucket hashes :func:`filter_counts` reads for ``flt`` (the store's
    suffixes: ``"t"`` topic, ``"c"`` category, ``"uc"`` user x category; ``"u"`` is
    never needed, per-user counts come from ``"uc"``): the rest need not be read."""
    if not flt.has_user_rules:
        return ("t",) if flt.has_topic_rules else ("t", "c", "uc")
    if flt.has_topic_rules:
        return ()
    if flt.single_user is not None:
        return ("c", "uc")
    return ()


def filtered_snapshot(
    window_s: int,
    end: float,
    counts: Counts,
    flt: Filter,
    top_n: int | None = 20,
    topics_n: int | None = None,
) -> dict[str, Any]:
    """The snapshot object of the messages ``flt`` matches in one window.

    The object of :func:`listener.core.snapshot.build_snapshot` on the filtered
    counts (:func:`filter_counts`), plus ``filter`` (:meth:`Filter.as_dict`) and
    ``unfiltered`` (the keys set to ``null`` because the counters cannot give them:
    :func:`hide_unfiltered`).  ``last_message_at`` is ``null`` and listed: the
    newest message is kept for the whole bus only.
    """
    filtered, unfiltered = filter_counts(counts, flt)
    return snapshot_of_filtered(window_s, end, filtered, unfiltered, flt, top_n, topics_n)


def snapshot_of_filtered(
    window_s: int,
    end: float,
    filtered: Counts,
    unfiltered: Iterable[str],
    flt: Filter,
    top_n: int | None = 20,
    topics_n: int | None = None,
) -> dict[str, Any]:
    """:func:`filtered_snapshot` from counts already filtered (:func:`filter_counts`
    is linear: the sum of buckets filtered one by one is the window filtered)."""
    snap = build_snapshot(window_s, end, filtered, None, top_n, topics_n)
    hide_unfiltered(snap, [*unfiltered, "last_message_at"])
    snap["filter"] = flt.as_dict()
    return snap


def filtered_radar(
    counts: Counts,
    window_s: int,
    end: float,
    flt: Filter,
    users: Sequence[str] | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """The radar object (:func:`listener.core.views.radar_from_counts`) of the
    matching messages, plus ``filter`` and ``unfiltered``.

    The radar needs user x category counts of the matching messages: with any
    rule other than ``category`` / ``not_category`` its ``categories`` and
    ``users`` are ``null`` and listed in ``unfiltered``.
    """
    filtered, unfiltered = filter_counts(counts, flt)
    if "users" in unfiltered:
        out: dict[str, Any] = {
            "window_s": int(window_s),
            "end": float(end),
            "categories": None,
            "users": None,
            "unfiltered": ["categories", "users"],
        }
    else:
        out = radar_from_counts(filtered, window_s, end, users, top)
        out["unfiltered"] = []
    out["filter"] = flt.as_dict()
    return out


def filtered_diff(result: Mapping[str, Any], flt: Filter) -> dict[str, Any]:
    """A diff object (:func:`listener.storage.readers.diff`) of the matching messages.

    Args:
        result: the diff **by topic** of every message; :func:`diff_by_category`
            regroups the answer when the caller wants it by category (a topic has
            one category, so the sums are exact).
        flt: the filter.

    Returns:
        ``result`` with only the matching topics' rows, ``filter`` and
        ``unfiltered``; under a user rule the rows are ``null`` and
        ``unfiltered`` is ``["rows"]`` (no user x topic counter).
    """
    out = dict(result)
    out["filter"] = flt.as_dict()
    if flt.has_user_rules:
        out["rows"] = None
        out["unfiltered"] = ["rows"]
        return out
    out["rows"] = [r for r in result["rows"] if flt.topic_ok(r["topic"])]
    out["unfiltered"] = []
    return out


def diff_by_category(result: Mapping[str, Any]) -> dict[str, Any]:
    """A diff by topic regrouped by category (each topic's category is
    :func:`listener.core.envelope.category_of`): rows as
    :func:`listener.core.views.diff_rows` with ``key="category"``; rows ``null``
    stay ``null``."""
    out = dict(result)
    out["by"] = "category"
    if result.get("rows") is None:
        return out
    current: Counter[str] = Counter()
    previous: Counter[str] = Counter()
    for r in result["rows"]:
        c = category_of(r["topic"])
        current[c] += r["current"]
        previous[c] += r["previous"]
    out["rows"] = diff_rows(
        {c: n for c, n in current.items() if n},
        {c: n for c, n in previous.items() if n},
        "category",
    )
    return out


# -- live events -----------------------------------------------------------------


def filter_blink(event: Mapping[str, Any], flt: Filter) -> dict[str, Any] | None:
    """The ``blink`` event a filtered screen gets, or None when nothing matches.

    ``msgs`` keeps the matching messages.  ``counts``/``total``/``omitted`` are
    exact when the filter has category rules only (the event's per-category
    ``counts`` cover every message of the batch) or when the batch omitted no
    message; otherwise the omitted messages cannot be matched: ``counts`` and
    ``total`` then count the shown matching messages only, ``omitted`` is ``null``
    and ``partial`` is true.

    Args:
        event: the listener's ``blink`` (docs/PROTOCOL.md).
        flt: a non-empty filter.
    """
    raw = event.get("msgs") or []
    msgs = [
        m
        for m in raw
        if isinstance(m, Mapping)
        and flt.matches(str(m.get("topic", "")), str(m.get("category", "")), m.get("users") or ())
    ]
    omitted = int(event.get("omitted") or 0)
    out = {k: v for k, v in event.items() if k not in ("msgs", "counts", "total", "omitted")}
    partial = False
    if flt.category_only:
        counts = {c: n for c, n in (event.get("counts") or {}).items() if flt.category_ok(c)}
    else:
        counts = dict(Counter(str(m.get("category", "")) for m in msgs))
        partial = omitted > 0
    total = sum(counts.values())
    if not msgs and not total:
        return None
    out["msgs"] = msgs
    out["counts"] = counts
    out["total"] = total
    out["omitted"] = None if partial else total - len(msgs)
    if partial:
        out["partial"] = True
    return out


def filtered_alerts(report: Mapping[str, Any], flt: Filter) -> dict[str, Any]:
    """The silence detector's report (``/api/alerts``, a tick's ``alerts``) as a
    filtered screen sees it: a category's alert kept when its category passes the
    category rules, a topic's when the topic passes the category and topic rules
    (:meth:`Filter.topic_ok`).  User rules do not apply (an alert concerns a
    category or a topic, not who sent it): under one, the report says so.

    Args:
        report: ``{"mode", "time", "judged", "alerts": [{"kind", "name", ...}], ...}``
            (:meth:`listener.core.silence.Detector.evaluate`).
        flt: the screen's filter.

    Returns:
        The same report with the matching ``alerts`` only, plus ``filter`` (the
        filter's values) and ``unfiltered`` (``["users"]`` under a user rule, else
        ``[]``); the report itself when ``flt`` is empty.
    """
    if flt.empty:
        return dict(report)
    cats = _rule_categories(flt.topics)
    kept = []
    for alert in report.get("alerts") or []:
        if not isinstance(alert, Mapping):
            continue
        name = str(alert.get("name", ""))
        if alert.get("kind") == "topic":
            if flt.topic_ok(name):
                kept.append(alert)
        elif flt.category_ok(name) and (cats is None or name in cats):
            kept.append(alert)
    return {
        **report,
        "alerts": kept,
        "filter": flt.as_dict(),
        "unfiltered": ["users"] if flt.has_user_rules else [],
    }


#: Continuations of a topic prefix: an environment token and a category after it,
#: or not (:func:`_rule_categories`).
_PROBE_TAILS = ("a.b.c", "z.y.x", "prod.a.b", "prod.z.y", "stg.a.b")


def _rule_categories(rules: TopicRules) -> frozenset[str] | None:
    """The categories the topics of ``rules`` can be in, or None when any (no
    rule, or a prefix too short to fix the category: ``org.fedoraproject.``)."""
    if not rules:
        return None
    cats = {category_of(t) for t in rules.exact}
    for prefix in rules.prefixes:
        # the prefix fixes the category when no continuation changes it
        found = {category_of(prefix + tail) for tail in _PROBE_TAILS}
        if len(found) != 1:
            return None
        cats |= found
    return frozenset(cats)
