"""Users, summary, agent and packages from installed fedora-messaging schema packages.

fedora-messaging maps the ``fedora_messaging_schema`` header to a message class
through the ``fedora.messages`` entry points (``fedora_messaging.message``); a
schema package (``bodhi-messages``, ``anitya-schema``...) registers its classes
there.  The ``fedora`` extra of this project installs those of today's bus
(pyproject.toml).  fedora-messaging's own ``get_class`` logs a warning for every
unknown schema: this registry stays quiet.

Users: a schema's ``usernames``, the base ``Message``'s ``[]`` included (its
publisher sent the ``fedora_messaging_user_*`` headers from it: none means the
message is about no user); the base class itself (``base.message``) says
nothing, so fedmsg.meta is asked.  Summary, agent and packages: only where the
class overrides the base (which answers the topic, None and ``[]``).  A schema's
property may raise on a body it does not expect (a trimmed or older body): that
is counted in :attr:`SchemaUsers.errors` and the caller falls back (fedmsg.meta),
never crashes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
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

    def _load(self, name: str) -> Any:
        """The schema class registered as ``name`` (a ``Message`` subclass), or None."""
        if name in self._classes:
            return self._classes[name]
        cls = None
        ep = self._eps.get(name)
        if ep is not None:
            try:
                loaded = ep.load()
                if isinstance(loaded, type) and issubclass(loaded, self._base):
                    cls = loaded
            except Exception as exc:  # a broken schema package
                self.errors += 1
                log.warning("cannot load schema %s: %s", name, exc)
        self._classes[name] = cls
        return cls

    def _class(self, name: str) -> Any:
        """The schema class of a real schema (not fedora-messaging's base
        ``Message``, which knows nothing of its body), else None."""
        cls = self._load(name)
        return cls if cls is not None and cls is not self._base else None

    def message(self, decoded: Decoded, headers: Mapping[str, Any]) -> Any:
        """The schema's ``Message`` for a non-bridged message whose schema is
        installed, or None (bridged, no header, unknown schema, or the class
        refuses the body)."""
        cls = self._class(decoded.schema) if decoded.schema and not decoded.bridged else None
        if cls is None:
            return None
        # imported here: pika only for the AMQP input: every other command starts without it
        import pika

        try:
            props = pika.BasicProperties(headers=dict(headers))
            with warnings.catch_warnings():
                # a deprecated schema warns its publishers (anitya's v1 classes); a
                # consumer still reads the messages published with it
                warnings.simplefilter("ignore", DeprecationWarning)
                return cls(body=decoded.amqp_body, topic=decoded.body["topic"], properties=props)
        except Exception as exc:  # a body the class refuses at construction
            self.errors += 1
            log.debug("schema %s refused %s: %s", decoded.schema, decoded.body["msg_id"], exc)
            return None

    def _prop(self, msg: Any, name: str, overridden: bool = True) -> Any:
        """``msg.<name>`` (when its class overrides it, with ``overridden``), else
        None; counted in :attr:`errors` if it raises."""
        if overridden and getattr(type(msg), name) is getattr(self._base, name):
            return None
        try:
            return getattr(msg, name)
        except Exception as exc:  # a body that does not fit its schema
            self.errors += 1
            log.debug("%s of %s raised on %s: %s", name, type(msg).__name__, msg.id, exc)
            return None

    def __call__(self, decoded: Decoded, headers: Mapping[str, Any]) -> list[str] | None:
        """The schema's usernames for a message, or None (see the class doc)."""
        if not decoded.schema or self._class(decoded.schema) is None:
            return None
        msg = self.message(decoded, headers)
        if msg is None:
            return None
        users = self._prop(msg, "usernames", overridden=False)
        if not isinstance(users, (list, tuple, set, frozenset)):
            return None
        return [u for u in users if isinstance(u, str)]

    def describe(
        self, decoded: Decoded, headers: Mapping[str, Any]
    ) -> Callable[[], dict[str, Any]] | None:
        """For a message with an installed schema: a function giving ``{"summary",
        "agent", "packages"}`` (the schema's ``summary``, ``agent_name`` and
        ``packages``; None / ``[]`` where the schema does not override them or
        they raise), called only if the message is shown; else None.  Never
        raises."""
        if not decoded.schema or decoded.bridged or self._class(decoded.schema) is None:
            return None

        def info() -> dict[str, Any]:
            msg = self.message(decoded, headers)
            if msg is None:
                return {}
            summary = self._prop(msg, "summary")
            agent = self._prop(msg, "agent_name")
            packages = self._prop(msg, "packages")
            return {
                "summary": summary if isinstance(summary, str) else None,
                "agent": agent if isinstance(agent, str) else None,
                "packages": [p for p in packages if isinstance(p, str)]
                if isinstance(packages, (list, tuple, set, frozenset))
                else [],
            }

        return info
