"""A subscription's durable outbox: a message is on disk before it is sent, and leaves only after a 2xx.

One TinyDB segment log per subscription (the store's crash-safe format): `messages` are appended
when made; `events` record, append-only, a sequence number given to a message (just before its
first send, so the numbers the receiver sees have no gaps), an acknowledgement, or messages
dropped because the outbox was full. Replaying both tables after a kill -9 gives back exactly the
messages not yet acknowledged, each with the id (and sequence) it was first sent with.

When full, the oldest messages not yet sent are dropped and replaced by one `gap` message that
says which windows were lost: nothing is lost silently. When acknowledged entries pile up, the log
is rewritten atomically with only what is pending.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from agent.store.segment import SegmentDB

COMPACT_AFTER = 500  # acknowledged or dropped entries before the log is rewritten


@dataclass
class Message:
    id: str
    kind: str  # "aggregate", "heartbeat" or "gap"
    payload: dict
    window_start: str | None
    window_end: str | None
    pos: float  # order in the queue
    seq: int | None = None
    attempts: int = field(default=0, compare=False)
    retry_after: float = field(default=0.0, compare=False)  # what the receiver asked for, seconds

    def doc(self) -> dict:
        return {"id": self.id, "kind": self.kind, "payload": self.payload, "window_start": self.window_start,
                "window_end": self.window_end, "pos": self.pos}


class Outbox:
    def __init__(self, path: str | Path, max_messages: int):
        self.path = Path(path)
        self.max_messages = max_messages
        self.db = SegmentDB(str(self.path))
        self.pending: list[Message] = []
        self.next_seq = 1
        self.dropped_total = 0
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
        self.pending = sorted((m for m in messages.values() if m.id not in gone), key=lambda m: m.pos)
        self._finished = len(messages) - len(self.pending)

    # --- queue -------------------------------------------------------------------------------
    def enqueue(self, kind: str, payload: dict, window_start: str | None, window_end: str | None) -> Message:
        pos = self.pending[-1].pos + 1 if self.pending else 0.0
        message = Message("msg_" + secrets.token_hex(8), kind, payload, window_start, window_end, pos)
        self.db.table("messages").insert(message.doc())
        self.pending.append(message)
        if len(self.pending) > self.max_messages:
            self._overflow()
        return message

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
        count = sum(m.payload.get("lost_windows", 1) if m.kind == "gap" else 1 for m in lost)
        starts = [s for m in lost for s in ([m.payload.get("from")] if m.kind == "gap" else [m.window_start]) if s]
        ends = [e for m in lost for e in ([m.payload.get("to")] if m.kind == "gap" else [m.window_end]) if e]
        gap = Message("msg_" + secrets.token_hex(8), "gap",
                      {"type": "gap", "lost_windows": count, "from": min(starts, default=None),
                       "to": max(ends, default=None),
                       "detail": "the outbox was full; fetch these windows with GET /data?since=&until="},
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
            message.seq = self.next_seq
            self.db.table("events").insert({"e": "seq", "id": message.id, "seq": message.seq})
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
        events = [{"e": "meta", "next_seq": self.next_seq, "dropped_total": self.dropped_total}]
        events += [{"e": "seq", "id": m.id, "seq": m.seq} for m in self.pending if m.seq is not None]
        self.db.storage.write({"messages": messages, "events": {i + 1: e for i, e in enumerate(events)}})
        self._finished = 0

    @property
    def depth(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        self.db.close()

    def destroy(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)
