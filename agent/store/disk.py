"""What a durable write that could not be made looks like to a caller, and whether the data directory is still ours.

One rule for every durable write (readings, consent, subscriptions, outboxes): the write is durable before
anything is acknowledged or sent; a write that cannot be made raises ``StorageUnavailable`` (the disk is full,
I/O errors, the data directory gone: retry later), which the API answers as 507 or 503 with ``Retry-After``
(agent/api/errors.py), never as a 500 for a change that may have happened.
"""

from __future__ import annotations

import errno
import math
import os
import threading
import time
import weakref
from enum import Enum
from pathlib import Path

from agent.errors import DomainError

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
RETRY_AFTER_S = 30


class StorageCode(Enum):
    FULL = "storage_full"
    FAILED = "storage_error"
    DIRECTORY_LOST = "data_directory_lost"


class StorageUnavailable(DomainError[StorageCode], OSError):
    """A change was not made because the disk refused it (nothing of it is on disk, nothing was applied). An
    OSError still (with the errno of the cause), so that code that handles a refused write handles this too."""

    def __init__(self, code: StorageCode, detail: str, retry_after: int = RETRY_AFTER_S, cause: int = errno.EIO):
        super().__init__(code, detail, retry_after=retry_after)
        self.errno, self.strerror = cause, detail


def unavailable(exc: OSError, what: str) -> StorageUnavailable:
    """The answer for an OSError of a durable write of `what` (no path: the caller must not learn the layout)."""
    if isinstance(exc, StorageUnavailable):
        return exc
    if exc.errno in FULL_ERRNOS:
        return StorageUnavailable(StorageCode.FULL, f"the device's storage is full: {what} was not saved; "
                                  "retry later", cause=exc.errno)
    code = errno.errorcode.get(exc.errno, "I/O error")
    return StorageUnavailable(StorageCode.FAILED, f"the device's storage failed ({code}): {what} was not saved; "
                              "retry later", cause=exc.errno or errno.EIO)


class DataDirectory:
    """The data directory as it was when the agent started: deleted or replaced under the running agent, every
    write into it is refused (it would go to a directory nobody reads, or recreate an empty one) and /health
    says so until the agent is restarted."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._lost: str | None = None
        self._checked_at = -math.inf  # monotonic time of the last stat
        self._lock = threading.Lock()
        _watched.add(self)

    def problem(self, max_age_s: float = 0.0) -> str | None:
        """Why the directory is no longer the agent's, or None. One stat, before each write; ``max_age_s``: a
        stat that recent is answer enough (POST /readings asks on every request: a stat each costs ~4% of the
        agent's CPU at 300 households; what it accepts is written at the next flush, which stats again)."""
        now = time.monotonic()
        if self._lost is None and now - self._checked_at >= max_age_s:
            self._checked_at = now
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) != self._identity:
                    lost = f"the data directory {self.path} was replaced under the running agent"
                else:
                    lost = None
            except FileNotFoundError:
                lost = f"the data directory {self.path} was deleted under the running agent"
            except OSError as exc:
                lost = None if exc.errno not in (errno.ENOENT, errno.ENOTDIR) else str(exc)
            if lost:
                with self._lock:
                    self._lost = self._lost or lost  # once lost, lost until restart: the state in memory is stale
        return self._lost

    def check(self) -> None:
        """Raise StorageUnavailable (DIRECTORY_LOST) if the directory is gone or replaced."""
        lost = self.problem()
        if lost:
            raise StorageUnavailable(StorageCode.DIRECTORY_LOST, "the data directory was deleted or replaced "
                                     "under the running agent: nothing more is saved until it is restarted",
                                     cause=errno.ENOENT)


_watched: weakref.WeakSet[DataDirectory] = weakref.WeakSet()


def check_under(path: str | Path) -> None:
    """Before a file is opened for writing (or rewritten) at `path`: refuse if a watched data directory above it
    was deleted or replaced (creating the file would recreate an empty directory nobody reads)."""
    path = Path(path)
    for directory in list(_watched):
        if directory.path in path.parents:
            directory.check()
