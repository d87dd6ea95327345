"""The audit of exact sums (Chin & Ozsoyoglu's audit of sum queries): may one more exact sum over a cohort be
released beside those already released for the same unknowns, without any household's value becoming a
linear combination of the released sums?

No I/O. The unknowns are one value per household (one household's mean power in one finest window, of one
quantity); each released sum is the 0/1 vector of its cohort. A household i is isolated when the unit vector e_i
lies in the row space of the released vectors: then some combination of released sums (a difference of two
organizations' totals, say) is exactly its value. The test is exact (fractions), on "atoms": households that
are in exactly the same cohorts cannot be told apart by any combination, so each group of identical membership
is one column, and only a group of one household can ever be isolated.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from fractions import Fraction


def isolated(cohorts: Iterable[frozenset[str]]) -> set[str]:
    """The households whose value some linear combination of sums over these cohorts gives exactly."""
    return set(_isolated(tuple(c for c in dict.fromkeys(cohorts) if c)))  # the same cohort twice adds nothing


@functools.lru_cache(maxsize=512)  # consecutive windows mostly repeat the same cohorts
def _isolated(rows: tuple[frozenset[str], ...]) -> frozenset[str]:
    if not rows:
        return frozenset()
    signature: dict[str, tuple[bool, ...]] = {}
    for member in set().union(*rows):
        signature[member] = tuple(member in c for c in rows)
    atoms: dict[tuple[bool, ...], list[str]] = {}
    for member, sig in signature.items():
        atoms.setdefault(sig, []).append(member)
    columns = list(atoms)
    # Row i: which atoms cohort i sums (an atom enters a sum only as the total of its households); household h
    # of atom a is isolated iff e_a is in the row space and a holds h alone.
    matrix = [[Fraction(1) if sig[i] else Fraction(0) for sig in columns] for i in range(len(rows))]
    pivots = _reduce(matrix)
    out: set[str] = set()
    for row, col in pivots:
        if all(v == 0 for j, v in enumerate(matrix[row]) if j != col) and len(atoms[columns[col]]) == 1:
            out.add(atoms[columns[col]][0])
    return frozenset(out)


def admissible(released: list[frozenset[str]], candidate: frozenset[str]) -> bool:
    """Whether `candidate` may be released beside `released` without isolating anyone who was not already."""
    if candidate in released:
        return True
    return not isolated([*released, candidate]) - isolated(released)


def isolated_if_one_known(cohorts: Iterable[frozenset[str]]) -> set[str]:
    """The households some combination gives exactly once the attacker also knows any one other household's
    value (one household of its own that the operator did not mark): A = C + x and B = C + y give A - B + y = x.
    Not used by the door yet (it would refuse a one-for-one swap within the audit period like a difference of
    one); see tests/test_attacks_aggregates.py, ONE_OWN. Only atoms of one or two households matter: knowing one
    household of a larger atom leaves the others indistinguishable."""
    rows = tuple(c for c in dict.fromkeys(cohorts) if c)
    out = set(_isolated(rows))
    if not rows:
        return out
    atoms: dict[tuple[bool, ...], list[str]] = {}
    for member in set().union(*rows):
        atoms.setdefault(tuple(member in c for c in rows), []).append(member)
    for group in atoms.values():
        if len(group) <= 2:
            for known in group:
                out |= _isolated(tuple(dict.fromkeys(c - {known} for c in rows if c - {known}))) - {known}
    return out


def admissible_if_one_known(released: list[frozenset[str]], candidate: frozenset[str]) -> bool:
    """`admissible`, against an organization that knows any one household's value."""
    if candidate in released:
        return True
    return not isolated_if_one_known([*released, candidate]) - isolated_if_one_known(released)


def _reduce(matrix: list[list[Fraction]]) -> list[tuple[int, int]]:
    """Reduced row echelon form in place; returns the (row, pivot column) pairs."""
    pivots: list[tuple[int, int]] = []
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    r = 0
    for c in range(cols):
        pivot = next((i for i in range(r, rows) if matrix[i][c] != 0), None)
        if pivot is None:
            continue
        matrix[r], matrix[pivot] = matrix[pivot], matrix[r]
        lead = matrix[r][c]
        matrix[r] = [v / lead for v in matrix[r]]
        for i in range(rows):
            if i != r and matrix[i][c] != 0:
                factor = matrix[i][c]
                matrix[i] = [a - factor * b for a, b in zip(matrix[i], matrix[r])]
        pivots.append((r, c))
        r += 1
        if r == rows:
            break
    return pivots
