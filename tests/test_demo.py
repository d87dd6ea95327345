"""The README's first command: the demo runs Edge end to end on this machine and stops by itself."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers.agent import free_port


def test_demo_reads_the_meter_serves_the_api_and_delivers_verified_webhooks(tmp_path):
    result = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--duration", "12", "--port",
                             str(free_port()), "--data", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"P1 demo-meter  import", out)) >= 5  # live readings once a second
    assert "GET /health -> 200 ok (with the operator token: the detail below)" in out
    assert re.search(r"demo-meter: reading, \d+ telegrams, 0 CRC errors", out)
    verified = int(re.search(r"Webhooks received and verified: (\d+) \(bad signatures: 0\)", out).group(1))
    assert verified >= 1 and "households, consumption" in out
    # the P1 household and the simulated dataloggers', which post with datalogger tokens
    assert max(int(n) for n in re.findall(r"to Demo Energy Co: (\d+) households", out)) > 1, out
    # the custodian's exact sums, production included (no value-dependent withholding any more)
    assert re.search(r"to Demo Energy Co: \d+ households, consumption [\d.]+ kW, production [\d.]+ kW, "
                     r"net [-+][\d.]+ kW \(exact\)", out), out
