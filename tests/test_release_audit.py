"""agent/release/audit.py on worked examples: which households a set of released exact sums isolates (the rank
test), with and without one household known to the attacker, and the audit of counts. The random cases against
numpy's rank are in tests/test_attacks_properties.py; these are the ones a reader can check by hand."""

from __future__ import annotations

from agent.release.audit import (admissible, admissible_counts, admissible_if_one_known, isolated,
                                 isolated_if_one_known, small_groups)


def c(*members: str) -> frozenset[str]:
    return frozenset(members)


def test_one_sum_isolates_no_one_unless_it_is_over_one_household():
    assert isolated([c("a", "b", "c")]) == set()
    assert isolated([c("a")]) == {"a"}
    assert isolated([]) == set() and isolated([c()]) == set()


def test_the_difference_of_two_totals_isolates_the_one_household_apart():
    assert isolated([c("a", "b", "c"), c("a", "b")]) == {"c"}
    assert isolated([c("a", "b", "c"), c("b", "c", "d")]) == set()  # two atoms of one each side, and {b, c}


def test_a_combination_of_three_sums_isolates():
    # (A + B - C) / 2 with A = a+b, B = a+c, C = b+c gives a; so every one of them.
    assert isolated([c("a", "b"), c("a", "c"), c("b", "c")]) == {"a", "b", "c"}


def test_households_in_exactly_the_same_cohorts_are_never_told_apart():
    assert isolated([c("a", "b", "x"), c("a", "b")]) == {"x"}  # a and b: always summed together


def test_the_same_cohort_twice_adds_nothing():
    assert isolated([c("a", "b"), c("a", "b")]) == set()


def test_admissible_refuses_only_a_sum_that_isolates_someone_new():
    released = [c("a", "b", "c")]
    assert not admissible(released, c("a", "b"))  # c would be its difference
    assert admissible(released, c("a", "b", "c"))  # the same cohort again
    assert admissible(released, c("a", "b", "c", "d", "e"))  # d + e together: an atom of two
    already = [c("a", "b", "c"), c("a", "b")]  # c is isolated already
    assert admissible(already, c("a", "b", "c", "x", "y"))


def test_one_known_household_isolates_its_partner():
    # A = C + x and B = C + y: knowing y gives x.
    cohorts = [c("p", "q", "x"), c("p", "q", "y")]
    assert isolated(cohorts) == set()
    assert isolated_if_one_known(cohorts) == {"x", "y"}
    assert not admissible_if_one_known([c("p", "q", "x")], c("p", "q", "y"))
    assert admissible_if_one_known([c("p", "q", "x", "r")], c("p", "q", "y", "s"))  # two unknowns each side


def test_one_known_household_of_a_pair_gives_the_other():
    assert isolated_if_one_known([c("a", "b")]) == {"a", "b"}  # a sum of two and one of them known
    assert isolated_if_one_known([c("a", "b", "c")]) == set()


def test_small_groups_are_the_atoms_below_the_size():
    cohorts = [c("a", "b", "c", "d"), c("a", "b")]
    assert small_groups(cohorts, 3) == {c("a", "b"), c("c", "d")}
    assert small_groups(cohorts, 2) == set()
    assert small_groups([c("a", "b", "c")], 3) == set()


def test_counts_are_admissible_only_without_a_new_small_group():
    released = [c("a", "b", "c", "d", "e", "f")]
    assert admissible_counts(released, c("a", "b", "c"), 3)  # two groups of three
    assert not admissible_counts(released, c("a", "b", "c", "d"), 3)  # leaves {e, f}: two bits told together
    assert admissible_counts(released, c("a", "b", "c", "d", "e", "f"), 3)  # the same cohort
    # stricter than the rank test: a pair is no isolated household, but it is a small group of counts
    assert admissible(released, c("a", "b", "c", "d")) and not admissible_counts(released, c("a", "b", "c", "d"), 3)
