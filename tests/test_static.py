"""The style guide's static checks (STYLE.md, "Habits"): ``ruff`` over the code,
tests and benchmarks, and ``mypy --strict`` over the ``listener`` package."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=str(ROOT),
        timeout=600,
    )


def test_ruff_finds_nothing() -> None:
    r = _run("ruff", "check", "listener", "tests", "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_is_clean_over_the_listener_package() -> None:
    r = _run("mypy", "--strict", "listener")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout
