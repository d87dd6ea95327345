"""The cross-device client: three real Edge devices on 127.0.0.1 (one with too small a cohort, which
refuses), one that is down, the same tag question to all; sums and counts combine into the mean over
every home, per 6-hour slot, and the tariff example (tariff = mean * 0.5 + 5).

The organization is the custodian (dso, an exact level). Each device decides its windows as its clock passes
them (agent/release/): a tag is released per minute, and an hour only when all its 60 minutes were, so the
homes report every minute of the hours they report (the rest of the day is refused)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import date, datetime, timezone

import pytest

from agent.query import DeviceAnswer, combine, query_devices, tariff
from drivers.reading import Reading
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock

DAY = 1_790_000_000 // 86400 * 86400
HOURS = (1, 7, 13, 19)  # one reading hour in each 6-hour slot


def fridge(device: int, i: int, hour: int) -> float:
    return 40.0 + device * 10 + i + hour


async def device(tmp_path, start_agent, clock, index: int, homes: int):
    running = await start_agent(make_config(tmp_path / f"dev{index}"), clock=clock)
    org_id, key = await running.create_org("Energy Co", "dso")
    meters = []
    for _ in range(homes):
        household_id, token = await running.create_household()
        status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/aggregates", token=token)
        assert status == 200
        meters.append(household_id)
    return running, key, meters


@pytest.fixture
async def devices(tmp_path, start_agent):
    clock = StepClock(DAY - 60)
    made = [await device(tmp_path, start_agent, clock, d, n) for d, n in enumerate((12, 10, 4))]
    for hour in HOURS:
        for minute in range(60):  # every minute of the hour: an hour is released only if all its minutes are
            clock.now = DAY + hour * 3600 + minute * 60 + 30
            when = datetime.fromtimestamp(clock.now, timezone.utc)
            for d, (running, _, meters) in enumerate(made):
                for i, meter in enumerate(meters):
                    running.agent.ingest_http(Reading(meter_id=meter, timestamp=when, received_at=when,
                                                      power_import_w=500.0,
                                                      channels={"fridge": fridge(d, i, hour), "lighting": 20.0}))
        clock.now = DAY + (hour + 1) * 3600 + 1
        for running, _, _ in made:  # the hour has ended: each device decides it (as its own pass would)
            await running.agent.releases.settle()
    clock.now = DAY + 86400 + 60
    return made


def expected_mean(hours=HOURS) -> float:
    values = [fridge(d, i, h) for d, n in ((0, 12), (1, 10)) for i in range(n) for h in hours]
    return sum(values) / len(values)


async def test_the_same_question_to_several_devices_combines_sums_and_counts(devices):
    urls = [r.base for r, _, _ in devices] + ["http://127.0.0.1:1"]  # the last one is down
    keys = [k for _, k, _ in devices] + ["edge_org_nobody"]
    result = await query_devices(urls, keys, "fridge", datetime.fromtimestamp(DAY, timezone.utc).date())
    by_device = {d["device"]: d for d in result["devices"]}
    assert by_device[urls[0]]["released"] == 4 and by_device[urls[1]]["released"] == 4
    assert by_device[urls[2]]["released"] == 0 and by_device[urls[2]]["refused"] == 24  # 4 homes < k_min
    assert by_device[urls[3]]["error"].startswith("unreachable")
    assert result["mean_w"] == pytest.approx(expected_mean(), abs=1e-3)
    assert result["tariff"] == pytest.approx(expected_mean() * 0.5 + 5, abs=1e-3)
    for slot, hour in zip(result["slots"], HOURS):
        assert slot["household_windows"] == 22
        assert slot["mean_w"] == pytest.approx(expected_mean((hour,)), abs=1e-3)
        assert slot["tariff"] == pytest.approx(tariff(expected_mean((hour,))), abs=1e-3)
    assert not any(d["noisy"] for d in result["devices"])  # the custodian's exact releases
    # no device answer carries one home's value: only sums over >= k_min households
    assert "released" not in json.dumps(result["devices"][0]["device"])


async def test_a_tag_outside_the_vocabulary_is_refused_by_every_device(devices):
    """Tags are the operator's vocabulary: 'light' is not a word of the default one ('lighting' is)."""
    urls = [r.base for r, _, _ in devices]
    result = await query_devices(urls, [k for _, k, _ in devices], "light",
                                 datetime.fromtimestamp(DAY, timezone.utc).date())
    for answer in result["devices"]:
        assert answer["error"].startswith("400 unknown_tag") and "lighting" in answer["error"]
    assert result["mean_w"] is None


async def test_the_cli_prints_the_combined_mean_and_tariff(devices):
    args = [sys.executable, "-m", "agent.cli", "query", "--tag", "fridge",
            "--date", datetime.fromtimestamp(DAY, timezone.utc).date().isoformat()]
    for running, key, _ in devices[:2]:
        args += ["--device", running.base, "--key", key]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert f"combined mean {expected_mean():.1f} W; tariff = mean * 0.5 + 5 = {tariff(expected_mean()):.2f}" in text
    assert text.count("tariff = ") == 5  # four slots and the day
    # one key for several devices is not how keys work: a clear error, not a crash
    proc = await asyncio.create_subprocess_exec(*args[:-4], "--device", "http://a", "--device", "http://b",
                                                "--device", "http://c", "--key", "k1", "--key", "k2",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and b"one --key" in err


def test_combine_is_sums_over_counts():
    day = date(2026, 1, 15)
    windows = [{"window_start": "2026-01-15T01:00:00Z", "consumption_w": 1000.0, "households": 10},
               {"window_start": "2026-01-15T02:00:00Z", "consumption_w": 3300.0, "households": 30},
               {"window_start": "2026-01-16T02:00:00Z", "consumption_w": 9e9, "households": 1}]  # another day
    result = combine([DeviceAnswer("a", windows[:1]), DeviceAnswer("b", windows[1:])], day)
    assert result["mean_w"] == pytest.approx(4300 / 40)
    assert result["slots"][0]["household_windows"] == 40 and result["slots"][1]["mean_w"] is None
    assert result["tariff"] == pytest.approx(4300 / 40 * 0.5 + 5)
