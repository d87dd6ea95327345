"""drivers/ratelog.py on a clock the test sets: the first line of a kind at once, then one per interval saying
how many were held back; kinds apart."""

from __future__ import annotations

import logging

from drivers.ratelog import RateLimitedLog


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_per_kind_with_the_count_held_back(caplog):
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("test.ratelog"), interval=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        assert log.warning("crc", "bad CRC on %s", "/dev/ttyUSB0")
        assert not log.warning("crc", "bad CRC on %s", "/dev/ttyUSB0")
        assert log.info("gap", "no telegram")  # another kind is not held back
        clock.now += 59.9
        assert not log.warning("crc", "bad CRC on %s", "/dev/ttyUSB0")
        clock.now += 0.1
        assert log.warning("crc", "bad CRC on %s", "/dev/ttyUSB0")
        clock.now += 60
        assert log.warning("crc", "bad CRC on %s", "/dev/ttyUSB0")  # nothing held back since: no count
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "bad CRC on /dev/ttyUSB0"),
        (logging.INFO, "no telegram"),
        (logging.WARNING, "bad CRC on /dev/ttyUSB0 (2 more like it in the last 60 s)"),
        (logging.WARNING, "bad CRC on /dev/ttyUSB0"),
    ]
