"""sd_notify: READY / WATCHDOG / STATUS / STOPPING to systemd.  I/O, tiny.

The documented datagram protocol (sd_notify(3)): send ``KEY=VALUE`` lines in one
datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means
the abstract namespace).  Without ``NOTIFY_SOCKET`` every call is a no-op, so the
same code runs under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; a no-op when ``$NOTIFY_SOCKET`` is unset.

    ``watchdog_interval_s`` is half of ``$WATCHDOG_USEC`` (systemd's advice), or
    None when the watchdog is off.
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
