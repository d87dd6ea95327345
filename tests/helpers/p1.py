"""The P1 reader's side of a test: a collector of readings, readers stopped at the end, the emulator as a process."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from drivers.p1_reader import P1Reader
from drivers.profiles import get_profile
from drivers.telegram import TelegramDecoder
from tests.helpers.telegrams import TELEGRAM_PROFILES, telegram_bytes

REPO = Path(__file__).resolve().parent.parent.parent
HANG_GUARD_S = 60  # only against hangs; never an assertion on speed


class Collector:
    def __init__(self):
        self.readings = []
        self._cond = threading.Condition()

    def __call__(self, reading):
        with self._cond:
            self.readings.append(reading)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 15.0):
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.readings) >= count, timeout)
        assert ok, f"got {len(self.readings)} readings, wanted {count}"


@pytest.fixture
def readers():
    started = []

    def start(spec, collector, **kwargs):
        reader = P1Reader(spec, collector, read_timeout=0.05, max_backoff=0.5, **kwargs)
        reader.start()
        started.append(reader)
        return reader

    yield start
    for reader in started:
        reader.stop()


def start_emulator(*arguments: str, tmp_path: Path) -> tuple[subprocess.Popen, str | None]:
    """Start `python -m drivers.emulator` and read the first line of its stdout (where to read it)."""
    stderr = open(tmp_path / "emulator.stderr", "wb")
    process = subprocess.Popen([sys.executable, "-m", "drivers.emulator", *arguments], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=stderr)
    stderr.close()
    if "--stdout" in arguments:
        return process, None
    ready, _, _ = select.select([process.stdout], [], [], HANG_GUARD_S)
    if not ready:
        process.kill()
        pytest.fail("the emulator printed no address")
    return process, process.stdout.readline().decode().strip()


def stop_emulator(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(HANG_GUARD_S)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()


NOT_RECEIVED = ("received_at",)  # what a decoder's Reading has that its record does not compare


def record(reading) -> dict:
    return {k: v for k, v in reading.to_record().items() if k not in NOT_RECEIVED and k != "timestamp"}


def direct(name: str) -> dict:
    from datetime import datetime, timezone

    profile = get_profile(TELEGRAM_PROFILES[name][0])
    text = telegram_bytes(name).decode("latin-1")
    return record(TelegramDecoder("m1", profile).decode(text, datetime.now(timezone.utc)))
