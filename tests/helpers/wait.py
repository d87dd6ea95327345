"""Polling for a condition: the one way tests wait for something that happens in another thread, process or task.
The timeout only bounds a failure (the machine is shared and noisy): never a timing assertion."""

from __future__ import annotations

import asyncio
import inspect
import time


def wait_until(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.05):
    """Call predicate() until it returns something truthy, and return that. An OSError (a connection refused while
    a process starts) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except OSError:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(interval)


async def eventually(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.05):
    """wait_until on the event loop: predicate() may return an awaitable, which is awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(interval)
