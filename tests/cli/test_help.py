"""The command line as a user reads it: ``--help`` in plain text with every exit
code, the man page and the bash/zsh completions built from the same parser (and
kept current: ``make man`` writes them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from listener.cli import COMMAND_MODULES, build_parser
from listener.core import errors
from tests.helpers.common import ROOT, run_cli

MAN = ROOT / "man" / "fedmsg-wallboard.1"
BASH = ROOT / "completions" / "fedmsg-wallboard"
ZSH = ROOT / "completions" / "_fedmsg-wallboard"
#: reStructuredText and Sphinx markup that must not reach a terminal
MARKUP = re.compile(r"``|:(?:func|class|mod|meth|data|attr):`|::$", re.M)


def commands() -> list[str]:
    for action in build_parser()._actions:
        if action.dest == "command":
            return list(action.choices)  # type: ignore[arg-type]
    raise AssertionError("no subcommands")


def bin_(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def test_every_command_is_registered() -> None:
    assert len(COMMAND_MODULES) == 9
    assert set(commands()) >= {
        "listen",
        "snapshot",
        "check-config",
        "replay",
        "web",
        "longtail",
        "backfill",
        "radar",
        "diff",
        "gource",
        "amqp-replay",
    }


@pytest.mark.parametrize("command", [None, *commands()])
def test_help_is_plain_text(command: str | None) -> None:
    r = run_cli(*([command] if command else []), "--help")
    assert r.returncode == 0, r.stderr
    assert not MARKUP.findall(r.stdout), MARKUP.findall(r.stdout)


def test_help_lists_every_exit_code() -> None:
    text = " ".join(run_cli("--help").stdout.split())  # wrapped lines joined
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert codes == {0, 1, 2, 3, 66, 69, 75, 78, 130, 141}
    for code in codes:
        assert re.search(rf"\b{code} [A-Za-z]", text), code


def test_the_man_page_is_current_and_renders(tmp_path: Path) -> None:
    fresh = tmp_path / "fedmsg-wallboard.1"
    subprocess.run(
        [
            bin_("argparse-manpage"),
            "--module",
            "listener.cli",
            "--function",
            "build_parser",
            "--project-name",
            "fedmsg-wallboard",
            "--prog",
            "fedmsg-wallboard",
            "--version",
            "0.1.0",
            "--description",
            "watch the Fedora message bus and show its activity on a wall",
            "--manual-title",
            "fedmsg-wallboard manual",
            "--output",
            str(fresh),
        ],
        check=True,
        cwd=str(ROOT),
        timeout=60,
    )

    def body(path: Path) -> list[str]:  # without the .TH line, which carries the date
        return [x for x in path.read_text(encoding="utf-8").splitlines() if not x.startswith(".TH")]

    assert body(fresh) == body(MAN), "man/fedmsg-wallboard.1 is stale: run make man"
    env = dict(os.environ, MANPAGER="cat", MANWIDTH="100", LC_ALL="C.UTF-8")
    shown = subprocess.run(
        ["man", "-l", str(MAN)], capture_output=True, text=True, env=env, timeout=60, check=True
    ).stdout
    assert shown.startswith("FEDMSG-WALLBOARD(1)")
    assert "NAME" in shown and "fedmsg-wallboard - watch the Fedora message bus" in shown
    for command in commands():
        assert f"COMMAND 'fedmsg-wallboard {command}'" in shown, command
    assert "141 output closed early" in " ".join(shown.split())


@pytest.mark.parametrize(("shell", "path"), [("bash", BASH), ("zsh", ZSH)])
def test_the_completions_are_current(shell: str, path: Path) -> None:
    fresh = subprocess.run(
        [
            bin_("shtab"),
            f"--shell={shell}",
            "--prog",
            "fedmsg-wallboard",
            "listener.cli.build_parser",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(ROOT),
        timeout=60,
    ).stdout
    assert fresh == path.read_text(encoding="utf-8"), f"{path} is stale: run make man"


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("fedmsg-wallboard sn", {"snapshot"}),
        ("fedmsg-wallboard snapshot --js", {"--json"}),
        ("fedmsg-wallboard check-", {"check-config"}),
    ],
)
def test_bash_completes_commands_and_options(words: str, expected: set[str]) -> None:
    assert shutil.which("bash")
    script = (
        f"source {BASH}\n"
        f"COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
        f'COMP_LINE="{words}"; COMP_POINT=${{#COMP_LINE}}\n'
        "$(complete -p fedmsg-wallboard | sed 's/.* -F \\([^ ]*\\) .*/\\1/')\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert expected <= {w.strip() for w in out.stdout.split()}, out.stdout
