"""A disk that fills up or fails under the running agent: a fixed-size ext4 on a loop device; and what every fault
suite checks of the webhooks that got through."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
from datetime import datetime
from pathlib import Path

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


class SmallDisk:
    """A fixed-size ext4 on a loop device, mounted at `mount` (no reserved blocks: root fills it as anyone)."""

    def __init__(self, tmp_path: Path, size_mb: int = 32, mount: Path | None = None):
        self.image, self.mount = tmp_path / "disk.img", mount or tmp_path / "mnt"
        self.filler = self.mount / "filler"
        self.mount.mkdir(parents=True)
        with open(self.image, "wb") as image:
            image.truncate(size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)], check=True, capture_output=True)
        self.mount_fs()

    def mount_fs(self) -> None:
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mount)], check=True, capture_output=True)

    def fill(self) -> None:
        """Take every free block (what the agent appends next fails with ENOSPC)."""
        with open(self.filler, "ab", buffering=0) as out:
            chunk = b"\0" * (1 << 20)
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while True:
                        out.write(chunk[:size])
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        os.sync()

    def free(self) -> None:
        self.filler.unlink()
        os.sync()

    def shut_down(self) -> None:
        """Every I/O on the filesystem fails with EIO from now on (until it is mounted again)."""
        fd = os.open(self.mount, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)

    def remount(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=True, capture_output=True)
        self.mount_fs()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)


def assert_every_window_accounted(messages: list[dict], refused: frozenset[int] | set[int] = frozenset()) -> None:
    """Sequence numbers 1..n without a hole (a message sent again keeps its number), and every 1 s window from the
    first aggregate to the last is an aggregate, inside a gap's [from, to), or one the release module refused
    (`refused`, from GET /data?since=&until=: not released, so never sent; a consent revoked during the window, for
    one). A refused window is never sent."""
    sequences = sorted({m["sequence"] for m in messages})
    assert sequences == list(range(1, len(sequences) + 1)), sequences
    aggregates = {int(window_seconds(m["window_start"])) for m in messages if m["type"] == "aggregate"}
    assert not aggregates & set(refused), f"windows refused by the release module yet sent: {aggregates & refused}"
    gaps = [(window_seconds(m["from"]), window_seconds(m["to"])) for m in messages if m["type"] == "gap"]
    first, last = min(aggregates), max(aggregates)
    missing = [w for w in range(first, last) if w not in aggregates and w not in refused
               and not any(start <= w < end for start, end in gaps)]
    assert not missing, f"windows neither sent, refused nor in a gap: {missing}; gaps {gaps}"


def assert_gap_counts_what_was_lost(gap: dict, refused: frozenset[int] | set[int]) -> None:
    """A gap for 1 s windows that could not be queued: `lost_windows` is exactly the windows of [from, to) that were
    released (those refused in between were never going out: inside the span, not counted)."""
    start, end = int(window_seconds(gap["from"])), int(window_seconds(gap["to"]))
    released = [w for w in range(start, end) if w not in refused]
    assert gap["lost_windows"] == len(released) >= 1, (gap, sorted(w for w in refused if start <= w < end))


def refused_in(history: dict) -> set[int]:
    """The windows a GET /data?since=&until= answer lists as refused."""
    return {int(window_seconds(r["window_start"])) for r in history["refused"]}


def window_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
