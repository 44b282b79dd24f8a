"""systemd integration: sd_notify, journald-friendly logs, SIGHUP reload.

* :class:`Notifier`: the documented datagram protocol (sd_notify(3)): ``KEY=VALUE``
  lines in one datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a
  leading ``@`` means the abstract namespace).  Without ``NOTIFY_SOCKET`` every
  call is a no-op, so the same code runs under systemd, in a terminal and in tests.
* :class:`JournalFormatter`: ``<N>`` syslog priority prefixes on stderr lines, which
  journald turns into the entry's ``PRIORITY=`` (sd-daemon(3), ``SyslogLevelPrefix=``),
  used only when stderr really is the journal stream (``$JOURNAL_STREAM``,
  systemd.exec(5)).
* :func:`reload_settings`: what ``ExecReload=/bin/kill -HUP $MAINPID`` does: re-read
  the config, apply what can change without a restart (:data:`RELOADABLE`) and log
  the changed settings that need a restart.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from listener.core.config import Config
from listener.core.errors import ConfigError
from listener.core.users import UserExtractor, install_fas_cache

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; a no-op when ``$NOTIFY_SOCKET`` is unset.

    Args:
        environ: the environment to read (default ``os.environ``).

    ``watchdog_interval_s`` is half of ``$WATCHDOG_USEC`` (systemd's advice,
    sd_watchdog_enabled(3)), in seconds, or None when the watchdog is off or meant
    for another process (``$WATCHDOG_PID``).
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if addr:
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured."""
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False on failure (logged)."""
        if self._sock is None or self._addr is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8"), self._addr)
            return True
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str = "") -> bool:
        """``READY=1`` (plus ``STATUS=``)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the main loop is alive."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """``STATUS=text`` (shown by ``systemctl status``)."""
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        """``STOPPING=1``."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` (end with :meth:`ready`)."""
        return self.notify("RELOADING=1")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- logs ------------------------------------------------------------------

#: logging level -> syslog priority (sd-daemon.h ``SD_ERR``... values).
SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def stderr_is_journal(environ: dict[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the journal stream systemd connected (``$JOURNAL_STREAM``).

    ``$JOURNAL_STREAM`` is ``"<st_dev>:<st_ino>"`` of the stream socket
    (systemd.exec(5)); it is inherited by children whose stderr may be redirected,
    so the device and inode are compared, as sd_journal_stream_fd(3) advises.
    """
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """``<priority>LEVEL logger: message``, without a timestamp (journald adds one).

    Each continuation line of a multi-line record (a traceback) gets the same
    ``<N>`` prefix, so journald files the whole record at the record's priority.
    """

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record's text with a ``<N>`` prefix on every line."""
        prio = SYSLOG_PRIORITY.get(record.levelno)
        if prio is None:
            prio = 7 if record.levelno < logging.INFO else 3
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.split("\n"))


def journal_handler(stream: Any = None) -> logging.Handler:
    """A stderr handler with :class:`JournalFormatter`."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JournalFormatter())
    return handler


# -- SIGHUP ------------------------------------------------------------------

#: Settings that SIGHUP applies without a restart.
RELOADABLE = frozenset({"log_level", "fas_cache"})


def changed_settings(old: Config, new: Config) -> list[str]:
    """Names of the settings whose values differ, in field order."""
    return [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def apply_log_level(level: str) -> str:
    """Set the root logger's level (empty: INFO); returns the level applied."""
    applied = (level or "INFO").upper()
    logging.getLogger().setLevel(applied)
    return applied


def apply_fas_cache(path: str) -> int:
    """Replace fedmsg_meta's offline FAS cache with the JSON file ``path``.

    The cache is fasshim's module-level ``{nick or email: username}`` map, read by
    the processors at call time.  An empty ``path`` leaves the cache as it is.

    Returns:
        The number of entries loaded (0 for an empty ``path``).

    Raises:
        listener.core.errors.ConfigError: unreadable file, or not a JSON string map.
    """
    if not path:
        return 0
    data = UserExtractor.load_fas_cache(path)
    install_fas_cache(data, replace=True)
    return len(data)


def reload_settings(
    running: Config,
    load: Callable[[], Config],
    notifier: Notifier | None = None,
    reloadable: frozenset[str] = RELOADABLE,
) -> list[str] | None:
    """Handle SIGHUP: re-read the config, apply what is reloadable, report the rest.

    Args:
        running: the config the process started with.
        load: builds the new config (the same file and CLI overrides as at start).
        notifier: gets ``RELOADING=1`` then ``READY=1`` (sd_notify(3)).
        reloadable: the settings applied at once: :data:`RELOADABLE` for the
            listener; a web process, which finds no users, applies ``log_level``.

    Returns:
        The changed settings that need a restart (logged at WARNING), or None when
        the new config is invalid: then nothing changes and the error is logged;
        the process keeps running with its old settings.  Never raises.
    """
    if notifier is not None:
        notifier.reloading()
    try:
        try:
            new = load()
            level = apply_log_level(new.log_level)
            entries = apply_fas_cache(new.fas_cache) if "fas_cache" in reloadable else 0
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded: %s", exc)
            return None
        pending = [n for n in changed_settings(running, new) if n not in reloadable]
        if "fas_cache" in reloadable:
            log.info(
                "SIGHUP: reloaded log level %s, fas_cache %s",
                level,
                f"{new.fas_cache} ({entries} entries)" if new.fas_cache else "(none)",
            )
        else:
            log.info("SIGHUP: reloaded log level %s", level)
        if pending:
            log.warning("SIGHUP: %s changed; restart to apply", ", ".join(pending))
        return pending
    finally:
        if notifier is not None:
            notifier.ready()
