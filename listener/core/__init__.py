"""The pure core: messages, users, counting, windows, the longtail metric, snapshots.

Values in, values out: no bus, no Redis, no network, no event loop, no clock (the
layering contract in ``pyproject.toml`` checks it).  Every other layer builds on it.
"""
