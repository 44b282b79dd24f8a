"""The ``listen`` process: the writer (:mod:`.consumer`), the wiring and lifecycle
(:mod:`.service`), backfill, metrics and memory tuning.
"""
