"""One way to make a write durable: every store's changes go through an owner's `Durable` (the readings' flush
apart: see ReadingStore.flush).

- A *step* is a callable that writes with its fsync: a SegmentDB append or atomic rewrite, `replace_file`. It runs
  under the owner's disk lock (one step at a time, whichever thread asks), after the data directory was checked
  (never into a deleted or replaced one). An OSError it raises comes out as StorageUnavailable (507 full, 503
  failing: nothing of it is on disk, since appends undo and rewrites are atomic), with one log line a minute at
  most per owner.
- A *change* is a generator (the registry's pattern): it checks and computes on the event loop, yields each step,
  gets the step's result (or its exception, thrown in) back, and changes memory only after the step is durable: a
  refused step's exception goes up through it, and nothing after it is applied. `now` runs the steps in place
  (start-up, scripts, tests); `run` in a worker thread, one change at a time per owner, in the order asked, and
  shielded: a cancelled request neither leaves memory and the file apart nor lets the next change overtake it.
  `write` is the change of one step: `check()` first, `then()` once it is durable.
- `GroupCommit`: items queued from any thread (cheap: the event loop never waits on the disk to queue), written by
  one writer task a batch at a time (one fsync per group for all the batch's items: many requests share it), in
  the order queued; each waiter is settled with its own item's outcome, and items the disk refused stay queued, in
  order, for the next attempt.

Here, below the API: the stores use it, and the API package imports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Generator, Hashable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

from agent.store.disk import StorageUnavailable, check_under, unavailable
from agent.store.segment import ensure_dir, fsync_dir
from drivers.ratelog import RateLimitedLog

T = TypeVar("T")
Item = TypeVar("Item")
Step = Callable[[], Any]
Change = Generator[Step, Any, T]


class Durable:
    """One owner's durable writes (a store, a log, an outbox). `name` heads its log lines; `what` is what a refused
    change was, for the answer (no path: the client must not learn the layout); `where` is the owner's file or
    directory (the data directory above it is checked before each step); `lock` the disk lock, if the owner's
    other writers (threads that append without a change) hold one already: reentrant, since a step may call the
    owner's own locked methods."""

    def __init__(self, name: str, where: str | Path, logger: logging.Logger, what: str = "the change",
                 lock: threading.RLock | None = None) -> None:
        self.name, self.what, self.where = name, what, Path(where)
        self.lock = lock if lock is not None else threading.RLock()
        self._order = asyncio.Lock()  # the event loop's changes: one at a time, in the order asked
        self._ratelog = RateLimitedLog(logger)

    # --- one step --------------------------------------------------------------------------------------
    def step(self, step: Callable[[], T]) -> T:
        """Run one disk step in this thread, as described above."""
        with self.disk():
            return step()

    @contextlib.contextmanager
    def disk(self) -> Iterator[None]:
        """A step as a block (`with durable.disk(): ...`): for an owner's writes from its own threads."""
        with self.lock:
            check_under(self.where)  # raises StorageUnavailable (503 data_directory_lost)
            try:
                yield
            except StorageUnavailable:
                raise  # a step inside a step: said already
            except OSError as exc:
                self._ratelog.warning("refused", "%s: a change was refused by the disk: %s", self.name, exc)
                raise unavailable(exc, self.what) from exc

    def refused(self, message: str, *args: object) -> None:
        """A line about a refused write the owner handles itself (a batch kept for later): rate-limited too."""
        self._ratelog.warning("kept", f"{self.name}: {message}", *args)

    # --- changes ---------------------------------------------------------------------------------------
    def now(self, change: Change[T]) -> T:
        """Run a change's steps in place (no event loop to keep free, or already in a worker thread)."""
        try:
            step = next(change)
            while True:
                try:
                    result = self.step(step)
                except Exception as err:
                    step = change.throw(err)
                else:
                    step = change.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def run(self, change: Change[T]) -> T:
        """Run a change's steps in a worker thread, after every change asked for before it; its result once durable."""
        return await asyncio.shield(self._in_order(change))

    async def _in_order(self, change: Change[T]) -> T:
        async with self._order:
            try:
                step = next(change)  # its checks run here: after the changes before it have landed
                while True:
                    try:
                        result = await asyncio.to_thread(self.step, step)
                    except Exception as err:
                        step = change.throw(err)
                    else:
                        step = change.send(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    async def write(self, write: Callable[..., T], *args: Any, then: Callable[[], object] | None = None,
                    check: Callable[[], object] | None = None, **kwargs: Any) -> T:
        """`write(*args, **kwargs)` as one step of a change: `check()` on the event loop once the changes before it
        have landed (it raises to refuse: nothing is written), `then()` once it is durable (never if refused)."""
        return await self.run(_one_step(functools.partial(write, *args, **kwargs), then, check))

    async def __aenter__(self) -> Durable:
        """`async with durable:` once every change asked for has landed, and none starts until the block ends
        (a stop closes the files in it)."""
        await self._order.acquire()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        self._order.release()


def _one_step(step: Callable[[], T], then: Callable[[], object] | None,
              check: Callable[[], object] | None) -> Change[T]:
    if check is not None:
        check()
    result: T = yield step
    if then is not None:
        then()
    return result


def replace_file(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """A whole small file replaced atomically (temporary file, fsync, rename, fsync of the directory): a step."""
    path = Path(path)
    ensure_dir(path.parent)
    temporary = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)


# --- group commit ----------------------------------------------------------------------------------------
class GroupCommit(Generic[Item]):
    """Items written a batch at a time by one writer task. A batch's items are grouped by `group(item)` (a file,
    say), first seen first; each group is one step, `write(group, items)`, in that order, stopping at the first
    one refused: the items of the groups written are durable, the others stay queued, ahead of newer ones
    (an OSError) or are dropped (anything else: retrying will not help), and their waiters get the error."""

    def __init__(self, durable: Durable, group: Callable[[Item], Hashable],
                 write: Callable[[Hashable, list[Item]], object]) -> None:
        self.durable, self._group, self._write = durable, group, write
        self._queued: list[tuple[Item, asyncio.Future[None] | None]] = []
        self._queue = threading.Lock()  # the queue only: held for a list operation, never across a write
        self._writer: asyncio.Task[None] | None = None
        self._due: asyncio.Event | None = None
        self.closed = False  # then every add writes in place

    @property
    def queued(self) -> int:
        with self._queue:
            return len(self._queued)

    def add(self, item: Item, soon: bool = True) -> None:
        """Queue `item`; `soon`: wake the writer (else it goes with the next batch or `flush`). Without a running
        event loop (or once closed) a `soon` item is written at once, in place, and raises like `flush`."""
        with self._queue:
            self._queued.append((item, None))
        if soon:
            self._write_soon()

    async def add_durable(self, item: Item) -> None:
        """Queue `item` and return once it is durable; raises what refused it (it stays queued if an OSError)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._queue:
            self._queued.append((item, done))
        self._write_soon()
        await asyncio.shield(done)  # a cancelled request leaves the future to the writer

    def _write_soon(self) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.closed:
            self.flush()  # no event loop to keep free (or stopped): write now, as the caller expects
            return
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._due = asyncio.Event()
            self._writer = loop.create_task(self._write_behind(self._due), name=f"{self.durable.name}-writer")
        assert self._due is not None
        self._due.set()

    async def _write_behind(self, due: asyncio.Event) -> None:
        """The writer: each time it is woken, everything queued so far in one batch, in a worker thread."""
        while True:
            await due.wait()
            due.clear()
            try:
                await asyncio.to_thread(self.flush)
            except OSError as err:
                kept = self.queued
                self.durable.refused("not written (%s); %d item(s) kept for the next attempt", err, kept)
            except Exception:  # the writer must survive anything: the next batch tries again
                logging.getLogger("edge.store").exception("%s: writer failed", self.durable.name)

    def flush(self) -> None:
        """Write everything queued, in order (from any thread); settle the waiters of the items written or refused.
        Raises the first refusal's error."""
        with self.durable.lock:
            with self._queue:
                batch, self._queued = self._queued, []
            if not batch:
                return
            groups: dict[Hashable, list[Item]] = {}
            for item, _ in batch:
                groups.setdefault(self._group(item), []).append(item)
            written: set[Hashable] = set()
            error: Exception | None = None
            for key, items in groups.items():
                try:
                    self.durable.step(functools.partial(self._write, key, items))
                except Exception as err:
                    error = err
                    break
                written.add(key)
            if isinstance(error, OSError):  # the disk refused: keep what is not written, in order
                with self._queue:
                    self._queued[:0] = [(item, None) for item, _ in batch if self._group(item) not in written]
        for item, done in batch:
            if done is not None:
                _wake(done, None if self._group(item) in written else error)
        if error is not None:
            raise error

    async def aclose(self) -> None:
        """The writer stops (a batch it is writing completes); later adds write in place."""
        self.closed = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None


def _wake(done: asyncio.Future[None], error: BaseException | None) -> None:
    try:
        done.get_loop().call_soon_threadsafe(_settle, done, error)
    except RuntimeError:
        pass  # its event loop is closed: nobody is waiting any more


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if not done.done():  # its request may have been cancelled
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
