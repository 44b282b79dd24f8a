"""Where and how the AMQP input connects, and how it backs off.

TLS is set up as fedora-messaging does it
(``fedora_messaging.twisted.service._configure_tls_parameters``): system or given
CA, TLS >= 1.2, hostname checked; with a client certificate, SASL EXTERNAL.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from listener.core.config import Config
from listener.core.errors import ConfigError

#: Unacknowledged messages the broker may send ahead (``basic.qos``).  Bounds the
#: memory held while Redis is down: the broker stops delivering at this many.
PREFETCH_COUNT = 500
#: The client properties shown in the broker's connection list.
CLIENT_PROPERTIES = {
    "app": "fedmsg-wallboard",
    "product": "fedmsg-wallboard with pika",
}


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
        if not url:
            fm = _fedora_messaging_conf()
            url = str(fm.get("amqp_url") or "amqp://")
            # fedora-messaging's [tls] goes with its own URL only
            for key in tls:
                tls[key] = tls[key] or str((fm.get("tls") or {}).get(key) or "")
        return cls(
            url=url,
            bindings=tuple(cfg.amqp_bindings) or ("#",),
            queue=cfg.amqp_queue,
            ca_cert=tls["ca_cert"],
            certfile=tls["certfile"],
            keyfile=tls["keyfile"],
        )

    def parameters(self) -> Any:
        """The ``pika.URLParameters`` (TLS context, credentials, client properties).

        Raises:
            listener.core.errors.ConfigError: a bad URL or unreadable TLS files.
        """
        # imported here: pika only for the AMQP input: every other command starts without it
        import pika

        try:
            params = pika.URLParameters(self.url)
        except Exception as exc:
            raise ConfigError(f"bad amqp_url {self.url!r}: {exc}") from exc
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
                raise ConfigError(f"AMQP TLS files: {exc}") from exc
            params.ssl_options = pika.SSLOptions(ctx, server_hostname=params.host)
        return params


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
