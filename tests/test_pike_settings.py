"""The rate limit's settings (docs/flood.md): defaults, file/environment/CLI, refusals."""

from __future__ import annotations

import pytest

from app.config import ConfigError, load_settings
from engine.pike import PikeConfig


def test_on_by_default_with_opensips_pike_defaults() -> None:
    assert load_settings({}, None, {}).pike_config() == PikeConfig(30, 2.0, ())


def test_zero_requests_turns_it_off() -> None:
    assert load_settings({"pike_requests": 0}, None, {}).pike_config() is None


def test_trusted_networks_from_the_environment_and_the_command_line() -> None:
    env = {"SIPDLG_PIKE_TRUSTED": "10.0.0.0/8, 192.0.2.1", "SIPDLG_PIKE_WINDOW": "5"}
    config = load_settings({}, None, env).pike_config()
    assert config is not None and config.trusted == ("10.0.0.0/8", "192.0.2.1")
    assert config.window == 5.0
    cli = {"pike_trusted": ["2001:db8::/32"], "pike_requests": 100}
    config = load_settings(cli, None, env).pike_config()
    assert config is not None and config.trusted == ("2001:db8::/32",)
    assert config.requests == 100


def test_a_next_hop_given_by_name_is_trusted_by_its_addresses() -> None:
    config = load_settings({"next_hop": "localhost:5080"}, None, {}).pike_config()
    assert config is not None and "127.0.0.1" in config.trusted


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("pike_trusted", ["10.0.0.0/33"], "pike_trusted: expected an address or a CIDR"),
        ("pike_trusted", ["trunk.example.com"], "pike_trusted: expected an address or a CIDR"),
        ("pike_requests", -1, "pike_requests must not be negative"),
        ("pike_window", 0, "pike_window must be positive"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(
    setting: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({setting: value}, None, {})
