"""The config file: strict keys, types, exit 78, ``check-config``, flag precedence, docs.

Every CLI case runs ``python -m listener`` as a real subprocess (``run_cli``), so the
exit codes are the ones systemd sees.  ``docs/CONFIG.md`` and the example
``systemd/wallboard.toml`` are checked against ``listener.core.config.Config`` so they
cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from listener.core.config import FIELD_NAMES, Config, load
from listener.core.errors import ConfigError
from tests.helpers.common import ROOT, demo_command, free_port, run_cli, wait_for

EXIT_CONFIG = 78


def write(tmp_path: Path, text: str, name: str = "wallboard.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def default_of(name: str) -> Any:
    f = Config.__dataclass_fields__[name]
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


# -- exit 78 on bad files -------------------------------------------------------


def test_unknown_key_exits_78_and_lists_every_valid_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'redis_url = "redis://127.0.0.1:1/0"\nwindow_s = [3600]\n')
    r = run_cli("check-config", "--config", str(cfg), timeout=60)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert "unknown config key(s) window_s" in r.stderr
    listed = r.stderr.split("valid keys:", 1)[1]
    assert [k.strip() for k in listed.strip().splitlines()[0].split(",")] == list(FIELD_NAMES)
    assert r.stdout == ""


BAD_VALUES = [
    ('windows_s = "3600"\n', "windows_s must be a list"),
    ('step_s = "fast"\n', "step_s must be a number, got 'fast'"),
    ("web_port = 80.5\n", "web_port must be an integer, got 80.5"),
    ("hwm = true\n", "hwm must be an integer, got True"),
    ("redis_url = 6379\n", "redis_url must be a string, got 6379"),
    ("windows_s = [90]\n", "no bucket size in [60, 3600] divides a 90 s window"),
    ("retention_s = 3600\n", "retention_s must be >= the longest window"),
    ("max_pending = 0\n", "max_pending must be >= 1"),
    ('log_level = "LOUD"\n', "log_level 'LOUD' is not DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ("step_s = nan\n", "step_s must be a finite number, not nan"),
    ("flush_interval_s = inf\n", "flush_interval_s must be a finite number, not inf"),
    ("blink_interval_s = 0\n", "blink_interval_s must be >= 0.01"),
    # a floor for the periodic tasks: 1e-9 kept an idle listener at 100 % CPU
    ("step_s = 1e-9\n", "step_s must be >= 0.1"),
    ("flush_interval_s = 0.001\n", "flush_interval_s must be >= 0.01"),
    ("blink_interval_s = 1e-9\n", "blink_interval_s must be >= 0.01"),
    ("metrics_port = 70000\n", "metrics_port out of range (0-65535)"),
    ("hwm = -1\n", "hwm must be >= 0"),
    ("top_users = -3\n", "top_users must be >= 1"),
    ("windows_s = [3600, 3600]\n", "windows_s has the same window twice"),
    ('key_prefix = ""\n', "key_prefix must be non-empty, without braces"),
    ('key_prefix = "a}b{"\n', "key_prefix must be non-empty, without braces"),
    ("step_s = \n", "invalid TOML"),
    # list items have the list's type (a float would give a traceback or a crash later)
    ("windows_s = [3600.0, 86400]\n", "windows_s must be a list of whole seconds, got 3600.0"),
    ("endpoints = [1, 2]\n", "endpoints must be a list of strings, got 1"),
    ("allowed_origins = [1]\n", "allowed_origins must be a list of strings, got 1"),
    # an origin the browser can never send refused every websocket with 403
    ('allowed_origins = ["not an origin"]\n', "allowed_origins 'not an origin': not an http"),
    ('allowed_origins = ["https://wall.example.org/"]\n', "with nothing after (no path"),
    ("amqp_bindings = [[1]]\n", "amqp_bindings must be a list of strings, got [1]"),
    ('redis_sentinels = ["127.0.0.1"]\n', "redis_sentinels '127.0.0.1': a sentinel is host:port"),
    ('redis_sentinels = ["h:0"]\n', "redis_sentinels 'h:0': port '0' is not 1-65535"),
    ('redis_sentinels = [":26379"]\n', "a sentinel is host:port"),
    ('redis_sentinels = ["h:1"]\nredis_master_name = ""\n', "redis_master_name is empty"),
    ("redis_wait_replicas = -2\n", "redis_wait_replicas must be >= -1"),
    ("standby_keep_s = 0\n", "standby_keep_s must be >= 1"),
    # libzmq takes these as a C int: an overflow crashed listen (rc 1)
    ("hwm = 9999999999999\n", "hwm must be <= 2147483647"),
    ("reconnect_ivl_ms = 9999999999999\n", "reconnect_ivl_ms must be <= 2147483647"),
    ("tcp_keepalive_idle_s = 9999999999999\n", "tcp_keepalive_idle_s must be <= 2147483647"),
    ("heartbeat_ivl_s = 1e12\n", "heartbeat_ivl_s must be <= 2147483 s"),
]


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'key_prefix = "\xff"\n')  # TOML is UTF-8; this is Latin-1
    with pytest.raises(ConfigError, match="invalid TOML in"):
        load(path)


@pytest.mark.parametrize(("text", "message"), BAD_VALUES)
def test_bad_value_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert message in str(info.value)


@pytest.mark.parametrize(("text", "message"), [BAD_VALUES[1], BAD_VALUES[5], BAD_VALUES[-1]])
def test_bad_value_exits_78_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    cfg = write(tmp_path, text)
    r = run_cli("check-config", "--config", str(cfg), timeout=60)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert "configuration error" in r.stderr
    assert message in r.stderr


def test_missing_file_exits_78(tmp_path: Path) -> None:
    r = run_cli("check-config", "--config", str(tmp_path / "nope.toml"), timeout=60)
    assert r.returncode == EXIT_CONFIG
    assert "cannot read config" in r.stderr and "nope.toml" in r.stderr


def test_listen_with_bad_config_exits_78_before_touching_redis(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'redis_url = "redis://127.0.0.1:1/0"\nbogus = 1\n')
    r = run_cli("listen", "--config", str(cfg), timeout=60)
    assert r.returncode == EXIT_CONFIG
    assert "unknown config key(s) bogus" in r.stderr


# -- check-config ok, precedence ------------------------------------------------------


def test_check_config_ok_prints_json(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        'redis_url = "redis://127.0.0.1:6379/3"\n'
        'endpoints = ["tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002"]\n'
        "windows_s = [3600, 86400]\n",
    )
    r = run_cli("check-config", "--config", str(cfg), timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {
        "ok": True,
        "config_file": str(cfg),
        "config_source": "--config",
        "endpoints": ["tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002"],
        "windows_s": [3600, 86400],
        "redis": "redis://127.0.0.1:6379/3",
        "validate_signatures": False,
    }


def test_check_config_refuses_what_listen_refuses(tmp_path: Path) -> None:
    # no endpoint anywhere (the built-in fedmsg default has none), or one libzmq would
    # retry for ever: listen exits 78 on both, so check-config must too
    env = {k: v for k, v in os.environ.items() if k != "FEDMSG_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)  # run from a folder without fedmsg.d/
    cfg = write(tmp_path, 'bus = "zmq"\nredis_url = "redis://127.0.0.1:6379/0"\n')
    r = subprocess.run(
        [sys.executable, "-m", "listener", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env=env,
    )
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert "no ZeroMQ endpoint" in r.stderr and r.stdout == ""
    assert "(Fedora's bus is AMQP today: listen --fedora)" in r.stderr
    # the default bus ("auto"): with no ZeroMQ endpoint anywhere, today's Fedora bus
    auto = write(tmp_path, 'redis_url = "redis://127.0.0.1:6379/0"\n', "auto.toml")
    r = subprocess.run(
        [sys.executable, "-m", "listener", "check-config", "--config", str(auto)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["bus"] == "fedora" and out["endpoints"] == []
    assert out["amqp"]["url"] == "amqps://fedora:***@rabbitmq.fedoraproject.org/%2Fpublic_pubsub"
    bad = write(tmp_path, 'endpoints = ["tcp://127.0.0.1:99999"]\n', "bad.toml")
    r = run_cli("check-config", "--config", str(bad), timeout=60)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert "port must be 1-65535" in r.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('endpoints = ["garbage"]\n', "bad ZeroMQ endpoint 'garbage': expected transport://"),
        ('endpoints = [""]\n', "bad ZeroMQ endpoint '': expected transport://"),
        ('bus = "amqp"\namqp_url = "garbage"\n', "amqp_url: 'garbage' is not an amqp://"),
        ('redis_url = "http://x"\n', "bad Redis URL 'http://x'"),
        ('redis_url = "localhost:6379"\n', "bad Redis URL 'localhost:6379'"),
        # redis-py reads database 0 in silence, or waits 10 s for socket path ''
        ('redis_url = "redis://127.0.0.1:6379/abc"\n', "the database 'abc' is not a number"),
        ('redis_url = "unix://"\n', "bad Redis URL 'unix://': no socket path"),
        ('datagrepper_url = "http://x y"\n', "'http://x y': a URL has no whitespace"),
        ('datagrepper_url = "notaurl"\n', "datagrepper_url 'notaurl': not an http://"),
        ('datagrepper_url = "https://"\n', "datagrepper_url 'https://': no host"),
        ('datagrepper_url = "http://h:99999/"\n', "datagrepper_url 'http://h:99999/'"),
    ],
)
def test_check_config_refuses_what_listen_exits_78_on(
    tmp_path: Path, text: str, message: str
) -> None:
    r = run_cli("check-config", "--config", str(write(tmp_path, text)), timeout=60)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_check_config_loads_the_fas_cache_as_listen_does(tmp_path: Path) -> None:
    bad = tmp_path / "fas.json"
    bad.write_text('{"bad json')
    r = run_cli(
        "check-config", "--config", str(write(tmp_path, f'fas_cache = "{bad}"\n')), timeout=60
    )
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert f"fas cache {bad}" in r.stderr and "Traceback" not in r.stderr


def test_datagrepper_flags_refuse_what_is_not_a_url() -> None:
    for argv in (
        ["backfill", "--datagrepper", "notaurl", "--since", "60"],
        ["longtail", "--datagrepper", "ftp://x/"],
        ["listen", "--datagrepper", "apps.fedoraproject.org/datagrepper"],
    ):
        r = run_cli(*argv, timeout=60)
        assert r.returncode == 2, (argv, r.stderr)
        assert "not an http:// or https:// URL" in r.stderr, argv


@pytest.mark.parametrize(
    ("fedmsg_py", "message"),
    [
        (None, "has no *.py file"),  # not ./fedmsg.d or /etc/fedmsg.d in its place
        ('config = dict(endpoints={"a": [9940]})\n', "endpoints['a'] must be a list of"),
    ],
)
def test_a_fedmsg_config_folder_is_used_as_given(
    tmp_path: Path, fedmsg_py: str | None, message: str
) -> None:
    given = tmp_path / "given"
    given.mkdir()
    if fedmsg_py:
        (given / "endpoints.py").write_text(fedmsg_py, encoding="utf-8")
    elsewhere = tmp_path / "fedmsg.d"  # in the working directory: fedmsg's own search
    elsewhere.mkdir()
    (elsewhere / "x.py").write_text(
        'config = dict(endpoints={"s": ["tcp://127.0.0.1:1"]})\n', encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if k != "FEDMSG_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run(
        [sys.executable, "-m", "listener", "check-config", "--fedmsg-config", str(given)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env=env,
    )
    assert r.returncode == EXIT_CONFIG, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_the_same_endpoint_twice_is_subscribed_once(tmp_path: Path) -> None:
    # two SUB sockets on one publisher: each message twice, and those without a
    # msg_id counted twice
    e = "tcp://127.0.0.1:5001"
    cfg = write(tmp_path, f'endpoints = ["{e}", "{e}"]\n')
    r = run_cli("check-config", "--config", str(cfg), timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["endpoints"] == [e]
    assert "listed more than once" in r.stderr


def test_check_config_without_endpoints_uses_fedmsg_d(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'redis_url = "redis://127.0.0.1:6379/0"\n')
    r = run_cli(
        "check-config",
        "--config",
        str(cfg),
        "--fedmsg-config",
        str(ROOT / "fedmsg.d"),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["endpoints"] == ["tcp://127.0.0.1:9940"]


def test_cli_flag_overrides_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'redis_url = "redis://127.0.0.1:6379/0"\n')
    r = run_cli(
        "check-config",
        "--config",
        str(cfg),
        "--redis-url",
        "redis://10.0.0.9:6380/2",
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["redis"] == "redis://10.0.0.9:6380/2"


def test_config_from_environment_variable(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'redis_url = "redis://127.0.0.1:6379/5"\n')
    r = run_cli("check-config", env={"FEDMSG_WALLBOARD_CONFIG": str(cfg)}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["redis"] == "redis://127.0.0.1:6379/5"


@pytest.mark.parametrize(
    ("flag", "env", "file_level", "expected"),
    [
        (None, None, "", ""),
        (None, None, "WARNING", "WARNING"),
        (None, "ERROR", "WARNING", "ERROR"),
        ("DEBUG", "ERROR", "WARNING", "DEBUG"),
    ],
)
def test_log_level_precedence(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    env: str | None,
    file_level: str,
    expected: str,
) -> None:
    import logging

    from listener.cli import load_config

    cfg_path = write(tmp_path, f'log_level = "{file_level}"\n')
    if env is None:
        monkeypatch.delenv("FEDMSG_WALLBOARD_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("FEDMSG_WALLBOARD_LOG_LEVEL", env)
    root = logging.getLogger()
    before = root.level
    try:
        cfg = load_config(argparse.Namespace(config=str(cfg_path), log_level=flag))
        assert cfg.log_level == expected
        if expected:
            assert logging.getLevelName(root.level) == expected
    finally:
        root.setLevel(before)


def test_load_rejects_unknown_override() -> None:
    with pytest.raises(ConfigError, match="unknown setting nope"):
        load(None, nope=1)


# -- docs and the example file ---------------------------------------------------


def _toml_value(text: str) -> Any:
    return tomllib.loads(f"v = {text}")["v"]


def config_md_rows() -> dict[str, tuple[str, str]]:
    """``docs/CONFIG.md``'s key table: ``{key: (type, default column)}``."""
    rows = {}
    for line in (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| [^|]+ \| .+ \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return rows


def test_config_md_documents_every_key_with_its_default() -> None:
    rows = config_md_rows()
    missing = [k for k in FIELD_NAMES if k not in rows]
    assert not missing, f"document these Config keys in docs/CONFIG.md: {missing}"
    assert set(rows) == set(FIELD_NAMES), f"not Config keys: {set(rows) - set(FIELD_NAMES)}"
    kinds = {"str": "string", "int": "integer", "float": "number"}
    for f in fields(Config):
        kind, default_col = rows[f.name]
        if f.name == "state_dir":
            assert "$STATE_DIRECTORY" in default_col
            continue
        want = "list of " + ("integers" if "int" in str(f.type) else "strings")
        assert kind == (kinds.get(str(f.type)) or want), f.name
        shown = re.match(r"`([^`]*)`", default_col)
        assert shown, f.name
        value = _toml_value(shown.group(1))
        default = default_of(f.name)
        if isinstance(default, tuple):
            value = tuple(value)
        assert value == default, f"{f.name}: docs say {value!r}, code says {default!r}"


def test_example_wallboard_toml_is_valid_and_its_comments_are_the_defaults(
    tmp_path: Path,
) -> None:
    example = ROOT / "systemd" / "wallboard.toml"
    r = run_cli("check-config", "--config", str(example), timeout=60)
    assert r.returncode == 0, r.stderr
    commented = {}
    for line in example.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^# (\w+) = (.+)$", line)
        if m and m.group(1) in FIELD_NAMES:
            commented[m.group(1)] = tomllib.loads(f"{m.group(1)} = {m.group(2)}")[m.group(1)]
    active = tomllib.loads(example.read_text(encoding="utf-8"))
    # every key appears, active or commented (state_dir is left to systemd)
    assert set(commented) | set(active) == set(FIELD_NAMES) - {"state_dir"}
    for name, value in commented.items():
        default = default_of(name)
        assert (tuple(value) if isinstance(default, tuple) else value) == default, name
    # uncommenting every line still gives a valid config
    full = write(
        tmp_path,
        "\n".join(
            re.sub(r"^# (\w+ = )", r"\1", line)
            for line in example.read_text(encoding="utf-8").splitlines()
        ),
    )
    assert load(full).windows_s == default_of("windows_s")


def test_closed_stdout_exits_141_without_an_error(tmp_path: Path) -> None:
    """``fedmsg-wallboard ... | head``: a closed pipe is not "Redis unavailable"."""
    import os
    import subprocess
    import sys

    cfg = write(tmp_path, 'redis_url = "redis://127.0.0.1:6379/3"\n')
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        r = subprocess.run(
            [sys.executable, "-m", "listener", "check-config", "--config", str(cfg)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=str(ROOT),
        )
    finally:
        os.close(write_end)
    assert r.returncode == 141, r.stderr
    assert "Broken pipe" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "fedmsg-wallboard: error: unrecognized arguments: --bogus"),
        # a subcommand's unknown flag: that subcommand's usage, not the top level's
        (["listen", "--bogus"], "fedmsg-wallboard listen: error: unrecognized arguments"),
        ([], "a COMMAND is required"),
        (
            ["snapshot", "--window", "7", "--redis-url", "redis://127.0.0.1:1/0"],
            "--window 7: no bucket size",
        ),  # refused before any Redis connection
    ],
)
def test_usage_errors_exit_2_with_the_reason(args: list[str], message: str) -> None:
    r = run_cli(*args, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_replay_of_a_line_that_is_not_a_fedmsg_message_exits_2_naming_it(
    tmp_path: Path,
) -> None:
    good = {
        "topic": "org.fedoraproject.prod.git.receive",
        "msg": {},
        "msg_id": "a",
        "timestamp": 1.0,
    }
    path = write(tmp_path, json.dumps(good) + "\n" + '{"not": "an envelope"}\n', "x.jsonl")
    r = run_cli(
        "replay",
        str(path),
        "--endpoint",
        f"tcp://127.0.0.1:{free_port()}",
        "--wait-subscribers",
        "0",
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert f"{path}:2: not a fedmsg message (no topic)" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("line", "extra", "message"),
    [
        ('"timestamp": "abc"', (), "x.jsonl:1: timestamp 'abc' is not a number of seconds"),
        ('"timestamp": 1.0, "summary": "\\ud800"', (), "x.jsonl:1: invalid JSON"),
        ('"timestamp": 1.0, "username": ["a"]', ("--rebase-time",), None),  # sent: rc 0
    ],
)
def test_replay_of_bad_input_exits_2_naming_the_line(
    tmp_path: Path, line: str, extra: tuple[str, ...], message: str | None
) -> None:
    path = write(
        tmp_path,
        f'{{"topic": "org.fedoraproject.prod.git.receive", "msg": {{}}, "msg_id": "a", {line}}}\n',
        "x.jsonl",
    )
    r = run_cli(
        "replay",
        str(path),
        "--endpoint",
        f"tcp://127.0.0.1:{free_port()}",
        "--wait-subscribers",
        "0",
        *extra,
        timeout=60,
    )
    assert "Traceback" not in r.stderr
    if message is None:
        assert r.returncode == 0, r.stderr
        assert "published 1 messages" in r.stderr
    else:
        assert r.returncode == 2, r.stderr
        assert message in r.stderr


@pytest.mark.parametrize(
    "flags",
    [
        ("--wait-timeout", "nan"),
        ("--rate", "1e-300"),
        ("--speed", "0"),
        ("--rate", "inf"),
        ("--count", "0"),
        ("--count", "-1"),
    ],
)
def test_replay_refuses_pacing_it_cannot_keep(flags: tuple[str, str]) -> None:
    r = run_cli(
        "replay",
        "--builtin-examples",
        "--endpoint",
        f"tcp://127.0.0.1:{free_port()}",
        *flags,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert f"argument {flags[0]}" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        # a socket left open by a failed setsockopt hung ctx.term() for ever
        (["replay", "--builtin-examples", "--hwm", "-1"], 2, "argument --hwm"),
        (
            ["replay", "--builtin-examples", "--endpoint", "tcp://127.0.0.1:99999"],
            2,
            "port must be 1-65535",
        ),
        (
            ["gource", "--endpoint", "garbage", "--count", "1"],
            EXIT_CONFIG,
            "bad ZeroMQ endpoint 'garbage'",
        ),
    ],
)
def test_a_bad_endpoint_or_hwm_exits_instead_of_hanging(
    args: list[str], code: int, message: str
) -> None:
    r = (
        run_cli(*args, "--redis-url", "redis://127.0.0.1:1/0", timeout=60)
        if args[0] == "gource"
        else run_cli(*args, "--wait-subscribers", "0", timeout=60)
    )
    assert r.returncode == code, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_a_second_demo_on_a_bus_port_in_use_refuses_to_start(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:  # another demo's replay, say
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "listener.tools.demo",
                "--dir",
                str(tmp_path / "d"),
                "--port",
                str(free_port()),
                "--bus",
                f"tcp://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(ROOT),
        )
    assert r.returncode == 75, r.stderr
    assert f"bus 127.0.0.1:{port} already in use" in r.stderr
    assert not (tmp_path / "d" / "redis").exists()  # nothing started


def test_a_second_demo_in_the_same_folder_refuses_to_start(tmp_path: Path) -> None:
    import fcntl

    # the first demo holds demo.lock for its lifetime (here: this test process)
    with open(tmp_path / "demo.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "listener.tools.demo",
                "--dir",
                str(tmp_path),
                "--port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(ROOT),
        )
    assert r.returncode == 75, r.stderr
    assert f"a demo is already running in {tmp_path}" in r.stderr
    assert not (tmp_path / "redis").exists()  # its Redis was never touched


def test_a_database_redis_does_not_have_is_a_config_error_not_unavailable(
    redis_url: str,
) -> None:
    # Redis answers, but SELECT 99 fails: waiting 10 s and exiting 69 (restarted by
    # systemd for ever) would not help; it is the URL that is wrong
    base = redis_url.rsplit("/", 1)[0]
    r = run_cli("snapshot", "--redis-url", f"{base}/99", timeout=60)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert "Redis refuses the URL's settings: DB index is out of range" in r.stderr


@pytest.mark.parametrize("password", ["wrong", ""])
def test_a_wrong_or_missing_redis_password_is_a_config_error(tmp_path: Path, password: str) -> None:
    import subprocess

    from tests.helpers.redis import redis_server_binary

    port = free_port()
    server = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "s3cret",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        wait_for(lambda: redis.Redis(port=port, password="s3cret").ping(), 15, what="redis")
        auth = f":{password}@" if password else ""
        r = run_cli("snapshot", "--redis-url", f"redis://{auth}127.0.0.1:{port}/0", timeout=60)
    finally:
        server.terminate()
        server.wait(10)
    assert r.returncode == EXIT_CONFIG, r.stderr  # not 69: systemd would retry for ever
    assert "Redis refuses the URL's settings" in r.stderr


def test_replay_with_nobody_subscribed_warns_that_messages_are_lost() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    r = run_cli(
        "replay",
        "--builtin-examples",
        "--endpoint",
        endpoint,
        "--count",
        "3",
        "--wait-timeout",
        "1",
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert (
        f"WARNING listener.tools.replay: 0 of 1 subscriber(s) on {endpoint} after 1 s" in r.stderr
    )
    assert "published 3 messages" in r.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--log-level", "DEBUG", "check-config"], "DEBUG"),
        (["check-config", "--log-level", "warning"], "WARNING"),
        (["--log-level", "ERROR", "check-config"], "ERROR"),  # not undone by the command
        (["check-config"], None),
    ],
)
def test_log_level_before_or_after_the_command(argv: list[str], expected: str | None) -> None:
    from listener.cli import build_parser

    assert build_parser().parse_args(argv).log_level == expected


def test_start_up_errors_name_what_is_wrong(redis_url: str, tmp_path: Path) -> None:
    """A bind host that does not resolve and a state dir that is a file are config
    errors (78: a restart cannot fix them), named; a Redis that does not answer is
    announced before the wait, not only after it."""
    r = run_cli(
        "web",
        "--redis-url",
        redis_url,
        "--host",
        "no.such.host.invalid",
        "--port",
        str(free_port()),
        timeout=60,
    )
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert "web host 'no.such.host.invalid'" in r.stderr
    a_file = tmp_path / "somefile"
    a_file.write_text("")
    r = run_cli("snapshot", "--state-dir", str(a_file), timeout=60)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert f"state dir {a_file}: File exists" in r.stderr
    r = run_cli("snapshot", "--redis-url", f"redis://127.0.0.1:{free_port()}/0", timeout=60)
    assert r.returncode == 69
    lines = r.stderr.strip().splitlines()
    assert "waiting up to 10 s for Redis" in lines[0] and "not reachable" in lines[-1]


def test_a_demo_whose_output_pipe_closes_stops_its_children(tmp_path: Path) -> None:
    """``make run | head -3``: a demo whose output pipe closes (BrokenPipeError)
    stops its listener, replay, web and Redis, as whatever else ends it does."""
    port, bus = free_port(), f"tcp://127.0.0.1:{free_port()}"
    demo = subprocess.Popen(
        demo_command(tmp_path / "d", port, "--bus", bus),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=str(ROOT),
    )
    assert demo.stdout is not None
    first = demo.stdout.readline()  # "embedded Redis: unix:///...": then nobody reads
    assert first.startswith(b"embedded Redis: unix://")
    socket_path = first.decode().split("unix://", 1)[1].strip()
    demo.stdout.close()
    assert demo.wait(120) == 1

    def running(pattern: str) -> list[str]:
        out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
        return [ln for ln in out.splitlines() if "pgrep" not in ln]

    # the listener and replay name the bus, the web its port, redis-server its socket
    wait_for(
        lambda: not (running(bus) or running(f"--port {port}") or running(socket_path)),
        20,
        0.2,
        "the demo's children to exit",
    )


# -- where the settings and the data are found ---------------------------------------


def test_check_config_reads_the_users_file_and_says_which(tmp_path: Path) -> None:
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "fedmsg-wallboard" / "wallboard.toml"
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text('endpoints = ["tcp://127.0.0.1:9940"]\nkey_prefix = "mine"\n')
    try:
        r = run_cli("check-config")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert (out["config_file"], out["config_source"]) == (str(user), "user")
        named = tmp_path / "named.toml"
        named.write_text('endpoints = ["tcp://127.0.0.1:9941"]\n')
        r = run_cli("check-config", env={"FEDMSG_WALLBOARD_CONFIG": str(named)})
        out = json.loads(r.stdout)
        assert (out["config_file"], out["config_source"]) == (
            str(named),
            "$FEDMSG_WALLBOARD_CONFIG",
        )
        assert out["endpoints"] == ["tcp://127.0.0.1:9941"]
    finally:
        user.unlink()
    out = json.loads(run_cli("check-config", "--config", str(named)).stdout)
    assert out["config_source"] == "--config"


@pytest.mark.parametrize("command", [["snapshot"], ["radar"], ["diff"]])
def test_a_read_only_command_refuses_an_empty_embedded_redis(
    tmp_path: Path, command: list[str]
) -> None:
    r = run_cli(*command, "--state-dir", str(tmp_path / "nothing"))
    assert r.returncode == 66, r.stderr
    assert "no wallboard data in" in r.stderr and "--redis-url" in r.stderr
    assert not (tmp_path / "nothing" / "wallboard.rdb").exists()  # nothing started


@pytest.mark.timeout(180)  # starts the whole demo: Redis, listener, replay, web
def test_the_tools_find_a_running_demo_with_no_flag(tmp_path: Path) -> None:
    port, bus = free_port(), f"tcp://127.0.0.1:{free_port()}"
    pointer = Path(os.environ["XDG_STATE_HOME"]) / "fedmsg-wallboard" / "running-demo.json"
    with open(tmp_path / "demo.out", "wb") as out:
        demo = subprocess.Popen(
            demo_command(tmp_path / "d", port, "--bus", bus, "--rate", "40"),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
    try:
        wait_for(pointer.exists, 60, 0.2, "the demo's pointer")

        def counted() -> int:
            r = run_cli("snapshot", "--window", "3600", "--json")
            assert r.returncode == 0, r.stderr
            return int(json.loads(r.stdout)["messages"])

        assert wait_for(counted, 60, 1.0, "the demo's messages in a flagless snapshot") > 0
        r = run_cli("radar", "--window", "3600", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["window_s"] == 3600, r.stderr
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(60)
    assert not pointer.exists()
    r = run_cli("snapshot")  # the demo is gone: no data where the tools look by default
    assert r.returncode == 66, r.stderr


def test_redis_sentinel_flags_override_the_file(tmp_path: Path) -> None:
    """``--redis-sentinel`` (repeated) and ``--redis-master-name``: what
    ``check-config`` reports as the Redis; IPv6 addresses in brackets."""
    from listener.core.config import sentinel_address

    cfg = write(
        tmp_path,
        'redis_sentinels = ["a:1"]\nredis_master_name = "m"\nendpoints = ["tcp://127.0.0.1:9"]\n',
    )
    r = run_cli(
        "check-config",
        "--config",
        str(cfg),
        "--redis-sentinel",
        "10.0.0.1:26379",
        "--redis-sentinel=[::1]:26380",
        "--redis-master-name",
        "wall",
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["redis"] == "sentinels 10.0.0.1:26379,[::1]:26380 (wall)"
    assert sentinel_address("[::1]:26380") == ("::1", 26380)
