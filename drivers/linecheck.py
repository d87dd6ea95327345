"""What looks wrong on a P1 line that carries no valid telegram: a hint for /health. No I/O here.

A 7E1 meter read at 8N1 delivers its parity bit as an eighth data bit: the bytes are a telegram once bit 7 is
cleared. Read the other way round (8N1 meter at 7E1), bytes fail their parity check and arrive as NULs (pyserial's
default termios settings), or lose bit 7. A wrong baud rate gives bytes with neither '/' nor '!'.
"""

from __future__ import annotations

SAMPLE_BYTES = 4096  # what the reader keeps of the bytes since the last good telegram


def hint(sample: bytes, bytes_read: int, settings_label: str | None) -> str | None:
    """A sentence naming the likely cause, or None when nothing points anywhere."""
    at = f" at {settings_label}" if settings_label else ""
    if not bytes_read:
        return (f"no data at all{at}: check the cable and that the meter's P1 port is enabled "
                "(some meters need it activated by the grid operator)")
    if not sample:
        return None
    high = sum(1 for byte in sample if byte & 0x80)
    if high > len(sample) // 8:
        masked = bytes(byte & 0x7F for byte in sample)
        if b"/" in masked and b"!" in masked and b":" in masked:
            return (f"the bytes are a telegram once their eighth bit is cleared: the meter sends 7E1, read{at}; "
                    "set bytesize = 7 and parity = \"E\" (or profile = \"auto\")")
    if sample.count(0) > len(sample) // 8:
        return (f"many bytes failed their parity or framing check{at}: the meter's parity or bytesize differs "
                "(try parity = \"N\", bytesize = 8, or profile = \"auto\")")
    if b"/" not in sample and b"!" not in sample:
        return f"data arrives{at} but nothing like a telegram: wrong baud rate?"
    return None
