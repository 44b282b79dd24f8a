"""Where and how the AMQP input connects, and how it backs off.

TLS is set up as fedora-messaging does it
(``fedora_messaging.twisted.service._configure_tls_parameters``): system or given
CA, TLS >= 1.2, hostname checked; with a client certificate, SASL EXTERNAL.

``bus = "fedora"`` (``listen --fedora``) is Fedora's public broker
(:data:`FEDORA_URL`) with the public client certificate, key and CA shipped in
``listener/fedora/`` (:func:`fedora_files`; origin and licence in its README).

:meth:`AmqpSettings.check` refuses, before any connection, with a
:class:`~listener.core.errors.ConfigError` naming the setting: a bad URL; a
certificate without its key (or the reverse); a TLS file that is missing,
unreadable or not PEM; a client certificate that has expired or is not yet
valid, or that does not match its key; a queue name other than a UUID on
Fedora's vhost :data:`FEDORA_VHOST`.  :meth:`AmqpSettings.expiry_warnings` lists
the certificates that expire within 30 days (``check-config``).
"""

from __future__ import annotations

import datetime
import os
import random
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from listener.core.config import Config
from listener.core.errors import ConfigError

#: Unacknowledged messages the broker may send ahead (``basic.qos``).  Bounds the
#: memory held while Redis is down: the broker stops delivering at this many.
PREFETCH_COUNT = 500
#: Fedora's public broker: URL (user ``fedora``, no password) and virtual host.
FEDORA_URL = "amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub"
FEDORA_VHOST = "/public_pubsub"
#: The shipped files of Fedora's public client (``listener/fedora/``).
FEDORA_DIR = Path(__file__).resolve().parent.parent.parent / "fedora"
#: Queue names Fedora's broker accepts: a UUID in its usual text form.
UUID_NAME = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: check-config warns when a certificate expires within this many days.
EXPIRY_WARN_DAYS = 30
#: The client properties shown in the broker's connection list.
CLIENT_PROPERTIES = {
    "app": "fedmsg-wallboard",
    "product": "fedmsg-wallboard with pika",
}


def fedora_files() -> dict[str, str]:
    """``{"ca_cert", "certfile", "keyfile"}``: paths of the shipped public CA,
    certificate and key of Fedora's broker (``listener/fedora/``)."""
    return {
        "ca_cert": str(FEDORA_DIR / "cacert.pem"),
        "certfile": str(FEDORA_DIR / "fedora-cert.pem"),
        "keyfile": str(FEDORA_DIR / "fedora-key.pem"),
    }


def _utc(cert: Any, attr: str) -> datetime.datetime:
    # cryptography >= 42 has the *_utc properties; earlier ones give naive UTC
    value = getattr(cert, attr + "_utc", None)
    if value is None:
        value = getattr(cert, attr).replace(tzinfo=datetime.UTC)
    return value  # type: ignore[no-any-return]


def _read_pem(path: str, what: str, setting: str) -> bytes:
    if not os.path.exists(path):
        raise ConfigError(f"{setting}: {what} {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {what} {path}: {exc.strerror or exc}") from exc
    return data


@dataclass(frozen=True)
class AmqpSettings:
    """Where and how to connect.

    Attributes:
        url: AMQP URL (``amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub``).
        ca_cert / certfile / keyfile: TLS files (``""``: system CAs, no client
            certificate).  With a client certificate, SASL EXTERNAL is used, as
            fedora-messaging does.
        bindings: routing keys bound on ``amq.topic`` (``#`` = every topic).
        queue: queue name; ``""`` = a fresh UUID per connection.
        prefetch_count: ``basic.qos`` prefetch, messages.
    """

    url: str
    ca_cert: str = ""
    certfile: str = ""
    keyfile: str = ""
    bindings: tuple[str, ...] = ("#",)
    queue: str = ""
    prefetch_count: int = PREFETCH_COUNT
    #: where each of ``url``, ``ca_cert``, ``certfile``, ``keyfile`` came from, as
    #: error messages name it (``amqp_certfile``, ``[tls] certfile of FILE``...)
    names: Mapping[str, str] = field(default_factory=dict, compare=False)

    def name(self, key: str) -> str:
        """The setting ``key`` (``url``, ``ca_cert``, ...) as the user wrote it."""
        default = "amqp_url" if key == "url" else f"amqp_{key}"
        return self.names.get(key, default)

    @classmethod
    def from_config(cls, cfg: Config) -> AmqpSettings:
        """Settings from the wallboard config; empty fields fall back to
        fedora-messaging's own config file (``$FEDORA_MESSAGING_CONF``, else
        ``/etc/fedora-messaging/config.toml``: its ``amqp_url`` and ``[tls]``),
        then to fedora-messaging's default ``amqp://`` (localhost, guest).

        Raises:
            listener.core.errors.ConfigError: fedora-messaging's config file is invalid.
        """
        url = cfg.amqp_url
        tls = {
            "ca_cert": cfg.amqp_ca_cert,
            "certfile": cfg.amqp_certfile,
            "keyfile": cfg.amqp_keyfile,
        }
        names: dict[str, str] = {}
        if cfg.bus == "fedora":  # Fedora's public broker, the shipped files
            url = url or FEDORA_URL
            for key, path in fedora_files().items():
                if not tls[key]:
                    tls[key] = path
                    names[key] = f'bus = "fedora"\'s {key} (shipped)'
        elif not url:
            fm = _fedora_messaging_conf()
            source = os.environ.get("FEDORA_MESSAGING_CONF") or "fedora-messaging's config"
            url = str(fm.get("amqp_url") or "amqp://")
            names["url"] = f"amqp_url of {source}"
            # fedora-messaging's [tls] goes with its own URL only
            for key in tls:
                if not tls[key]:
                    tls[key] = str((fm.get("tls") or {}).get(key) or "")
                    names[key] = f"[tls] {key} of {source}"
        return cls(
            url=url,
            bindings=tuple(cfg.amqp_bindings) or ("#",),
            queue=cfg.amqp_queue,
            ca_cert=tls["ca_cert"],
            certfile=tls["certfile"],
            keyfile=tls["keyfile"],
            names=names,
        )

    @property
    def vhost(self) -> str:
        """The URL's virtual host (``/public_pubsub``; ``/`` when the path is empty)."""
        path = urllib.parse.urlsplit(self.url).path
        return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"

    def check(self, now: datetime.datetime | None = None) -> None:
        """Refuse what the broker would refuse or TLS could not load, before any
        connection (module docstring).  ``now``: the time certificates are
        checked at (default the clock's).

        Raises:
            listener.core.errors.ConfigError: one line naming the setting.
        """
        # imported here: cryptography only for amqps:// settings
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme not in ("amqp", "amqps"):
            raise ConfigError(f"{self.name('url')}: {self.url!r} is not an amqp:// or amqps:// URL")
        if self.vhost == FEDORA_VHOST and self.queue and not UUID_NAME.fullmatch(self.queue):
            raise ConfigError(
                f"amqp_queue: {self.queue!r} is not a UUID; the broker of {FEDORA_VHOST} "
                "refuses any other queue name (make one with uuidgen, or leave it empty)"
            )
        if bool(self.certfile) != bool(self.keyfile):
            missing = "keyfile" if self.certfile else "certfile"
            raise ConfigError(
                f"{self.name(missing)} is empty: a client certificate needs its key, and "
                "a key its certificate"
            )
        now = now or datetime.datetime.now(datetime.UTC)
        if self.ca_cert:
            data = _read_pem(self.ca_cert, "CA certificate", self.name("ca_cert"))
            try:
                if not x509.load_pem_x509_certificates(data):
                    raise ValueError("no certificate")
            except ValueError as exc:
                raise ConfigError(
                    f"{self.name('ca_cert')}: {self.ca_cert} is not a PEM certificate ({exc})"
                ) from exc
        if self.certfile:
            data = _read_pem(self.certfile, "client certificate", self.name("certfile"))
            try:
                cert = x509.load_pem_x509_certificate(data)
            except ValueError as exc:
                raise ConfigError(
                    f"{self.name('certfile')}: {self.certfile} is not a PEM certificate ({exc})"
                ) from exc
            after, before = _utc(cert, "not_valid_after"), _utc(cert, "not_valid_before")
            if after < now:
                raise ConfigError(
                    f"{self.name('certfile')}: the certificate {self.certfile} expired on "
                    f"{after:%Y-%m-%d %H:%M} UTC"
                )
            if before > now:
                raise ConfigError(
                    f"{self.name('certfile')}: the certificate {self.certfile} is not valid "
                    f"before {before:%Y-%m-%d %H:%M} UTC"
                )
            key_data = _read_pem(self.keyfile, "client key", self.name("keyfile"))
            try:
                key = load_pem_private_key(key_data, password=None)
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    f"{self.name('keyfile')}: {self.keyfile} is not an unencrypted PEM "
                    f"private key ({exc})"
                ) from exc
            if key.public_key() != cert.public_key():
                raise ConfigError(
                    f"{self.name('keyfile')}: {self.keyfile} is not the key of "
                    f"{self.name('certfile')} {self.certfile}"
                )

    def expiry_warnings(
        self, now: datetime.datetime | None = None, days: int = EXPIRY_WARN_DAYS
    ) -> list[str]:
        """One line per configured certificate (CA and client) that expires within
        ``days`` of ``now``; unreadable files are :meth:`check`'s business."""
        # imported here: cryptography only for amqps:// settings
        from cryptography import x509

        now = now or datetime.datetime.now(datetime.UTC)
        warnings = []
        for key in ("ca_cert", "certfile"):
            path = getattr(self, key)
            if not path:
                continue
            try:
                with open(path, "rb") as f:
                    certs = x509.load_pem_x509_certificates(f.read())
            except (OSError, ValueError):
                continue
            for cert in certs:
                after = _utc(cert, "not_valid_after")
                left = after - now
                if left < datetime.timedelta(days=days):
                    warnings.append(
                        f"{self.name(key)}: {cert.subject.rfc4514_string()} in {path} "
                        f"expires on {after:%Y-%m-%d} ({max(0, left.days)} days left)"
                    )
        return warnings

    def parameters(self) -> Any:
        """The ``pika.URLParameters`` (TLS context, credentials, client properties).

        Raises:
            listener.core.errors.ConfigError: a bad URL or unreadable TLS files.
        """
        # imported here: pika only for the AMQP input: every other command starts without it
        import pika

        self.check()
        try:
            params = pika.URLParameters(self.url)
        except Exception as exc:
            raise ConfigError(f"{self.name('url')}: bad URL {self.url!r}: {exc}") from exc
        params.client_properties = dict(CLIENT_PROPERTIES)
        if self.url.startswith("amqps:") or params.ssl_options is not None:
            # as fedora_messaging.twisted.service._configure_tls_parameters
            try:
                ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
                if self.ca_cert:
                    ctx.load_verify_locations(cafile=self.ca_cert)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.check_hostname = True
                if self.certfile and self.keyfile:
                    ctx.load_cert_chain(self.certfile, self.keyfile)
                    params.credentials = pika.credentials.ExternalCredentials()
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{self.name('ca_cert')} / {self.name('certfile')}: TLS cannot load them: {exc}"
                ) from exc
            params.ssl_options = pika.SSLOptions(ctx, server_hostname=params.host)
        return params


#: TLS alerts by which a broker refuses the client certificate (OpenSSL's names).
_REFUSED_CERT_ALERTS = (
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_ACCESS_DENIED",
    "ALERT_HANDSHAKE_FAILURE",
)


def diagnose(settings: AmqpSettings, failure: str) -> str | None:
    """The configuration error behind a failed AMQP session, as one line naming
    the setting, or None when the failure may pass (broker down, connection lost).

    Args:
        failure: the text of the failure (``repr`` of pika's exception, after the
            handshake step that failed: ``"queue.declare: ChannelClosedByBroker(403,
            ...)"``).

    Recognised: the broker's certificate does not verify (``amqp_ca_cert``); the
    broker refuses the client certificate by a TLS alert (``amqp_certfile``);
    ``ACCESS_REFUSED`` on a queue (``amqp_queue``) or on a binding
    (``amqp_bindings``).  A refused login or vhost is :func:`login_problem`'s: a
    booting broker refuses them for a moment, so it is retried.
    """
    host = urllib.parse.urlsplit(settings.url).netloc.rsplit("@", 1)[-1]
    match = re.search(r"certificate verify failed: ([^(')\]]+)", failure)
    if "CERTIFICATE_VERIFY_FAILED" in failure:
        why = match.group(1).strip() if match else "certificate verify failed"
        ca = (
            f"{settings.name('ca_cert')} {settings.ca_cert}"
            if settings.ca_cert
            else ("the system CAs (amqp_ca_cert is empty)")
        )
        return f"{ca}: the certificate of the broker {host} does not verify ({why})"
    for alert in _REFUSED_CERT_ALERTS:
        if alert in failure:
            what = alert[len("ALERT_") :].lower().replace("_", " ")
            if not settings.certfile:
                return (
                    f"amqp_certfile is empty: the broker {host} wants a client certificate "
                    f"(TLS alert: {what})"
                )
            return (
                f"{settings.name('certfile')}: the broker {host} refused the client "
                f"certificate {settings.certfile} (TLS alert: {what})"
            )
    refused = re.search(r'ACCESS_REFUSED - ([^"\\]+)', failure)
    if refused is not None:
        detail = refused.group(1).strip()
        if failure.startswith(("queue.declare", "basic.qos", "basic.consume")):
            queue = settings.queue or "(a fresh UUID)"
            return f"amqp_queue {queue!r}: the broker refused it: {detail}"
        if failure.startswith("queue.bind"):
            return f"amqp_bindings {list(settings.bindings)}: the broker refused them: {detail}"
    return None


def login_problem(settings: AmqpSettings, failure: str) -> str | None:
    """One line naming ``amqp_url`` when the broker refused the login or the vhost
    (wrong user, password or certificate CN, no permission on the vhost), else
    None.  Not a :func:`diagnose` error: a broker that is booting refuses logins
    and vhosts for a moment, so the input logs this and retries."""
    host = urllib.parse.urlsplit(settings.url).netloc.rsplit("@", 1)[-1]
    if "ACCESS_REFUSED" in failure or "AuthenticationError" in failure:
        refused = re.search(r"ACCESS_REFUSED - ([^\"'\\]+)", failure)
        why = refused.group(1).strip() if refused else "user, password or client certificate"
        return (
            f"{settings.name('url')}: the broker {host} refused the login of "
            f"{redact(settings.url)} ({why})"
        )
    if "ProbableAccessDeniedError" in failure or "NOT_ALLOWED" in failure:
        return (
            f"{settings.name('url')}: the broker {host} refused access to the vhost "
            f"{settings.vhost!r}"
        )
    return None


def _fedora_messaging_conf() -> Mapping[str, Any]:
    # imported here: fedora_messaging is slow to import; only what uses it pays
    from fedora_messaging import config as fm_config
    from fedora_messaging.exceptions import ConfigurationException

    try:
        if not fm_config.conf.loaded:
            fm_config.conf.load_config()
        return fm_config.conf
    except ConfigurationException as exc:
        raise ConfigError(f"fedora-messaging config: {exc}") from exc


def redact(url: str) -> str:
    """The URL without its password (for logs)."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in cred else f"{scheme}://{user}@{host}"


class Backoff:
    """Exponential reconnect delays with jitter: ``min_s``, doubling, capped at ``max_s``.

    Each delay is multiplied by a random factor in [1, 1 + ``jitter``] so many
    wallboards do not reconnect in step.  :meth:`reset` after a good session.
    """

    def __init__(self, min_s: float = 1.0, max_s: float = 60.0, jitter: float = 0.25) -> None:
        self.min_s, self.max_s, self.jitter = min_s, max_s, jitter
        self._next = min_s

    def next(self) -> float:
        """The next delay, seconds."""
        delay = self._next
        self._next = min(self.max_s, self._next * 2)
        return delay * (1 + random.uniform(0, self.jitter))

    def reset(self) -> None:
        """Start again from ``min_s``."""
        self._next = self.min_s
