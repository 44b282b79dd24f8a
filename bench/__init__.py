"""Benchmarks of fedmsg-wallboard (issue 9): ``make bench`` -> ``docs/BENCHMARKS.md``.

Never run by ``make test``; ``tests/test_bench_smoke.py`` only checks that the
harness counts correctly at a small size.
"""
