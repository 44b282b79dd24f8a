"""fedmsg-wallboard: watch the Fedora message bus and show its activity on a wall.

Data flow: bus (:mod:`listener.bus`) -> envelopes (:mod:`listener.envelope`) ->
users (:mod:`listener.users`) -> Redis counters (:mod:`listener.store`) ->
sliding windows and longtail (:mod:`listener.windows`, :mod:`listener.longtail`)
-> web (:mod:`listener.web`).  See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
