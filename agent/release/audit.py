"""The audit of exact sums (Chin & Ozsoyoglu's audit of sum queries): may one more exact sum over a cohort be
released beside those already released for the same unknowns, without any household's value becoming a
linear combination of the released sums?

No I/O. The unknowns are one value per household (one household's mean power in one finest window, of one
quantity); each released sum is the 0/1 vector of its cohort. A household i is isolated when the unit vector e_i
lies in the row space of the released vectors: then some combination of released sums (a difference of two
organizations' totals, say) is exactly its value. The test is exact (integer elimination), on "atoms": households that
are in exactly the same cohorts cannot be told apart by any combination, so each group of identical membership
is one column, and only a group of one household can ever be isolated.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable


def isolated(cohorts: Iterable[frozenset[str]]) -> set[str]:
    """The households whose value some linear combination of sums over these cohorts gives exactly."""
    return set(_isolated(tuple(c for c in dict.fromkeys(cohorts) if c)))  # the same cohort twice adds nothing


@functools.lru_cache(maxsize=512)  # consecutive windows mostly repeat the same cohorts
def _isolated(rows: tuple[frozenset[str], ...]) -> frozenset[str]:
    if not rows:
        return frozenset()
    atoms, columns, matrix, pivots = _reduced(rows)
    out: set[str] = set()
    for row, col in pivots:
        if all(v == 0 for j, v in enumerate(matrix[row]) if j != col) and len(atoms[columns[col]]) == 1:
            out.add(atoms[columns[col]][0])
    return frozenset(out)


Atoms = dict[tuple[bool, ...], list[str]]


def _reduced(rows: tuple[frozenset[str], ...]) -> tuple[Atoms, list[tuple[bool, ...]], list[list[int]],
                                                         list[tuple[int, int]]]:
    """The atoms (households grouped by identical membership), their columns, and the cohorts' 0/1 matrix over
    the atoms in reduced row echelon form with its (row, pivot column) pairs."""
    signature: dict[str, tuple[bool, ...]] = {}
    for member in set().union(*rows):
        signature[member] = tuple(member in c for c in rows)
    atoms: Atoms = {}
    for member, sig in signature.items():
        atoms.setdefault(sig, []).append(member)
    columns = list(atoms)
    # Row i: which atoms cohort i sums (an atom enters a sum only as the total of its households); household h
    # of atom a is isolated iff e_a is in the row space and a holds h alone.
    matrix = [[1 if sig[i] else 0 for sig in columns] for i in range(len(rows))]
    return atoms, columns, matrix, _reduce(matrix)


def admissible(released: list[frozenset[str]], candidate: frozenset[str]) -> bool:
    """Whether `candidate` may be released beside `released` without isolating anyone who was not already."""
    if candidate in released:
        return True
    return not isolated([*released, candidate]) - isolated(released)


def isolated_if_one_known(cohorts: Iterable[frozenset[str]]) -> set[str]:
    """The households some combination gives exactly once the attacker also knows any one other household's
    value (one household of its own that the operator did not mark): A = C + x and B = C + y give A - B + y = x.
    Only atoms of one or two households matter: knowing one household of a larger atom leaves the others
    indistinguishable."""
    return set(_isolated_if_one_known(tuple(c for c in dict.fromkeys(cohorts) if c)))


@functools.lru_cache(maxsize=512)
def _isolated_if_one_known(rows: tuple[frozenset[str], ...]) -> frozenset[str]:
    """One reduction, not one per known household (an organization toggling many households of its own must not
    make each decision cost a rank test per household). `residue(j)`: e_j minus its part in the row space, on
    the free columns; e_b is in the row space plus e_y's span iff residue(b) is a multiple of residue(y)."""
    if not rows:
        return frozenset()
    atoms, columns, matrix, pivots = _reduced(rows)
    pivot_row = {col: row for row, col in pivots}
    free = [j for j in range(len(columns)) if j not in pivot_row]

    def residue(j: int) -> tuple[int, ...]:  # up to a factor, which neither test below depends on
        if j in pivot_row:
            return tuple(-matrix[pivot_row[j]][f] for f in free)
        return tuple(int(f == j) for f in free)

    small = {j: residue(j) for j, sig in enumerate(columns) if len(atoms[sig]) <= 2}
    out: set[str] = set()
    for j, res in small.items():
        if not any(res):  # the atom's total is a combination: its household, or each of a pair given the other
            out.update(atoms[columns[j]])
    singles = [j for j in small if len(atoms[columns[j]]) == 1]
    for y in singles:
        if any(small[y]):
            out.update(atoms[columns[b]][0] for b in singles if b != y and _multiple(small[b], small[y]))
    return frozenset(out)


def _multiple(u: tuple[int, ...], w: tuple[int, ...]) -> bool:
    """Whether u = t * w for some rational t (w not zero): cross-multiplied, in integers."""
    k = next(i for i, v in enumerate(w) if v != 0)
    return all(a * w[k] == u[k] * b for a, b in zip(u, w))


def admissible_if_one_known(released: list[frozenset[str]], candidate: frozenset[str]) -> bool:
    """`admissible`, against an organization that knows any one household's value."""
    if candidate in released:
        return True
    return not isolated_if_one_known([*released, candidate]) - isolated_if_one_known(released)


def small_groups(cohorts: Iterable[frozenset[str]], smallest: int) -> frozenset[frozenset[str]]:
    """The atoms (households in exactly the same cohorts) of fewer than `smallest` households."""
    return _small_groups(tuple(dict.fromkeys(c for c in cohorts if c)), smallest)


@functools.lru_cache(maxsize=512)  # consecutive windows, phases and organizations mostly repeat the same cohorts
def _small_groups(cohorts: tuple[frozenset[str], ...], smallest: int) -> frozenset[frozenset[str]]:
    signature: dict[str, list[int]] = {}
    for i, cohort in enumerate(cohorts):
        for member in cohort:
            signature.setdefault(member, []).append(i)
    atoms: dict[tuple[int, ...], set[str]] = {}
    for member, sig in signature.items():
        atoms.setdefault(tuple(sig), set()).add(member)
    return frozenset(frozenset(a) for a in atoms.values() if len(a) < smallest)


def admissible_counts(released: list[frozenset[str]], candidate: frozenset[str], smallest: int) -> bool:
    """For sums of 0/1 indicators (a household in a voltage band, a meter whose failures rose), where the rank
    test is not enough: two households' x + y of 0 or 2 gives both, and a count of 0 or of all over any group
    gives every member's bit. Admissible iff it leaves no group of fewer than `smallest` households that the
    released cohorts tell apart from all others and that was not already one: what any combination of counts
    says is then about groups of at least `smallest` households (each count over them), never about fewer.
    Stricter than the rank test (an atom of two or more is never isolated by it), so it also audits the
    clamped sums released beside the counts over the same cohort."""
    if candidate in released:
        return True
    return not small_groups([*released, candidate], smallest) - small_groups(released, smallest)


def _reduce(matrix: list[list[int]]) -> list[tuple[int, int]]:
    """Row echelon form in place, fraction-free (integers, each row divided by its gcd): every pivot column is
    zero outside its pivot row, as in the reduced form; rows are only scaled, which no test here depends on.
    Returns the (row, pivot column) pairs. Integers, not Fractions: ~10x faster on the audit's 0/1 matrices."""
    pivots: list[tuple[int, int]] = []
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    r = 0
    for c in range(cols):
        pivot = next((i for i in range(r, rows) if matrix[i][c] != 0), None)
        if pivot is None:
            continue
        matrix[r], matrix[pivot] = matrix[pivot], matrix[r]
        lead_row = matrix[r]
        lead = lead_row[c]
        for i in range(rows):
            factor = matrix[i][c]
            if i != r and factor != 0:
                row = [lead * a - factor * b for a, b in zip(matrix[i], lead_row)]
                g = math.gcd(*row)
                matrix[i] = [v // g for v in row] if g > 1 else row
        pivots.append((r, c))
        r += 1
        if r == rows:
            break
    return pivots
