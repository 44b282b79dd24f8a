"""Benchmarks of fedmsg-wallboard: ``make bench`` -> ``docs/BENCHMARKS.md``.

Never run by ``make test``; ``tests/tools/test_bench_smoke.py`` only checks that the
harness counts correctly at a small size.
"""
