"""A fleet for a test: a real three-node nats-server cluster on loopback, devices and the hub as real processes,
households feeding them, and the operator's CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from agent.fleet import document
from hub import natsdev
from tests.helpers.agent import OPERATOR_TOKEN, agent_toml
from tests.helpers.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
DEVICES = ("dev-a", "dev-b")
POWERS = {("dev-a", 0): 311.25, ("dev-a", 1): 523.5, ("dev-a", 2): 742.75,
          ("dev-b", 0): 407.125, ("dev-b", 1): 619.375, ("dev-b", 2): 893.625}


def http(method: str, url: str, token: str | None = None, body=None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class Process:
    """A real process we can kill -9 and start again with the same arguments."""

    def __init__(self, args: list[str], log: Path):
        self.args, self.log, self.proc = args, log, None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, env=ENV, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


class Fleet:
    def __init__(self, tmp: Path, authorization: str | None = None, nkey_seed: Path | None = None):
        self.tmp = tmp
        self.cluster = natsdev.Cluster(tmp / "nats", authorization=authorization)
        self.nkey_args = ["--nkey-seed", str(nkey_seed)] if nkey_seed else []  # the hub's and operator's identity
        self.key = document.new_private_key()
        (tmp / "operator.key").write_text(document.private_key_text(self.key))
        self.public = document.public_key_text(self.key)
        self.ports = dict(zip((*DEVICES, "hub"), natsdev.free_ports(3)))
        self.agents: dict[str, Process] = {}
        self.households: dict[str, list[tuple[str, str]]] = {}
        self.stop_feeding = threading.Event()

    def servers(self) -> list[str]:
        return [a for url in self.cluster.urls for a in ("--servers", url)] + self.nkey_args

    def operator(self, *args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "hub.cli", *args, *self.servers(), "--key",
                              str(self.tmp / "operator.key")], env=ENV, cwd=ROOT, capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        return json.loads(out.stdout)

    def start_agent(self, device: str, fleet_toml: str = "") -> None:
        path = self.tmp / device / "edge.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        servers = ", ".join(f'"{u}"' for u in self.cluster.urls)
        path.write_text(agent_toml(path.parent, self.ports[device], 0.2) + f"""
[privacy]
k_min = 2
audit_period_s = 1
[fleet]
enabled = true
device_id = "{device}"
servers = [{servers}]
operator_public_key = "{self.public}"
windows = ["1s"]
heartbeat_s = 1
{fleet_toml}""")
        self.agents[device] = Process([sys.executable, "-m", "agent.cli", "run", "--config", str(path)],
                                      self.tmp / f"{device}.log")
        self.agents[device].start()

    def start_hub(self) -> None:
        self.hub = Process([sys.executable, "-m", "hub.cli", "serve", *self.servers(), "--operator-public-key",
                            self.public, "--listen", f"127.0.0.1:{self.ports['hub']}", "--min-devices", "2",
                            "--data", str(self.tmp / "hub")], self.tmp / "hub.log")
        ENV["EDGE_HUB_OPERATOR_TOKEN"] = OPERATOR_TOKEN
        self.hub.start()

    def device(self, device: str, path: str, token: str | None = OPERATOR_TOKEN, method="GET", body=None):
        return http(method, f"http://127.0.0.1:{self.ports[device]}{path}", token, body)

    def hub_api(self, path: str, token: str | None):
        return http("GET", f"http://127.0.0.1:{self.ports['hub']}{path}", token)

    def health(self, device: str) -> dict:
        try:
            return self.device(device, "/health")[1].get("fleet") or {}
        except OSError:
            return {}

    def consenting_households(self, device: str, n: int = 3) -> None:
        """Once the organization is applied on the device: n households there, consenting to its aggregates."""
        wait_until(lambda: self.org in self.health(device).get("organizations", ()), 60)
        self.households[device] = []
        for _ in range(n):
            status, body = self.device(device, "/households", method="POST", body={})
            assert status == 201, body
            status, _ = self.device(device, f"/households/me/consents/{self.org}/aggregates", body["token"], "PUT")
            assert status == 200
            self.households[device].append((body["id"], body["token"]))

    def stop(self) -> None:
        """Feeding, every agent, the hub, the cluster: whatever was started."""
        self.stop_feeding.set()
        for process in [*self.agents.values(), getattr(self, "hub", None)]:
            if process:
                process.stop()
        self.cluster.stop()

    def feed(self) -> None:
        """Each household posts its reading every 0.3 s (a constant power of its own)."""
        while not self.stop_feeding.is_set():
            now = datetime.now(timezone.utc).isoformat()
            for device, households in self.households.items():
                for i, (_, token) in enumerate(households):
                    try:
                        self.device(device, "/readings", token, "POST",
                                    {"timestamp": now, "power_import_w": POWERS[(device, i)]})
                    except OSError:
                        pass  # the device is being killed
            time.sleep(0.3)


def hub_windows(fleet: Fleet, since: float, until: float) -> dict:
    status, body = fleet.hub_api(f"/areas/north/data?window=1s&since={since}&until={until}", fleet.org_key)
    assert status == 200, body
    return body


def epoch(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
