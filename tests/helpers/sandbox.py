"""What the sandbox suites share: MISSION.md's example condition, and the attacker's prelude."""

from __future__ import annotations

import textwrap

MISSION = textwrap.dedent("""\
    def condition(neighborhood_power_consumption, neighborhood_power_production):
        return neighborhood_power_production - neighborhood_power_consumption > 500
""")


MISSION_PARAMS = ["neighborhood_power_consumption", "neighborhood_power_production"]

# This architecture's number of clock_gettime, as libseccomp names it (the hostile sources call it directly).
CLOCK_GETTIME_NR = __import__("pyseccomp").resolve_syscall(0, "clock_gettime")


# Helpers the attacker brings along: the classic walk from () to os's globals, sys and any loaded module.
PRELUDE = textwrap.dedent("""\
    def _cls(name):
        for c in ().__class__.__base__.__subclasses__():
            if c.__name__ == name:
                return c
    def _os():
        return _cls("_wrap_close").__init__.__globals__
    def _sys():
        return _os()["sys"]
    def _mod(name):
        return _sys().modules[name]
    def _libc():
        return _mod("ctypes").CDLL(None, use_errno=True)
    def _type():
        return ().__class__.__class__
    def _loop(*args):
        while True:
            pass
""")
