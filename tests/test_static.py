"""Static checks run by ``make test``: ruff (lint and format) over the code, tests
and benchmarks, mypy strict over the ``listener`` package (settings in
``pyproject.toml``), the layering contract (import-linter), and the rules the
architecture states that no tool checks: imports inside functions say why, no
module reads another's private names, no test module imports another."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.helpers.common import ROOT

PACKAGE = ROOT / "listener"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=600,
    )


def _modules(root: Path) -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(root.rglob("*.py"))]


def test_ruff_finds_nothing() -> None:
    r = _run("ruff", "check", "listener", "tests", "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_leaves_the_code_as_it_is() -> None:
    r = _run("ruff", "format", "--check", "listener", "tests", "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_is_clean_over_the_listener_package() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert settings["tool"]["mypy"]["strict"] is True
    r = _run("mypy")  # files and flags from pyproject.toml
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout


def test_the_layering_contract_holds() -> None:
    r = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 kept, 0 broken" in r.stdout, r.stdout


def test_an_import_inside_a_function_says_why() -> None:
    """Imports sit at the top of modules; one inside a function avoids a real
    start-up cost or side effect, and the comment above it (or above the first
    import of its group) says which."""
    silent = []
    for path, tree in _modules(PACKAGE):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for stmt in ast.walk(node):
                if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    continue
                k = stmt.lineno - 2
                while k >= 0 and lines[k].strip().startswith(("import ", "from ")):
                    k -= 1  # a group of imports shares one comment
                if k < 0 or not lines[k].strip().startswith("#"):
                    silent.append(f"{path.relative_to(ROOT)}:{stmt.lineno}")
    assert not silent, silent


#: Private names of other libraries used on purpose: argparse keeps a parser's
#: subcommands and options in ``_actions`` / ``_SubParsersAction`` (no public
#: accessor); fedmsg_meta's FAS cache (``fasshim._fas_cache``) has no public API to
#: fill; fedmsg checks a signer's chain and CRL with ``x509_ng._validate_signing_cert``
#: (the step its own ``validate`` runs); ``os._exit`` is the documented way out at once.
FOREIGN_PRIVATE = {
    "_actions",
    "_SubParsersAction",
    "_fas_cache",
    "_validate_signing_cert",
    "_exit",
}


def test_no_module_reads_another_objects_private_names() -> None:
    found = []
    for path, tree in _modules(PACKAGE):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in FOREIGN_PRIVATE:
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{name}")
    assert not found, found


def test_no_test_module_imports_another() -> None:
    found = []
    for path, tree in _modules(ROOT / "tests"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                leaf = node.module.rsplit(".", 1)[-1]
                if node.module.startswith("tests.") and (
                    leaf.startswith("test_") or leaf == "conftest"
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
    assert not found, found
