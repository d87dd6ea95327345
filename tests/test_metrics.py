"""/metrics's text (agent/metrics.py) rendered from a real in-process agent and read back by the Prometheus text
exposition format's rules (version 0.0.4): each family's HELP and TYPE once and before its samples, every sample of
a declared family, label values quoted, values numbers. tests/test_agent.py reads it over HTTP with a meter."""

from __future__ import annotations

import math
import re

from agent.metrics import _label, render_metrics
from drivers.p1_reader import MeterSpec
from tests.helpers.agent import make_config
from tests.helpers.delivery import town  # noqa: F401  (the fixture)
from tests.helpers.receiver import receiver  # noqa: F401  (the fixture)
from tests.helpers.telegrams import telegram_bytes

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$')


def families(text: str) -> dict[str, dict]:
    """{name: {"type", "help", "samples": [(labels, value)]}}, failing on anything the format does not allow."""
    assert text.endswith("\n") and "\n\n" not in text
    found: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            assert name not in found, f"{name} declared twice"
            found[name] = {"help": help_text, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name == current and found[name]["type"] is None and kind in ("counter", "gauge"), line
            found[name]["type"] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample: {line!r}"
            assert match[1] == current and found[current]["type"], f"{match[1]} outside its family"
            value = float(match[3])
            assert not math.isnan(value)
            found[current]["samples"].append((match[2] or "", value))
    for name, family in found.items():
        assert family["type"] == "counter" if name.endswith("_total") else family["type"] == "gauge", name
    return found


async def test_an_idle_agent_without_meters(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    found = families(render_metrics(running.agent))
    assert found["edge_readings_in_total"]["samples"] == [("", 0.0)]
    assert found["edge_meter_telegrams_total"]["samples"] == []  # a family with no meter has no sample
    assert [v for _, v in found["edge_healthy"]["samples"]] in ([0.0], [1.0])
    assert found["edge_uptime_seconds"]["samples"][0][1] >= 0
    faults = dict(found["edge_storage_fault"]["samples"])
    assert faults == {'{fault="data_directory_lost"}': 0.0, '{fault="release_log_error"}': 0.0,
                      '{fault="outbox_errors"}': 0.0, '{fault="subscriptions_damaged"}': 0.0}
    assert all(name.startswith("edge_") for name in found)


async def test_a_meter_that_reads_has_its_counters_and_one_state(tmp_path, start_agent, pty_pair):
    running = await start_agent(make_config(tmp_path, [MeterSpec("m1", pty_pair.path, "dsmr5")]))
    await running.wait_for(lambda: running.agent.readers["m1"].opens >= 1)
    before = families(render_metrics(running.agent))  # no telegram yet: no age to show, not a "None"
    assert before["edge_meter_seconds_since_last_telegram"]["samples"] == []
    pty_pair.write(telegram_bytes("v5.txt") * 2)
    await running.wait_for(lambda: running.agent.readers["m1"].stats.telegrams_ok == 2)
    found = families(render_metrics(running.agent))
    assert found["edge_meter_telegrams_total"]["samples"] == [('{meter="m1"}', 2.0)]
    states = dict(found["edge_meter_state"]["samples"])
    assert len(states) == 5 and sum(states.values()) == 1 and states['{meter="m1",state="reading"}'] == 1
    assert found["edge_meter_bytes_read_total"]["samples"][0][1] >= 2 * len(telegram_bytes("v5.txt"))


async def test_a_subscription_has_its_delivery_series(town, receiver):  # noqa: F811
    t = await town()
    sub = await t.subscribe(receiver.url)
    await t.window()
    await t.running.wait_for(lambda: len(receiver.received) == 1)
    found = families(render_metrics(t.running.agent))
    labels = f'{{subscription="{sub["id"]}"}}'
    assert dict(found["edge_webhook_messages_total"]["samples"]) == {labels: 1.0}
    assert dict(found["edge_webhook_bytes_total"]["samples"])[labels] == len(receiver.received[0][1])
    assert dict(found["edge_webhook_outbox_depth"]["samples"]) == {labels: 0.0}


def test_a_label_value_is_escaped_as_the_format_says():
    assert _label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    line = f'edge_x{{meter="{_label(chr(34) + chr(10) + chr(92))}"}} 1'
    assert SAMPLE.match(line) and "\n" not in line
