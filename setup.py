"""fedmsg-wallboard's metadata is in pyproject.toml (PEP 621); this file adds what
pyproject.toml cannot glob: the files installed outside the package (the page, the
man page, the shell completions)."""

from pathlib import Path

from setuptools import setup


def files(folder: str, pattern: str = "*") -> list[str]:
    return sorted(str(p) for p in Path(folder).glob(pattern) if p.is_file())


setup(
    data_files=[
        # the page: listener/webserver/server.py finds it under <prefix>/share
        ("share/fedmsg-wallboard/web", files("web")),
        ("share/fedmsg-wallboard/web/vendor", files("web/vendor")),
        ("share/man/man1", ["man/fedmsg-wallboard.1"]),
        ("share/bash-completion/completions", ["completions/fedmsg-wallboard"]),
        ("share/zsh/site-functions", ["completions/_fedmsg-wallboard"]),
    ],
)
