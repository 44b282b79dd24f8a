"""The exception tree of fedmsg-wallboard: one root, transient vs permanent.

``WallboardError`` is the root.  ``TransientError`` covers what a retry with
backoff may fix (Redis or bus unreachable); ``PermanentError`` what it will not
(bad configuration, a crypto backend that cannot validate signatures).
"""

from __future__ import annotations

#: Process exit codes (sysexits.h where one fits; listed by ``--help`` and
#: docs/CONFIG.md): success; a runtime error; a usage or input error; no data to
#: read (``EX_NOINPUT``: a read-only command would open a new, empty store); Redis or
#: another resource unavailable (``EX_UNAVAILABLE``); a temporary refusal, try
#: again (``EX_TEMPFAIL``: another backfill holds the lock, another demo runs);
#: bad configuration (``EX_CONFIG``, systemd does not restart); interrupted
#: (128 + SIGINT); standard output closed early (128 + SIGPIPE).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOINPUT = 66
EXIT_UNAVAILABLE = 69
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141

#: Done, but what was fetched is known to be incomplete: a backfill that lost its
#: lock, ran out of retries, or got fewer messages than datagrepper's ``total``
#: (status ``incomplete`` in Redis; the next start-up backfill resumes it), or a
#: study whose datagrepper ranges came short.
EXIT_INCOMPLETE = 3

#: ``--help``'s line about them.
EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 error, 2 usage or input, 3 incomplete (a backfill or study "
    "fetched less than datagrepper holds), 66 no wallboard data there, "
    "69 Redis or a port unavailable, "
    "75 try again later (a backfill or demo already running), 78 bad config, "
    "130 interrupted, 141 output closed early."
)


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


class NoDataError(PermanentError):
    """A command that only reads would open a new, empty embedded Redis: no
    listener ever wrote where it looks (exit 66, ``EX_NOINPUT``)."""


class InputError(PermanentError):
    """An input file or datagrepper page that cannot be read as fedmsg messages."""
