"""GET /parameters does not tell every caller every tag households have given their channels: a tag one household
uses points at it. An organization sees a tag only once at least k_min of the households consenting to it carry
it (the cohort below which no aggregate of the tag is released either); a household sees its own tags; the
operator sees all. The response keeps the shape of the spec: {"parameters": [{name, unit, level, description,
permitted}]}."""

from __future__ import annotations

import json

import pytest

from tests.conftest import StepClock, make_config
from tests.test_data import T0, grant, post

UNKNOWN = "nosuchtag"  # no household has sent it

K_MIN = 10  # the default [privacy] k_min
# households 0..9 carry "fridge" (k_min of them), 0..8 "ev" (one short), only household 0 "dialysis"
FRIDGE, EV, RARE = "fridge", "ev", "dialysis"


def channels_of(i: int) -> dict:
    out = {}
    if i < K_MIN:
        out[FRIDGE] = 60.0 + i
    if i < K_MIN - 1:
        out[EV] = 3000.0
    if i == 0:
        out[RARE] = 300.0
    return out


@pytest.fixture
async def tagged(tmp_path, start_agent):
    """12 households, all consenting to "Energy Co" (aggregates); "Nobody Co" has no consent at all. Each posts one
    reading with its channels (household 11 none)."""
    clock = StepClock(T0)
    running = await start_agent(make_config(tmp_path), clock=clock)
    assert running.agent.config.privacy.k_min == K_MIN
    org_id, org_key = await running.create_org("Energy Co", "dso")
    _, nobody_key = await running.create_org("Nobody Co", "dso")
    households = [await running.create_household() for _ in range(12)]
    for _, token in households:
        await grant(running, token, org_id)
    clock.step(1)
    for i, (_, token) in enumerate(households):
        await post(running, token, clock, power_import_w=500.0, channels=channels_of(i))
    clock.step(1)
    return running, clock, org_id, org_key, nobody_key, households


async def catalogue(running, token) -> dict[str, dict]:
    status, body = await running.call("GET", "/parameters", token=token)
    assert status == 200, body
    assert set(body) == {"parameters"}
    for p in body["parameters"]:
        assert set(p) == {"name", "unit", "level", "description", "permitted"}, p
    return {p["name"]: p for p in body["parameters"]}


def tags_in(params: dict[str, dict]) -> set[str]:
    tags = {name.removeprefix("neighborhood_channel_") for name in params if name.startswith("neighborhood_channel_")}
    assert tags == {name.removeprefix("household_channel_") for name in params
                    if name.startswith("household_channel_")}  # a tag is listed with both parameters, or not at all
    return tags


async def test_organization_sees_a_tag_only_when_k_min_consenting_households_carry_it(tagged):
    running, _, _, org_key, nobody_key, _ = tagged
    params = await catalogue(running, org_key)
    assert tags_in(params) == {FRIDGE}  # k_min carry it; "ev" is one short; "dialysis" is one household
    assert params[f"neighborhood_channel_{FRIDGE}"]["permitted"] is True
    assert "neighborhood_power_consumption" in params  # the static catalogue is unchanged
    # the same households, but none consents to this organization: no tag at all
    assert tags_in(await catalogue(running, nobody_key)) == set()


async def test_a_consent_withdrawal_takes_the_tag_away(tagged):
    running, _, org_id, org_key, _, households = tagged
    assert FRIDGE in tags_in(await catalogue(running, org_key))
    status, _ = await running.call("DELETE", f"/households/me/consents/{org_id}/aggregates", token=households[3][1])
    assert status == 200
    assert FRIDGE not in tags_in(await catalogue(running, org_key))  # k_min - 1 consenting carriers left
    await grant(running, households[3][1], org_id)
    assert FRIDGE in tags_in(await catalogue(running, org_key))


async def test_a_tag_appears_for_an_organization_when_the_k_min_th_household_sends_it(tagged):
    running, clock, _, org_key, _, households = tagged
    assert EV not in tags_in(await catalogue(running, org_key))
    await post(running, households[11][1], clock, power_import_w=500.0, channels={EV: 2500.0})
    assert EV in tags_in(await catalogue(running, org_key))


async def test_operator_sees_every_tag(tagged):
    running, _, _, org_key, _, _ = tagged
    params = await catalogue_of_operator(running)
    assert tags_in(params) == {FRIDGE, EV, RARE}
    assert all(p["permitted"] for p in params.values())
    assert RARE not in tags_in(await catalogue(running, org_key))  # while the organization does not


async def catalogue_of_operator(running) -> dict[str, dict]:
    status, body = await running.get("/parameters")  # the operator's token
    assert status == 200, body
    return {p["name"]: p for p in body["parameters"]}


async def test_household_sees_only_its_own_tags(tagged):
    running, _, _, _, _, households = tagged
    first = await catalogue(running, households[0][1])
    assert tags_in(first) == {FRIDGE, EV, RARE}
    assert tags_in(await catalogue(running, households[9][1])) == {FRIDGE}  # not household 0's "dialysis"
    plain = await catalogue(running, households[11][1])
    assert tags_in(plain) == set()
    assert not any(p["permitted"] for p in plain.values())  # households use no parameters, as before
    assert "household_power_consumption" in plain


# --- GET /data?tag=: guessing tag names must not tell which rare tags exist, nor how many households carry them ---
async def raw(running, path: str, token: str) -> tuple[int, bytes]:
    """The answer byte for byte."""
    async with running.http.get(running.base + path, headers=running.auth(token)) as resp:
        return resp.status, await resp.read()


async def test_an_organization_cannot_tell_a_rare_tag_from_one_nobody_carries(tagged):
    running, clock, _, org_key, _, _ = tagged
    # the live window holds every household's reading: "dialysis" has 1 carrier, "ev" 9, "nosuchtag" none
    answers = {tag: await raw(running, f"/data?window=1s&tag={tag}", org_key) for tag in (UNKNOWN, RARE, EV)}
    assert answers[UNKNOWN][0] == 409
    assert answers[RARE] == answers[UNKNOWN] and answers[EV] == answers[UNKNOWN], answers
    refusal = json.loads(answers[UNKNOWN][1])
    assert set(refusal) == {"error", "detail"}  # no households, no missing
    assert refusal["error"] == "cohort_too_small" and UNKNOWN not in refusal["detail"]
    status, released = await running.call("GET", f"/data?window=1s&tag={FRIDGE}", token=org_key)
    assert status == 200 and released["households"] == K_MIN  # a tag it may see is released as before

    # over past windows too: each refused without counts, the same whether the tag exists or not (but for the
    # tag the request names)
    span = f"since={T0 - 5}&until={clock.now}"
    history = {}
    for tag in (UNKNOWN, RARE, EV):
        status, text = await raw(running, f"/data?window=1s&tag={tag}&{span}", org_key)
        assert status == 200
        history[tag] = text.replace(f'"tag": "{tag}"'.encode(), b'"tag": "?"')
    assert history[RARE] == history[UNKNOWN] and history[EV] == history[UNKNOWN], history
    past = json.loads(history[UNKNOWN])
    assert past["released"] == [] and len(past["refused"]) == 7  # the window with every reading among them
    assert {(r["error"], r["detail"]) for r in past["refused"]} == {(refusal["error"], refusal["detail"])}


async def test_refusals_of_a_tag_the_organization_may_see_carry_no_counts(tagged):
    running, clock, _, org_key, _, _ = tagged
    hidden = await raw(running, f"/data?window=1s&tag={UNKNOWN}", org_key)
    clock.step(5)  # the last closed window is empty: too few "fridge" carriers in it
    assert await raw(running, f"/data?window=1s&tag={FRIDGE}", org_key) == hidden
    status, body = await running.call("GET", f"/data?window=1s&tag={FRIDGE}&since={T0 - 5}&until={clock.now}",
                                      token=org_key)
    assert status == 200, body
    assert [r["households"] for r in body["released"]] == [K_MIN]
    assert len(body["refused"]) >= 5
    for entry in body["refused"]:
        assert set(entry) == {"window_start", "error", "detail"}
        assert (entry["error"], entry["detail"]) == (json.loads(hidden[1])["error"], json.loads(hidden[1])["detail"])
    # the untagged aggregate's refusal still says how many households are missing
    status, body = await running.call("GET", "/data?window=1s", token=org_key)
    assert status == 409 and body["households"] == 0 and body["missing"] == K_MIN


async def test_the_operator_still_sees_the_counts_in_the_audit_log(tagged):
    running, _, org_id, org_key, _, _ = tagged
    for tag in (UNKNOWN, RARE, EV):
        assert (await running.call("GET", f"/data?window=1s&tag={tag}", token=org_key))[0] == 409
    status, audit = await running.get(f"/audit?who={org_id}")
    assert status == 200, audit
    reads = {e["tag"]: e for e in audit["entries"] if e["action"] == "data.read"}
    assert {tag: reads[tag]["households"] for tag in (UNKNOWN, RARE, EV)} == {UNKNOWN: 0, RARE: 1, EV: K_MIN - 1}
    assert all(reads[tag]["released"] is False and reads[tag]["error"] == "tag_not_visible"
               for tag in (UNKNOWN, RARE, EV))


@pytest.fixture
async def service_org(tagged):
    """The same households also consent to "Service Co", of the DP-only level "service" (15 m and 1 h windows), and
    post their channels again in the next 15-minute window, which their consent holds throughout; the clock then
    moves on to the end of that window."""
    running, clock, *_, households = tagged
    org_id, key = await running.create_org("Service Co", "service")
    for _, token in households:
        await grant(running, token, org_id)
    clock.step(900 - clock.now % 900 + 1)
    for i, (_, token) in enumerate(households):
        await post(running, token, clock, power_import_w=500.0, channels=channels_of(i))
    clock.step(900)
    return running, key


async def test_a_dp_only_organization_cannot_tell_a_rare_tag_from_one_nobody_carries_on_get_data(service_org):
    running, key = service_org
    answers = {tag: await raw(running, f"/data?window=15m&tag={tag}", key) for tag in (UNKNOWN, RARE, EV)}
    assert answers[UNKNOWN][0] == 409
    assert answers[RARE] == answers[UNKNOWN] and answers[EV] == answers[UNKNOWN], answers


async def test_a_dp_only_organization_cannot_tell_a_rare_tag_from_one_nobody_carries_on_get_data_dp(service_org):
    running, key = service_org
    answers = {tag: await raw(running, f"/data/dp?window=15m&tag={tag}", key) for tag in (UNKNOWN, RARE, EV)}
    assert answers[UNKNOWN][0] == 409
    assert answers[RARE] == answers[UNKNOWN] and answers[EV] == answers[UNKNOWN], answers
