"""The release module on its own: a registry, window books and a Releases on a stepped clock, no agent."""

from __future__ import annotations

from datetime import datetime, timezone

from agent.aggregates import new_books
from agent.registry import Registry
from agent.release import Releases
from drivers.reading import Reading
from tests.helpers.agent import make_config
from tests.helpers.clock import HOUR as T0


class Town:
    """A registry, books and a Releases on a stepped clock: organizations, consenting households, readings."""

    def __init__(self, tmp_path, levels=None, privacy=None):
        self.now = float(T0)
        self.config = make_config(tmp_path, **({"levels": levels} if levels else {}),
                                  **({"privacy": privacy} if privacy else {}))
        self.registry = Registry(tmp_path / "registry.seg", clock=lambda: self.now)
        self.books = new_books()
        self.tmp_path = tmp_path
        self.releases = self._releases()
        self.households = [self.registry.create_household(None, "http")[0] for _ in range(12)]

    def _releases(self):
        return Releases(self.config, self.registry, self.books, lambda: self.now, self.tmp_path / "releases")

    def org(self, level: str) -> str:
        org, _ = self.registry.create_organization(f"Org {len(self.registry.organizations)}", level)
        return org.id

    def consent(self, org_id: str, households=None, granted=True) -> None:
        for h in households if households is not None else self.households:
            self.registry.set_consent(h.id, org_id, "aggregates", granted)

    def post(self, watts, households=None) -> None:
        at = datetime.fromtimestamp(self.now, timezone.utc)
        for h, w in zip(households if households is not None else self.households, watts):
            self.books_add(Reading(meter_id=h.meter_id, timestamp=at, received_at=at, power_import_w=w,
                                   power_export_w=0.0))

    def books_add(self, reading: Reading) -> None:
        for book in self.books.values():
            book.add(reading)

    async def step(self, seconds: float) -> None:
        self.now += seconds
        await self.releases.settle()

    def restart(self):
        self.releases.close()
        self.releases = self._releases()
        return self.releases
