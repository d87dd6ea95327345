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


async def test_a_household_out_of_cap_counts_0_in_the_sum_and_the_window_is_still_released(make_town):
    """A's cohort is exactly k_min households, all also in B's (larger) cohort: each window charges them twice, so
    after the first window their ledgers cannot bear another. A's second window is released all the same, with the
    same count, and its sum is that of nobody's readings: once out of cap a household is not read (and not
    charged). The noise here is small (rho 10 a window, the level's maximum, clamp 1000 W: sd 316 W) so the sum
    tells: 10 households at the clamp are 10,000 W, 30 sd from 0."""
    rho, clamp = 10.0, 1000
    town = await make_town(levels={"supplier": noisy_level(rho=rho, clamp_w=clamp)}, cap_rho=2 * rho)
    a_id, a_key = await town.org("supplier", "A")
    b_id, _ = await town.org("supplier", "B")
    targets = await town.households_(10)  # k_min
    await town.grant(a_id, targets)
    await town.grant(b_id, [*targets, *await town.households_(10)])
    start = await town.to_next(QUARTER)
    for _ in range(2):
        for h in targets:
            await town.post(h, 5 * clamp)  # clamped to 1000 W each
        town.clock.step(QUARTER)
    first, second = await town.windows(a_key, "15m", start, start + 2 * QUARTER)
    assert "refused" not in second, second  # k_min is over the consenting cohort, whatever its ledgers
    assert first["households"] == second["households"] == 10
    sd = first["privacy"]["noise_sd_w"]
    assert sd < 400
    assert abs(first["consumption_w"] - 10 * clamp) < 10 * sd  # read and charged (the ledgers now at the cap)
    assert abs(second["consumption_w"]) < 10 * sd  # counted 0: the sum of no readings, noised
    releases = town.running.agent.releases
    for h, _ in targets:
        assert releases.ledger_of(h)["spent_rho"] == pytest.approx(2 * rho)  # not charged for the second window
        inclusion = releases.members.inclusion(h, a_id, None, start, start + 2 * QUARTER)
        assert inclusion is not None and (inclusion.included, inclusion.windows) == (1, 2), inclusion


async def test_two_organizations_of_one_cohort_learn_nothing_of_its_ledgers_by_comparing(make_town):
    """Colluding A and B of one level, with one consenting cohort. An answer shared by the two was keyed by the
    households that could bear the window, decided for each organization after the one before it was charged:
    with the target one window from its cap between A's decision and B's, B got a draw of its own over a cohort
    without it, so A and B comparing answers read the window the target ran out in, i.e. (as in the first test)
    how many other organizations it consents to. Each organization's answer is now its own draw (red team 9a,
    R9a-3): the two differ in their noisy sums in every window, and in nothing else in any. The target consents to
    one other, C (decisions go in organization id order: roles are given by it, A then B then C)."""
    town = await make_town(levels={"supplier": noisy_level(rho=RHO)}, cap_rho=7 * RHO)
    (a_id, a_key), (b_id, b_key), (c_id, _) = sorted([await town.org("supplier") for _ in range(3)])
    target, *mine = await town.households_(12)
    await town.grant(a_id, [target, *mine])
    await town.grant(b_id, [target, *mine])
    await town.grant(c_id, [target, *await town.households_(10)])  # unknown to A and B
    start = await town.to_next(QUARTER)
    quarters = 6  # A's own households reach the edge only in the seventh
    town.clock.step(quarters * QUARTER)
    a = await town.windows(a_key, "15m", start, start + quarters * QUARTER)
    b = await town.windows(b_key, "15m", start, start + quarters * QUARTER)
    assert town.running.agent.releases.ledger_of(target[0])["spent_rho"] == pytest.approx(7 * RHO)  # it ran out
    # what is not drawn: the window, its count and its privacy statement (the sums and what is derived from them
    # -- net, energy, the month's peak -- are each organization's draw)
    told = ("window", "window_start", "window_end", "households", "privacy")
    differ = [w for w, (x, y) in enumerate(zip(a, b)) if [x.get(k) for k in told] != [y.get(k) for k in told]]
    assert not differ, f"A's and B's answers differ in window {differ} beyond their noise: the target ran out there"
    assert all(x["consumption_w"] != y["consumption_w"] for x, y in zip(a, b))  # every window: no window singled out
