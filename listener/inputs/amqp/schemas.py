"""Users from installed fedora-messaging schema packages.

fedora-messaging maps the ``fedora_messaging_schema`` header to a message class
through the ``fedora.messages`` entry points (``fedora_messaging.message``); a
schema package (``bodhi-messages``, ``anitya-schema``...) registers its classes
there.  fedora-messaging's own ``get_class`` logs a warning for every unknown
schema, i.e. for most messages of the live bus: this registry stays quiet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from listener.inputs.amqp.wire import Decoded

log = logging.getLogger(__name__)


class SchemaUsers:
    """Users from installed fedora-messaging schema packages (``fedora.messages``).

    The entry points are listed once; a class is loaded on first use.  A schema
    "declares usernames" when its class overrides ``Message.usernames``.  Unknown
    schemas, classes that fail to load and ``usernames`` that raise give None
    (fedmsg.meta is asked instead); failures are counted in ``errors``.
    """

    def __init__(self) -> None:
        # imported here: fedora_messaging is slow to import; only what uses it pays
        from fedora_messaging.message import Message

        self._base = Message
        self._eps = {ep.name: ep for ep in entry_points(group="fedora.messages")}
        self._classes: dict[str, Any] = {}
        self.errors = 0

    @property
    def names(self) -> frozenset[str]:
        """The installed schema names."""
        return frozenset(self._eps)

    def _class(self, name: str) -> Any:
        if name in self._classes:
            return self._classes[name]
        cls = None
        ep = self._eps.get(name)
        if ep is not None:
            try:
                loaded = ep.load()
                if (
                    isinstance(loaded, type)
                    and issubclass(loaded, self._base)
                    and loaded.usernames is not self._base.usernames
                ):
                    cls = loaded
            except Exception as exc:  # a broken schema package
                self.errors += 1
                log.warning("cannot load schema %s: %s", name, exc)
        self._classes[name] = cls
        return cls

    def __call__(self, decoded: Decoded, headers: Mapping[str, Any]) -> list[str] | None:
        """The schema's usernames for a message, or None (see the class doc)."""
        cls = self._class(decoded.schema) if decoded.schema else None
        if cls is None:
            return None
        # imported here: pika only for the AMQP input: every other command starts without it
        import pika

        try:
            props = pika.BasicProperties(headers=dict(headers))
            msg = cls(body=decoded.amqp_body, topic=decoded.body["topic"], properties=props)
            return [u for u in msg.usernames if isinstance(u, str)]
        except Exception as exc:  # a body that does not fit its schema
            self.errors += 1
            log.debug(
                "usernames of %s raised on %s: %s", decoded.schema, decoded.body["msg_id"], exc
            )
            return None
