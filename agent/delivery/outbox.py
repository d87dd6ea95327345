"""A subscription's durable outbox: a message is on disk before it is sent, and leaves only after a 2xx.

One TinyDB segment log per subscription (the store's crash-safe format): `messages` are appended
when made; `events` record, append-only, a sequence number given to a message (just before its
first send, so the numbers the receiver sees have no gaps), an acknowledgement, or messages
dropped because the outbox was full. Replaying both tables after a kill -9 gives back exactly the
messages not yet acknowledged, each with the id (and sequence) it was first sent with.

When full, the oldest messages not yet sent are dropped and replaced by one `gap` message that
says which windows were lost: nothing is lost silently. The same `gap` message stands for windows that
could not be queued (the disk refused the write, the agent was down, the log was damaged: see `gap`).
When acknowledged entries pile up, the log is rewritten atomically with only what is pending.

Every record is written twice (``copies=2``): a damaged one is recovered from its twin. One that is not
becomes a `gap` message at load, since what it held (a message, its sequence number, its acknowledgement)
is unknown.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.store.segment import SegmentDB

log = logging.getLogger("edge.delivery")

FETCH_HINT = "fetch these windows with GET /data?since=&until="

COMPACT_AFTER = 500  # acknowledged or dropped entries before the log is rewritten


@dataclass
class Message:
    id: str
    kind: str  # "aggregate", "heartbeat" or "gap"
    payload: dict[str, Any]
    window_start: str | None
    window_end: str | None
    pos: float  # order in the queue
    seq: int | None = None
    attempts: int = field(default=0, compare=False)
    retry_after: float = field(default=0.0, compare=False)  # what the receiver asked for, seconds

    def doc(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "payload": self.payload, "window_start": self.window_start,
                "window_end": self.window_end, "pos": self.pos}


class Outbox:
    def __init__(self, path: str | Path, max_messages: int):
        self.path = Path(path)
        self.max_messages = max_messages
        self.db = SegmentDB(str(self.path), kind="outbox", copies=2)
        self.pending: list[Message] = []
        self.next_seq = 1
        self.dropped_total = 0
        self.last_window_end: str | None = None  # of the newest window ever queued (kept across compactions)
        self.decided_until: str | None = None  # a clean stop's note: windows decided up to here (see note_stop)
        self._finished = 0  # acknowledged or dropped entries in the log
        self._load()

    def _load(self) -> None:
        messages = {doc["id"]: Message(**doc) for doc in self.db.table("messages").all()}
        gone: set[str] = set()
        for event in self.db.table("events").all():
            kind = event["e"]
            if kind == "seq" and event["id"] in messages:
                messages[event["id"]].seq = event["seq"]
                self.next_seq = max(self.next_seq, event["seq"] + 1)
            elif kind == "ack":
                gone.add(event["id"])
            elif kind == "drop":
                gone.update(event["ids"])
                self.dropped_total += len(event["ids"])
            elif kind == "meta":
                self.next_seq = max(self.next_seq, event["next_seq"])
                self.dropped_total = max(self.dropped_total, event.get("dropped_total", 0))
                self.last_window_end = max(filter(None, [self.last_window_end, event.get("last_window_end")]),
                                           default=None)
                self.decided_until = event.get("decided_until", self.decided_until)
        ends = [m.window_end for m in messages.values() if m.window_end]
        self.last_window_end = max([*ends, *filter(None, [self.last_window_end])], default=None)
        self.pending = sorted((m for m in messages.values() if m.id not in gone), key=lambda m: m.pos)
        self._finished = len(messages) - len(self.pending)
        lost = self.db.storage.lost_records
        if lost:
            starts = [m.window_start for m in messages.values() if m.window_start]
            log.error("outbox %s: %d damaged record(s) could not be recovered; queueing a gap event", self.path, lost)
            try:
                self.gap(None, min(starts, default=None), None,
                         f"the outbox's file was damaged ({lost} record(s) lost): windows from `from` up to the next "
                         f"message's may be missing or sent again; {FETCH_HINT}")
                self._compact()  # the damage leaves the file: the next start does not report it again
            except OSError as exc:  # the disk refuses: the damage stays, and the next start reports it
                log.error("outbox %s: cannot queue the gap event: %s", self.path, exc)

    # --- queue -------------------------------------------------------------------------------
    def enqueue(self, kind: str, payload: dict[str, Any], window_start: str | None, window_end: str | None) -> Message:
        """On disk, then in the queue. Raises the OSError of a disk that refused it (nothing was queued)."""
        pos = self.pending[-1].pos + 1 if self.pending else 0.0
        message = Message("msg_" + secrets.token_hex(8), kind, payload, window_start, window_end, pos)
        self.db.table("messages").insert(message.doc())
        self.pending.append(message)
        if window_end:
            self.last_window_end = max(window_end, self.last_window_end or window_end)
        if len(self.pending) > self.max_messages:
            self._overflow()
        return message

    def gap(self, lost_windows: int | None, start: str | None, end: str | None, detail: str) -> Message:
        """Queue a `gap` message: windows from `start` to `end` (ISO times) were not queued (`lost_windows` of
        them, or None if unknown). Raises like enqueue."""
        return self.enqueue("gap", {"type": "gap", "lost_windows": lost_windows, "from": start, "to": end,
                                    "detail": detail}, None, None)

    def _overflow(self) -> None:
        """Drop the oldest unsent messages (a sent one may be in flight) and put one gap in their place."""
        first = next((i for i, m in enumerate(self.pending) if m.seq is None), None)
        if first is None:
            return
        excess = len(self.pending) - self.max_messages + 1  # +1: room for the gap message
        victims = self.pending[first : first + excess]
        if not victims:
            return
        lost = [m for m in victims if m.kind != "heartbeat"]
        earlier_gaps = [m for m in victims if m.kind == "gap"]
        count = sum((m.payload.get("lost_windows") or 1) if m.kind == "gap" else 1 for m in lost)
        starts = [s for m in lost for s in ([m.payload.get("from")] if m.kind == "gap" else [m.window_start]) if s]
        ends = [e for m in lost for e in ([m.payload.get("to")] if m.kind == "gap" else [m.window_end]) if e]
        gap = Message("msg_" + secrets.token_hex(8), "gap",
                      {"type": "gap", "lost_windows": count, "from": min(starts, default=None),
                       "to": max(ends, default=None),
                       "detail": f"the outbox was full; {FETCH_HINT}"},
                      None, None, victims[0].pos)
        self.db.table("messages").insert(gap.doc())
        self.db.table("events").insert({"e": "drop", "ids": [m.id for m in victims]})
        self.dropped_total += len(victims) - len(earlier_gaps)
        self.pending[first : first + excess] = [gap]
        self._finished += len(victims)

    def head(self) -> Message | None:
        return self.pending[0] if self.pending else None

    def assign(self, message: Message) -> int:
        """Give the message its sequence number before its first send (persisted: retries reuse it)."""
        if message.seq is None:
            self.db.table("events").insert({"e": "seq", "id": message.id, "seq": self.next_seq})
            message.seq = self.next_seq  # only once durable: a refused write leaves the number unused
            self.next_seq += 1
        return message.seq

    def ack(self, message: Message) -> None:
        self.db.table("events").insert({"e": "ack", "id": message.id})
        self.pending.remove(message)
        self._finished += 1
        if self._finished >= COMPACT_AFTER:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the log with only what is pending, atomically (temporary file, fsync, rename)."""
        messages = {i + 1: m.doc() for i, m in enumerate(self.pending)}
        events = [self._meta()]
        events += [{"e": "seq", "id": m.id, "seq": m.seq} for m in self.pending if m.seq is not None]
        self.db.storage.write({"messages": messages, "events": {i + 1: e for i, e in enumerate(events)}})
        self._finished = 0

    def _meta(self) -> dict[str, Any]:
        return {"e": "meta", "next_seq": self.next_seq, "dropped_total": self.dropped_total,
                "last_window_end": self.last_window_end, "decided_until": self.decided_until}

    def note_stop(self, decided_until: str | None) -> None:
        """A clean stop (or, while windows are filtered or withheld, now and then): windows up to `decided_until`
        were decided (queued, filtered or withheld), so the next start's gap for the time it was down begins there,
        not at the last window queued."""
        self.decided_until = decided_until
        self.db.table("events").insert(self._meta())

    @property
    def depth(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        self.db.close()

    def destroy(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)
