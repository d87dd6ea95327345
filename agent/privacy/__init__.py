"""Privacy mechanisms, sans I/O where they can be.

- `anonymize`: per-household records generalized and suppressed until they meet a level's k, l and t,
  with a report of what was achieved (GET /data/anonymized).
- `dp`: differentially private sums through OpenDP (clamp, sum, discrete Laplace or Gaussian noise).
- `budget`: the persisted per-organization, per-day privacy budget, composed by OpenDP's accountant.
"""
