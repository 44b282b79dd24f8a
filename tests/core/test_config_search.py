"""Where the settings come from: --config, $FEDMSG_WALLBOARD_CONFIG, the system
file, the user's file, in that order."""

from __future__ import annotations

from pathlib import Path

from listener.core.config import SYSTEM_CONFIG, find_config, user_config


def test_the_search_order(tmp_path: Path) -> None:
    system = tmp_path / "etc" / "wallboard.toml"
    user_home = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(user_home)}
    user = user_config(env)
    assert user == user_home / "fedmsg-wallboard" / "wallboard.toml"
    assert find_config(None, env, system) == (None, "none")
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert find_config(None, env, system) == (user, "user")
    system.parent.mkdir(parents=True)
    system.write_text("")
    assert find_config(None, env, system) == (system, "system")
    named = {**env, "FEDMSG_WALLBOARD_CONFIG": str(tmp_path / "named.toml")}
    assert find_config(None, named, system) == (
        tmp_path / "named.toml",
        "$FEDMSG_WALLBOARD_CONFIG",
    )  # used even when missing: loading it then says so
    assert find_config("given.toml", named, system) == (Path("given.toml"), "--config")


def test_the_defaults_are_where_ops_look() -> None:
    assert SYSTEM_CONFIG == Path("/etc/fedmsg-wallboard/wallboard.toml")
    assert user_config({}).parts[-3:] == (".config", "fedmsg-wallboard", "wallboard.toml")
