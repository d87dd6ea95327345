"""Consent and neighbourhood aggregates, end to end through the API, on a clock the test steps.

k-anonymity threshold, no value-dependent refusal, cohort fixed per window, revocation visible in the next
window, tagged channels (the energy-company tariff case), history from the release log, audit."""

from __future__ import annotations


import pytest

from agent.aggregates import Accumulator
from tests.helpers.agent import grant, make_config, post
from tests.helpers.clock import StepClock, T0


@pytest.fixture
async def neighbourhood(tmp_path, start_agent):
    clock = StepClock(T0)
    running = await start_agent(make_config(tmp_path), clock=clock)
    org_id, org_key = await running.create_org("Energy Co", "dso")
    households = [await running.create_household() for _ in range(12)]
    return running, clock, org_id, org_key, households


async def grant_all(running, clock, households, org_id):
    """Every household consents to aggregates; the next window is the first their consent holds for."""
    for _, token in households:
        await grant(running, token, org_id)
    clock.step(1)


async def data(running, org_key, query="window=1s"):
    return await running.call("GET", f"/data?{query}", token=org_key)


async def test_released_over_a_large_enough_cohort(neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    await grant_all(running, clock, households, org_id)
    for i, (_, token) in enumerate(households):
        await post(running, token, clock, power_import_w=100.0 + i, power_export_w=10.0)
    clock.step(1)
    status, body = await data(running, org_key)
    assert status == 200, body
    assert body["households"] == 12
    assert body["consumption_w"] == pytest.approx(sum(100.0 + i for i in range(12)))
    assert body["production_w"] == pytest.approx(120.0)
    assert body["net_w"] == pytest.approx(body["consumption_w"] - 120.0)
    assert body["window"] == "1s" and body["window_end"] > body["window_start"]
    # the answer carries nothing that points at one household
    assert not any(h in str(body) for h, _ in households)


async def test_too_few_consenting_households_is_409_with_how_many_missing(neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    for _, token in households[:7]:
        await grant(running, token, org_id)
    clock.step(1)
    for _, token in households:  # all post, only 7 consented
        await post(running, token, clock, power_import_w=200.0)
    clock.step(1)
    status, body = await data(running, org_key)
    assert status == 409 and body["error"] == "cohort_too_small"
    assert body["households"] == 7 and body["missing"] == 3 and "3 missing" in body["detail"]
    assert "consumption_w" not in body


async def test_one_dominant_household_is_released_at_an_exact_level(neighbourhood):
    """The old dominance refusal depended on one household's value: a threshold oracle (PRIVACY-FINDINGS P2).
    Exact levels (the custodian) decide on data-independent facts only."""
    running, clock, org_id, org_key, households = neighbourhood
    await grant_all(running, clock, households, org_id)
    for i, (_, token) in enumerate(households):
        await post(running, token, clock, power_import_w=20_000.0 if i == 0 else 100.0, power_export_w=0.0)
    clock.step(1)
    status, body = await data(running, org_key)
    assert status == 200, body
    assert body["consumption_w"] == 20_000.0 + 11 * 100.0 and body["privacy"]["kind"] == "exact"


async def test_revocation_takes_the_household_out_of_the_window_in_progress(neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    ten = households[:10]
    for _, token in ten:
        await grant(running, token, org_id)
    clock.step(1)
    for _, token in ten:
        await post(running, token, clock, power_import_w=100.0)
    clock.step(1)
    status, first = await data(running, org_key)
    assert status == 200 and first["households"] == 10
    # one household revokes while the next window is open
    status, _ = await running.call("DELETE", f"/households/me/consents/{org_id}/aggregates", token=ten[0][1])
    assert status == 200
    for _, token in ten:
        await post(running, token, clock, power_import_w=100.0)
    clock.step(1)
    status, body = await data(running, org_key)
    assert status == 409 and body["households"] == 9
    # ...and the window released before the revocation still says the same (cohort fixed per window)
    status, history = await running.call(
        "GET", f"/data?window=1s&since={first['window_start']}&until={first['window_end']}", token=org_key)
    assert status == 200 and history["released"][0]["households"] == 10
    assert history["released"][0]["consumption_w"] == first["consumption_w"]


async def test_consent_history_is_append_only_and_readable(neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    token = households[0][1]
    await grant(running, token, org_id)
    clock.step(5)
    assert (await running.call("DELETE", f"/households/me/consents/{org_id}/aggregates", token=token))[0] == 200
    clock.step(5)
    await grant(running, token, org_id, "triggers")
    status, body = await running.call("GET", "/households/me/consents", token=token)
    assert [c["service"] for c in body["consents"]] == ["triggers"]
    assert [(h["service"], h["action"]) for h in body["history"]] == [
        ("aggregates", "grant"), ("aggregates", "revoke"), ("triggers", "grant")]
    status, body = await running.call("PUT", f"/households/me/consents/{org_id}/nonsense", token=token)
    assert status == 404
    status, body = await running.call("PUT", "/households/me/consents/org_nobody/aggregates", token=token)
    assert status == 404
    # the operator can read consents, never change them
    status, body = await running.call("GET", f"/consents?organization_id={org_id}")
    assert status == 200 and {c["service"] for c in body["consents"]} == {"aggregates", "triggers"}
    status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/aggregates")
    assert status == 403


async def test_tagged_channels_give_the_appliance_average(neighbourhood):
    """The second reference of MISSION.md: an energy company averaging fridges to set a tariff. Tags are
    released per minute or wider, on whole minutes after the device started."""
    running, clock, org_id, org_key, households = neighbourhood
    await grant_all(running, clock, households, org_id)
    clock.step(60 - clock.now % 60)  # the first whole minute
    for i, (_, token) in enumerate(households):
        channels = {"fridge": 50.0 + i, "lighting": 10.0} if i < 11 else {"lighting": 10.0}
        await post(running, token, clock, power_import_w=300.0, channels=channels)
    clock.step(60)
    status, body = await data(running, org_key, "window=1m&tag=fridge")
    assert status == 200, body
    assert body["households"] == 11 and body["tag"] == "fridge"
    assert body["mean_w"] == pytest.approx(sum(50.0 + i for i in range(11)) / 11)
    status, body = await data(running, org_key, "window=1s&tag=fridge")
    assert status == 403
    status, body = await data(running, org_key, "window=1m&tag=light-bulb")
    assert status == 400 and body["error"] == "unknown_tag"
    status, params = await running.call("GET", "/parameters", token=org_key)
    names = {p["name"] for p in params["parameters"]}
    assert {"household_channel_fridge", "neighborhood_channel_fridge", "neighborhood_channel_lighting"} <= names


async def test_levels_limit_windows_and_parameters(neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    _, service_key = await running.create_org("Small Service", "service")
    status, body = await data(running, service_key, "window=1s")
    assert status == 403 and body["error"] == "window_not_permitted"
    status, body = await data(running, service_key, "window=nope")
    assert status == 400
    status, params = await running.call("GET", "/parameters", token=service_key)
    allowed = {p["name"]: p["permitted"] for p in params["parameters"]}
    assert allowed["neighborhood_power_consumption"] and not allowed["household_power_consumption"]
    # the operator narrows one organization further
    status, _ = await running.call("PATCH", f"/organizations/{org_id}",
                                   json={"parameters": ["neighborhood_power_*"]})
    status, body = await data(running, org_key, "window=1m&tag=fridge")
    assert status == 403 and body["error"] == "parameter_not_permitted"


async def test_history_from_the_release_log_and_audit(neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    await grant_all(running, clock, households, org_id)
    start = clock.now
    for second in range(3):
        for _, token in households:
            await post(running, token, clock, power_import_w=100.0 + second)
        clock.step(1)
    status, body = await running.call("GET", f"/data?window=1s&since={start - 0.5}&until={clock.now}",
                                      token=org_key)
    assert status == 200, body
    assert [w["consumption_w"] for w in body["released"]] == [1200.0, 1212.0, 1224.0]
    status, audit = await running.call("GET", f"/audit?since={T0 - 10}&until={clock.now + 10}")
    actions = [e["action"] for e in audit["entries"] if e["who"] == org_id]
    assert "data.history" in actions
    await data(running, org_key)
    status, audit = await running.call("GET", f"/audit?since={T0 - 10}&until={clock.now + 10}&who={org_id}")
    read = [e for e in audit["entries"] if e["action"] == "data.read"]
    assert read and read[-1]["released"] is True


def test_accumulator_weights_stored_rollups():
    acc = Accumulator()
    acc.add_values(100.0, None, None, weight=3)
    acc.add_values(200.0, None, None, weight=1)
    assert acc.result().consumption_w == pytest.approx(125.0)


async def test_a_closed_window_keeps_its_answer_after_a_household_is_deleted(neighbourhood):
    """Two answers about one window must never differ: the difference would be one household."""
    running, clock, org_id, org_key, households = neighbourhood
    await grant_all(running, clock, households, org_id)
    for i, (_, token) in enumerate(households):
        await post(running, token, clock, power_import_w=100.0 + i)
    clock.step(1)
    status, live = await data(running, org_key)
    assert status == 200 and live["households"] == 12
    assert (await running.call("DELETE", f"/households/{households[0][0]}"))[0] == 204
    status, history = await running.call(
        "GET", f"/data?window=1s&since={live['window_start']}&until={live['window_end']}", token=org_key)
    assert history["released"][0]["consumption_w"] == live["consumption_w"]
    # the same from the release log on disk, once the window is no longer in memory
    await running.agent.releases.flush()
    running.agent.releases._records.clear()
    status, stored = await running.call(
        "GET", f"/data?window=1s&since={live['window_start']}&until={live['window_end']}", token=org_key)
    assert stored["released"][0]["consumption_w"] == live["consumption_w"]


async def test_history_limits_and_zero_times(neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    status, body = await running.call("GET", "/data?window=1s&since=0", token=org_key)
    assert status == 400 and "at most" in body["detail"]  # refused before anything is built
    status, body = await running.call("GET", f"/data?window=1s&since={clock.now - 5}&until=0", token=org_key)
    assert status == 400 and "until" in body["detail"]


async def test_revoking_what_was_never_granted_is_404(neighbourhood):
    running, clock, org_id, org_key, households = neighbourhood
    status, body = await running.call("DELETE", "/households/me/consents/org_random/aggregates",
                                      token=households[0][1])
    assert status == 404
    status, body = await running.call("GET", "/households/me/consents/history", token=households[0][1])
    assert body["history"] == []
