"""Red team 9a (session 8), R9a-6: after a release-log write the disk refused, the rest of that day's noisy windows
over the same cohort are not charged again once the agent restarts: the ledger under-counts.

`_decide_noisy` (agent/release/door.py) writes a cohort's members once per day file: `(name, digest)` goes into
`_cohorts_written` when the `{"t": "c"}` record is added to the pass's batch, before the batch is written. When
the write fails (a full or failing SD card: `settle` turns the pass's noisy windows into `storage_error`), the mark
stays. Every later window of that day over the same members is released with `"c": digest` and its charge, but
its cohort record is never written, so the start's rebuild (`_load`: `if "p" in doc and doc.get("c") in cohorts`)
skips every one of those charges. PRIVACY.md: the ledger "may over-count, never under-count"; "a restart or
kill -9 cannot reset it".

Sequence (test below; the refused write is the release log's `write` raising ENOSPC, as
tests/test_event_loop_io_budget.py does): supplier A (rho 0.01 a window, for round figures); 12 households
consent `aggregates` and post. Quarter 1 is decided while the release log's write fails (A's GET /data: 409
storage_error, as designed); the disk is back; quarters 2 and 3 are decided and released to A (200, charged).
The agent restarts. Measured: each household's spent rho is 0.03 before the restart (3 rho: the refused window's
charge stays in memory, an over-count) and 0 after it: both released windows' charges gone, and so would be
every window of that cohort for the rest of the UTC day. A household at its cap is then read again (its page
shows the lower figure, and the cap no longer holds over the horizon). Not attacker-driven: it takes a refused
write and a restart, but a full SD card is what the device expects (README, "When the disk fails").

Fix (small): add `(name, digest)` to `_cohorts_written` only after the write succeeded (in `settle`, after
`self.writes.write`), or write the cohort record with every noisy record that references it in a batch not yet
on disk; and drop the in-memory charges of a pass whose write failed (they over-count, harmless, but the ledger
then differs from the one rebuilt).
"""

from __future__ import annotations

import asyncio
import re

import pytest

from agent.privacy import dp
from tests.helpers.attacks import QUARTER, make_town, noisy_level  # noqa: F401  (fixture)
from tests.helpers.web import access_rows

pytestmark = pytest.mark.skipif(not dp.available(), reason="OpenDP is not installed")
RHO = 0.01
FULL = OSError(28, "No space left on device")
USED = re.compile(r"Used: ([0-9.]+) of")


async def test_a_refused_write_does_not_lose_the_later_charges_at_a_restart(make_town, monkeypatch):
    town = await make_town(levels={"supplier": noisy_level(rho=RHO)})
    org_id, key = await town.org("supplier")
    homes = await town.households_(12)
    await town.grant(org_id, homes)
    start = await town.to_next(QUARTER)
    releases = town.running.agent.releases
    write = releases.log.write

    def full(batches):
        raise FULL

    answers = []
    for quarter in range(3):
        for home in homes:
            await town.post(home, 300.0)
        town.clock.now = start + (quarter + 1) * QUARTER + 1
        if quarter == 0:
            monkeypatch.setattr(releases.log, "write", full)
        status, body = await town.live(key, "15m")
        answers.append((status, body.get("error")))
        monkeypatch.setattr(releases.log, "write", write)  # the disk is back
    assert answers == [(409, "storage_error"), (200, None), (200, None)], answers
    before = releases.ledger_of(homes[0][0])["spent_rho"]
    await town.restart()
    after = town.running.agent.releases.ledger_of(homes[0][0])["spent_rho"]
    assert after >= 2 * RHO - 1e-9, (
        f"a household's spent rho was {before} after two released windows (and a refused one), {after} after the "
        "restart: the released windows' charges were not rebuilt")


async def test_my_page_does_not_say_i_was_in_a_window_the_disk_refused(make_town, monkeypatch):
    """The same refused write, seen by the household: A's GET /data got 409 storage_error (nothing released, nothing
    charged on disk), but the household's *Who used my data* says of that read "yes", rho 0.010000, and its budget
    "Used: 0.0100" (after a restart: 0). Measured: 1 of 1 such rows. PRIVACY.md: the page says "the rho the released
    windows charged it"; R8-3 closed the same overstatement for a downtime. Fixed: the refused pass's charges are
    undone and its windows noted refused (rho 0); "yes" (in the window's group) is what the page says of any refused
    window."""
    town = await make_town(levels={"supplier": noisy_level(rho=RHO)})
    org_id, key = await town.org("supplier")
    homes = await town.households_(12)
    await town.grant(org_id, homes)
    start = await town.to_next(QUARTER)
    releases = town.running.agent.releases
    write = releases.log.write

    def full(batches):
        raise FULL

    for home in homes:
        await town.post(home, 300.0)
    town.clock.now = start + QUARTER + 1
    monkeypatch.setattr(releases.log, "write", full)
    status, body = await town.live(key, "15m")
    assert (status, body.get("error")) == (409, "storage_error"), body
    monkeypatch.setattr(releases.log, "write", write)  # the disk is back
    await releases.flush()
    await asyncio.to_thread(town.running.agent.audit.flush)
    rows, html = await access_rows(town.running, homes[0][0])
    used = float(USED.search(html).group(1))
    # "Yes" stays: the page says whether the household was in the group of each window asked for, released or
    # refused (a refused window records its cohort: whether it was released depends on the disk and on others)
    assert rows and all(float(rho) == 0 for _, rho in rows) and used == 0, (
        f"the household's page, of a read refused storage_error: rows {rows}, Used {used}")
