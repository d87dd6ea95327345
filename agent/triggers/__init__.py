"""Organizations' triggers (MISSION.md, step 3): a condition in Python, run sandboxed on the parameters it
names, and an action for the households it fires for. ``model`` (no I/O: records, checks, debounce),
``store`` (TinyDB segments), ``actions`` (where actions may go), ``runner`` (the loop, the sandbox, the
actions). The I/O of actions is in drivers/ (``drivers.notify``, ``drivers.appliances``)."""

from agent.triggers.runner import TriggerRunner

__all__ = ["TriggerRunner"]
