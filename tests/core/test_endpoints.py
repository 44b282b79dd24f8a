"""ZeroMQ endpoints: which ones libzmq would accept and never reach, and which
ones ``listen`` subscribes to."""

from __future__ import annotations

import logging

import pytest

from listener.core.endpoints import check_endpoint, resolve_endpoints
from listener.core.errors import ConfigError


@pytest.mark.parametrize(
    ("endpoint", "ok"),
    [
        ("tcp://127.0.0.1:9940", True),
        ("tcp://hub.fedoraproject.org:9940", True),
        ("tcp://[::1]:9940", True),
        ("tcp://192.168.0.2;127.0.0.1:9940", True),  # libzmq's source;host form
        ("ipc:///run/fedmsg/bus", True),
        ("tcp://999.1.1.1:9940", False),  # dotted numbers, no IPv4 address
        ("tcp://127.0.0.1:99999", False),
        ("tcp://127.0.0.1:0", False),
        ("tcp://127.0.0.1", False),
        ("tcp://127.0.0.1:http", False),
    ],
)
def test_endpoints_libzmq_would_retry_for_ever_are_config_errors(endpoint: str, ok: bool) -> None:
    if ok:
        check_endpoint(endpoint)
    else:
        with pytest.raises(ConfigError, match="bad ZeroMQ endpoint"):
            check_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", [42, "tcp:/127.0.0.1:9940", "carrier-pigeon://x", "tcp://"])
def test_what_is_not_transport_address_is_refused(endpoint: object) -> None:
    with pytest.raises(ConfigError, match="bad ZeroMQ endpoint"):
        check_endpoint(endpoint)  # type: ignore[arg-type]


def test_the_wallboard_endpoints_win_over_fedmsgs(caplog: pytest.LogCaptureFixture) -> None:
    fedmsg = {"endpoints": {"a": ["tcp://127.0.0.1:1"], "b": ["tcp://127.0.0.1:2"]}}
    assert resolve_endpoints([], fedmsg) == ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]
    assert resolve_endpoints(["ipc:///bus"], fedmsg) == ["ipc:///bus"]
    assert resolve_endpoints([], {}) == []
    with caplog.at_level(logging.WARNING, "listener.core.endpoints"):
        twice = resolve_endpoints(["tcp://127.0.0.1:1", "tcp://127.0.0.1:1"], {})
    assert twice == ["tcp://127.0.0.1:1"]
    assert "more than once" in caplog.text
