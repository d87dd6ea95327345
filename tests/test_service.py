"""`edge-agent run` as systemd runs it: a real process, a real notify socket, real signals,
and a real kill -9 in the middle of writing."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from datetime import datetime

from tests.helpers.agent import OPERATOR_TOKEN, agent_toml, free_port, run_agent_process as start_agent
from tests.helpers.pty import PtyPair
from tests.helpers.telegrams import telegram_bytes
from tests.helpers.wait import wait_until


def write_config(tmp_path, pty_path: str, port: int, flush_seconds: float = 0.5):
    path = tmp_path / "edge.toml"
    path.write_text(agent_toml(tmp_path, port, flush_seconds) + f"""[[meters]]
id = "m1"
port = "{pty_path}"
profile = "dsmr5"
""")
    return path


def get_json(port: int, path: str, token: str | None = OPERATOR_TOKEN):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_systemd_notify_ready_watchdog_and_stop(tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(30)
    pair = PtyPair()
    port = free_port()
    proc = start_agent(write_config(tmp_path, pair.path, port),
                       {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"})
    try:
        messages = []
        while not any(m.startswith("WATCHDOG=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        assert messages[0] == "READY=1"  # only once the API listens
        status, _ = get_json(port, "/health", token=None)
        assert status in (200, 503)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        while "STOPPING=1" not in messages:
            messages.append(sock.recv(4096).decode())
    finally:
        proc.kill()
        proc.wait()
        pair.close()
        sock.close()


def test_kill_9_while_writing_loses_at_most_the_flush_interval(tmp_path):
    pair = PtyPair()
    port = free_port()
    flush_seconds = 0.5
    config = write_config(tmp_path, pair.path, port, flush_seconds)
    proc = start_agent(config)
    try:
        wait_until(lambda: get_json(port, "/health")[1]["meters"]["m1"]["opens"] >= 1)
        telegram = telegram_bytes("v5.txt")
        sent = 0
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # ~50 telegrams a second, far more than a meter sends
            pair.write(telegram)
            sent += 1
            time.sleep(0.02)
        wait_until(lambda: get_json(port, "/meters/m1/readings?limit=100000")[1]["count"] >= 10)
        status, before = get_json(port, "/meters/m1/readings?limit=100000")
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait()
    # Everything the agent had received more than one flush interval (plus scheduling slack) before
    # the kill must be on disk.
    must_have = {r["received_at"] for r in before["readings"]
                 if datetime.fromisoformat(r["received_at"].replace("Z", "+00:00")).timestamp()
                 < killed_at - flush_seconds - 2.0}
    assert len(must_have) >= 10

    proc = start_agent(config)
    try:
        wait_until(lambda: get_json(port, "/health", token=None)[0] in (200, 503))
        status, after = get_json(port, "/meters/m1/readings?limit=100000")
        assert status == 200
        kept = {r["received_at"] for r in after["readings"]}
        assert must_have <= kept, f"lost {len(must_have - kept)} of {len(must_have)} flushed readings"
        assert len(kept) <= len(before["readings"])  # nothing invented
        pair.write(telegram_bytes("v5.txt"))  # and the restarted agent reads on
        wait_until(lambda: get_json(port, "/meters/m1/readings?limit=100000")[1]["count"] > len(kept))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        pair.close()
