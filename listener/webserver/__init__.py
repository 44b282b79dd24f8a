"""The ``web`` process: the server (:mod:`.server`), its HTTP routes
(:mod:`.routes`), the pure parsing of requests and health (:mod:`.api`), and the
websocket fan-out (:mod:`.hub`).
"""
