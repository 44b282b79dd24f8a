"""The exception tree of fedmsg-wallboard: one root, transient vs permanent.

``WallboardError`` is the root.  ``TransientError`` covers what a retry with
backoff may fix (Redis or bus unreachable); ``PermanentError`` what it will not
(bad configuration, a crypto backend that cannot validate signatures).
"""

from __future__ import annotations

#: Process exit codes (sysexits.h where one fits; documented in ``--help``).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78
EXIT_PIPE = 141


class WallboardError(Exception):
    """Root of every error raised on purpose by fedmsg-wallboard."""


class TransientError(WallboardError):
    """May succeed if retried later (Redis down, a socket timed out)."""


class PermanentError(WallboardError):
    """Will fail again the same way: fix the input or the configuration."""


class ConfigError(PermanentError):
    """Invalid configuration (exit code 78, ``EX_CONFIG``; systemd does not restart)."""


class SignatureSetupError(PermanentError):
    """``validate_signatures`` is on but fedmsg's x509 validation cannot work."""


class InputError(PermanentError):
    """An input file or datagrepper page that cannot be read as fedmsg messages."""
