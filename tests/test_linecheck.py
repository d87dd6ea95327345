"""What looks wrong on a P1 line (drivers/linecheck.py) on data: the bytes a port delivers, and the hint /health
shows for them. tests/test_p1_ports.py sees the hints through a reader on a pty."""

from __future__ import annotations

from drivers.linecheck import SAMPLE_BYTES, hint
from tests.helpers.telegrams import telegram_bytes, with_even_parity_bit


def test_hints_name_each_cause_and_nothing_when_nothing_points_anywhere():
    telegram = telegram_bytes("v5.txt")
    assert "7E1" in hint(with_even_parity_bit(telegram), 900, "115200 8N1")
    assert "parity or framing" in hint(telegram.replace(b"0", b"\x00"), 900, "115200 7E1")
    assert "wrong baud rate" in hint(bytes(range(0x41, 0x5b)) * 50, 700, "9600 7E1")
    assert hint(b"", 0, None).startswith("no data at all")
    assert hint(telegram, 900, "115200 8N1") is None  # a good telegram the family does not read: no serial hint


def test_the_settings_are_named_only_when_known():
    assert hint(b"", 0, "9600 7E1").startswith("no data at all at 9600 7E1: check the cable")
    assert hint(b"", 0, None).startswith("no data at all: check the cable")
    assert hint(b"ABC" * 100, 300, None) == "data arrives but nothing like a telegram: wrong baud rate?"


def test_bytes_read_earlier_but_none_kept_give_no_hint():
    assert hint(b"", 5000, "115200 8N1") is None


def test_a_few_high_or_nul_bytes_are_noise_not_a_cause():
    telegram = telegram_bytes("v5.txt")[:SAMPLE_BYTES]
    eighth = len(telegram) // 8
    some_high = bytes(b | 0x80 if i < eighth else b for i, b in enumerate(telegram))  # no more than an eighth
    assert hint(some_high, 900, "115200 8N1") is None
    some_nul = b"\x00" * eighth + telegram[eighth:]
    assert hint(some_nul, 900, "115200 8N1") is None
    assert "parity or framing" in hint(b"\x00" * (eighth + 1) + telegram[eighth + 1:], 900, "115200 8N1")


def test_high_bytes_that_are_no_telegram_once_cleared_are_not_called_7e1():
    noise = bytes(0x80 | (0x41 + i % 26) for i in range(800))  # no '/', '!' or ':' even with bit 7 cleared
    assert "7E1" not in (hint(noise, 800, "115200 8N1") or "")
    assert hint(noise, 800, "115200 8N1").endswith("wrong baud rate?")
    framed = bytes(0x80 | b for b in b"/ABCDEF!" * 100)  # a start and an end, but no OBIS line (no ':')
    assert hint(framed, 800, "115200 8N1").endswith("wrong baud rate?")
