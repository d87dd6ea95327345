"""What /health and /metrics say about the durable state: a data directory deleted or replaced under the agent,
damaged segments (per file kind), a registry that failed closed, subscriptions that cannot queue or send.

A damaged record whose twin survived (``copies=2``) or a torn tail (a write a crash interrupted, never
acknowledged) is shown but leaves the agent healthy; a record lost beyond repair, a lost data directory or an
outbox that cannot be written makes it degraded (503).

Files opened at start (the registry, subscriptions, outboxes, triggers' files, the release log's main files) say
their damage then; every other segment (old audit and release day files, readings, rollups) is read for damage
once, at start, by `DamageScan`: a background thread, off the start path, one file at a time, paced, so that
/health shows every damaged file kind without waiting for a query to read the file.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import audit
from agent.release import log as release_log, members
from agent.store.segment import integrity, scan_for_damage

if TYPE_CHECKING:
    from agent.service import Agent

log = logging.getLogger("edge.store")

SCAN_BYTES_PER_S = 16 << 20  # the scan's pace: the SD card also takes the flushes' fsyncs meanwhile


def storage_faults(agent: Agent) -> tuple[bool, dict[str, Any]]:
    root = agent.config.storage.path
    damage = integrity(root)
    delivery_ok, delivery = agent.delivery.health()
    lost_dir = agent.store.data_directory.problem()
    release_log = agent.releases.log.last_error  # retried with each flush; its noisy releases refused meanwhile
    memos_lost = agent.releases.memos_lost()  # one-off releases refused for good: their record was lost
    key_lost = agent.triggers.store.key_problem  # no event under a pseudonym goes out
    ok = (delivery_ok and lost_dir is None and release_log is None and memos_lost is None and key_lost is None
          and not any(tally["lost"] for tally in damage.values()))
    return ok, {"data_directory_lost": lost_dir, "damage": damage, "registry_failed_closed": agent.registry.damage,
                "release_log_error": release_log, "releases_lost": memos_lost, "pseudonym_key_lost": key_lost,
                "delivery": delivery,
                "damage_scan": agent.damage_scan.progress()}


def damage_scan_of(agent: Agent) -> DamageScan:
    """The start-up scan of the agent's data directory, each day-file directory under its file kind."""
    return DamageScan(agent.config.storage.path, {agent.audit.directory: audit.KIND,
                                                  agent.releases.log.directory: release_log.KIND,
                                                  agent.releases.members.directory: members.KIND})


class DamageScan:
    """Every segment under `root`, read once for damage (``scan_for_damage``), noted under the kind of the nearest
    directory in `kinds` ({directory: kind}; others are named by their first directory under `root`)."""

    def __init__(self, root: str | Path, kinds: dict[Path, str]):
        self.root = Path(root)
        self.kinds = sorted(((Path(d), k) for d, k in kinds.items()), key=lambda dk: -len(dk[0].parts))
        self.files = self.scanned = 0
        self.state = "pending"
        self._stop = threading.Event()

    def progress(self) -> dict[str, Any]:
        return {"state": self.state, "files": self.files, "scanned": self.scanned}

    async def run(self) -> None:
        """The scan in a worker thread; cancelled (the agent stops), the thread ends after the file it is reading."""
        try:
            await asyncio.to_thread(self.scan)
        except asyncio.CancelledError:
            self._stop.set()
            raise

    def scan(self) -> None:
        self.state = "running"
        paths = sorted(self.root.rglob("*.seg"))
        self.files = len(paths)
        for path in paths:
            if self._stop.is_set():
                self.state = "stopped"
                return
            try:
                size = scan_for_damage(path, self._kind_of(path))
            except OSError as exc:  # an unreadable file is said, and the scan goes on
                log.error("cannot read %s for damage: %s", path, exc)
                size = 0
            self.scanned += 1
            self._stop.wait(size / SCAN_BYTES_PER_S)
        self.state = "done"

    def _kind_of(self, path: Path) -> str:
        return next((kind for directory, kind in self.kinds if directory in path.parents), "other")
