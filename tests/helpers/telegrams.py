"""The real telegrams of tests/telegrams/ and the profile each is read with."""

from __future__ import annotations

from pathlib import Path

TELEGRAMS = Path(__file__).parent.parent / "telegrams"

# file -> (our profile, dsmr_parser specification name); the table of telegrams/README.md
TELEGRAM_PROFILES = {
    "v2_2.txt": ("dsmr22", "V2_2"),
    "v3.txt": ("dsmr3", "V3"),
    "v4_2.txt": ("dsmr4", "V4"),
    "v5.txt": ("dsmr5", "V5"),
    "v5_two_mbus.txt": ("dsmr5", "V5"),
    "unpadded_crc.txt": ("dsmr5", "V5"),
    "fluvius_v171.txt": ("fluvius", "BELGIUM_FLUVIUS"),
    "fluvius_v171_alt.txt": ("fluvius", "BELGIUM_FLUVIUS"),
    "esy5q3da1004_v304.txt": ("q3d", "Q3D"),
    "esy5q3db1024_v304.txt": ("q3d", "Q3D"),
    "sagemcom_t210_d_r.txt": ("sagemcom_t210_d_r", "SAGEMCOM_T210_D_R"),
    "iskra_ie.txt": ("iskra_ie", "ISKRA_IE"),
    "v5_eon_hu.txt": ("eon_hungary", "EON_HUNGARY"),
}


def telegram_bytes(name: str) -> bytes:
    return (TELEGRAMS / name).read_bytes()


def with_even_parity_bit(data: bytes) -> bytes:
    """What a 7E1 meter's bytes look like to a port read at 8N1: the parity bit lands in bit 7."""
    return bytes(b | (0x80 if bin(b).count("1") % 2 else 0) for b in data)
