"""Privacy mechanisms, sans I/O where they can be.

- `anonymize`: per-household records generalized and suppressed until they meet a level's k, l and t,
  with a report of what was achieved (GET /data/anonymized).
- `dp`: differentially private sums through OpenDP (clamp, sum, discrete Laplace or Gaussian noise).
- `linkage`: the linkage attacks anonymized releases are measured against (tests, bench).
The per-household privacy-loss ledger lives with the releases it charges: agent/release/ledger.py.
"""
