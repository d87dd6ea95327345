"""Seccomp-locked evaluation of untrusted conditions (built in the triggers issue). Knows nothing of agent/."""
