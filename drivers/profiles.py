"""Meter families: which dsmr_parser specification and which serial settings each one uses.

Every setting can be overridden per meter in the config; `SerialSettings.with_overrides` does it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import serial
from dsmr_parser import telegram_specifications as specs


@dataclass(frozen=True, slots=True)
class SerialSettings:
    baudrate: int = 115200
    bytesize: int = 8
    parity: str = "N"  # N, E, O
    stopbits: int = 1
    xonxoff: bool = False
    rtscts: bool = False

    def with_overrides(self, **overrides: Any) -> SerialSettings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def label(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    def pyserial_kwargs(self) -> dict[str, Any]:
        return {
            "baudrate": self.baudrate,
            "bytesize": self.bytesize,
            "parity": {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}[self.parity],
            "stopbits": self.stopbits,
            "xonxoff": self.xonxoff,
            "rtscts": self.rtscts,
        }


SETTINGS_9600_7E1 = SerialSettings(baudrate=9600, bytesize=7, parity="E")
SETTINGS_115200_7E1 = SerialSettings(baudrate=115200, bytesize=7, parity="E")
SETTINGS_115200_8N1 = SerialSettings(baudrate=115200, bytesize=8, parity="N")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    specification: dict[str, Any]
    serial: SerialSettings
    interval_s: float  # how often the meter sends a telegram
    belgian_tariffs: bool = False  # register/tariff 1 is day and 2 is night: swap to Edge's t1 = low
    encrypted: bool = False  # DLMS general-global-cipher on the wire (needs a key), e.g. Smarty, Sagemcom
    encryptable: bool = False  # may send either, plaintext or encrypted (Smarty): takes a key too

    @property
    def has_crc(self) -> bool:
        return bool(self.specification["checksum_support"])

    @property
    def takes_key(self) -> bool:
        """Whether a `decryption_key` makes sense for this family's meters."""
        return self.encrypted or self.encryptable

    def plaintext_specification(self) -> dict[str, Any]:
        """The specification for telegrams that arrive decrypted (a gateway decrypts, or a test file)."""
        if not self.specification.get("general_global_cipher"):
            return self.specification
        return dict(self.specification, general_global_cipher=False)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("dsmr22", "DSMR 2.2 (Netherlands), no CRC", specs.V2_2, SETTINGS_9600_7E1, 10),
        Profile("dsmr3", "DSMR 3 (Netherlands), no CRC", specs.V3, SETTINGS_9600_7E1, 10),
        # DSMR 4 meters in the field use both 7E1 and 8N1; 7E1 is the specification's, `auto` tries both.
        Profile("dsmr4", "DSMR 4.x (Netherlands)", specs.V4, SETTINGS_115200_7E1, 10),
        Profile("dsmr5", "DSMR 5 (Netherlands)", specs.V5, SETTINGS_115200_8N1, 1),
        Profile("fluvius", "Belgium, Fluvius e-MUCS", specs.BELGIUM_FLUVIUS, SETTINGS_115200_8N1, 1,
                belgian_tariffs=True),
        Profile("smarty", "Luxembourg, Smarty (plaintext P1, or encrypted with decryption_key)",
                specs.LUXEMBOURG_SMARTY, SETTINGS_115200_8N1, 10, encryptable=True),
        Profile("msn", "Luxembourg, MSN (encrypted)", specs.MSN, SETTINGS_115200_8N1, 10, encrypted=True),
        Profile("sweden", "Sweden", specs.SWEDEN, SETTINGS_115200_8N1, 10),
        Profile("q3d", "EasyMeter Q3D (Germany)", specs.Q3D, SETTINGS_9600_7E1, 2),
        Profile("sagemcom_t210_d_r", "Sagemcom T210-D-r (Austria, Energienetze Steiermark)",
                specs.SAGEMCOM_T210_D_R, SETTINGS_115200_8N1, 5, encrypted=True),
        Profile("iskra_ie", "Iskra (Ireland)", specs.ISKRA_IE, SETTINGS_115200_8N1, 10),
        Profile("eon_hungary", "E.ON Hungary", specs.EON_HUNGARY, SETTINGS_115200_8N1, 10),
    )
}

# `auto`: the settings tried in turn until telegrams with a valid CRC arrive, most common first,
# each with the profiles whose telegrams such a port carries.
AUTO_CANDIDATES: tuple[tuple[SerialSettings, tuple[str, ...]], ...] = (
    (SETTINGS_115200_8N1, ("dsmr5", "fluvius", "eon_hungary", "sweden", "smarty", "iskra_ie", "dsmr4")),
    (SETTINGS_115200_7E1, ("dsmr4", "dsmr5")),
    (SETTINGS_9600_7E1, ("dsmr3", "dsmr22", "q3d")),
)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: auto, {', '.join(PROFILES)}") from None
