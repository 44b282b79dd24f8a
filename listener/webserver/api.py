"""The web server's parts without sockets: query parsing, events, health, and the
page's files (:func:`load_assets` reads them once, at start).

No sockets, no Redis, no clock: every function takes the values it needs (including
``now``) and returns values, so the HTTP API and the websocket protocol
(``docs/PROTOCOL.md``) are tested with plain tables.  :mod:`listener.webserver.server`
and :mod:`listener.webserver.routes` are the I/O shell around them.
"""

from __future__ import annotations

import hashlib
import http
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from listener.core.errors import ConfigError
from listener.core.filters import Filter, FilterError
from listener.core.filters import parse_filter as parse_filter_query
from listener.core.integrity import confidence_text
from listener.core.linkstate import LINK_STATES
from listener.core.users import MAX_USERNAME_LEN

#: The page's files, by URL path -> path under the web root.  Only these are
#: served: a request for anything else is a 404, so no path can reach outside.
STATIC_FILES: Mapping[str, str] = {
    "/": "index.html",
    "/index.html": "index.html",
    "/app.js": "app.js",
    "/ops.js": "ops.js",
    "/style.css": "style.css",
    "/favicon.svg": "favicon.svg",
    "/vendor/chart.umd.min.js": "vendor/chart.umd.min.js",
    "/vendor/LICENSE.chartjs.md": "vendor/LICENSE.chartjs.md",
}

#: Periods accepted by ``GET /api/diff?period=``, seconds.
DIFF_PERIODS_S: Mapping[str, int] = {"day": 86400, "week": 604800}

#: Most users accepted in ``?users=`` of ``/api/radar`` (the longest username is
#: :data:`listener.core.users.MAX_USERNAME_LEN`, the same as counted).
MAX_RADAR_USERS = 12

#: Most history points per window in a ``snapshot`` event (evenly thinned).
HISTORY_POINTS = 720

#: Content-Security-Policy of every page response: scripts and styles from this
#: origin only, no inline script, websocket to this origin only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class ApiError(ValueError):
    """A bad API request: ``status`` (an HTTP status code) and a message for the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Asset:
    """One static file held in memory: ``body`` bytes and its ``content_type``."""

    body: bytes
    content_type: str


def content_type(name: str) -> str:
    """The Content-Type of a static file name (UTF-8 for text types)."""
    if name.endswith(".js"):
        return "text/javascript; charset=utf-8"
    if name.endswith(".md"):
        return "text/plain; charset=utf-8"
    guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if guessed.startswith("text/") or guessed == "image/svg+xml":
        guessed += "; charset=utf-8"
    return guessed


def load_assets(root: str | Path) -> dict[str, Asset]:
    """Read every file of :data:`STATIC_FILES` under ``root`` into memory.

    Args:
        root: the page folder (``web/``).

    Returns:
        ``{url path: Asset}``.

    Raises:
        listener.core.errors.ConfigError: a file is missing (the page would be broken).
    """
    base = Path(root)
    out: dict[str, Asset] = {}
    for url, rel in STATIC_FILES.items():
        try:
            body = (base / rel).read_bytes()
        except OSError as exc:
            raise ConfigError(f"web page file missing: {base / rel} ({exc})") from exc
        out[url] = Asset(body, content_type(rel))
    return out


def page_version(package_version: str, assets: Mapping[str, Asset]) -> str:
    """The version a wall compares to reload itself: ``"0.1.0+3f9c2a61be"``.

    Args:
        package_version: ``listener.__version__``.
        assets: the page's files as served (:func:`load_assets`).

    Returns:
        the package version, ``+``, and the first 10 hex digits of the SHA-256 of
        every served file (its URL path, a NUL, its length, a NUL, its bytes, in URL
        order): an upgrade that changes only the page changes it too.
    """
    digest = hashlib.sha256()
    for url in sorted(assets):
        body = assets[url].body
        digest.update(f"{url}\0{len(body)}\0".encode())
        digest.update(body)
    return f"{package_version}+{digest.hexdigest()[:10]}"


def split_target(target: str) -> tuple[str, dict[str, list[str]]]:
    """Split a request target into a decoded path and its query parameters.

    ``"/api/snapshot?window=3600"`` -> ``("/api/snapshot", {"window": ["3600"]})``.
    The target is in origin-form (RFC 9112 §3.2.1: path, then ``?query``), split at
    the first ``?``: ``urlsplit`` would read ``//healthz`` as a host and answer the
    page (200) to a health probe with a doubled slash.
    """
    path, _, query = target.partition("?")
    return unquote(path) or "/", parse_qs(query, keep_blank_values=True)


#: A plain decimal number: digits, an optional fraction and exponent (ASCII only).
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _ascii_digits(text: str) -> bool:
    """``str.isdigit`` accepts "٣" and "²"; parameters are ASCII digits only."""
    return text.isascii() and text.isdigit()


def _one(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(f"{name} given {len(values)} times")
    return values[0]


def parse_window(query: Mapping[str, Sequence[str]], default_s: int, max_s: int) -> int:
    """``window=SECONDS`` (a positive integer, at most ``max_s``), else ``default_s``.

    Raises:
        ApiError: not an integer, <= 0, or longer than ``max_s`` (400).
    """
    raw = _one(query, "window")
    if raw is None or raw == "":
        return default_s
    if not _ascii_digits(raw) or len(raw) > 9:
        raise ApiError(f"window must be a positive integer of seconds, got {raw[:40]!r}")
    value = int(raw)
    if value <= 0:
        raise ApiError("window must be > 0 seconds")
    if value > max_s:
        raise ApiError(f"window must be <= {max_s} seconds (the retention)")
    return value


def parse_end(query: Mapping[str, Sequence[str]], now: float) -> float:
    """``end=UNIX_SECONDS`` (finite, not after ``now`` + 1 day), else ``now``.

    Raises:
        ApiError: not a number, or absurd (400).
    """
    raw = _one(query, "end")
    if raw is None or raw == "":
        return now
    if not _DECIMAL.fullmatch(raw):  # float() also takes "1_000", "٣", " 1", "nan"
        raise ApiError(f"end must be UNIX seconds, got {raw[:40]!r}")
    value = float(raw)
    if not 0 <= value <= now + 86400:
        raise ApiError("end must be UNIX seconds between 0 and tomorrow")
    return value


def parse_users(query: Mapping[str, Sequence[str]]) -> list[str]:
    """``users=a,b`` -> ``["a", "b"]`` (blank entries dropped, order kept, deduplicated).

    Raises:
        ApiError: more than :data:`MAX_RADAR_USERS` users or a name too long (400).
    """
    raw = _one(query, "users") or ""
    users: list[str] = []
    for name in raw.split(","):
        name = name.strip()
        if not name or name in users:
            continue
        if len(name) > MAX_USERNAME_LEN:
            raise ApiError(f"username longer than {MAX_USERNAME_LEN} characters")
        if not name.isprintable():
            raise ApiError("a username with a control character")
        users.append(name)
    if len(users) > MAX_RADAR_USERS:
        raise ApiError(f"at most {MAX_RADAR_USERS} users")
    return users


def parse_top(query: Mapping[str, Sequence[str]], default: int, maximum: int = 50) -> int:
    """``top=N`` (1..``maximum``), else ``default``.

    Raises:
        ApiError: not an integer in range (400).
    """
    raw = _one(query, "top")
    if raw is None or raw == "":
        return default
    if not _ascii_digits(raw) or len(raw) > 9 or not 1 <= int(raw) <= maximum:
        raise ApiError(f"top must be an integer from 1 to {maximum}")
    return int(raw)


def parse_by(query: Mapping[str, Sequence[str]]) -> str:
    """``by=topic|category`` (what ``/api/diff`` compares); ``topic`` when absent.

    Raises:
        ApiError: another value (400).
    """
    raw = _one(query, "by") or "topic"
    if raw not in ("topic", "category"):
        raise ApiError("by must be topic or category")
    return raw


def parse_period(query: Mapping[str, Sequence[str]]) -> int:
    """``period=day|week`` -> seconds (86400 / 604800); ``day`` when absent.

    Raises:
        ApiError: another value (400).
    """
    raw = _one(query, "period") or "day"
    if raw not in DIFF_PERIODS_S:
        raise ApiError(f"period must be one of {', '.join(DIFF_PERIODS_S)}")
    return DIFF_PERIODS_S[raw]


def parse_filter(query: Mapping[str, Sequence[str]]) -> Filter:
    """The screen filter of a query (``category``, ``topic``, ``user``, ``package``,
    ``not_category``, ``not_topic``, ``not_user``; :mod:`listener.core.filters`).

    Raises:
        ApiError: a value refused (400), the parameter named.
    """
    try:
        return parse_filter_query(query)
    except FilterError as exc:
        raise ApiError(str(exc)) from exc


def json_body(obj: Any) -> bytes:
    """Serialise an API answer (orjson; non-str dict keys allowed)."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def error_body(message: str, status: int) -> bytes:
    """``{"error": message, "status": status}`` as JSON bytes."""
    return json_body({"error": message, "status": status})


def reason(status: int) -> str:
    """The HTTP reason phrase of a status code."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def thin(points: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` items of ``points``, evenly spaced, always keeping the last."""
    n = len(points)
    if n <= limit:
        return list(points)
    if limit <= 1:
        return [points[-1]] if limit == 1 else []
    step = (n - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def health(
    meta: Mapping[str, str] | None,
    now: float,
    step_s: float,
    redis_ok: bool,
    pubsub_ok: bool,
    clients: int,
) -> dict[str, Any]:
    """The ``/healthz`` object (also the ``status`` event's ``health``).

    Args:
        meta: the listener's ``P:meta`` hash (``listener_heartbeat``,
            ``listener_redis_ok``, ``last_message_at``...), None when Redis is down.
        now: UNIX seconds.  step_s: the listener's tick period, seconds.
        redis_ok: this web process reached Redis just now.
        pubsub_ok: its events subscription is live.  clients: open websockets.

    Returns:
        ``{"ok", "redis": {"ok", "pubsub"}, "listener": {"ok", "heartbeat_age_s",
        "redis_ok"}, "bus": {"state", "reported_state", "links": {"ok", "quiet",
        "connecting", "dead"}, "gaps",
        "last_message_at", "lag_s", "messages_total"}, "web": {"clients"}, "time"}``.
        ``ok`` is True when Redis answers, the listener's heartbeat is younger than
        ``max(3 * step_s, 15)`` seconds and the bus ``state`` (from the listener's
        ZeroMQ links, :meth:`listener.inputs.zmq.Bus.health_fields`) is not ``"dead"``.  A
        ``"quiet"`` bus (links connected, no message for a while) is healthy: the
        lag is reported, not judged; so is a ``"connecting"`` one (no handshake yet,
        within the first seconds of a link).  When the heartbeat is stale, the listener's
        last report says nothing about the bus now: ``state`` is ``"unknown"`` and
        the last reported one is kept as ``"reported_state"`` (``links`` and
        ``gaps`` are also from that last report).
    """
    meta = meta or {}

    def num(key: str) -> float | None:
        try:
            return float(meta[key]) if meta.get(key) not in (None, "") else None
        except ValueError:
            return None

    beat = num("listener_heartbeat")
    beat_age = None if beat is None else max(0.0, now - beat)
    listener_ok = beat_age is not None and beat_age <= max(3 * step_s, 15.0)
    last = num("last_message_at")
    total = num("messages_total")
    reported_state = meta.get("listener_bus_state") or None
    # a stopped listener's last heartbeat still says "ok": nobody watches the bus now
    bus_state = reported_state if listener_ok else "unknown"
    links = {k: int(num(f"listener_links_{k}") or 0) for k in LINK_STATES}
    gaps = num("listener_gaps")
    return {
        "ok": bool(redis_ok and listener_ok and bus_state != "dead"),
        "time": now,
        "redis": {"ok": redis_ok, "pubsub": pubsub_ok},
        "listener": {
            "ok": listener_ok,
            "heartbeat_age_s": beat_age,
            "redis_ok": num("listener_redis_ok") == 1,
        },
        "bus": {
            "state": bus_state,
            "reported_state": reported_state,
            "links": links,
            "gaps": None if gaps is None else int(gaps),
            "last_message_at": last,
            "lag_s": None if last is None else max(0.0, now - last),
            "messages_total": None if total is None else int(total),
        },
        "web": {"clients": clients},
    }


def snapshot_event(
    windows: Mapping[str, Any],
    history: Mapping[str, Sequence[Any]],
    recent: Sequence[Any],
    state: Mapping[str, Any] | None,
    health_obj: Mapping[str, Any],
    now: float,
    source: str,
    version: str = "",
) -> dict[str, Any]:
    """The websocket ``snapshot`` event (docs/PROTOCOL.md).

    Args:
        windows: ``{str(window_s): snapshot object}`` (``listener.core.snapshot``).
        history: ``{str(window_s): [[end, longtail, longtail_normalized, gini,
            messages, users], ...]}``, oldest first (thinned to
            :data:`HISTORY_POINTS`).
        recent: the latest blink entries, oldest first.
        state: the listener's latest ``tick`` (for its rate and times), or None.
            Its ``rate_per_min`` is given only when ``source`` is ``"tick"`` (the
            tick is fresh), else ``None``: a stopped listener's last rate is not now's.
        health_obj: :func:`health`'s object.  now: UNIX seconds.
        source: ``"tick"`` (the listener's latest tick) or ``"redis"`` (computed).
        version: the web process's :func:`page_version`; an open page that sees
            another one after a reconnect reloads itself.
    """
    state = state or {}
    last = state.get("last_message_at")
    if last is None:
        last = health_obj.get("bus", {}).get("last_message_at")
    return {
        "type": "snapshot",
        "time": now,
        "source": source,
        "windows": dict(windows),
        "history": {w: thin(points, HISTORY_POINTS) for w, points in history.items()},
        "recent": list(recent),
        # the rate of a listener that stopped ticking is not the bus's now: unknown
        "rate_per_min": state.get("rate_per_min") if source == "tick" else None,
        "last_message_at": last,
        "last_received_at": state.get("last_received_at"),
        "warming_up": {w: bool(s.get("warming_up", False)) for w, s in windows.items()},
        "health": dict(health_obj),
        "version": version,
    }


def status_event(health_obj: Mapping[str, Any]) -> dict[str, Any]:
    """The periodic ``status`` event: ``{"type": "status", "health": {...}}``."""
    return {"type": "status", "health": dict(health_obj)}


def state_is_fresh(state: Mapping[str, Any] | None, now: float, step_s: float) -> bool:
    """True when the listener's stored tick is recent enough to show as is
    (``end`` within ``max(3 * step_s, 15)`` seconds of ``now``)."""
    if not state or not isinstance(state.get("windows"), dict):
        return False
    try:
        return now - float(state["end"]) <= max(3 * step_s, 15.0)
    except (KeyError, TypeError, ValueError):
        return False


def alerts_of(state: Mapping[str, Any] | None, now: float, step_s: float) -> dict[str, Any]:
    """The ``/api/alerts`` object: the silence detector's latest report, from the
    listener's stored tick (:meth:`listener.core.silence.Detector.evaluate`).

    Returns:
        ``{"mode", "time", "judged", "alerts": [...], "fresh"}``; ``fresh`` is False
        when the tick is stale (the listener stopped ticking: its verdicts are not
        now's, ``alerts`` is then empty and ``mode`` ``"unknown"``).
    """
    report = (state or {}).get("alerts")
    if not isinstance(report, dict) or not state_is_fresh(state, now, step_s):
        return {"mode": "unknown", "time": None, "judged": 0, "alerts": [], "fresh": False}
    return {**report, "fresh": True}


#: Rejection reasons that are signature failures.
SIGNATURE_REASONS = ("unsigned", "bad_signature")


def integrity(
    meta: Mapping[str, str] | None,
    health_obj: Mapping[str, Any],
    backfill_running: bool,
) -> dict[str, Any]:
    """The ``/api/integrity`` object: the bus's integrity at a glance, from the
    listener's ``P:meta`` (``listener_integrity_json``, ``listener_links_json``,
    ``backfill_status``, ``backfill_last``) and :func:`health`'s object.

    Returns:
        ``{"ok", "bus": {"state", "links": [{"endpoint", "state", "gaps",
        "received", "reconnects"}, ...]}, "listener": {...}, "redis": {"ok",
        "listener_ok"}, "gaps", "dropped", "blink_dropped", "signature_failures",
        "rejected": {reason: n}, "duplicates", "reconnects", "backfill": {"state"
        (``running``, the last run's status such as ``done`` or ``incomplete``, or
        ``never``), "at", "last"}, "hour": {...}, "confidence"}`` (counters since
        the listener started; ``hour`` and ``confidence``:
        :mod:`listener.core.integrity`).  Missing fields (no listener yet) are 0 or None.
    """
    meta = meta or {}

    def loads(key: str) -> Any:
        try:
            return orjson.loads(meta[key]) if meta.get(key) else None
        except orjson.JSONDecodeError:
            return None

    data = loads("listener_integrity_json") or {}
    totals = data.get("totals") or {}
    rejected = {str(k): int(v) for k, v in (data.get("rejected") or {}).items()}
    links = [
        {k: link.get(k) for k in ("endpoint", "state", "gaps", "received", "reconnects")}
        for link in (loads("listener_links_json") or [])
        if isinstance(link, dict)
    ]
    last = loads("backfill_last")
    if backfill_running:
        state = "running"
    elif meta.get("backfill_status"):  # running, done or incomplete (daemon/backfill.py)
        # "running" without its lock: the backfill died before it could say so
        state = (
            "incomplete" if meta["backfill_status"] == "running" else str(meta["backfill_status"])
        )
    elif isinstance(last, dict):
        state = str(last.get("status") or "done")
    else:
        state = "never"
    try:
        done_at: float | None = float(meta["backfill_done_at"])
    except (KeyError, ValueError):
        done_at = None
    hour = data.get("hour")
    bus = health_obj.get("bus", {})
    return {
        "ok": bool(health_obj.get("ok")),
        "bus": {"state": bus.get("state"), "links": links},
        "listener": dict(health_obj.get("listener", {})),
        "redis": {
            "ok": bool(health_obj.get("redis", {}).get("ok")),
            "listener_ok": bool(health_obj.get("listener", {}).get("redis_ok")),
        },
        "gaps": int(totals.get("gaps", bus.get("gaps") or 0)),
        "dropped": int(totals.get("dropped", 0)),
        "blink_dropped": int(data.get("blink_dropped", 0)),
        "signature_failures": sum(rejected.get(r, 0) for r in SIGNATURE_REASONS),
        "rejected": rejected,
        "duplicates": int(totals.get("duplicates", 0)),
        "reconnects": int(data.get("reconnects", 0)),
        "backfill": {
            "state": state,
            "at": done_at,
            "last": last if isinstance(last, dict) else None,
        },
        "hour": hour,
        "confidence": confidence_text(hour) if isinstance(hour, dict) else None,
    }
