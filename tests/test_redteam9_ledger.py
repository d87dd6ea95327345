"""Red team 9a (session 8), R9a-3: a household's own privacy budget tells it when *another* household changed a
consent, through the noisy levels' shared answer.

One noisy answer is drawn per (level, window, tag, consenting cohort, quantities) and shared by every organization
of the level with that cohort (agent/release/door.py, `_decide_noisy`, `share`): it is charged once. Two
organizations of one level whose consenting cohorts differ get two draws, and every household in both is charged
twice. So a household that consents to two organizations of one noisy level spends rho or 2 rho per window
according to whether *every other household's* consents to the two are the same, and its page shows what it spent
(*Who used my data*, "Used: ... of 2.00", and the day's rho), to the window if it looks each window.
PRIVACY.md says the page "tells you about you, never about other households", and lists as the one exception
that charges show when an organization had fewer than k_min households consenting with budget left; here both
always have more than k_min.

Request sequence (test below): suppliers A and C (two ordinary organizations, nobody colluding). 12 households
consent `aggregates` to both, the observer among them (it is only a household: its own token, its own page). The
target revokes its consent to C one second into quarter 2 and grants it again one second into quarter 6 (its
own token). The observer signs in (POST /ui/sign-in with its token) and reads GET /ui/me/access after each quarter.
Recovered: its budget grew per quarter by [1, 1, 2, 2, 2, 2, 2, 1] x rho: by 2 rho in exactly quarters 2-6, the
5 quarters in which some neighbour's consent to C did not hold throughout, 5 of 5, none wrong (with the
neighbours known, whose: the moment a neighbour switched supplier or stopped sharing with one). The test's rho
is 0.01 for round figures; at the default 0.0005 the page's four decimals show each step the same way.

The observer can be an organization's own household (PRIVACY.md's threat model: "an organization with households
of its own"): supplier A with one household of its own consenting to A and to its competitor C reads, from that
household's page, the windows in which the two cohorts differ; A knows its own consenting count per window (every
answer's `households`), so what is left is when households changed their consents to C.

Code: agent/release/door.py `_decide_noisy` (the share key is the consenting cohort; the charge once per share),
agent/release/ledger.py, the access page's ledger (agent/web/household.py, templates/access.html).
Closed (the first way): make a household's charge per window independent of other households' consents: charge every
organization's release of a window on its own (each organization's answer its own draw: P6 holds since each is
still drawn once and recorded; re-asking is the same record), or charge a household for every organization of the
level it consents to whether or not their cohorts coincide (over-counting, safe: a shared answer then costs as
two). Or state it beside the k_min exception. Not a reading of anyone, but a consent change of a neighbour.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.attacks import QUARTER, make_town, noisy_level  # noqa: F401  (fixture)
from tests.helpers.web import sign_in_with_token

USED = re.compile(r"Used: ([0-9.]+) of")
QUARTERS = 8
REVOKED, GRANTED = 2, 6  # the quarters in which the target revokes its consent to C, and grants it again
APART = set(range(REVOKED, GRANTED + 1))  # those its consent to C did not hold throughout: what the observer wants


async def used(browser) -> float:
    status, html, _ = await browser.get("/ui/me/access")
    assert status == 200, html
    return float(USED.search(html).group(1))


async def test_my_budget_does_not_say_when_a_neighbour_changed_a_consent(make_town):
    town = await make_town(levels={"supplier": noisy_level(rho=0.01)})  # a round rho: the page shows 4 decimals
    (a_id, _), (c_id, _) = await town.org("supplier"), await town.org("supplier")
    homes = await town.households_(12)
    observer, target = homes[0], homes[1]
    await town.grant(a_id, homes)
    await town.grant(c_id, homes)
    browser = await sign_in_with_token(town.running, observer[1])
    start = await town.to_next(QUARTER)
    await town.running.agent.releases.settle()
    before = await used(browser)
    steps = []
    for quarter in range(QUARTERS):
        if quarter == REVOKED:
            status, out = await town.running.call("DELETE", f"/households/me/consents/{c_id}/aggregates",
                                                  token=target[1])
            assert status == 200, out
        if quarter == GRANTED:
            status, out = await town.running.call("PUT", f"/households/me/consents/{c_id}/aggregates",
                                                  token=target[1])
            assert status == 200, out
        for home in homes:
            await town.post(home, 300.0)
        town.clock.now = start + (quarter + 1) * QUARTER + 1
        await town.running.agent.releases.settle()  # the device's own release pass, as the clock reaches it
        now = await used(browser)
        steps.append(round((now - before) / 0.01))
        before = now
    await browser.close()
    doubled = {q for q, n in enumerate(steps) if n == 2}
    assert doubled != APART, (
        f"the observer's budget grew by {steps} rho per quarter: twice in quarters {sorted(doubled)}, the quarters "
        f"in which a neighbour's consent to C did not hold (truth {sorted(APART)}), read off its own page")
