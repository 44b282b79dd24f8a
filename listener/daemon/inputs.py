"""The listener's bus inputs seen as one: the ZeroMQ bus, the AMQP input, or both."""

from __future__ import annotations

from listener.core.linkstate import best_state
from listener.inputs.amqp.input import AmqpInput
from listener.inputs.zmq import Bus


class Inputs:
    """What the heartbeat, ``/healthz`` and ``/metrics`` read of the inputs.

    Args:
        bus: the ZeroMQ input, or None (``bus = "amqp"``).
        amqp: the AMQP input, or None (``bus = "zmq"``).
    """

    def __init__(self, bus: Bus | None, amqp: AmqpInput | None) -> None:
        self.bus = bus
        self.amqp = amqp

    def state(self, now: float) -> str:
        """The best state of the inputs (:data:`listener.core.linkstate.LINK_STATES`):
        ``"ok"`` if any input is ok; ``"dead"`` with no input."""
        return best_state(i.state(now) for i in (self.bus, self.amqp) if i is not None)

    @property
    def gaps(self) -> int:
        """Messages missing by publisher sequence numbers (ZeroMQ only)."""
        return self.bus.gaps if self.bus is not None else 0

    @property
    def reconnects(self) -> int:
        """ZeroMQ sockets recreated plus AMQP sessions retried."""
        n = self.bus.reconnects if self.bus is not None else 0
        return n + (self.amqp.stats.reconnects if self.amqp is not None else 0)
