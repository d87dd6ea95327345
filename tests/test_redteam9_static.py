"""Red team 9a (session 8), R9a-2 (low): a household's static attributes in an anonymized release are derived from
readings it sent *after* it revoked its consent (or, on a meter that changed hands, from the next household's).

`_gather` (agent/api/anonymized.py) keeps for the static attributes (has_pv, has_gas, phases, connection) the
stored 15-minute rollups "in which the household's consent held", tested at the rollup's *start* only
(`bisect_right(times, start)` and `granted[i - 1]`). A household that revokes `anonymized_data` at 14:05 keeps the
14:00 quarter, and with it every reading of 14:05-14:15. PRIVACY.md: "Static attributes are derived only from
readings taken under the household's consent."

Request sequence (test below), run twice on fresh agents: supplier A; 20 households without PV consent
`anonymized_data` and post one reading an hour. The target posts its 14:00:10 reading, revokes at 14:05
(DELETE /households/me/consents/A/anonymized_data, its own token), and posts at 14:10 a reading with
`power_export_w` 800 (first run) or 0 (second run). After the day A asks `GET /data/anonymized` for it.
Measured: 456 rows against 470: the target's 14 rows of 00:00-13:00, made under its consent, now carry
`has_pv = yes` from the 14:10 reading, a class of one, and are suppressed: every hour 00-13 is one row short in
the first run only. A's release depends on a reading sent after the consent ended (here one bit: the household
exported in the ten minutes after it revoked). The same path takes the first minutes of a new occupant's
readings into the previous household's profile when a meter changes hands mid-quarter (the previous one's
consent ends at its deletion).

Code: agent/api/anonymized.py `_gather`, the `consented` list.
Closed: a rollup is kept only if the consent held throughout its quarter [start, start + 900): the same
bisect at start and at the end (no change inside, granted at start), i.e. the timeline's `held_throughout`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone


from agent.api.anonymized import SERVICE, SETTLE_S
from drivers.reading import Reading
from tests.helpers.agent import make_config
from tests.helpers.clock import StepClock
from tests.helpers.privacy import DAY

REVOKED_AT = DAY + 14 * 3600 + 300  # 14:05
LATE = DAY + 14 * 3600 + 600  # 14:10: after the revocation, inside the quarter that began under consent


def reading(meter: str, moment: float, watts: float, export: float = 0.0) -> Reading:
    when = datetime.fromtimestamp(moment, timezone.utc)
    return Reading(meter_id=meter, timestamp=when, received_at=when, power_import_w=watts, power_export_w=export,
                   voltage_l1_v=230.0, current_l1_a=16.0, gas_m3=1000.0)


async def supplier_day(path, start_agent, late_export: float) -> dict:
    path.mkdir()
    clock = StepClock(DAY - 600)
    running = await start_agent(make_config(path), clock=clock)
    org_id, key = await running.create_org("Supplier", "supplier")
    homes = []
    for _ in range(20):
        household_id, token = await running.create_household()
        status, out = await running.call("PUT", f"/households/me/consents/{org_id}/{SERVICE}", token=token)
        assert status == 200, out
        homes.append((token, running.agent.registry.household(household_id).meter_id))
    usual = [100.0, 300.0, 600.0, 900.0]  # 5 households per bin
    for hour in range(25):
        clock.now = DAY + hour * 3600 + 10
        for i, (_, meter) in enumerate(homes):
            if i == 0 and hour > 15:
                continue  # the target sends one more reading after 14:10 (its datalogger's next), then nothing
            running.agent.ingest_http(reading(meter, clock.now, usual[i % 4]))
        if hour == 14:
            clock.now = REVOKED_AT
            status, out = await running.call("DELETE", f"/households/me/consents/{org_id}/{SERVICE}",
                                             token=homes[0][0])
            assert status == 200, out
            clock.now = LATE
            running.agent.ingest_http(reading(homes[0][1], clock.now, usual[0], export=late_export))
    clock.now = DAY + 86400 + SETTLE_S + 60
    await asyncio.to_thread(running.agent.store.flush)
    status, out = await running.call("GET", f"/data/anonymized?from={DAY}&to={DAY + 86400}", token=key)
    assert status in (200, 409), out
    return {"status": status, **out}


async def test_a_reading_sent_after_the_revocation_does_not_change_the_release(tmp_path, start_agent):
    exported = await supplier_day(tmp_path / "exported", start_agent, 800.0)
    control = await supplier_day(tmp_path / "control", start_agent, 0.0)
    rows = len(exported.get("records", [])), len(control.get("records", []))
    assert exported == control, (
        "the supplier's release of the day differs with what the target sent at 14:10, after it revoked at 14:05: "
        f"{rows[0]} rows against {rows[1]}")
