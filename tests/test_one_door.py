"""The one door, proved from the outside: over a scenario (exact and noisy organizations, live and history
reads, webhooks, a revocation, a silent household), every aggregate any organization received is byte for byte
a record of the release log read back from disk, and nothing an organization received depends on data the log
does not hold."""

from __future__ import annotations

import json
from dataclasses import replace

from agent.config import PrivacyConfig
from agent.release import Refusal, Releases
from tests.helpers.agent import delivery_config, make_config
from tests.helpers.clock import HOUR as T0, StepClock
from tests.helpers.receiver import Receiver


async def test_every_aggregate_an_organization_saw_is_a_record_of_the_release_log(tmp_path, start_agent):
    receiver = Receiver()
    await receiver.start()
    clock = StepClock(T0)
    config = make_config(tmp_path, delivery=delivery_config(), privacy=replace(PrivacyConfig(), k_min=5))
    running = await start_agent(config, clock=clock)
    try:
        dso_id, dso_key = await running.create_org("Grid", "dso")
        sup_id, sup_key = await running.create_org("Supplier", "supplier")
        households = [await running.create_household() for _ in range(8)]
        for _, token in households:
            for org in (dso_id, sup_id):
                status, _ = await running.call("PUT", f"/households/me/consents/{org}/aggregates", token=token)
                assert status == 200
        status, sub = await running.call("POST", "/data/subscribe", token=dso_key,
                                         json={"endpoint": receiver.url, "interval": 1, "window": "1m"})
        assert status == 201, sub
        clock.step(60)  # consent holds from the next whole minute on
        seen: list[dict] = []  # every aggregate body an organization received, however it asked
        for minute in range(17):
            for second in range(60):
                for i, (_, token) in enumerate(households if second % 5 == 0 else []):  # a reading every 5 s
                    if minute == 9 and i == 0:
                        continue  # one household's datalogger is down for a minute
                    status, body = await running.call("POST", "/readings", token=token, json={
                        "timestamp": clock.now, "power_import_w": 200.0 + 10 * i + second % 7,
                        "power_export_w": 50.0 if i % 3 == 0 else 0.0})
                    assert status == 201, body
                clock.step(1)
                if second % 5 == 4:
                    await running.agent.releases.settle()
            if minute == 12:  # a revocation
                await running.call("DELETE", f"/households/me/consents/{dso_id}/aggregates",
                                   token=households[1][1])
            for key, query in ((dso_key, "window=1m"), (dso_key, "window=1s"), (sup_key, "window=15m")):
                status, body = await running.call("GET", f"/data?{query}", token=key)
                if status == 200:
                    seen.append(body)
        for key, window in ((dso_key, "1m"), (dso_key, "15m"), (sup_key, "15m"), (sup_key, "1h")):
            status, body = await running.call("GET", f"/data?window={window}&since={T0}&until={clock.now}", token=key)
            assert status == 200, body
            seen.extend(body["released"])
        await running.wait_for(lambda: len(receiver.received) >= 10)
        pushed = [m["aggregate"] for m in receiver.messages() if m["type"] == "aggregate"]
        assert pushed
        seen.extend(pushed)
        await running.agent.releases.flush()
    finally:
        await receiver.stop()
    # Read the release log back from disk, as a fresh process would, and find every body there.
    log = Releases(config, running.agent.registry, running.agent.books, clock, config.storage.path / "releases")
    recorded = {}
    for doc in log.log.load(clock.now, fine_since=T0):
        if doc.get("t") == "r" and "b" in doc:
            recorded.setdefault(json.dumps(doc["b"], sort_keys=True), doc)
    assert len(seen) > 40
    missing = [body for body in seen if json.dumps(body, sort_keys=True) not in recorded]
    assert not missing, missing[:2]
    # both kinds went out, and the noisy one is noisy
    kinds = {body["privacy"]["kind"] for body in seen}
    assert kinds == {"exact", "noisy"}
    # the minute the datalogger was down and the revocation left refusals in the log, not differences
    refusals = [doc for doc in log.log.load(clock.now, fine_since=T0) if doc.get("t") == "r" and "x" in doc]
    assert any(doc["x"]["error"] in ("isolating", "incomplete") for doc in refusals)
    assert isinstance(log.answer(dso_id, "1m", int(T0)), Refusal)  # before consent held: never released
