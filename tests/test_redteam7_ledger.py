"""Red team 7, R7-1: a noisy release's household count said when a member of the cohort ran out of privacy budget,
and so how many other noisy organizations that household consents to (exact, for 1 and 3). Failed until the count
and the refusal were the consenting cohort's and a household at its cap counted 0 in the sums.

A noisy level's `households` was the consenting cohort *minus the households whose ledger cannot bear the window*
(agent/release/door.py, `_decide_noisy`: `members = ... if self.ledger.affords(...)`, counted by `fine_body` and by
the `cohort_too_small` refusal). The ledger is one per household across every organization and level, so how fast a
household spends its cap depends on its consents to the *other* noisy organizations. Supplier A, watching only its own
answers, sees its count drop by one at window w: that household bore cap / w per window, i.e. it consents to
cap / (w x rho) - 1 other organizations of A's rate: a fact about the household (which competitors it lets use its
data, and from when) that A has no right to. A household of A's that A knows (its customer, who consented when it
signed up) is identified by when its count rose. The noise does not cover it: the count is exact. With a cohort of
exactly k_min the same moment shows as the first refusal (`cohort_too_small` counts the same filtered members),
so reporting the consenting count while refusing below k_min affording households would not have closed it.
"""

from __future__ import annotations

import pytest

from tests.helpers.attacks import QUARTER, make_town, noisy_level  # noqa: F401  (fixture)

RHO, CAP = 0.25, 2.0  # the operator's knobs (rho per window, as tests/test_attacks_aggregates.py's ledger town)


@pytest.mark.parametrize("others", [1, 3])
@pytest.mark.parametrize("cohort", [12, 10])  # 10 = k_min: a refusal, not a count, says it (a fix must cover both)
async def test_a_noisy_count_says_how_many_other_organizations_a_household_consents_to(make_town, others, cohort):
    town = await make_town(levels={"supplier": noisy_level(rho=RHO)})
    a_id, a_key = await town.org("supplier", "Supplier A (the attacker)")
    target, *mine = await town.households_(cohort)
    await town.grant(a_id, [target, *mine])
    for _ in range(others):  # competitors the target also lets have aggregates: unknown to A
        b_id, _ = await town.org("supplier")
        await town.grant(b_id, [target, *await town.households_(10)])
    start = await town.to_next(QUARTER)
    quarters = 7
    town.clock.step(quarters * QUARTER)
    counts = [b.get("households", "refused")
              for b in await town.windows(a_key, "15m", start, start + quarters * QUARTER)]
    # A's arithmetic: the first window unlike the first (one household fewer, or refused) is the (w+1)-th; that
    # household bore CAP / w per window, i.e. (CAP / w) / RHO releases a window: its own with A, the rest elsewhere.
    dropped = next((w for w, n in enumerate(counts) if n != counts[0]), None)
    inferred = None if dropped is None else round(CAP / dropped / RHO) - 1
    # The target is still left out once its cap is spent (the members index its own page reads), unseen by A.
    index = town.running.agent.releases.members
    found = index.inclusion(target[0], a_id, None, start, start + quarters * QUARTER)
    assert found is not None and found.included == CAP / RHO / (1 + others)
    # The intent: what a household lets other organizations have is not in A's answers.
    assert inferred != others, (f"A's counts {counts}: one household spent its cap after {dropped} windows, so it "
                                f"consents to {inferred} other noisy organizations (truth: {others})")
