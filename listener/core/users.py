"""Who a message is about: a thin, fast, safe wrapper over ``fedmsg.meta``.

Users come from ``fedmsg.meta.msg2usernames`` with the processors of
``fedmsg_meta_fedora_infrastructure`` (fedmsg docs, "fedmsg.meta").  Three
differences: the first two give the same users faster, the third never lets a
processor's exception out:

* **Processor cache.**  ``fedmsg.meta.msg2processor`` scans ~50 processors with a
  regex each, for every message (most of ``msg2usernames``' time).  A processor's
  ``handle_msg`` only looks at the topic, so the processor is cached per topic
  (a plain dict, emptied when it outgrows ``cache_size``: a bus has a few hundred
  topics) and ``processor.usernames`` is called directly: the same users.
* **Only the config keys processors read.**  Processors take ``**config``, which
  Python copies into a new dict on every call, a cost paid on every message.
  ``usernames`` passes only :data:`PROCESSOR_CONFIG_KEYS`, the keys that
  fedmsg.meta and fedmsg_meta_fedora_infrastructure ever read from it (the
  network keys are never passed anyway); ``tests/core/test_users.py`` checks the
  result against ``msg2usernames`` with the whole config on every shipped example.
* **No surprises.**  ``msg2usernames``' ``graceful`` wrapper only catches
  ``KeyError``; here any exception from a processor yields an empty set and is
  counted (``UserExtractor.errors``), so a poison message cannot stop the listener.

FAS: some processors map IRC nicks and e-mail addresses to FAS usernames via
``fasshim``, which builds its cache over the network when FAS/fasjson credentials
are configured.  The wallboard never passes credentials to the processors, so no
look-up ever runs on the message path; an offline cache (``{nick or email:
username}`` JSON, e.g. exported once from fasjson) can be loaded instead.  Without
one, fasshim's ``make_fas_cache`` runs again for every such message: it logs
"No previous fas cache found", tries ``import fedora.client`` (a failing import:
a search of ``sys.path``) and logs again.  An empty cache is therefore
given one entry (:data:`FAS_SENTINEL`, which no nick or address can equal), so
``make_fas_cache`` returns at once: the same names (a nick or address not in the
cache maps to itself either way) and a quiet journal.  The warnings are also
filtered, should another path log them.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from listener.core.errors import ConfigError
from listener.core.lograte import is_log_milestone

log = logging.getLogger(__name__)

#: Longest username kept, characters.  FAS usernames are at most 32; a longer
#: "user" (a processor passing through a raw field, a crafted message) is dropped:
#: it would be a Redis field for the longest window and travel in every tick and
#: blink.  ``/api/radar?users=`` refuses longer names with the same limit.
MAX_USERNAME_LEN = 64

#: Config keys never handed to fedmsg.meta processors (they trigger network look-ups).
_NETWORK_KEYS = ("fas_credentials", "fasjson_credentials", "fasjson")

#: The config keys fedmsg.meta (``base.py``) and fedmsg_meta_fedora_infrastructure
#: (1.x) read in their processors (``config[...]`` / ``config.get(...)``, found by
#: grep), less :data:`_NETWORK_KEYS`: what ``usernames`` hands them.
PROCESSOR_CONFIG_KEYS = ("topic_prefix_re", "namespace", "bodhi_url")

#: The entry that keeps fasshim's cache non-empty (module docstring): NUL bytes
#: appear in no IRC nick and no e-mail address.
FAS_SENTINEL = "\x00fedmsg-wallboard\x00"


class _QuietFasshim(logging.Filter):
    """Drops fasshim's per-message "No fas_credentials" / "cache" warnings."""

    _NOISE = (
        "No fas_credentials found",
        "No previous fas cache found",
        "No previous fasjson cache found",
        "No python-fedora installed",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(n in msg for n in self._NOISE)


def ensure_fedmsg_config_dir(config_dir: str | os.PathLike[str] | None) -> None:
    """Point fedmsg at a ``fedmsg.d/`` folder before any processor is imported.

    Some fedmsg_meta processors call ``fedmsg.config.load_config()`` at import
    time; fedmsg looks in ``./fedmsg.d`` and ``/etc/fedmsg.d``.  When
    ``config_dir`` is given and ``FEDMSG_CONFIG`` is not set, this sets it.
    """
    if config_dir and not os.environ.get("FEDMSG_CONFIG"):
        os.environ["FEDMSG_CONFIG"] = str(config_dir)


def load_fedmsg_config(config_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Load the fedmsg config (``fedmsg.d/`` convention) without touching ``sys.argv``.

    Args:
        config_dir: a ``fedmsg.d`` folder, or a single ``.py`` file; ``None`` means
            ``$FEDMSG_CONFIG`` (a folder or file) when set, else fedmsg's own search
            (``./fedmsg.d``, ``/etc/fedmsg.d``, ...), else the built-in default
            (``listener/core/fedmsg_default.py``: Fedora prod, no endpoints).

    Returns:
        fedmsg's merged config dict.

    Raises:
        listener.core.errors.ConfigError: the folder does not exist or holds no ``*.py``,
            the endpoints are not ``{name: [endpoint, ...]}``, or fedmsg fails.
    """
    filenames = None
    if config_dir is None and os.environ.get("FEDMSG_CONFIG"):
        config_dir = os.environ["FEDMSG_CONFIG"]
    if config_dir is not None:
        path = Path(config_dir)
        if path.is_dir():
            filenames = sorted(str(p) for p in path.glob("*.py"))
            if not filenames:  # fedmsg would then search ./fedmsg.d, /etc/fedmsg.d...
                raise ConfigError(f"fedmsg config folder {path} has no *.py file")
        elif path.is_file():
            filenames = [str(path)]
        else:
            raise ConfigError(f"fedmsg config {path} does not exist")
        ensure_fedmsg_config_dir(path)
    # imported here: fedmsg loads its config and its processors at import
    import fedmsg.config

    warnings.filterwarnings("ignore", 'Using "load_config" is deprecated', DeprecationWarning)
    try:
        # invalidate_cache=True: a fresh load each call (fedmsg caches module-wide).
        config: dict[str, Any] = fedmsg.config.load_config(
            [], None, filenames=filenames, invalidate_cache=True
        )
    except Exception as exc:  # fedmsg raises bare ValueError/IOError/SyntaxError
        if filenames is None and "No config value" in str(exc):
            # nothing found anywhere: the built-in default (and tell fedmsg.meta
            # processors that load the config at import time where it is)
            default = Path(__file__).with_name("fedmsg_default.py")
            log.info("no fedmsg.d found; using the built-in default %s", default)
            return load_fedmsg_config(default)
        raise ConfigError(
            f"cannot load fedmsg config: {exc} (give a fedmsg.d with --fedmsg-config)"
        ) from exc
    endpoints = config.get("endpoints") or {}
    if not isinstance(endpoints, dict):
        raise ConfigError(f"fedmsg config: endpoints must be a dict, got {endpoints!r}"[:300])
    for name, group in endpoints.items():
        if not isinstance(group, list | tuple) or not all(isinstance(e, str) for e in group):
            raise ConfigError(
                f"fedmsg config: endpoints[{name!r}] must be a list of endpoint strings "
                f"(fedmsg: {{name: ['tcp://host:port', ...]}}), got {group!r}"[:300]
            )
    return config


class UserExtractor:
    """Users, category, processor name and summary for fedmsg messages.

    Args:
        config: the fedmsg config dict (``topic_prefix``, ``environment``, ...).
        fas_cache: optional ``{irc nick or email: FAS username}``; loaded into
            fasshim so processors resolve names offline.
        cache_size: topics remembered in the topic -> processor cache.

    ``errors`` counts processor exceptions.  Thread-compatible (no locks needed
    when one thread uses it).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        fas_cache: Mapping[str, str] | None = None,
        cache_size: int = 4096,
    ) -> None:
        # imported here: fedmsg loads its config and its processors at import
        import fedmsg.meta

        self.config = {k: v for k, v in config.items() if k not in _NETWORK_KEYS}
        #: what ``usernames`` passes as ``**config`` (module docstring)
        self.processor_config = {
            k: self.config[k] for k in PROCESSOR_CONFIG_KEYS if k in self.config
        }
        logging.getLogger("moksha.hub").addFilter(_QuietFasshim())
        install_fas_cache(fas_cache)
        fedmsg.meta.make_processors(**self.config)
        self._processors = list(fedmsg.meta.processors)
        self._cache: dict[str, Any] = {}
        self._cache_size = cache_size
        self.errors = 0
        self._failed_topics: set[str] = set()  # topics a processor failed on (logged)

    @staticmethod
    def load_fas_cache(path: str | os.PathLike[str]) -> dict[str, str]:
        """Read an offline FAS cache: a JSON object ``{nick or email: username}``.

        Raises:
            listener.core.errors.ConfigError: unreadable file or not a string map.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"fas cache {path}: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ConfigError(f"fas cache {path}: expected a JSON object of strings")
        return data

    def processor(self, body: Mapping[str, Any]) -> Any:
        """The fedmsg.meta processor for a message body (cached per topic).

        Same result as ``fedmsg.meta.msg2processor``: the first processor whose
        ``handle_msg`` is not ``None``, else the last (``DefaultProcessor``).
        """
        topic = body.get("topic")
        if not isinstance(topic, str):
            return self._processors[-1]
        proc = self._cache.get(topic)
        if proc is not None:
            return proc
        return self._find_processor(topic)

    def _find_processor(self, topic: str) -> Any:
        proc = self._processors[-1]
        probe = {"topic": topic}
        for candidate in self._processors:
            try:
                if candidate.handle_msg(probe, **self.config) is not None:
                    proc = candidate
                    break
            except Exception:  # a processor's regex on odd topics
                continue
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # topics are few: an overflow is noise, start again
        self._cache[topic] = proc
        return proc

    def usernames(self, body: Mapping[str, Any]) -> frozenset[str]:
        """The users a message is about (``msg2usernames`` semantics).

        Args:
            body: the fedmsg body (``topic``, ``msg``, ...).

        Returns:
            A frozenset of non-empty usernames; ``None``/empty/non-string entries
            are dropped.  Empty when the processor raises (counted in ``errors``).
        """
        try:
            raw = self.processor(body).usernames(body, **self.processor_config)
        except Exception as exc:
            self.errors += 1
            topic = str(body.get("topic"))[:120]
            # the first failure on each topic, then the 1st, 10th, 100th... of all at
            # WARNING; the rest at DEBUG: a real processor failing on every message
            # of a busy topic must not flood the journal
            first = len(self._failed_topics) < 1000 and topic not in self._failed_topics
            if first:
                self._failed_topics.add(topic)
            log.log(
                logging.WARNING if first or is_log_milestone(self.errors) else logging.DEBUG,
                "processor failed on msg_id=%s topic=%s: %s: %s; %d processor failures so far",
                body.get("msg_id"),
                topic,
                type(exc).__name__,
                str(exc)[:200],
                self.errors,
            )
            return frozenset()
        return clean_usernames(raw)

    def processor_name(self, body: Mapping[str, Any]) -> str:
        """The processor's ``__name__`` (``buildsys``, ``Copr``, ``Default``...)."""
        return str(getattr(self.processor(body), "__name__", "Default"))

    def subtitle(self, body: Mapping[str, Any], limit: int = 200) -> str:
        """A one-line human summary (``msg2subtitle``), at most ``limit`` characters.

        Returns the topic when the processor raises or gives nothing.
        """
        try:
            text = self.processor(body).subtitle(body, **self.config)
        except Exception:
            text = ""
        if not isinstance(text, str) or not text:
            text = str(body.get("topic", ""))
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def install_fas_cache(entries: Mapping[str, str] | None, replace: bool = False) -> None:
    """Load ``{nick or email: FAS username}`` into fasshim's module-level cache.

    Args:
        entries: the map (None or empty: nothing added).
        replace: drop what the cache held first (a SIGHUP reload).

    The cache is never left empty: :data:`FAS_SENTINEL` keeps fasshim from trying
    to rebuild it on every message (module docstring).
    """
    # imported here: fedmsg_meta's processors load the fedmsg config at import
    from fedmsg_meta_fedora_infrastructure import fasshim

    if replace:
        fasshim._fas_cache.clear()
    if entries:
        fasshim._fas_cache.update(entries)
    if not fasshim._fas_cache:
        fasshim._fas_cache[FAS_SENTINEL] = FAS_SENTINEL


def clean_usernames(raw: Iterable[Any] | None) -> frozenset[str]:
    """Drop ``None``, empty, non-string and longer than :data:`MAX_USERNAME_LEN`
    entries from a processor's result (names are stripped first)."""
    if not raw:
        return frozenset()
    names = []
    try:
        for u in raw:  # a plain loop: cheaper than a generator for 1-3 names
            if isinstance(u, str):
                u = u.strip()
                if u and len(u) <= MAX_USERNAME_LEN:
                    names.append(u)
    except TypeError:  # not iterable
        return frozenset()
    return frozenset(names)
