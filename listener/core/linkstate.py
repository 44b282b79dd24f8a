"""The states of the bus inputs (a ZeroMQ link, the AMQP input, the bus as a whole),
reported in the listener's heartbeat and shown by ``/healthz`` and on the wall."""

from __future__ import annotations

from collections.abc import Iterable

#: The bus states, best first: a link's, an input's and the bus's.
#: ``"connecting"``: no handshake yet, in an input's first seconds; ``"quiet"``:
#: connected, no message lately; ``"dead"``: not connected for longer than the
#: start-up grace (:meth:`listener.inputs.zmq.Bus.link_state`).
LINK_STATES = ("ok", "quiet", "connecting", "dead")


def best_state(states: Iterable[str]) -> str:
    """The best of ``states`` in :data:`LINK_STATES` order; ``"dead"`` when none."""
    found = set(states)
    return next((s for s in LINK_STATES if s in found), "dead")
