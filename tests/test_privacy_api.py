"""GET /data/anonymized and GET /data/dp end to end, on a clock the test steps: the level's k, l and t
are met and pycanon agrees with the report, pseudonyms rotate, a consent change cannot be differenced
out, levels are enforced, DP answers carry their guarantee, the budget runs out with a 429 that says
when it renews, and a restart does not reset it."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from agent.config import DEFAULT_LEVELS, DifferentialPrivacy, Level
from agent.privacy import dp
from drivers.reading import Reading
from tests.conftest import StepClock, make_config
from tests.test_privacy_anonymize import pycanon_figures

DAY = 1_790_000_000 // 86400 * 86400
T0 = DAY + 8 * 3600  # 08:00 UTC


def reading(meter: str, moment: float, i: int, period: int, **extra) -> Reading:
    when = datetime.fromtimestamp(moment, timezone.utc)
    three = i % 3 == 0
    return Reading(meter_id=meter, timestamp=when, received_at=when,
                   power_import_w=150.0 + (i * 37 + period * 53) % 900,
                   power_export_w=(400.0 if i % 4 == 0 else 0.0),
                   voltage_l1_v=230.0, voltage_l2_v=231.0 if three else None,
                   current_l1_a=3.0 + i % 7, gas_m3=(1000.0 + i) if i % 2 else None, **extra)


async def feed(running, clock, meters: list[str], periods: list[int], **extra) -> None:
    """One reading per household per period, then one more in the next period so the rollups close."""
    width = periods[1] - periods[0] if len(periods) > 1 else 900
    for p_index, start in enumerate(periods + [periods[-1] + width]):
        clock.now = start + 10
        for i, meter in enumerate(meters):
            running.agent.ingest_http(reading(meter, clock.now, i, p_index, **extra))


async def households(running, org_id: str, n: int, service: str = "anonymized_data") -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        household_id, token = await running.create_household()
        if org_id:
            status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/{service}", token=token)
            assert status == 200
        out.append((household_id, token))
    return out


def without_pseudonyms(records):
    return Counter(tuple(sorted((k, v) for k, v in r.items() if k != "pseudonym")) for r in records)


@pytest.fixture
async def neighbourhood(tmp_path, start_agent):
    clock = StepClock(T0 - 60)
    running = await start_agent(make_config(tmp_path), clock=clock)
    org_id, org_key = await running.create_org("Grid Co", "dso")
    homes = await households(running, org_id, 30)
    return running, clock, org_id, org_key, homes


async def test_anonymized_release_meets_the_level_and_pycanon_agrees(neighbourhood):
    running, clock, org_id, org_key, homes = neighbourhood
    periods = list(range(T0, T0 + 2 * 3600, 900))
    await feed(running, clock, [h for h, _ in homes], periods)
    status, body = await running.call("GET", f"/data/anonymized?resolution=15m&from={T0}&to={T0 + 7200}",
                                      token=org_key)
    assert status == 200, body
    report, records = body["report"], body["records"]
    assert report["quasi_identifiers"] == ["period_start", "has_pv", "has_gas", "phases", "connection"]
    assert report["sensitive_attribute"] == "consumption_w_from"
    assert report["k"] >= 5 and report["epsilon"] is None and report["epsilon_spent"] == 0
    k, l_div, t = pycanon_figures(records)
    assert (report["k"], report["l"]) == (k, l_div) and report["t"] == pytest.approx(t, abs=1e-6)
    assert report["rows"] == len(records) and report["rows"] + report["rows_suppressed"] == 30 * 8
    assert {r["period_start"] for r in records} <= {datetime.fromtimestamp(p, timezone.utc).isoformat()
                                                   .replace("+00:00", "Z") for p in periods}
    assert not any(h in str(body) for h, _ in homes)  # neither household ids nor meter ids
    status, audit = await running.call("GET", f"/audit?since={DAY}&until={clock.now + 10}&who={org_id}")
    assert any(e["action"] == "data.anonymized" and e["released"] for e in audit["entries"])


async def test_pseudonyms_rotate_and_a_consent_change_cannot_be_differenced_out(neighbourhood):
    running, clock, org_id, org_key, homes = neighbourhood
    periods = list(range(T0, T0 + 3600, 900))
    await feed(running, clock, [h for h, _ in homes], periods)
    query = f"/data/anonymized?resolution=15m&from={T0}&to={T0 + 3600}"
    status, first = await running.call("GET", query, token=org_key)
    assert status == 200, first
    # one household leaves; more data comes in after
    status, _ = await running.call("DELETE", f"/households/me/consents/{org_id}/anonymized_data",
                                   token=homes[0][1])
    assert status == 200
    later = list(range(T0 + 3600, T0 + 7200, 900))
    await feed(running, clock, [h for h, _ in homes], later)
    status, again = await running.call("GET", query, token=org_key)
    assert status == 200
    # the same range is the same release: same rows, new pseudonyms; nothing to subtract
    assert without_pseudonyms(again["records"]) == without_pseudonyms(first["records"])
    assert not {r["pseudonym"] for r in first["records"]} & {r["pseudonym"] for r in again["records"]}
    # after the revocation, the household is in no period
    status, after = await running.call("GET", f"/data/anonymized?resolution=15m&from={T0 + 3600}&to={T0 + 7200}",
                                       token=org_key)
    assert status == 200
    seen = after["report"]["households"] + after["report"]["households_suppressed"]
    assert seen == 29 and first["report"]["households"] + first["report"]["households_suppressed"] == 30


async def test_levels_decide_what_anonymized_data_an_organization_gets(neighbourhood):
    running, clock, org_id, org_key, homes = neighbourhood
    periods = list(range(T0, T0 + 3600, 900))
    await feed(running, clock, [h for h, _ in homes], periods)
    _, supplier_key = await running.create_org("Supplier", "supplier")
    status, body = await running.call("GET", "/data/anonymized?resolution=15m", token=supplier_key)
    assert status == 403 and body["error"] == "resolution_not_permitted"
    _, service_key = await running.create_org("App", "service")
    status, body = await running.call("GET", "/data/anonymized", token=service_key)
    assert status == 403 and body["error"] == "not_permitted" and "/data/dp" in body["detail"]
    # an organization few households consented to: refused, saying which requirement failed
    few_id, few_key = await running.create_org("Small Grid", "dso")
    for _, token in homes[:3]:
        await running.call("PUT", f"/households/me/consents/{few_id}/anonymized_data", token=token)
    clock.step(3600)
    status, body = await running.call("GET", f"/data/anonymized?resolution=15m&from={clock.now}&to={clock.now}",
                                      token=few_key)
    assert status == 400  # an empty range
    status, body = await running.call("GET", "/data/anonymized?resolution=15m", token=few_key)
    assert status == 409 and body["error"] == "k_not_met" and body["requirement"] == "k"
    assert "k >= 5" in body["detail"]
    status, body = await running.call("GET", "/data/anonymized?resolution=5m", token=org_key)
    assert status == 400
    status, body = await running.call("GET", f"/data/anonymized?from={T0 - 30 * 86400}", token=org_key)
    assert status == 400 and "7 days" in body["detail"]


# --- differential privacy ------------------------------------------------------------------------
TIGHT = Level("tight", ("neighborhood_*",), ("15m", "1h"),
              dp=DifferentialPrivacy(only=True, epsilon=1.0, epsilon_per_day=2.0))


@pytest.fixture
async def dp_neighbourhood(tmp_path, start_agent):
    clock = StepClock(T0 - 60)
    config = make_config(tmp_path, levels={**DEFAULT_LEVELS, "tight": TIGHT})
    running = await start_agent(config, clock=clock)
    org_id, org_key = await running.create_org("Grid Co", "dso")
    tight_id, tight_key = await running.create_org("App", "tight")
    homes = await households(running, "", 12)
    for _, token in homes:
        for org in (org_id, tight_id):
            await running.call("PUT", f"/households/me/consents/{org}/aggregates", token=token)
    return running, clock, config, (org_id, org_key), (tight_id, tight_key), homes


async def test_dp_answer_carries_its_guarantee_and_asking_again_costs_nothing(dp_neighbourhood):
    running, clock, _, (org_id, org_key), _, homes = dp_neighbourhood
    await feed(running, clock, [h for h, _ in homes], [T0])
    clock.now = T0 + 900 + 20
    status, body = await running.call("GET", "/data/dp?window=15m", token=org_key)
    assert status == 200, body
    assert body["households"] == 12 and isinstance(body["consumption_w"], int)
    assert body["dp"]["epsilon"] == 1.0 and "per household" in body["dp"]["guarantee"]
    assert body["dp"]["unit"] == dp.UNIT and body["dp"]["noisy"] == ["consumption", "production"]
    assert body["dp"]["per_quantity"]["mechanism"] == "discrete_laplace"
    assert body["dp"]["per_quantity"]["scale"] == pytest.approx(5000 / 0.5)
    assert body["budget"]["epsilon_spent"] == 1.0 and body["budget"]["epsilon_per_day"] == 10.0
    status, again = await running.call("GET", "/data/dp?window=15m", token=org_key)
    assert again["consumption_w"] == body["consumption_w"] and again["budget"]["epsilon_spent"] == 1.0
    # a tag: one noisy sum with the whole epsilon, clamped at the tag clamp (or one the caller declares)
    status, body = await running.call("GET", "/data/dp?window=15m&clamp_w=0", token=org_key)
    assert status == 400
    status, body = await running.call("GET", "/data/dp?window=1s", token=org_key)
    assert status == 400


async def test_dp_only_level_never_gets_exact_aggregates_and_the_budget_runs_out(dp_neighbourhood, start_agent):
    running, clock, config, _, (tight_id, tight_key), homes = dp_neighbourhood
    meters = [h for h, _ in homes]
    answers = []
    for window in range(3):
        start = T0 + window * 900
        await feed(running, clock, meters, [start])
        clock.now = start + 900 + 20
        status, body = await running.call("GET", "/data?window=15m", token=tight_key)
        answers.append((status, body))
    (s1, b1), (s2, b2), (s3, b3) = answers
    assert s1 == s2 == 200 and "dp" in b1 and "dp" in b2  # GET /data, but noisy
    assert b2["budget"]["epsilon_remaining"] == 0
    assert s3 == 429 and b3["error"] == "budget_exhausted"
    assert b3["renews_at"] == datetime.fromtimestamp(DAY + 86400, timezone.utc).isoformat().replace("+00:00", "Z")
    assert "renews at" in b3["detail"]
    # already released windows are still answered (from the log, no cost)
    status, history = await running.call("GET", f"/data?window=15m&since={T0}&until={T0 + 1800}", token=tight_key)
    assert status == 200 and [w["consumption_w"] for w in history["released"]] == [b1["consumption_w"],
                                                                                  b2["consumption_w"]]
    # a restart does not reset the budget
    await running.http.close()
    await running.agent.stop()
    restarted = await start_agent(config, clock=clock)
    status, body = await restarted.call("GET", f"/data?window=15m&since={T0 + 1800}&until={T0 + 2700}",
                                        token=tight_key)
    assert status == 429, body
    status, history = await restarted.call("GET", f"/data?window=15m&since={T0}&until={T0 + 1800}",
                                           token=tight_key)
    assert status == 200 and history["budget"]["epsilon_spent"] == 2.0
    assert history["released"][0]["consumption_w"] == b1["consumption_w"]
    # the next UTC day the budget is back
    clock.now = DAY + 86400 + 20
    await feed(restarted, clock, meters, [DAY + 86400])
    clock.now = DAY + 86400 + 900 + 20
    status, body = await restarted.call("GET", "/data?window=15m", token=tight_key)
    assert status == 200 and body["budget"]["epsilon_spent"] == 1.0


async def test_without_opendp_dp_levels_are_unavailable_never_exact(dp_neighbourhood):
    running, clock, _, (org_id, org_key), (tight_id, tight_key), homes = dp_neighbourhood
    await feed(running, clock, [h for h, _ in homes], [T0])
    clock.now = T0 + 900 + 20
    dp.set_unavailable(True)
    try:
        status, body = await running.call("GET", "/data?window=15m", token=tight_key)
        assert status == 503 and body["error"] == "dp_unavailable" and "OpenDP" in body["detail"]
        status, body = await running.call("GET", "/data/dp?window=15m", token=org_key)
        assert status == 503
        # exact aggregates for levels that may have them are unaffected
        status, body = await running.call("GET", "/data?window=15m", token=org_key)
        assert status == 200 and "dp" not in body
    finally:
        dp.set_unavailable(False)


async def test_dp_differencing_around_a_consent_change(dp_neighbourhood):
    """A household revokes between two windows: the earlier window's answer stays what it was (it is
    served from the log), and the difference between the two windows' answers is the household's value
    plus noise whose spread (2 b) dwarfs any household's value."""
    running, clock, _, (org_id, org_key), _, homes = dp_neighbourhood
    meters = [h for h, _ in homes]
    await feed(running, clock, meters, [T0])
    clock.now = T0 + 900 + 20
    status, before = await running.call("GET", "/data/dp?window=15m&clamp_w=1000", token=org_key)
    assert status == 200 and before["households"] == 12
    status, _ = await running.call("DELETE", f"/households/me/consents/{org_id}/aggregates", token=homes[0][1])
    await feed(running, clock, meters, [T0 + 900])
    clock.now = T0 + 1800 + 20
    status, after = await running.call("GET", "/data/dp?window=15m&clamp_w=1000", token=org_key)
    # the revocation came during this window: the household is out of it (11 left, k_min is 10)
    assert status == 200 and after["households"] == 11
    status, history = await running.call("GET", f"/data/dp?window=15m&clamp_w=1000&since={T0}&until={T0 + 900}",
                                         token=org_key)
    assert history["released"][0]["consumption_w"] == before["consumption_w"]  # not re-drawn
    scale = before["dp"]["per_quantity"]["scale"]
    assert 2 * scale > 1000  # the difference's noise exceeds the clamp: the value is hidden
    assert math.isclose(scale, 1000 / 0.5)


async def test_k_min_still_applies_to_dp_answers(tmp_path, start_agent):
    clock = StepClock(T0 - 60)
    running = await start_agent(make_config(tmp_path), clock=clock)
    org_id, org_key = await running.create_org("Grid Co", "dso")
    homes = await households(running, org_id, 5, "aggregates")
    await feed(running, clock, [h for h, _ in homes], [T0])
    clock.now = T0 + 900 + 20
    status, body = await running.call("GET", "/data/dp?window=15m", token=org_key)
    assert status == 409 and body["error"] == "cohort_too_small" and body["missing"] == 5
    status, body = await running.call("GET", f"/data/dp?window=15m&since={T0}&until={T0 + 900}", token=org_key)
    assert status == 200 and body["refused"] and body["budget"]["epsilon_spent"] == 0


def test_levels_in_the_config_file(tmp_path):
    from agent.config import ConfigError, parse_config

    base = {"auth": {"operator_token": "x" * 20}}
    config = parse_config({**base, "levels": {"supplier": {"anonymized": {"k": 20}, "dp": {"epsilon": 0.5}},
                                              "research": {"parameters": ["neighborhood_*"],
                                                           "dp": {"only": True, "noise": "gaussian"}}}})
    assert config.levels["supplier"].anonymized.k == 20 and config.levels["supplier"].anonymized.l == 3
    assert config.levels["supplier"].dp.epsilon == 0.5
    assert config.levels["research"].dp.only and config.levels["research"].anonymized.k == 0
    for bad, key in (({"anonymized": {"k": 1}}, "k"), ({"anonymized": {"resolution": "1m"}}, "resolution"),
                     ({"dp": {"noise": "uniform"}}, "noise"), ({"dp": {"epsilon": 5, "epsilon_per_day": 1}},
                                                              "epsilon_per_day"),
                     ({"dp": {"epsilom": 1}}, "epsilom")):
        with pytest.raises(ConfigError, match=key):
            parse_config({**base, "levels": {"dso": bad}})
    assert replace(DEFAULT_LEVELS["dso"]).dp.only is False


async def test_static_attributes_use_only_data_from_under_consent(tmp_path, start_agent):
    """Readings from before a household consented must not describe it, not even as 'has PV'."""
    from agent.api.anonymized import SERVICE, _gather

    clock = StepClock(T0 - 3 * 3600)
    running = await start_agent(make_config(tmp_path), clock=clock)
    org_id, _ = await running.create_org("Grid Co", "dso")
    (household_id, token), = await households(running, "", 1)
    meter = running.agent.registry.household(household_id).meter_id
    before = list(range(T0 - 3 * 3600, T0 - 3600, 900))
    for start in before + [before[-1] + 900]:  # exporting, three-phase, gas: before any consent
        clock.now = start + 10
        running.agent.ingest_http(reading(meter, clock.now, 0, 0))
    clock.now = T0 - 1800
    assert (await running.call("PUT", f"/households/me/consents/{org_id}/{SERVICE}", token=token))[0] == 200
    periods = list(range(T0, T0 + 3600, 900))
    for start in periods + [periods[-1] + 900]:  # no export, one phase, no gas: under consent
        clock.now = start + 10
        running.agent.ingest_http(reading(meter, clock.now, 1, 0))
    agent, registry = running.agent, running.agent.registry
    cohorts = {p: registry.cohort(org_id, SERVICE, p, p + 900) for p in periods}
    assert all(household_id in c for c in cohorts.values())
    timelines = {household_id: registry.consent_timeline(household_id, org_id, SERVICE)}
    [series] = _gather(agent, [registry.household(household_id)], cohorts, periods, 900, timelines)
    assert series.static.has_pv is False and series.static.has_gas is True  # i = 1: gas, no PV
    assert series.static.phases == 1
