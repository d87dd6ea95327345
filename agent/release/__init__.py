"""The one door through which anything that depends on household data reaches an organization (door.py), with
its pure parts: the audit of exact sums (audit.py), the per-household privacy-loss ledger (ledger.py), the
bodies of releases (records.py), and the durable release log (log.py)."""

from agent.release.door import ReleaseLost, Releases
from agent.release.records import Refusal, RefusalCode

__all__ = ["Refusal", "RefusalCode", "ReleaseLost", "Releases"]
