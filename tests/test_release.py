"""The release module on its own (agent/release/): the audit, the ledger, derived windows, shared noise,
durability and restart. A real Registry and real window books, no HTTP; the clock is stepped by hand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agent.config import DifferentialPrivacy, Level, PrivacyConfig
from agent.release import Refusal
from agent.release.audit import admissible, isolated
from agent.release.door import HOLD_S
from agent.release.ledger import Ledger
from tests.helpers.agent import make_config
from tests.helpers.clock import HOUR as T0
from tests.helpers.release import Town


def lstsq_isolated(cohorts: list[frozenset[str]]) -> set[str]:
    """An independent check of audit.isolated: e_i is in the row space iff the least-squares residual is 0."""
    members = sorted(set().union(*cohorts)) if cohorts else []
    if not members:
        return set()
    matrix = np.array([[1.0 if m in c else 0.0 for m in members] for c in cohorts])
    out = set()
    for i, m in enumerate(members):
        target = np.zeros(len(members))
        target[i] = 1.0
        coef, *_ = np.linalg.lstsq(matrix.T, target, rcond=None)
        if np.allclose(matrix.T @ coef, target, atol=1e-8):
            out.add(m)
    return out


def test_audit_finds_differences_and_combinations():
    a = frozenset("abcdefghij")
    assert isolated([a]) == set()
    assert isolated([a, a - {"a"}]) == {"a"}  # two organizations, one household apart
    c = frozenset("bcdefghijk")
    assert isolated([a, c]) == set()  # neither contains the other: no combination isolates
    assert isolated([a, c, a | {"k"}]) == {"a", "k"}  # only the three together do
    assert not admissible([a, c], a | {"k"}) and admissible([a], c)
    rng = np.random.default_rng(7)
    people = [f"h{i}" for i in range(14)]
    for _ in range(200):
        cohorts = [frozenset(p for p in people if rng.random() < 0.8) for _ in range(rng.integers(1, 5))]
        assert isolated(cohorts) == lstsq_isolated(cohorts)


def test_ledger_horizon_and_cap():
    ledger = Ledger(horizon_days=2, cap_rho=1.0)
    ledger.charge(["h"], 0.6, T0)
    assert ledger.affords("h", 0.4, T0) and not ledger.affords("h", 0.5, T0)
    assert ledger.affords("h", 0.4, T0 + 86400)  # yesterday still counts
    # two days of real time touch three UTC days: two days on, it still counts; three days on it is out
    assert ledger.spent("h", T0 + 2 * 86400) == pytest.approx(0.6)
    assert ledger.spent("h", T0 + 3 * 86400) == 0
    view = ledger.of("h", T0, 1e-7)
    assert view["spent_rho"] == 0.6 and view["remaining_rho"] == pytest.approx(0.4)


async def test_wider_windows_are_derived_from_the_released_fine_ones(tmp_path):
    town = Town(tmp_path)
    org = town.org("dso")
    town.consent(org)
    for second in range(60):
        town.post([100.0 + second + i for i in range(12)])
        await town.step(1)
    fine = [town.releases.answer(org, "1s", T0 + s) for s in range(60)]
    minute = town.releases.answer(org, "1m", T0)
    assert minute["energy_import_wh"] == pytest.approx(sum(f["energy_import_wh"] for f in fine), abs=1e-3)
    assert minute["consumption_w"] == pytest.approx(sum(f["consumption_w"] for f in fine) / 60, abs=1e-3)
    assert minute["privacy"]["derived_from"] == "60 x 1s"


async def test_a_short_gap_is_held_over_and_a_household_leaving_starts_a_cooldown(tmp_path):
    """Adjacent windows whose cohorts differ by one household read it as surely as two organizations do: a gap
    of a few seconds is held at the household's last values, and a household that leaves (silent past the hold)
    makes every exact window of the audit period after it refused, not its difference published."""
    town = Town(tmp_path)
    org = town.org("dso")
    town.consent(org)
    for second in range(60):
        town.post([100.0 + i for i in range(12 if second != 30 else 9)])  # three households silent a second
        await town.step(1)
    held = town.releases.answer(org, "1s", T0 + 30)
    assert held["households"] == 12 and held["consumption_w"] == sum(100.0 + i for i in range(12))
    assert town.releases.answer(org, "1m", T0)["households"] == 12
    # the last household stops for good: held for HOLD_S, then gone; then a cooldown of the audit period
    for second in range(60, 60 + HOLD_S + 60):
        town.post([100.0 + i for i in range(11)], town.households[:11])
        await town.step(1)
    answers = [town.releases.answer(org, "1s", T0 + s) for s in range(60, 60 + HOLD_S + 60)]
    before = [a for a in answers[:HOLD_S - 2] if not isinstance(a, Refusal)]
    assert len(before) == HOLD_S - 2 and all(a["households"] == 12 for a in before)
    after = answers[HOLD_S + 1:]
    assert after and all(isinstance(a, Refusal) and a.error == "isolating" for a in after)
    assert town.releases.answer(org, "1m", T0 + 60 + HOLD_S + 60).error == "not_settled"


async def test_exact_second_organization_one_household_apart_is_refused(tmp_path):
    town = Town(tmp_path)
    a, b = town.org("dso"), town.org("dso")
    town.consent(a)
    town.consent(b, town.households[1:])
    town.post([100.0 + i for i in range(12)])
    await town.step(1)
    answers = [town.releases.answer(org, "1s", T0) for org in (a, b)]
    assert sum(isinstance(x, Refusal) and x.error == "isolating" for x in answers) == 1
    assert sum(not isinstance(x, Refusal) for x in answers) == 1


async def test_noisy_answers_are_each_organizations_own_never_redrawn_each_charged_once(tmp_path):
    """One noisy answer per (organization, window): asked again it is the record, never a new draw (nothing
    averages it away for free); a second organization of the same cohort gets its own draw and the households
    are charged for it too, so what a household spends depends on its own consents alone (red team 9a, R9a-3)."""
    town = Town(tmp_path)
    a, b = town.org("supplier"), town.org("supplier")
    town.consent(a)
    town.consent(b)
    town.post([300.0] * 12)
    await town.step(900)
    first = town.releases.answer(a, "15m", T0)
    theirs = town.releases.answer(b, "15m", T0)
    assert first == town.releases.answer(a, "15m", T0) and theirs == town.releases.answer(b, "15m", T0)
    assert first["privacy"]["kind"] == "noisy" and first["households"] == theirs["households"] == 12
    assert first["consumption_w"] != theirs["consumption_w"]
    rho = 2 * town.config.levels["supplier"].dp.rho  # a's release and b's
    assert town.releases.ledger_of(town.households[0].id)["spent_rho"] == pytest.approx(rho)
    # after a restart: the same record, and the ledger rebuilt from the log
    again = town.restart()
    assert again.answer(a, "15m", T0) == first or (await again.history(a, "15m", [T0], None))[T0] == first
    assert again.ledger_of(town.households[0].id)["spent_rho"] == pytest.approx(rho)


async def test_noisy_counts_are_the_consenting_cohort_whoever_posted(tmp_path):
    town = Town(tmp_path)
    org = town.org("supplier")
    town.consent(org)
    town.post([300.0] * 11, town.households[:11])  # one household sends nothing
    await town.step(900)
    assert town.releases.answer(org, "15m", T0)["households"] == 12


async def test_a_household_at_its_cap_is_left_out_whatever_it_used(tmp_path):
    levels = dict(make_config(tmp_path).levels)
    levels["supplier"] = replace(levels["supplier"], dp=replace(levels["supplier"].dp, rho=0.4))
    town = Town(tmp_path, levels=levels, privacy=PrivacyConfig(cap_rho=1.0))
    orgs = [town.org("supplier") for _ in range(3)]
    for i, org in enumerate(orgs):  # three cohorts, each without one household: three distinct releases
        town.consent(org, [h for j, h in enumerate(town.households) if j != i])
    town.post([300.0] * 12)
    await town.step(900)
    bodies = [town.releases.answer(org, "15m", T0) for org in orgs]
    # every release states its consenting cohort, whoever could bear it (a count of those would say when a
    # household's cap ran out: red team 7, R7-1)
    assert [b["households"] for b in bodies] == [11, 11, 11]
    # 0.4 + 0.4 fit under 1.0, a third does not: the organization decided last (by id) has in its sums only the
    # two households that were in one release before it (each left out of one of the other two cohorts)
    included = {org: sum(town.releases.members.inclusion(h.id, org, None, T0, T0 + 900).included
                         for h in town.households if town.releases.members.inclusion(h.id, org, None, T0, T0 + 900))
                for org in orgs}
    assert [included[org] for org in sorted(orgs)] == [11, 11, 2], included
    spent = [town.releases.ledger_of(h.id)["spent_rho"] for h in town.households]
    assert max(spent) <= 1.0 + 1e-9


async def test_a_consent_change_being_written_holds_its_windows_back(tmp_path):
    town = Town(tmp_path)
    org = town.org("dso")
    town.consent(org)
    town.post([100.0] * 12)
    town.registry.pending_since = lambda: T0 + 0.5  # a change whose write has not landed
    await town.step(2)
    assert town.releases.answer(org, "1s", T0).error == "not_settled"
    del town.registry.pending_since
    await town.releases.settle()
    assert town.releases.answer(org, "1s", T0)["households"] == 12


def test_noisy_levels_default_to_a_fixed_clamp():
    level = Level("x", ("*",), ("15m",), kind="noisy")
    assert level.noisy and level.finest == "15m"
    assert DifferentialPrivacy().loss() == DifferentialPrivacy().rho
