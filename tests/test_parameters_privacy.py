"""GET /parameters is a fact of the configuration, never of the households' data: every caller gets the same list,
the static parameters and both channel parameters (`household_channel_<tag>`, `neighborhood_channel_<tag>`) of
exactly the operator's tag vocabulary (`[privacy] tags`), with `permitted` by the caller's level. A household
cannot post a channel whose tag is outside the vocabulary, so no tag exists that the operator did not define.

P11 (PRIVACY-FINDINGS.md): an organization with households of its own posted guessed tags; the catalogue then
listed the tags real households carried (a medical device's, one carrier) and told how many carried them. Here the
same attacker learns nothing from the catalogue: it is byte for byte the same before and after, with and without
real carriers, for it and for an organization with no households at all."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from agent.config import DEFAULT_TAGS, PrivacyConfig
from tests.helpers.agent import OPERATOR_TOKEN, grant, make_config, post
from tests.helpers.clock import StepClock, T0

HOUSEHOLD = ["household_power_consumption", "household_power_production", "household_net_power",
             "household_gas_consumption", "household_energy_import", "household_energy_export", "household_tariff",
             "household_voltage_l1", "household_voltage_l2", "household_voltage_l3",
             "household_current_l1", "household_current_l2", "household_current_l3",
             # issue 15: what P1 telegrams carry besides
             *(f"household_energy_{d}_t{n}" for d in ("import", "export") for n in (1, 2, 3, 4)),
             "household_demand_average", "household_demand_peak_month", "household_outages", "household_long_outages",
             *(f"household_voltage_{e}_l{n}" for e in ("sags", "swells") for n in (1, 2, 3)),
             "household_last_long_outage", "household_reactive_power_import", "household_reactive_power_export",
             "household_apparent_power_import", "household_apparent_power_export", "household_cos_phi",
             "household_frequency", "household_threshold_power", "household_threshold_apparent_power",
             "household_threshold_current", *(f"household_threshold_fuse_l{n}" for n in (1, 2, 3)),
             "household_breaker_state", "household_water_consumption", "household_heat_consumption"]
NEIGHBORHOOD = ["neighborhood_power_consumption", "neighborhood_power_production", "neighborhood_net_power",
                "neighborhood_household_count", "neighborhood_peak_demand_month",
                *(f"neighborhood_voltage_l{n}_{stat}" for n in (1, 2, 3) for stat in ("min", "max", "mean")),
                "neighborhood_long_power_failures", "time_of_day_h"]
STATIC = HOUSEHOLD + NEIGHBORHOOD


def expected_names(tags) -> list[str]:
    return STATIC + [name for tag in tags for name in (f"household_channel_{tag}", f"neighborhood_channel_{tag}")]


async def raw_catalogue(running, token) -> bytes:
    """The answer byte for byte."""
    async with running.http.get(running.base + "/parameters", headers=running.auth(token)) as resp:
        assert resp.status == 200
        return await resp.read()


async def catalogue(running, token) -> list[dict]:
    body = json.loads(await raw_catalogue(running, token))
    for p in body["parameters"]:
        assert set(p) == {"name", "unit", "level", "description", "permitted"}, p
    return body["parameters"]


@pytest.fixture
async def device(tmp_path, start_agent):
    """An organization of each level, one with no consents, and households: 0..9 consent to "Energy Co"."""
    clock = StepClock(T0)
    running = await start_agent(make_config(tmp_path), clock=clock)
    orgs = {level: await running.create_org(f"{level} co", level) for level in ("dso", "supplier", "service")}
    _, nobody_key = await running.create_org("Nobody Co", "dso")
    households = [await running.create_household() for _ in range(10)]
    for _, token in households:
        await grant(running, token, orgs["dso"][0])
    clock.step(1)
    return running, clock, orgs, nobody_key, households


async def test_every_caller_gets_the_vocabulary_in_its_order(device):
    running, _, orgs, nobody_key, households = device
    assert running.agent.config.privacy.tags == DEFAULT_TAGS
    for token in (OPERATOR_TOKEN, nobody_key, households[0][1], *(key for _, key in orgs.values())):
        params = await catalogue(running, token)
        assert [p["name"] for p in params] == expected_names(DEFAULT_TAGS), token
    # nothing posted yet, nothing carried: the channel parameters are there all the same
    params = {p["name"]: p for p in await catalogue(running, orgs["dso"][1])}
    assert params["neighborhood_channel_heat_pump"] == {
        "name": "neighborhood_channel_heat_pump", "unit": "W", "level": "neighborhood",
        "description": "Total power of the 'heat_pump' channel over the cohort", "permitted": True}


async def test_permitted_follows_the_level_and_the_operators_narrowing(device):
    running, _, orgs, _, households = device

    async def allowed(token) -> set[str]:
        return {p["name"] for p in await catalogue(running, token) if p["permitted"]}

    everything = set(expected_names(DEFAULT_TAGS))
    assert await allowed(OPERATOR_TOKEN) == everything
    assert await allowed(orgs["dso"][1]) == everything
    supplier = await allowed(orgs["supplier"][1])
    assert "household_channel_ev" in supplier and "neighborhood_channel_ev" in supplier
    assert "household_voltage_l1" not in supplier
    assert await allowed(orgs["service"][1]) == {n for n in everything if n.startswith("neighborhood_")} | {
        "time_of_day_h"}  # a fact of the window: every level
    assert await allowed(households[0][1]) == set()  # households use no parameters
    status, _ = await running.call("PATCH", f"/organizations/{orgs['dso'][0]}",
                                   json={"parameters": ["neighborhood_channel_ev", "neighborhood_power_*"]})
    assert status == 200
    assert await allowed(orgs["dso"][1]) == {"neighborhood_channel_ev", "neighborhood_power_consumption",
                                             "neighborhood_power_production"}


async def test_an_organization_may_be_narrowed_only_to_parameters_that_exist(device):
    running, _, orgs, _, _ = device
    org_id = orgs["supplier"][0]
    status, body = await running.call("PATCH", f"/organizations/{org_id}",
                                      json={"parameters": ["household_channel_dialysis"]})
    assert status == 422 and "household_channel_dialysis" in body["detail"]
    status, body = await running.call("PATCH", f"/organizations/{org_id}",
                                      json={"parameters": ["household_channel_boiler"]})
    assert status == 200 and body["parameters"] == ["household_channel_boiler"]


async def test_the_operator_defines_the_vocabulary(tmp_path, start_agent):
    config = make_config(tmp_path)
    running = await start_agent(replace(config, privacy=PrivacyConfig(tags=("sauna", "ev"))))
    _, key = await running.create_org()
    assert [p["name"] for p in await catalogue(running, key)] == expected_names(("sauna", "ev"))
    await running.http.close()
    await running.agent.stop()
    none = await start_agent(replace(config, privacy=PrivacyConfig(tags=())))
    assert [p["name"] for p in await catalogue(none, key)] == STATIC


# --- P11: an organization's own households posting guessed tags ---------------------------------------------------
GUESSES = ["dialysis", "oxygen_concentrator", "ventilator", "cannabis_grow_lamp", "sauna"]  # outside the vocabulary
RARE = "pool_pump"  # in the vocabulary, carried by one real household


async def test_guessed_tags_neither_appear_nor_tell_anything(device):
    running, clock, orgs, nobody_key, households = device
    attacker_id, attacker_key = await running.create_org("Prober", "supplier")
    own = [await running.create_household() for _ in range(12)]
    for household_id, token in own:  # the attacker's own households consent to it (it controls them)
        await grant(running, token, attacker_id)
    clock.step(1)
    before = {key: await raw_catalogue(running, key) for key in (attacker_key, nobody_key)}

    # Guesses outside the vocabulary are refused: no such channel can exist.
    for guess in GUESSES:
        for _, token in own:
            status, body = await running.call("POST", "/readings", token=token,
                                              json={"timestamp": clock.now, "power_import_w": 400.0,
                                                    "channels": {guess: 300.0}})
            assert status == 422 and body["error"] == "unknown_tag", body
            assert guess in body["detail"] and ", ".join(DEFAULT_TAGS) in body["detail"]
        clock.step(1)
    # Real households carry a rare tag (one of them) and a common one; the attacker's carry every tag there is.
    for i, (_, token) in enumerate(households):
        await post(running, token, clock, power_import_w=500.0,
                   channels={"fridge": 60.0 + i, **({RARE: 1200.0} if i == 0 else {})})
    for _, token in own:
        await post(running, token, clock, power_import_w=400.0, channels={tag: 10.0 for tag in DEFAULT_TAGS})
    clock.step(1)

    after = {key: await raw_catalogue(running, key) for key in (attacker_key, nobody_key)}
    assert after == before  # byte for byte: nothing any household posted shows
    attacker = json.loads(after[attacker_key])["parameters"]
    assert [p["name"] for p in attacker] == expected_names(DEFAULT_TAGS)
    assert not any(guess in p["name"] for p in attacker for guess in GUESSES)
    # the list of names is every caller's, whatever their consents or households
    nobody = json.loads(after[nobody_key])["parameters"]
    assert [p["name"] for p in nobody] == [p["name"] for p in attacker]
    assert [p["name"] for p in await catalogue(running, own[0][1])] == [p["name"] for p in attacker]
    # and nothing of the refused guesses was stored
    for _, token in own[:1]:
        meter = running.agent.registry.household_by_token(token).meter_id
        status, body = await running.call("GET", f"/meters/{meter}/readings?limit=1000")
        assert status == 200 and all(set(r.get("channels") or {}) <= set(DEFAULT_TAGS) for r in body["readings"])
        assert body["count"] == 1  # the one reading with vocabulary tags
