"""The P1 reader on real pseudo-terminals and real TCP sockets: reading, pulled cables,
gateways that restart, lines that go quiet, and auto-detection."""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from drivers.p1_reader import MeterSpec, MeterState
from tests.helpers.p1 import Collector, readers  # noqa: F401  (readers: the fixture)
from tests.helpers.pty import PtyPair
from tests.helpers.telegrams import telegram_bytes
from tests.helpers.wait import wait_until

V5 = telegram_bytes("v5.txt")


def test_reads_telegrams_from_a_pty(pty_pair, readers):
    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, "dsmr5"), got)
    wait_until(lambda: reader.opens >= 1)
    for _ in range(3):
        pty_pair.write(V5)
    got.wait_for(3)
    assert reader.state == MeterState.READING
    assert all(r.power_import_w == 244.0 and r.meter_id == "m1" for r in got.readings)
    assert reader.snapshot()["telegrams_ok"] == 3


def test_telegram_split_across_many_writes(pty_pair, readers):
    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, "dsmr5"), got)
    wait_until(lambda: reader.opens >= 1)
    for i in range(0, len(V5), 50):
        pty_pair.write(V5[i : i + 50])
        time.sleep(0.005)
    got.wait_for(1)


def test_pulled_cable_and_reinserted(tmp_path, readers):
    """The device node disappears (USB cable pulled) and a new one appears under the same name."""
    link = tmp_path / "ttyP1"
    first = PtyPair()
    os.symlink(first.path, link)
    got = Collector()
    reader = readers(MeterSpec("m1", str(link), "dsmr5"), got)
    wait_until(lambda: reader.opens >= 1)
    first.write(V5)
    got.wait_for(1)

    first.close()  # cable pulled: reads fail with EIO
    wait_until(lambda: reader.state == MeterState.DISCONNECTED)
    second = PtyPair()
    try:
        os.unlink(link)
        os.symlink(second.path, link)
        wait_until(lambda: reader.opens >= 2)
        second.write(V5)
        got.wait_for(2)
        assert reader.state == MeterState.READING
    finally:
        second.close()


def test_port_that_does_not_exist_yet(tmp_path, readers):
    got = Collector()
    link = tmp_path / "later"
    reader = readers(MeterSpec("m1", str(link), "dsmr5"), got)
    wait_until(lambda: reader.state == MeterState.DISCONNECTED)
    assert "open" in reader.snapshot()["last_error"]
    pair = PtyPair()
    try:
        os.symlink(pair.path, link)
        wait_until(lambda: reader.opens >= 1)
        pair.write(V5)
        got.wait_for(1)
    finally:
        pair.close()


def test_quiet_line_counts_as_stall_and_is_reopened(pty_pair, readers):
    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, "dsmr5", stall_seconds=2), got)
    wait_until(lambda: reader.opens >= 1)
    pty_pair.write(V5)
    got.wait_for(1)
    wait_until(lambda: reader.stalls >= 1)  # no telegram for 2 s
    assert reader.state in (MeterState.STALLED, MeterState.CONNECTING)
    wait_until(lambda: reader.opens >= 2)
    pty_pair.write(V5)
    got.wait_for(2)
    assert reader.state == MeterState.READING


def test_a_stepping_wall_clock_only_changes_received_at(pty_pair, readers):
    """A wall clock that jumps a year at every look (NTP stepping a Pi without an RTC): the readings carry
    its times, and nothing else notices: no stall, no reopen. Stalls, backoff and the rate-limited
    logs run on the monotonic clock."""
    looks = []

    def wall_clock():
        looks.append(datetime(2020, 1, 1, tzinfo=timezone.utc) + timedelta(days=365 * len(looks)))
        return looks[-1]

    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, "dsmr5", stall_seconds=5), got, wall_clock=wall_clock)
    assert reader._ratelog.clock is time.monotonic
    wait_until(lambda: reader.opens >= 1)
    for _ in range(3):
        pty_pair.write(V5)
        time.sleep(0.1)
    got.wait_for(3)
    assert all(r.received_at in looks for r in got.readings)  # stamped by the wall clock given
    assert reader.stalls == 0 and reader.opens == 1 and reader.state == MeterState.READING


def test_garbage_only_line_stalls(pty_pair, readers):
    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, "dsmr5", stall_seconds=2), got)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and reader.stalls == 0:
        pty_pair.write(b"\xff\x00noise" * 20)
        time.sleep(0.05)
    wait_until(lambda: reader.stalls >= 1)
    assert got.readings == [] and reader.snapshot()["bytes_discarded"] > 0


class TcpGateway:
    """A ser2net-like gateway on 127.0.0.1 that sends a telegram to each client every 0.1 s."""

    def __init__(self, port: int = 0):
        self.server = socket.create_server(("127.0.0.1", port))
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        self.clients: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True),
                        threading.Thread(target=self._send, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _accept(self):
        self.server.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
                self.clients.append(conn)
            except (TimeoutError, OSError):
                continue

    def _send(self):
        while not self.stop.is_set():
            for conn in list(self.clients):
                try:
                    conn.sendall(V5)
                except OSError:
                    self.clients.remove(conn)
            time.sleep(0.1)

    def close(self):
        self.stop.set()
        for thread in self.threads:  # a thread still in accept() keeps the port bound
            thread.join()
        for conn in self.clients:
            conn.close()
        self.server.close()


def test_tcp_gateway_restart(readers):
    gateway = TcpGateway()
    port = gateway.port
    got = Collector()
    reader = readers(MeterSpec("m1", f"socket://127.0.0.1:{port}", "dsmr5"), got)
    got.wait_for(3)
    gateway.close()  # the gateway reboots
    wait_until(lambda: reader.state == MeterState.DISCONNECTED)
    count = len(got.readings)
    gateway = TcpGateway(port)
    try:
        got.wait_for(count + 3)
        assert reader.reconnects >= 1 and reader.state == MeterState.READING
    finally:
        gateway.close()


@pytest.mark.parametrize("name, profile", [("v5.txt", "dsmr5"), ("fluvius_v171.txt", "fluvius"),
                                           ("v5_eon_hu.txt", "eon_hungary")])


def test_auto_detects_the_profile(pty_pair, readers, name, profile):
    got = Collector()
    reader = readers(MeterSpec("m1", pty_pair.path, "auto"), got)
    wait_until(lambda: reader.opens >= 1)
    pty_pair.write(telegram_bytes(name))
    got.wait_for(1)
    assert reader.profile_name == profile
    wait_until(lambda: reader.opens >= 2)  # reopened with the adopted settings
    pty_pair.write(telegram_bytes(name))
    got.wait_for(2)


def test_one_failing_meter_does_not_stop_another(pty_pair, tmp_path, readers):
    good, bad = Collector(), Collector()
    readers(MeterSpec("bad", str(tmp_path / "nothing-here"), "dsmr5"), bad)
    reader = readers(MeterSpec("good", pty_pair.path, "dsmr5"), good)
    wait_until(lambda: reader.opens >= 1)
    for _ in range(3):
        pty_pair.write(V5)
    good.wait_for(3)
    assert bad.readings == []


def test_a_failing_handler_does_not_kill_the_reader(pty_pair, readers):
    calls = []

    def handler(reading):
        calls.append(reading)
        if len(calls) == 1:
            raise RuntimeError("consumer bug")

    reader = readers(MeterSpec("m1", pty_pair.path, "dsmr5"), handler)
    wait_until(lambda: reader.opens >= 1)
    pty_pair.write(V5)
    wait_until(lambda: len(calls) == 1)
    pty_pair.write(V5)
    wait_until(lambda: len(calls) == 2)
    assert reader.state == MeterState.READING


def test_a_failing_handler_during_auto_detection_does_not_kill_the_reader(pty_pair, readers):
    calls = []

    def handler(reading):
        calls.append(reading)
        raise RuntimeError("consumer bug")

    reader = readers(MeterSpec("m1", pty_pair.path, "auto"), handler)
    wait_until(lambda: reader.opens >= 1)
    pty_pair.write(V5)
    wait_until(lambda: len(calls) == 1)
    wait_until(lambda: reader.opens >= 2)  # reopened with the detected settings: the thread lives
    pty_pair.write(V5)
    wait_until(lambda: len(calls) == 2)
    assert reader._thread.is_alive() and reader.profile_name == "dsmr5"
