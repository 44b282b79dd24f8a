"""fedmsg-wallboard: watch the Fedora message bus and show its activity on a wall.

Data flow: bus (:mod:`listener.inputs.zmq`) -> envelopes (:mod:`listener.core.envelope`) ->
users (:mod:`listener.core.users`) -> Redis counters (:mod:`listener.storage.store`) ->
sliding windows and longtail (:mod:`listener.core.windows`, :mod:`listener.core.longtail`)
-> web (:mod:`listener.webserver.server`).  See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
