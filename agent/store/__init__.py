"""The reading store: TinyDB in hourly/daily segment logs, batched and crash-safe (see ``store``)."""

from agent.store.rollup import RollupAccumulator
from agent.store.store import ReadingStore

__all__ = ["ReadingStore", "RollupAccumulator"]
