"""The page's version: what an open wall compares, after a reconnect, to reload
itself when the server was upgraded (``listener.webserver.api.page_version``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from listener import __version__
from listener.webserver import api as webapi
from tests.helpers.common import ROOT


def test_version_follows_the_package_and_every_page_file(tmp_path: Path) -> None:
    assets = webapi.load_assets(ROOT / "web")
    version = webapi.page_version(__version__, assets)
    assert re.fullmatch(re.escape(__version__) + r"\+[0-9a-f]{10}", version), version
    # the same files read again: the same version (open walls stay)
    assert webapi.page_version(__version__, webapi.load_assets(ROOT / "web")) == version
    assert webapi.page_version("9.9.9", assets) == "9.9.9+" + version.split("+")[1]
    # one byte more in any served file, the vendored library included: another one
    for rel in ("app.js", "style.css", "index.html", "vendor/chart.umd.min.js"):
        copy = tmp_path / rel.replace("/", "_")
        shutil.copytree(ROOT / "web", copy)
        with (copy / rel).open("ab") as fh:
            fh.write(b"\n")
        other = webapi.page_version(__version__, webapi.load_assets(copy))
        assert other != version and other.startswith(__version__ + "+"), rel


def test_snapshot_event_carries_the_version() -> None:
    health = webapi.health({}, 110.0, 5.0, True, True, 0)
    event = webapi.snapshot_event({}, {}, [], None, health, 110.0, "redis", "0.1.0+0123456789")
    assert event["version"] == "0.1.0+0123456789"
    assert webapi.snapshot_event({}, {}, [], None, health, 110.0, "redis")["version"] == ""
