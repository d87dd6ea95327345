"""Hardware-in-loop: a real P1 port when `--p1-port` is given, else the meter emulator on a
pseudo-terminal, so CI exercises the same tests and code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/hil/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.hil)


@dataclass
class P1Source:
    port: str
    profile: str
    hardware: bool
    emulator: "EmulatedMeter | None" = None


class EmulatedMeter:
    """`python -m drivers.emulator --pty --link PATH`: a stable path, like a udev symlink."""

    def __init__(self, link: str, *extra: str):
        self.link = link
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drivers.emulator", "--pty", "--link", self.link, "--speed", "10",
             "--seed", "7", *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not self.proc.stdout.readline().strip():
            raise RuntimeError(f"emulator did not start: {self.proc.stderr.read()}")

    def pull(self) -> None:
        """The cable is pulled: the pseudo-terminal disappears."""
        self.proc.kill()
        self.proc.wait(10)
        deadline = time.monotonic() + 5
        while os.path.lexists(self.link) and time.monotonic() < deadline:
            if not os.path.exists(self.link):  # a dangling link is what a vanished device leaves
                break
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def p1_source(request, tmp_path):
    port = request.config.getoption("--p1-port")
    profile = request.config.getoption("--p1-profile")
    if port:
        yield P1Source(port, profile, hardware=True)
        return
    extra = getattr(request, "param", ())
    meter = EmulatedMeter(str(tmp_path / "ttyP1"), *extra)
    meter.start()
    try:
        yield P1Source(meter.link, "auto" if profile == "auto" else profile, hardware=False, emulator=meter)
    finally:
        meter.stop()
