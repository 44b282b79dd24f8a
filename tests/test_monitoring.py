"""The monitoring shipped in monitoring/: Prometheus alerting rules (checked and
unit-tested by Debian's promtool), the scrape configuration, and the Grafana
dashboard, whose every query names metrics the two processes really export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from listener.core.config import Config
from listener.core.intake import Intake
from listener.daemon.consumer import Consumer
from listener.daemon.inputs import Inputs
from listener.daemon.metrics import registry_for
from listener.storage.store import Store
from listener.webserver.server import WebServer
from tests.helpers.common import ROOT

MONITORING = ROOT / "monitoring"
#: a metric name in a PromQL expression
NAME = re.compile(r"\b((?:fedmsg_wallboard|process|python)_[a-z_]+)\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: make install installs Debian's prometheus"
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, cwd=str(MONITORING), timeout=120
    )


@pytest.fixture(scope="module")
def exported(extractor: Any) -> set[str]:
    """Every sample name the listener's and a web process's /metrics carry."""
    cfg = Config(redis_url="redis://127.0.0.1:1/0")  # never connected: collect() reads memory
    store = Store.from_url(cfg.redis_url, prefix=cfg.key_prefix)
    consumer = Consumer(cfg, Intake(cfg, extractor, time.time), store)
    # a labelled family, and the time of the last message, have a sample only then
    consumer.stats.rejected["bad_json"] += 1
    body = {
        "topic": "org.fedoraproject.prod.git.receive",
        "msg": {},
        "msg_id": "m-1",
        "timestamp": time.time(),
        "i": 1,
        "username": "apache",
    }
    assert consumer.intake.handle_body(body)
    consumer.stats.flush_durations.observe(0.002)
    consumer.silence.states[("category", "koji")] = "silent"  # the per-category gauges
    web = WebServer(cfg, store)
    web.rejected["per_address"] += 1
    web.routes.http_status[200] += 1
    names: set[str] = set()
    for registry in (registry_for(consumer, Inputs(None, None)), web.registry):
        text = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text):
            names.update(s.name for s in family.samples)
    return names


def test_the_alerting_rules_are_valid_and_fire_as_their_tests_say() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_scrape_configuration_is_valid() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_name_only_exported_metrics(exported: set[str]) -> None:
    text = (MONITORING / "alerts.yml").read_text(encoding="utf-8")
    exprs = re.findall(r"expr: (?:>-\n)?((?:.+\n)+?)\s+(?:for|labels):", text)
    names = {n for e in exprs for n in NAME.findall(e)}
    assert "fedmsg_wallboard_flush_duration_seconds_bucket" in names
    assert names <= exported, names - exported


def test_the_dashboard_loads_and_queries_only_exported_metrics(exported: set[str]) -> None:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert dash["uid"] == "fedmsg-wallboard" and dash["schemaVersion"] >= 36
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    for p in panels:
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, p["title"]
        assert p["targets"], p["title"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    names = {n for e in exprs for n in NAME.findall(e)}
    assert {"fedmsg_wallboard_counted_total", "process_cpu_seconds_total"} <= names
    assert names <= exported, names - exported
    variables = {v["name"] for v in dash["templating"]["list"]}
    used = {m for e in exprs for m in re.findall(r"\$(\w+)", e)}
    assert used <= variables, used - variables
