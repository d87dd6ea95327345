"""rfc2217:// P1 ports: the agent's reader (P1Reader, pyserial's RFC 2217 client) against a real RFC 2217
server on 127.0.0.1 (pyserial's PortManager, run the way its examples/rfc2217_server.py runs it) in front of a
pseudo-terminal the meter emulator writes to. Reading, the serial settings the client forwards reaching the
server's port, and the server going away and coming back."""

from __future__ import annotations

import errno
import socket
import termios
import threading

import pytest
import serial
import serial.rfc2217

from drivers.p1_reader import MeterSpec, MeterState, P1Reader
from tests.helpers.p1 import Collector, start_emulator, stop_emulator
from tests.helpers.wait import wait_until

# pyserial 3.5's RFC 2217 client still calls Thread.setDaemon/setName
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:serial.rfc2217")


class PtyPort(serial.Serial):
    """The server's serial port, a pseudo-terminal. A pty has no modem lines (the ioctls fail with ENOTTY):
    setting DTR/RTS does nothing and CTS/DSR/RI/CD read False, as on an adapter without them. Some kernels
    also refuse data-bit and parity changes on a pty (EINVAL): such a refusal is recorded in `refused`
    (the settings asked for) instead of raised, so the test can tell "never asked" from "asked, refused"."""

    def __init__(self, *args, **kwargs):
        self.refused: list[dict] = []
        super().__init__(*args, **kwargs)

    def _reconfigure_port(self, force_update=False):
        try:
            super()._reconfigure_port(force_update)
        except termios.error as err:
            if err.args[0] != errno.EINVAL:
                raise
            self.refused.append(self.get_settings())

    def _update_dtr_state(self):
        _no_modem_lines(super()._update_dtr_state)

    def _update_rts_state(self):
        _no_modem_lines(super()._update_rts_state)

    cts = property(lambda self: _no_modem_lines(lambda: serial.Serial.cts.fget(self)))
    dsr = property(lambda self: _no_modem_lines(lambda: serial.Serial.dsr.fget(self)))
    ri = property(lambda self: _no_modem_lines(lambda: serial.Serial.ri.fget(self)))
    cd = property(lambda self: _no_modem_lines(lambda: serial.Serial.cd.fget(self)))


def _no_modem_lines(call):
    try:
        return call()
    except OSError as err:
        if err.errno not in (errno.ENOTTY, errno.EINVAL):
            raise
        return False


class Rfc2217Server:
    """An RFC 2217 server for one serial device on 127.0.0.1, one client at a time, as pyserial's
    examples/rfc2217_server.py: a thread copies serial -> socket (escaping IAC), the session loop copies
    socket -> serial through PortManager.filter, which also applies the client's port settings.
    The port starts at 9600 8N1, which no P1 profile uses, so whatever the reader needs must arrive."""

    def __init__(self, device: str, port: int = 0):
        self.serial = PtyPort(device, baudrate=9600, timeout=0.05)
        self.initial = self.serial.get_settings()
        self.listener = socket.create_server(("127.0.0.1", port))  # SO_REUSEADDR: the same port again later
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.sessions = 0
        self.settings_in_session: dict | None = None  # the port's settings while the last client was on
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rfc2217-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:  # the accept timeout, or the listener closed
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sessions += 1
            try:
                self._session(conn)
            finally:
                conn.close()
                self.settings_in_session = self.serial.get_settings()
                self.serial.apply_settings(self.initial)  # as the example: the next client starts afresh

    def _session(self, conn: socket.socket) -> None:
        lock = threading.Lock()

        class Link:
            @staticmethod
            def write(data: bytes) -> None:
                with lock:
                    conn.sendall(data)

        manager = serial.rfc2217.PortManager(self.serial, Link)
        alive = threading.Event()
        alive.set()

        def serial_to_socket():
            while alive.is_set():
                try:
                    data = self.serial.read(self.serial.in_waiting or 1)
                    if data:
                        Link.write(b"".join(manager.escape(data)))
                except OSError:  # the client left (or the pty's master did)
                    break
            alive.clear()

        copier = threading.Thread(target=serial_to_socket, name="rfc2217-serial-to-socket", daemon=True)
        copier.start()
        conn.settimeout(0.05)
        try:
            while alive.is_set() and not self._stopping.is_set():
                try:
                    data = conn.recv(1024)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                self.serial.write(b"".join(manager.filter(data)))
        finally:
            alive.clear()
            copier.join(10)

    def close(self) -> None:
        """The server goes away: its client is cut off, the port closed, nothing listens any more."""
        self._stopping.set()
        self._thread.join(10)
        self.listener.close()
        self.serial.close()


@pytest.fixture
def emulated_dsmr4(tmp_path):
    """The meter emulator on a pseudo-terminal: a DSMR 4 meter (115200 7E1), a telegram every 0.2 s."""
    process, path = start_emulator("--pty", "--profile", "dsmr4", "--speed", "50", "--seed", "7",
                                   tmp_path=tmp_path)
    yield path
    stop_emulator(process)


@pytest.fixture
def servers():
    started: list[Rfc2217Server] = []

    def start(device: str, port: int = 0) -> Rfc2217Server:
        server = Rfc2217Server(device, port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def assert_reader_settings_reached(server: Rfc2217Server) -> None:
    """The DSMR 4 profile's 115200 7E1, set by the reader, forwarded by the RFC 2217 client, applied by the server."""
    port = server.serial
    assert (port.baudrate, port.bytesize, port.parity, port.stopbits) == (115200, 7, serial.PARITY_EVEN, 1)
    assert not port.xonxoff and not port.rtscts
    attributes = termios.tcgetattr(port.fd)
    assert attributes[4] == attributes[5] == termios.B115200  # a pty keeps its speed: the baud rate is on it
    cflag = attributes[2]
    if port.refused:  # this kernel's ptys refuse data-bit and parity changes: the request is what can be seen
        assert any(s["bytesize"] == 7 and s["parity"] == serial.PARITY_EVEN for s in port.refused)
    else:
        assert cflag & termios.CSIZE == termios.CS7 and cflag & termios.PARENB and not cflag & termios.PARODD


def test_reads_through_an_rfc2217_server_and_resumes_after_it_restarts(emulated_dsmr4, servers):
    server = servers(emulated_dsmr4)
    port = server.port
    got = Collector()
    reader = P1Reader(MeterSpec("m1", f"rfc2217://127.0.0.1:{port}", "dsmr4"), got,
                      read_timeout=0.05, max_backoff=0.5)
    reader.start()
    try:
        got.wait_for(3)
        assert reader.state == MeterState.READING and reader.stats.crc_errors == 0
        assert reader.opens == 1 and server.sessions == 1
        assert_reader_settings_reached(server)
        assert all(r.meter_id == "m1" and r.energy_import_wh > 0 and r.gas_m3 is not None for r in got.readings)

        server.close()  # the server goes away (a gateway rebooting): the link drops, connections are refused
        wait_until(lambda: reader.state == MeterState.DISCONNECTED)
        assert server.settings_in_session["baudrate"] == 115200
        count = len(got.readings)

        server = servers(emulated_dsmr4, port)  # back, on the same port, with its port at 9600 8N1 again
        got.wait_for(count + 3)
        assert reader.reconnects >= 1 and reader.state == MeterState.READING and server.sessions >= 1
        assert_reader_settings_reached(server)
        stamps = [r.timestamp for r in got.readings]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # the meter's, in order, no repeats
    finally:
        reader.stop()
