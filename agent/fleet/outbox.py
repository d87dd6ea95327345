"""The fleet outbox: releases on disk before they go up, leaving only once JetStream acknowledged them.

One segment log (the store's crash-safe format), the same guarantees as the delivery outbox (on disk first,
at-least-once, in order), with what JetStream needs:
- each message gets its device sequence number (1, 2, ...) and its Nats-Msg-Id when it is written, so a re-send
  after a crash or an outage carries the same id and the stream drops the duplicate;
- an acknowledgement records the stream sequence the message landed at: the next publish expects it as the
  subject's last sequence (`Nats-Expected-Last-Subject-Sequence`), so a gap or a fork is seen, not hidden;
- the newest window enqueued per width (the cursor) is kept, so after a restart the release log is read from
  where the outbox stopped.
Tables: `m` messages {q: seq, id, w: window, s: start, p: payload}; `e` events {a: seq, n: stream seq}, the
outbox's epoch {epoch} (random, when the file is new: the hub then knows the numbers start again), or a meta
record {meta: 1, next, stream_seq, cursor, epoch} left by compaction. When full, nothing more is enqueued (the
cursor stays): the release log is the backlog, read again once the outbox drains.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.release.records import Json
from agent.store.segment import SegmentDB

COMPACT_AFTER = 1000


@dataclass
class FleetMessage:
    seq: int
    id: str
    window: str
    start: int
    payload: Json


class FleetOutbox:
    def __init__(self, path: str | Path, max_messages: int):
        self.path = Path(path)
        self.max_messages = max_messages
        self.db = SegmentDB(str(self.path))
        self.pending: list[FleetMessage] = []
        self.next_seq = 1
        self.stream_seq: int | None = None  # where the last acknowledged message landed
        self.cursor: dict[str, int] = {}
        self.acked_total = 0
        self._finished = 0
        self._lock = threading.Lock()  # worker-thread writes vs. close
        self.epoch: str | None = None  # this outbox's identity: a new one (a replaced disk) numbers from 1 again
        self._load()
        if self.epoch is None:
            self.epoch = secrets.token_hex(8)
            self.db.table("e").insert({"epoch": self.epoch})

    def _load(self) -> None:
        messages = {}
        for doc in self.db.table("m").all():
            messages[doc["q"]] = FleetMessage(doc["q"], doc["id"], doc["w"], doc["s"], doc["p"])
            self.next_seq = max(self.next_seq, doc["q"] + 1)
            self.cursor[doc["w"]] = max(self.cursor.get(doc["w"], doc["s"]), doc["s"])
        acked: set[int] = set()
        for event in self.db.table("e").all():
            if "meta" in event:  # first: it carries the epoch too
                self.next_seq = max(self.next_seq, event["next"])
                self.stream_seq = event["stream_seq"]
                self.acked_total = event.get("acked", 0)
                self.epoch = event.get("epoch", self.epoch)
                for window, start in event["cursor"].items():
                    self.cursor[window] = max(self.cursor.get(window, start), start)
            elif "epoch" in event:
                self.epoch = event["epoch"]
            else:
                acked.add(event["a"])
                self.stream_seq = event["n"]
        self.acked_total += len(acked)
        self.pending = [m for q, m in sorted(messages.items()) if q not in acked]
        self._finished = len(messages) - len(self.pending)

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_messages

    def enqueue(self, window: str, start: int, make_payload: Callable[[int], Json]) -> FleetMessage:
        """One window's message, written (fsync'd) before it is pending. `make_payload(seq)` builds its body."""
        seq = self.next_seq
        message = FleetMessage(seq, f"{secrets.token_hex(8)}-{seq}", window, start, make_payload(seq))
        with self._lock:
            self.db.table("m").insert({"q": seq, "id": message.id, "w": window, "s": start, "p": message.payload})
        self.next_seq += 1
        self.pending.append(message)
        self.cursor[window] = max(self.cursor.get(window, start), start)
        return message

    def head(self) -> FleetMessage | None:
        return self.pending[0] if self.pending else None

    def ack(self, message: FleetMessage, stream_seq: int) -> None:
        with self._lock:
            self.db.table("e").insert({"a": message.seq, "n": stream_seq})
        self.stream_seq = stream_seq
        self.pending.remove(message)
        self.acked_total += 1
        self._finished += 1
        if self._finished >= COMPACT_AFTER:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the log with only what is pending, atomically (the segment storage's rename)."""
        messages = {i + 1: {"q": m.seq, "id": m.id, "w": m.window, "s": m.start, "p": m.payload}
                    for i, m in enumerate(self.pending)}
        meta = {"meta": 1, "next": self.next_seq, "stream_seq": self.stream_seq, "cursor": dict(self.cursor),
                "acked": self.acked_total, "epoch": self.epoch}
        with self._lock:
            self.db.storage.write({"m": messages, "e": {1: meta}})
        self._finished = 0

    @property
    def depth(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        with self._lock:
            self.db.close()
