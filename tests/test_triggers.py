"""Triggers end to end: the running agent on a stepped clock, real locked sandbox workers, real aiohttp
receivers on 127.0.0.1, signatures checked with `standardwebhooks`.

The MISSION.md example byte for byte; every refusal reason; levels; ownership; hostile conditions
quarantined while others keep running; debounce (also across delete + create and across a restart);
what the organization can see (counts only); notifications in the inbox and at the household's own
endpoint; webhook actions with per-organization pseudonyms; a kernel that refuses seccomp."""

from __future__ import annotations

import base64
import json
import math
import signal
import subprocess
import sys
import textwrap
import urllib.request
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from agent.config import TriggersConfig
from drivers.reading import iso
from tests.helpers.agent import OPERATOR_TOKEN, free_port, grant, make_config
from tests.helpers.clock import StepClock, T0
from tests.helpers.receiver import receiver  # noqa: F401  (the fixture)
from tests.helpers.triggers import body, close_window, town, town_config  # noqa: F401  (town: the fixture)
from tests.helpers.wait import wait_until

REPO = Path(__file__).resolve().parent.parent

MISSION_FUNCTION = (
    "def condition(neighborhood_power_consumption, neighborhood_power_production):\n"
    "    return neighborhood_power_production - neighborhood_power_consumption > 500\n"
)
MISSION_BODY = """{
  "parameters": ["neighborhood_power_consumption", "neighborhood_power_production"],
  "function": "%s",
  "interval": 36000,
  "action": {"type": "notification",
             "content": "There is a surplus of power production in your neighborhood, now might be a good time to charge your EV!"}
}""" % base64.b64encode(MISSION_FUNCTION.encode()).decode()
MISSION_CONTENT = ("There is a surplus of power production in your neighborhood, now might be a good time to "
                   "charge your EV!")


def iso_of(moment: float) -> str:
    return iso(datetime.fromtimestamp(moment, timezone.utc))


# --- the example of MISSION.md ---------------------------------------------------------------------
async def test_mission_example_byte_for_byte_fires_on_a_local_surplus(town):
    t = await town(4, outsiders=1)  # the fifth household is in the aggregate, never consented to triggers
    outsider = t.households[4][1]

    status, created = await t.running.call("POST", "/triggers/create", token=t.org_key,
                                           data=MISSION_BODY.encode(), headers={"Content-Type": "application/json"})
    assert status == 201, created
    assert created["kind"] == "neighborhood" and created["state"] == "active" and created["window"] == "1m"
    assert created["interval"] == 36000 and created["action"]["content"] == MISSION_CONTENT
    tid = created["id"]

    # 5 households: production - consumption = 5 * 80 = 400 W: no
    await t.window(power_import_w=1000.0, power_export_w=1080.0)
    # exactly 500 W: not more than 500: no
    await t.window(power_import_w=1000.0, power_export_w=1100.0)
    for _, token in t.households:
        assert await t.inbox(token) == []
    # 505 W: yes, for every household that consented to triggers
    await t.window(power_import_w=1000.0, power_export_w=1101.0)
    for _, token in t.households[:4]:
        [note] = await t.inbox(token)
        assert note["content"] == MISSION_CONTENT and note["organization_id"] == t.org_id
        assert note["trigger_id"] == tid
    assert await t.inbox(outsider) == []
    view = await t.trigger(tid)
    # released counts, per window over the 4 households it acts for: evaluated 3 x 4, true for 4
    assert view["evaluations"] == 12 and view["firings"] == 4 and view["deliveries"]["delivered"] == 4
    assert view["windows"] == {"released": 3, "withheld": 0, "released_daily": 0, "inputs_withheld": 0}
    assert view["isolation"] == "closed language"  # one evaluator, no fork per row (sandbox.closed)

    # still a surplus, but within the interval (36000 s): nothing more
    await t.window(power_import_w=1000.0, power_export_w=1500.0)
    assert [len(await t.inbox(token)) for _, token in t.households[:4]] == [1] * 4
    # ten hours later it may fire again
    t.clock.step(36000)
    await t.window(power_import_w=1000.0, power_export_w=1500.0)
    assert [len(await t.inbox(token)) for _, token in t.households[:4]] == [2] * 4
    view = await t.trigger(tid)
    assert view["evaluations"] == 20 and view["firings"] == 12 and view["errors"] == 0
    assert view["deliveries"]["delivered"] == 8


async def test_neighbourhood_condition_does_not_run_on_an_unreleased_window(town):
    t = await town(4)
    status, created = await t.create(body(["neighborhood_power_production"], """\
        def condition(neighborhood_power_production):
            return True
        """))
    assert status == 201, created
    # only 2 households post: below k_min = 3, not released, so the condition does not run
    await t.window(values=[{"power_import_w": 100.0, "power_export_w": 900.0}] * 2 + [None, None])
    view = await t.trigger(created["id"])
    assert view["evaluations"] == 0 and view["windows"]["inputs_withheld"] == 1 and view["firings"] == 0
    for _, token in t.households:
        assert await t.inbox(token) == []
    # released: it runs
    await t.window(values=[{"power_import_w": 100.0, "power_export_w": 900.0}] * 4)
    view = await t.trigger(created["id"])
    assert view["windows"]["inputs_withheld"] == 1 and view["evaluations"] == 4
    assert [len(await t.inbox(token)) for _, token in t.households] == [1] * 4


# --- refusals ----------------------------------------------------------------------------------------
REFUSALS = [
    ("unknown parameter", ["household_nonsense"], "def condition(household_nonsense):\n    return True\n"),
    ("does not define condition(...)", ["household_power_consumption"],
     "def cond(household_power_consumption):\n    return True\n"),
    ("does not define condition(...)", ["household_power_consumption", "household_power_production"],
     "def condition(household_power_production, household_power_consumption):\n    return True\n"),
    ("syntax error", ["household_power_consumption"], "def condition(household_power_consumption):\n  return (\n"),
    ("too slow: exceeded 50 ms", ["household_power_consumption"],
     "def condition(household_power_consumption):\n    while True:\n        pass\n"),
    ("did not return a bool", ["household_power_consumption"],
     "def condition(household_power_consumption):\n    return household_power_consumption\n"),
    ("did not return a bool", ["household_power_consumption"],
     "def condition(household_power_consumption):\n    raise ValueError('SECRET-MARKER ' + str(household_power_consumption))\n"),
    ("rejected by sandbox", ["household_power_consumption"],
     "import os\ndef condition(household_power_consumption):\n    return True\n"),
    ("rejected by sandbox", ["household_power_consumption"],  # passes the static checks; seccomp kills it
     "open('/etc/hostname')\ndef condition(household_power_consumption):\n    return True\n"),
]


async def test_every_refusal_has_its_fixed_reason_and_nothing_of_the_condition(town):
    t = await town(1, timeout_ms=TriggersConfig().timeout_ms)  # the default: 50 ms
    for reason, parameters, source in REFUSALS:
        status, out = await t.create(body(parameters, source))
        assert status == 422, (reason, out)
        assert out["reason"] == reason and out["detail"].startswith(reason), (reason, out)
        assert "SECRET-MARKER" not in json.dumps(out) and "Traceback" not in json.dumps(out)
    # not base64 at all
    status, out = await t.create({**body(["household_power_consumption"], "x"), "function": "not base64!"})
    assert status == 422 and out["reason"] == "syntax error"
    # nothing was created, and the audit says why without the condition's words
    status, out = await t.running.call("GET", "/triggers", token=t.org_key)
    assert out["triggers"] == []
    status, audit = await t.running.call("GET", f"/audit?who={t.org_id}&since=0")
    assert "SECRET-MARKER" not in json.dumps(audit)


async def test_operator_timeout_setting_is_the_trial_deadline(town):
    t = await town(1, timeout_ms=20)
    slow = """\
        import math
        def condition(household_power_consumption):
            n = 0
            while n < 10 ** 9:
                n += 1
            return True
        """
    status, out = await t.create(body(["household_power_consumption"], slow))
    assert status == 422 and out["reason"] == "too slow: exceeded 20 ms"


async def test_parameters_must_be_permitted_for_the_level_and_the_organization(town):
    t = await town(1)
    _, service_key = await t.running.create_org("Small Service", "service")
    source = "def condition(household_power_consumption):\n    return True\n"
    status, out = await t.create(body(["household_power_consumption"], source), key=service_key)
    assert status == 422 and out["reason"] == "parameter not permitted"
    assert out["parameter"] == "household_power_consumption" and "'service'" in out["detail"]
    # a noisy level's neighbourhood condition runs on its own (noisy) release, at its windows only
    source = "def condition(neighborhood_net_power):\n    return True\n"
    status, out = await t.create(body(["neighborhood_net_power"], source, window="1h"), key=service_key)
    assert status == 201, out
    # the operator narrows one organization: its own trigger uploads are checked against it
    status, _ = await t.running.call("PATCH", f"/organizations/{t.org_id}", json={"parameters": ["neighborhood_*"]})
    assert status == 200
    status, out = await t.create(body(["household_power_consumption"],
                                      "def condition(household_power_consumption):\n    return True\n"))
    assert status == 422 and out["reason"] == "parameter not permitted" and "narrowed" in out["detail"]
    # a window the level does not have
    status, out = await t.create(body(["neighborhood_net_power"], source, window="1s"), key=service_key)
    assert status == 422


async def test_narrowing_after_upload_suspends_the_trigger(town):
    t = await town(3)
    status, created = await t.create(body(["household_power_consumption"],
                                          "def condition(household_power_consumption):\n    return True\n"))
    assert status == 201
    await t.running.call("PATCH", f"/organizations/{t.org_id}", json={"parameters": ["neighborhood_*"]})
    await t.window(power_import_w=100.0)
    view = await t.trigger(created["id"])
    assert view["state"] == "suspended" and view["evaluations"] == 0
    assert [await t.inbox(token) for _, token in t.households] == [[]] * 3


async def test_bad_bodies(town):
    t = await town(1)
    ok = body(["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n")
    cases = [
        {**ok, "interval": 0.5},
        {**ok, "interval": 10 ** 9},
        {**ok, "parameters": []},
        {**ok, "parameters": ["household_power_consumption", "household_power_consumption"]},
        {**ok, "action": {"type": "sms", "content": "x"}},
        {**ok, "action": {"type": "notification", "content": ""}},
        {**ok, "action": {"type": "notification", "content": "x", "to": "everyone"}},
        {**ok, "action": {"type": "appliance", "appliance": "heater", "command": "explode"}},
        {**ok, "action": {"type": "webhook", "endpoint": "ftp://example.com/x"}},
        {**ok, "unknown": 1},
    ]
    for case in cases:
        status, out = await t.create(case)
        assert status == 422, (case, out)
    status, out = await t.running.call("POST", "/triggers/create", token=t.org_key, data=b"{",
                                       headers={"Content-Type": "application/json"})
    assert status == 400


async def test_limit_per_organization(town):
    t = await town(1, max_per_organization=2)
    ok = body(["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n")
    assert (await t.create(ok))[0] == 201
    assert (await t.create(ok))[0] == 201
    status, out = await t.create(ok)
    assert status == 409 and out["error"] == "too_many_triggers"


# --- ownership and the organization's view -----------------------------------------------------------
async def test_only_the_owning_organization_sees_or_deletes_a_trigger(town):
    t = await town(1)
    _, other_key = await t.running.create_org("Other Co", "dso")
    status, created = await t.create(body(["household_power_consumption"],
                                          "def condition(household_power_consumption):\n    return True\n"))
    assert status == 201
    tid = created["id"]
    for method in ("GET", "DELETE"):
        status, out = await t.running.call(method, f"/triggers/{tid}", token=other_key)
        assert status == 404 and out["error"] == "not_found"
    status, out = await t.running.call("GET", "/triggers", token=other_key)
    assert out["triggers"] == []
    status, out = await t.running.call("GET", "/triggers", token=t.org_key)
    assert [x["id"] for x in out["triggers"]] == [tid]
    status, _ = await t.running.call("DELETE", f"/triggers/{tid}", token=t.org_key)
    assert status == 204
    assert (await t.running.call("GET", f"/triggers/{tid}", token=t.org_key))[0] == 404
    assert (await t.running.call("DELETE", f"/triggers/{tid}", token=t.org_key))[0] == 404


async def test_an_operator_can_require_the_closed_language(town):
    """[triggers] closed_language_only: a condition outside it is refused at upload with its own reason; a
    closed one is accepted and runs in an evaluator."""
    t = await town(3, closed_language_only=True)
    loop = "def condition(household_power_consumption):\n    while False:\n        pass\n    return True\n"
    status, out = await t.create(body(["household_power_consumption"], loop))
    assert status == 422 and out["reason"] == "outside the closed language", out
    status, created = await t.create(body(["household_power_consumption"],
                                          "def condition(household_power_consumption):\n"
                                          "    return household_power_consumption > 1000\n"))
    assert status == 201, created
    await t.window(power_import_w=1500.0)
    view = await t.trigger(created["id"])
    assert view["isolation"] == "closed language" and view["firings"] == 3


async def test_the_organization_sees_counts_only(town):
    """Per-household results never leave: the view is the same shape whoever fired; its counts are sums of
    what the release module released per window (here exact, over at least k_min households)."""
    t = await town(4)
    status, created = await t.create(body(["household_power_consumption"], """\
        def condition(household_power_consumption):
            if household_power_consumption == 666.0:
                raise ValueError("boom")
            return household_power_consumption > 1000
        """, interval=600))
    assert status == 201
    tid = created["id"]
    values = [{"power_import_w": 2000.0}, {"power_import_w": 100.0}, {"power_import_w": 666.0},
              {"power_import_w": 100.0}]
    for _ in range(3):
        await t.window(values=values)
    view = await t.trigger(tid)
    assert view["evaluations"] == 12  # 4 households in 3 windows
    assert view["firings"] == 3  # one household, true in 3 windows
    assert view["errors"] == 3  # one household raised in 3 windows
    text = json.dumps(view)
    for household_id, token in t.households:
        assert household_id not in text and token not in text
    assert set(view) == {"id", "parameters", "interval", "window", "kind", "action", "description", "created_at",
                         "state", "quarantined", "evaluations", "firings", "errors", "deliveries", "windows",
                         "days_released", "isolation"}
    assert view["isolation"] == "process per row"  # `raise` is outside the closed language
    assert view["deliveries"] == {"delivered": 1, "failed": 0}  # one action per 600 s
    # only the household above 1000 W got the notification
    boxes = [len(await t.inbox(token)) for _, token in t.households]
    assert boxes == [1, 0, 0, 0]


async def test_consent_decides_who_is_evaluated_and_revocation_is_immediate(town):
    t = await town(3)
    status, created = await t.create(body(["household_power_consumption"],
                                          "def condition(household_power_consumption):\n    return True\n",
                                          interval=1))
    assert status == 201
    await t.window(power_import_w=100.0)
    assert [len(await t.inbox(tok)) for _, tok in t.households] == [1, 1, 1]
    status, _ = await t.running.call("DELETE", f"/households/me/consents/{t.org_id}/triggers",
                                     token=t.households[0][1])
    assert status == 200
    await t.window(power_import_w=100.0)
    assert [len(await t.inbox(tok)) for _, tok in t.households] == [1, 2, 2]


# --- debounce ----------------------------------------------------------------------------------------
async def test_debounce_one_action_per_household_per_interval(town):
    t = await town(3)
    always = "def condition(household_power_consumption):\n    return household_power_consumption > 0\n"
    status, created = await t.create(body(["household_power_consumption"], always, interval=120))
    assert status == 201
    for _ in range(5):  # windows at 0, 60, 120, 180, 240 s: actions at 0, 120, 240
        await t.window(power_import_w=100.0)
    for _, token in t.households:
        notes = await t.inbox(token)
        assert len(notes) == 3
        times = sorted(n["at"] for n in notes)
        assert all(b - a >= 120 for a, b in zip(times, times[1:]))
    view = await t.trigger(created["id"])
    assert view["evaluations"] == 15 and view["firings"] == 15 and view["deliveries"]["delivered"] == 9

    # deleting and creating it again is no way around the wait
    status, _ = await t.running.call("DELETE", f"/triggers/{created['id']}", token=t.org_key)
    assert status == 204
    status, again = await t.create(body(["household_power_consumption"], always, interval=120))
    assert status == 201
    await t.window(power_import_w=100.0)  # 60 s after the last action: still waiting
    assert (await t.trigger(again["id"]))["deliveries"]["delivered"] == 0
    await t.window(power_import_w=100.0)  # 120 s after: allowed
    assert (await t.trigger(again["id"]))["deliveries"]["delivered"] == 3


async def test_triggers_inbox_and_debounce_survive_a_restart(tmp_path, start_agent):
    clock = StepClock(T0)
    config = town_config(tmp_path)
    running = await start_agent(config, clock=clock)
    org_id, org_key = await running.create_org("Energy Co", "dso")
    household_id, token = await running.create_household()
    await grant(running, token, org_id, "triggers")
    status, created = await running.call("POST", "/triggers/create", token=org_key, json=body(
        ["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n",
        interval=3600))
    assert status == 201
    clock.step(60)
    assert (await running.call("POST", "/readings", token=token, json={"timestamp": clock.now,
                                                                        "power_import_w": 10.0}))[0] == 201
    await close_window(running, clock)
    assert len((await running.call("GET", "/households/me/notifications", token=token))[1]["notifications"]) == 1
    await running.http.close()
    await running.agent.stop()

    again = await start_agent(config, clock=clock)
    status, view = await again.call("GET", f"/triggers/{created['id']}", token=org_key)
    # one household: below k_min, its window's counts were withheld (and that much survives the restart)
    assert status == 200 and view["state"] == "active" and view["windows"]["withheld"] == 1
    assert view["firings"] == 0
    clock.step(60)
    assert (await again.call("POST", "/readings", token=token, json={"timestamp": clock.now,
                                                                      "power_import_w": 10.0}))[0] == 201
    await close_window(again, clock)
    status, out = await again.call("GET", "/households/me/notifications", token=token)
    assert len(out["notifications"]) == 1  # the restart did not reset the debounce
    assert (await again.call("GET", f"/triggers/{created['id']}", token=org_key))[1]["windows"]["withheld"] == 2


# --- hostile conditions ------------------------------------------------------------------------------
async def test_a_condition_that_misbehaves_later_is_quarantined_and_others_keep_running(town):
    t = await town(3)
    t.runner.supervisor.limits = replace(t.runner.supervisor.limits, backoff_s=0.0)
    hostile = """\
        def condition(household_power_consumption):
            if household_power_consumption == 4242.0:
                while True:
                    pass
            return False
        """
    status, bad = await t.create(body(["household_power_consumption"], hostile, interval=600))
    assert status == 201, bad  # harmless on the trial's samples
    status, good = await t.create(body(["household_power_consumption"],
                                       "def condition(household_power_consumption):\n    return True\n",
                                       interval=1))
    assert status == 201
    values = [{"power_import_w": 4242.0}, {"power_import_w": 100.0}, {"power_import_w": 100.0}]
    for i in range(4):
        await t.window(values=values)
        assert (await t.trigger(good["id"]))["firings"] == 3 * (i + 1)  # never held up
    view = await t.trigger(bad["id"])
    assert view["quarantined"] is True and view["state"] == "quarantined"
    # three windows: the spinning row killed (that household's error), the other households evaluated, then
    # quarantined (3 violations); no window failed whole, so no household decided whether another was evaluated
    assert view["evaluations"] == 9 and view["firings"] == 0 and view["errors"] == 3
    assert t.runner.health()["quarantined"] == 1
    status, health = await t.running.call("GET", "/health")  # the detail is the operator's
    assert health["triggers"]["quarantined"] == 1 and health["triggers"]["sandbox"] == "enforced"


async def test_not_a_bool_on_some_inputs_is_that_rows_error_never_a_quarantine(town):
    """A quarantine for it would depend on one household's value and show to the organization for every
    household (tests/test_sandbox_closed_attacks.py)."""
    t = await town(3)
    status, bad = await t.create(body(["household_power_consumption"], """\
        def condition(household_power_consumption):
            if household_power_consumption == 4242.0:
                return "leak"
            return False
        """))
    assert status == 201
    for _ in range(3):
        await t.window(values=[{"power_import_w": 4242.0}, {"power_import_w": 1.0}, {"power_import_w": 1.0}])
    view = await t.trigger(bad["id"])
    assert view["quarantined"] is False and view["state"] == "active"
    assert view["evaluations"] == 9 and view["firings"] == 0 and view["errors"] == 3


# --- where notifications go --------------------------------------------------------------------------

async def test_notification_reaches_the_households_own_endpoint_signed(town, receiver):
    t = await town(3)
    (_, webhook_hh), (_, ntfy_hh), (_, plain_hh) = t.households
    status, notify = await t.running.call("PUT", "/households/me/notify", token=webhook_hh,
                                          json={"url": receiver.url})
    assert status == 200 and notify["kind"] == "webhook" and notify["secret"].startswith("whsec_")
    status, out = await t.running.call("PUT", "/households/me/notify", token=ntfy_hh,
                                       json={"url": receiver.url + "?topic", "kind": "ntfy"})
    assert status == 200 and "secret" not in out
    status, out = await t.running.call("GET", "/households/me/notify", token=webhook_hh)
    assert status == 200 and out["url"] == receiver.url and "secret" not in out
    assert (await t.running.call("GET", "/households/me/notify", token=plain_hh))[0] == 404

    status, created = await t.create(body(["household_power_consumption"],
                                          "def condition(household_power_consumption):\n    return True\n",
                                          action={"type": "notification", "content": "Cheap power now",
                                                  "title": "Tariff"}))
    assert status == 201
    await t.window(power_import_w=100.0)
    await t.running.wait_for(lambda: len(receiver.received) == 2)
    received = [({k.lower(): v for k, v in h.items()}, b) for h, b in receiver.received]
    by_type = {h["content-type"].split(";")[0]: (h, b) for h, b in received}
    headers, raw = by_type["application/json"]
    message = Webhook(notify["secret"]).verify(raw, headers)
    assert message["type"] == "notification" and message["content"] == "Cheap power now"
    assert message["title"] == "Tariff" and message["organization_id"] == t.org_id
    headers, raw = by_type["text/plain"]
    assert raw.decode() == "Cheap power now" and headers["title"] == "Tariff"
    for _, token in t.households:  # the inbox has it either way
        [note] = await t.inbox(token)
        assert note["content"] == "Cheap power now"
    view = await t.trigger(created["id"])
    assert view["deliveries"] == {"delivered": 3, "failed": 0}
    # the organization never got the content back, only counts
    assert "Cheap power now" not in json.dumps({k: v for k, v in view.items() if k != "action"})
    # a household endpoint that fails counts as failed, the inbox still has it
    receiver.mode = "fail"
    t.clock.step(60)
    await t.window(power_import_w=100.0)
    view = await t.trigger(created["id"])
    assert view["deliveries"] == {"delivered": 4, "failed": 2}
    assert [len(await t.inbox(token)) for _, token in t.households] == [2, 2, 2]
    assert (await t.running.call("DELETE", "/households/me/notify", token=webhook_hh))[0] == 204
    assert (await t.running.call("DELETE", "/households/me/notify", token=webhook_hh))[0] == 404


async def test_household_endpoints_follow_the_subscription_rules(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    _, token = await running.create_household()
    for url in ("http://example.com/x", "https://127.0.0.1/x", "https://169.254.169.254/latest", "ftp://x/y",
                "https://localhost/x"):
        status, out = await running.call("PUT", "/households/me/notify", token=token, json={"url": url})
        assert status == 422, (url, out)
    status, out = await running.call("PUT", "/households/me/notify", token=token,
                                     json={"url": "https://ntfy.sh/my-topic", "kind": "pager"})
    assert status == 422
    status, out = await running.call("PUT", "/households/me/notify", token=token,
                                     json={"url": "https://ntfy.sh/my-topic", "kind": "ntfy"})
    assert status == 200


async def test_inbox_keeps_the_last_100(tmp_path, monkeypatch):
    from agent.triggers import store as store_module

    monkeypatch.setattr(store_module, "INBOX_COMPACT_AFTER", 50)
    store = store_module.HouseholdStore(tmp_path / "households.seg")
    for i in range(260):
        store.deliver({"id": f"n{i}", "household_id": "hh_a", "content": str(i), "at": float(i)})
    store.deliver({"id": "other", "household_id": "hh_b", "content": "x", "at": 1.0})
    assert [e["id"] for e in store.inbox("hh_a")][:2] == ["n259", "n258"] and len(store.inbox("hh_a")) == 100
    assert len(store.db.table("inbox")) == 111  # compacted as it went
    store.close()
    again = store_module.HouseholdStore(tmp_path / "households.seg")
    assert [e["id"] for e in again.inbox("hh_a")] == [f"n{i}" for i in range(259, 159, -1)]
    assert len(again.inbox("hh_b")) == 1
    assert len(again.db.table("inbox")) == 101  # compacted at load
    again.close()


# --- webhook actions ---------------------------------------------------------------------------------
async def test_webhook_of_a_household_condition_reaches_the_organization_only_with_consent_to_its_events(
        town, receiver):
    """Household conditions: a webhook goes only for households that consented to that trigger's events,
    signed, under a per-organization pseudonym; each one is in the household's disclosure log."""
    t = await town(3)
    other_id, other_key = await t.running.create_org("Other Co", "dso")
    for _, token in t.households:
        await grant(t.running, token, other_id, "triggers")
    always = "def condition(household_power_consumption):\n    return True\n"
    hook = {"type": "webhook", "endpoint": receiver.url}
    status, out = await t.create(body(["household_power_consumption"], always, interval=1, action=hook))
    assert status == 422 and "description" in out["detail"]  # households must be told what they agree to
    created = []
    for key in (t.org_key, t.org_key, other_key):
        status, out = await t.create(body(["household_power_consumption"], always, interval=1, action=hook,
                                          description="Tells us when you use power"), key=key)
        assert status == 201 and out["secret"].startswith("whsec_") and "secret" not in out["action"]
        created.append(out)
    assert "secret" not in await t.trigger(created[0]["id"])

    # consent to the triggers service alone sends nothing to the organization
    await t.window(power_import_w=100.0)
    assert receiver.received == []

    # households 0 and 1 consent to the events of both of Energy Co's triggers, all three to Other Co's
    for i, (_, token) in enumerate(t.households):
        for trig, org in ((created[0], t.org_id), (created[1], t.org_id), (created[2], other_id)):
            if i < 2 or org == other_id:
                await grant(t.running, token, org, f"trigger_events:{trig['id']}")
    close = await t.window(power_import_w=100.0)
    assert len(receiver.received) == 7
    secrets = {c["id"]: c["secret"] for c in created}
    seen: dict[str, set] = {}
    for headers, raw in receiver.received:
        trigger_id = json.loads(raw)["trigger_id"]
        message = Webhook(secrets[trigger_id]).verify(raw, headers)
        assert set(message) == {"type", "trigger_id", "household", "window", "window_start", "at"}
        assert message["type"] == "trigger.fired" and message["household"].startswith("p_")
        assert message["window_start"] == iso_of(close - 60)
        assert message["at"] == iso_of(close + t.runner.config.release_delay_s)  # the release moment
        seen.setdefault(trigger_id, set()).add(message["household"])
    first, second, other = (seen[c["id"]] for c in created)
    assert len(first) == 2 and first == second  # only the consenting; stable per organization
    assert len(other) == 3 and not first & other  # unlinkable across organizations
    for household_id, _ in t.households:
        assert not any(household_id.encode() in raw for _, raw in receiver.received)

    # the disclosure log: the events, with the household, in the audit log
    await t.running.agent.audit.record_durable("test", "operator", "flush")
    status, audit = await t.running.call("GET", f"/audit?who={t.org_id}&since=0")
    disclosed = [e for e in audit["entries"] if e["action"] == "trigger.action" and e.get("disclosed")]
    assert sorted(e["household_id"] for e in disclosed) == sorted([t.households[0][0], t.households[1][0]] * 2)

    # a revocation is obeyed at once: household 0's events stop
    status, _ = await t.running.call("DELETE", f"/households/me/consents/{t.org_id}/trigger_events:"
                                     f"{created[0]['id']}", token=t.households[0][1])
    assert status == 200
    receiver.received.clear()
    await t.window(power_import_w=100.0)
    mine = [json.loads(raw) for _, raw in receiver.received if json.loads(raw)["trigger_id"] == created[0]["id"]]
    assert len(mine) == 1 and {m["household"] for m in mine} < first
    # the same pseudonyms next time
    assert {json.loads(raw)["household"] for _, raw in receiver.received
            if json.loads(raw)["trigger_id"] == created[1]["id"]} == first


async def test_events_per_household_per_day_are_bounded_across_an_organizations_triggers(town, receiver):
    t = await town(3, max_events_per_household_per_day=3)
    always = "def condition(household_power_consumption):\n    return True\n"
    hook = {"type": "webhook", "endpoint": receiver.url}
    ids = []
    for _ in range(2):
        status, out = await t.create(body(["household_power_consumption"], always, interval=1, action=hook,
                                          description="power use"))
        assert status == 201
        ids.append(out["id"])
        for _, token in t.households:
            await grant(t.running, token, t.org_id, f"trigger_events:{out['id']}")
    for _ in range(3):
        await t.window(power_import_w=100.0)
    by_household = {}
    for message in receiver.messages():
        by_household[message["household"]] = by_household.get(message["household"], 0) + 1
    assert by_household and set(by_household.values()) == {3}  # 2 triggers x 3 windows, bounded at 3 a day
    status, params = await t.running.call("GET", "/parameters", token=t.org_key)
    bound = params["trigger_disclosure"]
    assert bound["max_events_per_household_per_day"] == 3 and bound["max_bits_per_household_per_day"] > 0
    # the next UTC day allows 3 more
    t.clock.now = (math.floor(t.clock.now / 86400) + 1) * 86400 + 10
    receiver.received.clear()
    await t.window(power_import_w=100.0)
    await t.window(power_import_w=100.0)
    counts = {}
    for message in receiver.messages():
        counts[message["household"]] = counts.get(message["household"], 0) + 1
    assert set(counts.values()) == {3}


async def test_webhook_of_a_neighbourhood_condition_names_no_household(town, receiver):
    t = await town(3)
    status, created = await t.create(body(["neighborhood_power_consumption"], """\
        def condition(neighborhood_power_consumption):
            return neighborhood_power_consumption > 100
        """, interval=1, action={"type": "webhook", "endpoint": receiver.url}))
    assert status == 201 and created["kind"] == "neighborhood"
    close = await t.window(power_import_w=500.0)
    [message] = receiver.messages()  # one per window, not one per household
    assert set(message) == {"type", "trigger_id", "window", "window_start", "at"}
    assert message["window_start"] == iso_of(close - 60)
    await t.window(power_import_w=10.0)  # 30 W in all: false
    assert len(receiver.received) == 1
    # not a trigger households consent to: nothing of theirs in it
    status, out = await t.running.call("GET", "/households/me/triggers", token=t.households[0][1])
    assert status == 200 and out["triggers"] == []


async def test_households_see_what_they_would_consent_to(town, receiver):
    t = await town(2)
    hook = {"type": "webhook", "endpoint": receiver.url}
    status, created = await t.create(body(["household_power_consumption", "neighborhood_power_consumption"],
                                          "def condition(household_power_consumption, neighborhood_power_consumption"
                                          "):\n    return True\n", interval=900, action=hook,
                                          description="Your share of the street's load"))
    assert status == 201
    assert (await t.create(body(["household_power_consumption"],
                                "def condition(household_power_consumption):\n    return True\n")))[0] == 201
    _, token = t.households[0]
    status, out = await t.running.call("GET", "/households/me/triggers", token=token)
    assert status == 200
    [listed] = out["triggers"]  # the notification trigger is not one: it tells the organization nothing
    assert listed["trigger_id"] == created["id"] and listed["description"] == "Your share of the street's load"
    assert [p["name"] for p in listed["parameters"]] == ["household_power_consumption",
                                                          "neighborhood_power_consumption"]
    assert listed["service"] == f"trigger_events:{created['id']}" and listed["consented"] is False
    assert listed["max_rate"] == {"one_event_per_s": 900.0, "events_per_organization_per_day": 24}
    assert out["disclosure"]["max_events_per_household_per_day"] == 24
    await grant(t.running, token, t.org_id, listed["service"])
    status, one = await t.running.call("GET", f"/households/me/triggers/{created['id']}", token=token)
    assert status == 200 and one["consented"] is True
    assert (await t.running.call("GET", "/households/me/triggers/trg_000000000000", token=token))[0] == 404
    assert (await t.running.call("GET", "/households/me/triggers", token=t.org_key))[0] in (401, 403)


async def test_webhook_endpoint_is_checked_like_subscriptions(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    _, org_key = await running.create_org("Energy Co", "dso")
    for endpoint in ("http://example.com/hook", "https://10.0.0.1/hook", "https://169.254.169.254/"):
        status, out = await running.call("POST", "/triggers/create", token=org_key, json=body(
            ["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n",
            action={"type": "webhook", "endpoint": endpoint}))
        assert status == 422 and out["error"] == "endpoint_refused", (endpoint, out)


# --- a kernel that refuses seccomp -------------------------------------------------------------------
def test_without_seccomp_triggers_are_refused_and_health_says_so(tmp_path):
    """A real agent process whose kernel (simulated: an inherited filter makes seccomp() fail with EINVAL)
    cannot lock workers: it says so at start and in /health, and refuses every upload with a 503."""
    port = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\n[auth]\noperator_token = "{OPERATOR_TOKEN}"\n'
                      f'[storage]\npath = "{tmp_path / "store"}"\n')
    script = textwrap.dedent(f"""\
        import errno, sys
        sys.path.insert(0, {str(REPO)!r})
        import pyseccomp as s
        f = s.SyscallFilter(s.ALLOW)
        f.add_rule(s.ERRNO(errno.EINVAL), "seccomp")
        f.add_rule(s.ERRNO(errno.EINVAL), "prctl", s.Arg(0, s.EQ, 22))  # PR_SET_SECCOMP
        f.load()
        sys.argv = ["edge-agent", "run", "--config", {str(config)!r}]
        from agent.cli import main
        sys.exit(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def call(method, path, payload=None, token=OPERATOR_TOKEN):
        request = urllib.request.Request(base + path, method=method,
                                         data=json.dumps(payload).encode() if payload is not None else None,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        wait_until(lambda: call("GET", "/health")[0] == 200)
        status, health = call("GET", "/health")
        assert health["triggers"]["sandbox"] == "unavailable"
        assert "never run unsandboxed" in health["triggers"]["detail"]
        status, org = call("POST", "/organizations", {"name": "Org", "level": "dso"})
        status, out = call("POST", "/triggers/create", json.loads(MISSION_BODY), token=org["api_key"])
        assert status == 503 and out["error"] == "sandbox_unavailable", out
        assert "unsandboxed" in out["detail"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert "triggers disabled" in stderr and "refused the seccomp filter" in stderr


async def test_uploads_per_day_are_limited(town):
    t = await town(1, max_per_organization=1)
    ok = body(["household_power_consumption"], "def condition(household_power_consumption):\n    return True\n")
    for _ in range(3):
        status, created = await t.create(ok)
        assert status == 201
        assert (await t.running.call("DELETE", f"/triggers/{created['id']}", token=t.org_key))[0] == 204
    status, out = await t.create(ok)
    assert status == 429 and out["error"] == "too_many_uploads"


async def test_mixed_parameters_run_per_household_with_the_neighbourhood_values(town):
    t = await town(4)
    status, created = await t.create(body(["household_power_production", "neighborhood_net_power",
                                           "neighborhood_household_count"], """\
        def condition(household_power_production, neighborhood_net_power, neighborhood_household_count):
            return neighborhood_household_count == 4 and neighborhood_net_power < 0 and household_power_production > 500
        """, interval=1))
    assert status == 201 and created["kind"] == "household"
    export = [{"power_import_w": 100.0, "power_export_w": w} for w in (900.0, 800.0, 200.0, 100.0)]
    await t.window(values=export)  # net = 400 - 2000 < 0: the two exporting above 500 W
    assert [len(await t.inbox(token)) for _, token in t.households] == [1, 1, 0, 0]
    view = await t.trigger(created["id"])
    assert view["evaluations"] == 4 and view["firings"] == 2
    # a window the privacy rules do not release (two households silent long enough to leave the cohort, which
    # holds a silent household's last values for a while): not run at all, for anyone
    t.clock.step(600)
    await t.window(values=export[:2] + [None, None])
    view = await t.trigger(created["id"])
    assert view["evaluations"] == 4 and view["windows"]["inputs_withheld"] == 1


async def test_removed_households_lose_their_endpoints_appliances_and_inbox(town):
    t = await town(2)
    (gone_id, gone), (kept_id, kept) = t.households
    status, _ = await t.create(body(["household_power_consumption"],
                                    "def condition(household_power_consumption):\n    return True\n"))
    await t.window(power_import_w=1.0)
    for i, token in enumerate((gone, kept)):
        assert len(await t.inbox(token)) == 1
        assert (await t.running.call("PUT", "/households/me/notify", token=token,
                                     json={"url": "https://ntfy.sh/x", "kind": "ntfy"}))[0] == 200
        assert (await t.running.call("POST", "/households/me/appliances", token=token, json={
            "name": "Heater", "driver": "tasmota", "address": f"http://192.168.1.{9 + i}"}))[0] == 201
    assert (await t.running.call("DELETE", f"/households/{gone_id}"))[0] == 204
    t.runner._purged_at = float("-inf")  # the next run purges
    await t.runner.run_due()
    store = t.runner.households
    assert store.inbox(gone_id) == [] and gone_id not in store.endpoints and store.appliances_of(gone_id) == []
    assert len(store.inbox(kept_id)) == 1 and kept_id in store.endpoints and len(store.appliances_of(kept_id)) == 1


async def test_time_of_day_is_the_evaluated_windows_hour_not_a_clock(town):
    """Conditions have no clock (the sandbox takes it away): the runner passes the window's start hour, UTC."""
    t = await town(3)
    hour = int(t.clock.now // 3600 % 24)
    status, created = await t.create(body(["household_power_consumption", "time_of_day_h"], f"""\
        def condition(household_power_consumption, time_of_day_h):
            return time_of_day_h == {hour} and household_power_consumption > 0
        """, interval=1))
    assert status == 201, created and created["kind"] == "household"
    await t.window(power_import_w=100.0)
    assert [len(await t.inbox(token)) for _, token in t.households] == [1] * 3
    t.clock.now = (t.clock.now // 3600 + 1) * 3600 + 5  # the next hour
    await t.window(power_import_w=100.0)
    assert [len(await t.inbox(token)) for _, token in t.households] == [1] * 3
    view = await t.trigger(created["id"])
    assert view["evaluations"] == 6 and view["firings"] == 3
    # a fact of the window, not of any household: every level may use it
    _, supplier_key = await t.running.create_org("Supplier", "supplier")
    status, params = await t.running.call("GET", "/parameters", token=supplier_key)
    [time_of_day] = [p for p in params["parameters"] if p["name"] == "time_of_day_h"]
    assert time_of_day["permitted"] is True and time_of_day["unit"] == "h"
