"""A local nats-server cluster with JetStream on loopback, for the tests and bench/fleet.py (never production).

Each node is a real `nats-server` process (Debian's package; the Makefile's system-deps installs it) with its own
store directory and free ports; `kill(i)` is a kill -9, `start(i)` brings the node back on the same ports and
store, as a restarted machine would. With `authorization` (the text `edge-hub nats-auth` writes), every node
includes that file: clients sign in with their nkeys and get the permissions it gives; `reload()` makes the
nodes read it again (SIGHUP), as an operator does after assigning a device.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NATS_SERVER = "nats-server"


def available() -> bool:
    return shutil.which(NATS_SERVER) is not None


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    def __init__(self, directory: str | Path, nodes: int = 3, name: str = "edge", authorization: str | None = None,
                 advertise: bool = True):
        self.directory = Path(directory)
        self.nodes = nodes
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        ports = free_ports(2 * nodes)
        self.client_ports, self.route_ports = ports[:nodes], ports[nodes:]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * nodes
        self.advertise = advertise  # False: clients learn no other node's address (bench/fleet.py's cut link)
        self.auth_file = self.directory / "auth.conf" if authorization is not None else None
        if self.auth_file and authorization is not None:
            self.auth_file.write_text(authorization)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def _config(self, i: int) -> Path:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != i)
        store = self.directory / f"n{i}"
        store.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"n{i}.conf"
        advertise = "" if self.advertise else ", no_advertise: true"
        cluster = (f"cluster {{ name: {self.name}, listen: 127.0.0.1:{self.route_ports[i]}, routes: [{routes}]"
                   f"{advertise} }}" if self.nodes > 1 else "")  # one node: a plain JetStream server (replicas 1)
        path.write_text(f"""
server_name: n{i}
listen: 127.0.0.1:{self.client_ports[i]}
jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 1GB }}
{cluster}
{f'include "{self.auth_file.name}"' if self.auth_file else ""}
""")
        return path

    def start(self, i: int | None = None) -> None:
        for n in range(self.nodes) if i is None else [i]:
            log = open(self.directory / f"n{n}.log", "ab")
            self.processes[n] = subprocess.Popen([NATS_SERVER, "-c", str(self._config(n))], stdout=log,
                                                 stderr=subprocess.STDOUT)
            log.close()
        for n in range(self.nodes) if i is None else [i]:
            self._wait_port(self.client_ports[n])

    def _wait_port(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server on port {port} did not start")

    def reload(self, authorization: str) -> None:
        """A new authorization file, read again by every running node (SIGHUP: no restart, no client dropped
        but those whose permissions it takes away)."""
        assert self.auth_file is not None, "a cluster started without authorization"
        self.auth_file.write_text(authorization)
        for process in self.processes:
            if process is not None:
                os.kill(process.pid, signal.SIGHUP)

    def kill(self, i: int) -> None:
        """kill -9 of one node."""
        process = self.processes[i]
        if process is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            self.processes[i] = None

    def stop(self) -> None:
        for i, process in enumerate(self.processes):
            if process is not None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    self.kill(i)
                self.processes[i] = None
