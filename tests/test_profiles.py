"""Meter families (drivers/profiles.py) on data: each family's dsmr_parser specification and serial settings, a
meter's overrides, the settings as pyserial takes them (a real pyserial loop port), and `auto`'s candidates."""

from __future__ import annotations

import pytest
import serial
from dsmr_parser import telegram_specifications as specs

from drivers.profiles import (
    AUTO_CANDIDATES,
    PROFILES,
    SETTINGS_9600_7E1,
    SETTINGS_115200_8N1,
    SerialSettings,
    get_profile,
)


def test_overrides_replace_only_what_is_given():
    settings = SETTINGS_115200_8N1.with_overrides(baudrate=9600, parity=None, bytesize=7, stopbits=None)
    assert settings == SerialSettings(baudrate=9600, bytesize=7, parity="N", stopbits=1)
    assert SETTINGS_115200_8N1.with_overrides() == SETTINGS_115200_8N1
    with pytest.raises(TypeError):
        SETTINGS_115200_8N1.with_overrides(speed=9600)


def test_a_label_and_the_settings_as_pyserial_takes_them():
    assert SETTINGS_9600_7E1.label() == "9600 7E1" and SerialSettings(parity="O", stopbits=2).label() == "115200 8O2"
    for settings in (SETTINGS_9600_7E1, SETTINGS_115200_8N1, SerialSettings(parity="O", stopbits=2, rtscts=True)):
        port = serial.serial_for_url("loop://", **settings.pyserial_kwargs())
        try:
            assert (port.baudrate, port.bytesize, port.parity, port.stopbits, port.rtscts) == (
                settings.baudrate, settings.bytesize, settings.parity, settings.stopbits, settings.rtscts)
            port.write(b"/ISK5\r\n!")
            assert port.read(8) == b"/ISK5\r\n!"
        finally:
            port.close()
    with pytest.raises(KeyError):
        SerialSettings(parity="X").pyserial_kwargs()


@pytest.mark.parametrize("name,crc,key,belgian", [
    ("dsmr22", False, False, False), ("dsmr3", False, False, False), ("dsmr4", True, False, False),
    ("dsmr5", True, False, False), ("fluvius", True, False, True), ("smarty", True, True, False),
    ("msn", True, True, False), ("sagemcom_t210_d_r", True, True, False), ("q3d", False, False, False),
])
def test_each_family_has_its_crc_key_and_tariff_order(name, crc, key, belgian):
    profile = get_profile(name)
    assert (profile.name, profile.has_crc, profile.takes_key, profile.belgian_tariffs) == (name, crc, key, belgian)
    assert profile.interval_s > 0 and profile.description


def test_an_encrypted_familys_plaintext_specification_has_no_cipher():
    msn = get_profile("msn")
    assert msn.encrypted and msn.specification["general_global_cipher"]
    plain = msn.plaintext_specification()
    assert plain["general_global_cipher"] is False and plain["objects"] is msn.specification["objects"]
    assert msn.specification["general_global_cipher"]  # the family's own is left as it is
    assert get_profile("dsmr5").plaintext_specification() is specs.V5


def test_an_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError) as refused:
        get_profile("dsmr6")
    assert "unknown profile 'dsmr6'" in str(refused.value) and "auto, dsmr22" in str(refused.value)
    assert all(name in str(refused.value) for name in PROFILES)


def test_auto_tries_each_setting_once_with_known_plaintext_families():
    settings = [s for s, _ in AUTO_CANDIDATES]
    assert len(set(settings)) == len(settings) and settings[0] == SETTINGS_115200_8N1
    for _, names in AUTO_CANDIDATES:
        assert names and all(name in PROFILES for name in names)
    # an encrypted family needs its key: `auto` cannot read one
    assert not any(PROFILES[name].encrypted for _, names in AUTO_CANDIDATES for name in names)
