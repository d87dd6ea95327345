"""The privacy suites' shared parts: a neighbourhood's readings fed by period, consenting households, and the
independent figures (pycanon's k and l, scipy's t-closeness distance) the released rows are checked against."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from pycanon import anonymity
from scipy.stats import wasserstein_distance

from agent.privacy.anonymize import QUASI_IDENTIFIERS, SENSITIVE_ATTRIBUTE
from drivers.reading import Reading

DAY = 1_790_000_000 // 86400 * 86400
MORNING = DAY + 8 * 3600  # 08:00 UTC


def reading(meter: str, moment: float, i: int, period: int, **extra) -> Reading:
    when = datetime.fromtimestamp(moment, timezone.utc)
    three = i % 3 == 0
    return Reading(meter_id=meter, timestamp=when, received_at=when,
                   power_import_w=150.0 + (i * 37 + period * 53) % 900,
                   power_export_w=(400.0 if i % 4 == 0 else 0.0),
                   voltage_l1_v=230.0, voltage_l2_v=231.0 if three else None,
                   current_l1_a=3.0 + i % 7, gas_m3=(1000.0 + i) if i % 2 else None, **extra)


async def feed(running, clock, meters: list[str], periods: list[int], **extra) -> None:
    """One reading per household per period, then one more in the next period so the rollups close."""
    width = periods[1] - periods[0] if len(periods) > 1 else 900
    for p_index, start in enumerate(periods + [periods[-1] + width]):
        clock.now = start + 10
        for i, meter in enumerate(meters):
            running.agent.ingest_http(reading(meter, clock.now, i, p_index, **extra))


async def households(running, org_id: str, n: int, service: str = "anonymized_data") -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        household_id, token = await running.create_household()
        if org_id:
            status, _ = await running.call("PUT", f"/households/me/consents/{org_id}/{service}", token=token)
            assert status == 200
        out.append((household_id, token))
    return out


def pycanon_figures(records: list[dict]) -> tuple[int, int]:
    """k and l of the released rows, by pycanon, on the quasi-identifiers and sensitive attribute the report
    declares (the period is one of them: every period's classes are counted on their own)."""
    frame = pd.DataFrame(records).reset_index(drop=True)
    qi, sa = list(QUASI_IDENTIFIERS), [SENSITIVE_ATTRIBUTE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(anonymity.k_anonymity(frame, qi)), int(anonymity.l_diversity(frame, qi, sa))


def reference_t(records: list[dict], reference: tuple, width: int, top: int) -> float:
    """The largest distance of a class from the fixed reference, by scipy: the Wasserstein-1 distance between
    bin indices, the class's weighted by its rows and the grid's by the reference's mass (numpy's piecewise
    linear interpolation of the CDF), over the grid's length - 1."""
    edges = np.arange(0, top + 1, width)
    cdf = np.interp(edges.astype(float), [w for w, _ in reference], [c for _, c in reference])
    masses = np.append(np.diff(cdf), 1.0 - cdf[-1])
    classes: dict[tuple, list[int]] = {}
    for r in records:
        classes.setdefault(tuple(r[q] for q in QUASI_IDENTIFIERS), []).append(r[SENSITIVE_ATTRIBUTE] // width)
    if len(edges) == 1:
        return 0.0
    return max(wasserstein_distance(values, np.arange(len(edges)), v_weights=masses) / (len(edges) - 1)
               for values in classes.values()) if classes else 0.0
