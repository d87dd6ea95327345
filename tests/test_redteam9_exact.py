"""Red team 9a (session 8), R9a-5 (low: exact levels): an exact organization's `isolating` refusals say whether a
household that just consented to it consents to *another* exact organization too.

The audit (agent/release/door.py `_decide_exact`) weighs each window's cohort against every exact cohort released
in the audit period, whichever organization it went to. So whether organization B's window is released depends on
the other exact organizations' cohorts, i.e. on the households' consents to them: when a household joins B's
cohort, B's windows stay released if it joined A's too (the cohorts are equal), and are refused `isolating` if it
did not (A's cohort, released every second, is B's minus one household). R9a-1's class at the exact levels;
PRIVACY.md states the cost of a change in *that organization's* cohort only ("every cohort change ... refuses that
organization's exact windows for up to 900 s after it"), and does not say that the refusal reads another
organization's consents.

Request sequence (test below), run twice: dso organizations A and B (the attacker's key). 12 households consent
`aggregates` to both; a 13th, the target, posts readings too. 5 s in, the target grants B (PUT
/households/me/consents/B/aggregates, its own token) and, in the second run, A too. B: `GET
/data?window=1s&since=..&until=..` over 60 s (the operator's audit_period_s 20 s here; at the default 900 s the
same, 900 s later). Recovered: B's own cohort change refuses its seconds 5-25 in both runs; after that, first run,
every second refused `isolating` (A's cohort, released every second, is B's minus the target), second run, every
second released: B reads whether the household that just joined it consents to A (1 bit, 2 of 2 runs), and is
denied its data as long as the target consents to B and not to A.

Code: agent/release/door.py `_decide_exact` (one audit over every exact organization's cohorts).
Suggested fix: inherent to one audit across organizations that may collude (a per-organization audit reopens
P5); state it in PRIVACY.md (exact levels: "an organization's windows are refused while another exact
organization's cohort differs from its own by one or two households, so its refusals say whether its households
consent to the other exact organizations"). Exact levels are the custodian's; with one exact organization on the
device (the default) it does not arise.
"""

from __future__ import annotations

import pytest

from tests.helpers.attacks import Town, config_for
from tests.helpers.clock import T0, StepClock

STEADY = [1000.0 + 37.7 * i for i in range(13)]
PERIOD, SECONDS, GRANT_AT = 20, 60, 5  # the operator's audit_period_s (the default 900 s: the same, later)
LATER = range(GRANT_AT + PERIOD + 1, SECONDS)  # after the audit period of B's own cohort change


async def b_seconds(tmp_path, start_agent, also_a: bool) -> list[dict]:
    path = tmp_path / ("also_a" if also_a else "b_only")
    path.mkdir()
    town = await Town(start_agent, config_for(path, audit_period_s=PERIOD), StepClock(T0)).up()
    a_id, _ = await town.org("dso", "A")
    b_id, b_key = await town.org("dso", "B")
    homes = await town.households_(13)
    target = homes[12]
    await town.grant(a_id, homes[:12])
    await town.grant(b_id, homes[:12])
    start = await town.to_next(60)
    for s in range(SECONDS):
        if s == GRANT_AT:
            for org in (b_id, a_id) if also_a else (b_id,):
                status, out = await town.running.call("PUT", f"/households/me/consents/{org}/aggregates",
                                                      token=target[1])
                assert status == 200, out
        for i, h in enumerate(homes):
            await town.post(h, STEADY[i])
        town.clock.step(1)
    return await town.windows(b_key, "1s", start, start + SECONDS)


def refused_later(bodies: list[dict]) -> list[int]:
    return [s for s in LATER if "refused" in bodies[s] and bodies[s]["refused"]["error"] == "isolating"]


@pytest.mark.xfail(strict=True, reason="red team 9a R9a-5: one exact audit over every organization's cohorts "
                   "(agent/release/door.py _decide_exact): B's seconds after a household joined it stay refused "
                   "iff that household did not join A too")
async def test_my_refusals_do_not_say_whether_my_new_household_consents_to_another_organization(tmp_path,
                                                                                               start_agent):
    runs = {also_a: refused_later(await b_seconds(tmp_path, start_agent, also_a)) for also_a in (False, True)}
    assert runs[False] == runs[True], (
        f"B's seconds {LATER.start}-{SECONDS - 1} refused isolating: {runs[False] or 'none'} when the target does "
        f"not consent to A, {runs[True] or 'none'} when it does: B reads it off its own refusals")
