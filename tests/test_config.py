"""The config file: a good one loads, every bad one is refused with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from agent.config import AuthTable, ConfigError, EdgeToml, MeterTable, load_config, parse_config

GOOD = """
[device]
name = "pole-17"

[api]
listen = "0.0.0.0:8080"

[auth]
operator_token = "a-long-enough-operator-token"

[storage]
path = "/var/lib/edge"
flush_seconds = 5
[storage.retention]
raw_hours = 24
rollup_days = 30

[[meters]]
id = "house-1"
port = "/dev/ttyUSB0"
profile = "dsmr5"

[[meters]]
id = "house-2"
port = "socket://192.0.2.10:2001"
profile = "dsmr4"
parity = "N"
bytesize = 8
gas_channel = 2
stall_seconds = 60
"""


def write(tmp_path, text):
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_good_config_loads(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.device_name == "pole-17" and config.listen_port == 8080
    assert [m.meter_id for m in config.meters] == ["house-1", "house-2"]
    second = config.meters[1]
    assert second.serial_overrides == {"parity": "N", "bytesize": 8}
    assert second.gas_channel == 2 and second.stall_seconds == 60
    assert config.meters[0].gas_channel is None  # auto
    assert config.storage.retention_raw_s == 86400 and config.storage.flush_seconds == 5


@pytest.mark.parametrize("change, key, words", [
    (('profile = "dsmr5"', 'profile = "dsmr9"'), "meters[0].profile", "unknown profile"),
    (('flush_seconds = 5', 'flush_seconds = "5"'), "storage.flush_seconds", "must be int or float"),
    (('flush_seconds = 5', 'flush_seconds = 0'), "storage.flush_seconds", "between"),
    (('raw_hours = 24', 'raw_hourz = 24'), "storage.retention.raw_hourz", "unknown key"),
    (('listen = "0.0.0.0:8080"', 'listen = "8080"'), "api.listen", "HOST:PORT"),
    (('operator_token = "a-long-enough-operator-token"', 'operator_token = "short"'), "auth.operator_token",
     "at least"),
    (('id = "house-2"', 'id = "house-1"'), "meters[1].id", "used by another meter"),
    (('gas_channel = 2', 'gas_channel = 7'), "meters[1].gas_channel", "1 to 4"),
    (('parity = "N"', 'parity = "X"'), "meters[1].parity", "must be"),
    (('port = "/dev/ttyUSB0"\n', ''), "meters[0].port", "is required"),
    (('stall_seconds = 60', 'stall_seconds = true'), "meters[1].stall_seconds", "got bool"),
    (('id = "house-1"', 'id = "house-1\\n"'), "meters[0].id", "use 1-64"),
    (('[[meters]]\nid = "house-1"', '[levels."street\\n"]\nkind = "exact"\n\n[[meters]]\nid = "house-1"'),
     "levels.'street\\n'", "a level name"),
    (('[[meters]]\nid = "house-1"', '[fleet]\nservers = ["nats://hub:4222\\n"]\n\n[[meters]]\nid = "house-1"'),
     "fleet.servers", "nats://HOST:PORT"),
])
def test_bad_config_names_the_key(tmp_path, change, key, words):
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key and words in str(info.value)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_token_and_syntax_errors(tmp_path):
    with pytest.raises(ConfigError, match="auth.operator_token: is required"):
        load_config(write(tmp_path, "[api]\nlisten = '127.0.0.1:1'\n"))
    with pytest.raises(ConfigError, match="syntax"):
        load_config(write(tmp_path, "[api\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_cli_refuses_bad_config_with_one_line(tmp_path):
    path = write(tmp_path, GOOD.replace('profile = "dsmr4"', 'profile = 4'))
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = subprocess.run([sys.executable, "-m", "agent.cli", *command], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "meters[1].profile" in lines[0], result.stderr


def test_cli_check_config_ok(tmp_path):
    result = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(write(tmp_path, GOOD))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "2 meter(s)" in result.stdout


# --- encrypted P1: decryption_key, authentication_key ----------------------------------------
SECRET = "6B3F1E2D4C5A69788796A5B4C3D2E1F0"
AUTH_SECRET = "0F1E2D3C4B5A69788796A5B4C3D2E1F0"
ENCRYPTED = GOOD + f"""
[[meters]]
id = "lux-1"
port = "/dev/ttyUSB1"
profile = "smarty"
decryption_key = "{SECRET.lower()}"

[[meters]]
id = "graz-1"
port = "/dev/ttyUSB2"
profile = "sagemcom_t210_d_r"
decryption_key = "{SECRET}"
authentication_key = "{AUTH_SECRET}"
"""


def test_encryption_keys_load(tmp_path):
    config = load_config(write(tmp_path, ENCRYPTED))
    plain, _, lux, graz = config.meters
    assert plain.decryption_key is None and plain.authentication_key is None
    assert lux.decryption_key == bytes.fromhex(SECRET) and lux.authentication_key is None
    assert graz.decryption_key == bytes.fromhex(SECRET) and graz.authentication_key == bytes.fromhex(AUTH_SECRET)
    assert SECRET.lower() not in repr(config).lower() and AUTH_SECRET.lower() not in repr(config).lower()


@pytest.mark.parametrize("change, key, words", [
    ((f'decryption_key = "{SECRET.lower()}"', f'decryption_key = "{SECRET[:30]}"'),
     "meters[2].decryption_key", "32 hex digits"),
    ((f'decryption_key = "{SECRET.lower()}"', f'decryption_key = "{SECRET[:30]}ZZ"'),
     "meters[2].decryption_key", "hex digits"),
    ((f'decryption_key = "{SECRET.lower()}"', 'decryption_key = 12345678901234567890'),
     "meters[2].decryption_key", "must be a string"),
    ((f'authentication_key = "{AUTH_SECRET}"', f'authentication_key = "{AUTH_SECRET}00"'),
     "meters[3].authentication_key", "32 hex digits"),
    ((f'decryption_key = "{SECRET}"\n', ''), "meters[3].authentication_key", "needs decryption_key"),
    (('profile = "smarty"', 'profile = "dsmr5"'), "meters[2].decryption_key", "never encrypted"),
    (('profile = "smarty"', 'profile = "auto"'), "meters[2].decryption_key", "smarty, msn, sagemcom_t210_d_r"),
])
def test_bad_encryption_keys_name_the_key_and_never_show_it(tmp_path, change, key, words):
    old, new = change
    assert old in ENCRYPTED
    path = write(tmp_path, ENCRYPTED.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert info.value.key == key and words in message and "\n" not in message
    for secret in (SECRET, SECRET[:30], AUTH_SECRET, "12345678901234567890"):
        assert secret.lower() not in message.lower()


def test_cli_check_config_does_not_print_keys(tmp_path):
    result = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(write(tmp_path, ENCRYPTED))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "4 meter(s)" in result.stdout
    assert SECRET.lower() not in (result.stdout + result.stderr).lower()


def test_a_level_needs_at_least_one_window(tmp_path):
    with pytest.raises(ConfigError, match="levels.custom.windows: must name at least one window"):
        load_config(write(tmp_path, GOOD + '\n[levels.custom]\nwindows = []\n'))


def test_closed_language_only_is_read_and_checked(tmp_path):
    assert load_config(write(tmp_path, GOOD)).triggers.closed_language_only is False
    config = load_config(write(tmp_path, GOOD + "\n[triggers]\nclosed_language_only = true\n"))
    assert config.triggers.closed_language_only is True
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD + "\n[triggers]\nclosed_language_only = \"yes\"\n"))
    assert info.value.key == "triggers.closed_language_only"


# --- the defaults, stated once: the schemas' (agent/config.py), which the image's example shows -------------------
EXAMPLE = Path(__file__).resolve().parents[1] / "image/boot/edge.toml.example"
# Where the example says something else than the default, and why (its own comments say so too).
NOT_DEFAULTS = {"api.listen": "0.0.0.0:8080",  # the image answers on every interface; the agent alone on loopback
                "auth.operator_token": "CHANGE-ME-or-leave-as-is-for-a-random-token",  # edge-firstboot's placeholder
                "meters[0].id": "house-1", "meters[0].port": "/dev/ttyUSB0"}  # a meter has no default


def _flat(data, prefix="") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                out |= _flat(item, f"{prefix}{key}[{i}].")
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def test_the_images_example_shows_every_key_with_its_default():
    example = tomllib.loads(EXAMPLE.read_text())
    example.pop("network")  # the boot script's, never the agent's
    parse_config(example)
    defaults = _flat(msgspec.to_builtins(EdgeToml(auth=AuthTable(operator_token=""))))
    defaults.pop("meters")  # none by default: the example's one is compared with the meter schema below
    meter = _flat(msgspec.to_builtins(MeterTable(id="", port="")), "meters[0].")
    defaults |= {key: value for key, value in meter.items() if value is not None}  # the others are commented out
    shown = _flat(example)
    assert set(shown) == set(defaults)  # every key, and no other
    differ = {key: value for key, value in shown.items() if value != defaults[key]}
    assert differ == NOT_DEFAULTS


def test_the_runtime_defaults_are_the_schemas():
    """A Config made in process (tests, tools) and one read from a file without the key agree."""
    from agent.config import Config

    read = parse_config({"auth": {"operator_token": "x" * 16}})
    made = Config(operator_token="x" * 16)
    assert read == made
