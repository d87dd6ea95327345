"""What the API uses of the running agent: one typed view of its services (agent/service.py's Agent is the one
implementation: mypy checks that it conforms, tests/test_types.py). The pages add their sign-in
(agent/web/render.py's Pages). Below the HTTP layer: nothing here knows about requests."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, Protocol, TypeVar

from agent.audit import AuditLog
from agent.auth import FailureThrottle
from agent.clock import Clock
from agent.config import Config
from agent.delivery.engine import Delivery
from agent.ingest import TelegramIngest
from agent.pipeline import Pipeline
from agent.registry import Registry
from agent.release import Releases
from agent.store import ReadingStore
from agent.triggers import TriggerRunner
from drivers.p1_reader import P1Reader
from drivers.reading import Reading

T = TypeVar("T")


class Services(Protocol):
    @property
    def config(self) -> Config: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def registry(self) -> Registry: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def store(self) -> ReadingStore: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def releases(self) -> Releases: ...
    @property
    def delivery(self) -> Delivery: ...
    @property
    def triggers(self) -> TriggerRunner: ...
    @property
    def readers(self) -> dict[str, P1Reader]: ...
    @property
    def throttle(self) -> FailureThrottle: ...
    @property
    def telegram_ingest(self) -> TelegramIngest: ...

    def now(self) -> datetime: ...
    def health(self, public: bool = False) -> tuple[bool, dict[str, Any]]: ...
    def ingest_http(self, reading: Reading) -> None: ...
    def shielded(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]: ...
