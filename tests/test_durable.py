"""agent/store/durable.py on its own: the order of an owner's changes, cancellation, a refused step, the data
directory's check, the rate-limited line, and group commit. Real segment files in the test's directory; the disk
is made to refuse by a step that raises (what a full disk's append raises), and made slow by a gate the test opens
(no durations measured)."""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import threading

import pytest

from agent.store.disk import DataDirectory, StorageCode, StorageUnavailable
from agent.store.durable import Durable, GroupCommit, replace_file
from agent.store.segment import SegmentDB
from tests.helpers.loop import Gate

log = logging.getLogger("edge.test.durable")


def full(*_args) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def rows(path) -> list[dict]:
    db = SegmentDB(str(path))
    try:
        return [dict(doc) for doc in db.table("t").all()]
    finally:
        db.close()


@pytest.fixture
def owner(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    directory = DataDirectory(data)  # watched while the test holds it
    db = SegmentDB(str(data / "owner.seg"))
    yield Durable("owner", data / "owner.seg", log, what="the thing"), db, directory
    db.close()


async def test_changes_land_one_at_a_time_in_the_order_asked_and_each_check_sees_the_ones_before(owner):
    durable, db, _ = owner
    gate = Gate()
    memory: list[int] = []
    seen_by_checks: list[list[int]] = []

    def change(n: int):
        seen_by_checks.append(list(memory))  # runs once the changes before it have landed
        yield gate.wrap(lambda: db.table("t").insert({"n": n}))
        memory.append(n)
        return n

    tasks = [asyncio.create_task(durable.run(change(n))) for n in range(3)]
    while not gate.entered.is_set():
        await asyncio.sleep(0.01)
    assert seen_by_checks == [[]] and memory == []  # the others wait their turn, their checks not run yet
    gate.open()
    assert await asyncio.gather(*tasks) == [0, 1, 2]
    gate.check()  # every step ran in a worker thread
    assert seen_by_checks == [[], [0], [0, 1]] and memory == [0, 1, 2]
    assert [r["n"] for r in rows(db.storage.path)] == [0, 1, 2]


async def test_a_cancelled_request_still_lands_whole_before_the_next_change(owner):
    durable, db, _ = owner
    gate = Gate()
    memory: list[str] = []

    def change(name: str, step):
        yield step
        memory.append(name)

    first = asyncio.create_task(durable.run(change("first", gate.wrap(lambda: db.table("t").insert({"n": 1})))))
    while not gate.entered.is_set():
        await asyncio.sleep(0.01)
    first.cancel()
    second = asyncio.create_task(durable.run(change("second", lambda: db.table("t").insert({"n": 2}))))
    await asyncio.sleep(0)
    assert first.cancelled() or first.done()
    gate.open()
    await second
    assert memory == ["first", "second"]  # the cancelled change was applied, and first
    assert [r["n"] for r in rows(db.storage.path)] == [1, 2]
    async with durable:  # nothing left in flight
        pass


async def test_a_refused_step_is_storage_unavailable_and_nothing_after_it_is_applied(owner, caplog):
    durable, db, _ = owner
    memory: list[str] = []

    def change():
        yield lambda: db.table("t").insert({"n": 1})
        memory.append("one")
        yield full
        memory.append("two")  # never: the refusal goes up through the change

    with pytest.raises(StorageUnavailable) as refused:
        await durable.run(change())
    assert (refused.value.code, refused.value.errno) == (StorageCode.FULL, errno.ENOSPC)  # 507 in the API
    assert "the thing was not saved" in refused.value.detail and "owner.seg" not in refused.value.detail
    assert memory == ["one"] and [r["n"] for r in rows(db.storage.path)] == [1]
    with caplog.at_level(logging.WARNING, logger=log.name):
        for _ in range(3):
            with pytest.raises(StorageUnavailable):
                durable.now(change())
    lines = [r for r in caplog.records if "refused by the disk" in r.getMessage()]
    assert len(lines) == 1, lines  # one line a minute at most, not one per refusal


async def test_a_change_that_catches_its_refusal_decides_what_happens(owner):
    durable, _, _ = owner

    def change():
        try:
            yield full
        except StorageUnavailable as err:
            return f"kept for later: {err.error}"
        return "written"

    assert await durable.run(change()) == "kept for later: storage_full"
    assert durable.now(change()) == "kept for later: storage_full"


async def test_write_checks_first_and_applies_only_once_durable(owner):
    durable, db, _ = owner
    applied: list[str] = []

    def refuse() -> None:
        raise ValueError("no such organization")

    with pytest.raises(ValueError):
        await durable.write(db.table("t").insert, {"n": 1}, then=lambda: applied.append("x"), check=refuse)
    with pytest.raises(StorageUnavailable):
        await durable.write(full, then=lambda: applied.append("y"))
    assert applied == [] and rows(db.storage.path) == []
    assert await durable.write(db.table("t").insert, {"n": 2}, then=lambda: applied.append("z")) == 1
    assert applied == ["z"] and [r["n"] for r in rows(db.storage.path)] == [2]


def test_now_runs_in_place_on_the_calling_thread(owner):
    durable, db, _ = owner
    threads = []

    def change():
        yield lambda: threads.append(threading.current_thread())
        return "done"
    assert durable.now(change()) == "done" and threads == [threading.current_thread()]


async def test_nothing_is_written_into_a_deleted_data_directory(owner):
    durable, db, directory = owner
    db.close()
    shutil.rmtree(directory.path)
    with pytest.raises(StorageUnavailable) as refused:
        await durable.write(lambda: replace_file(directory.path / "owner.json", b"{}"))
    assert refused.value.code is StorageCode.DIRECTORY_LOST  # 503 in the API
    assert not directory.path.exists()  # never recreated


def test_replace_file_is_whole_and_leaves_no_temporary(tmp_path):
    replace_file(tmp_path / "a" / "doc.json", b"one")
    replace_file(tmp_path / "a" / "doc.json", b"two")
    assert (tmp_path / "a" / "doc.json").read_bytes() == b"two"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["doc.json"]


# --- group commit ------------------------------------------------------------------------------------------
def commits(owner, refuse: set[str]):
    durable, db, _ = owner
    writes: list[tuple[str, list[int]]] = []

    def write(group, items):
        if group in refuse:
            full()
        writes.append((group, [n for _, n in items]))
        db.table(group).insert_multiple({"n": n} for _, n in items)
    return GroupCommit(durable, group=lambda item: item[0], write=write), writes


async def test_group_commit_shares_one_write_per_group_and_settles_each_waiter_with_its_own_outcome(owner):
    refuse = {"b"}
    group, writes = commits(owner, refuse)
    gate, locked = threading.Event(), threading.Event()
    group.add(("a", 0), soon=False)  # queued: goes with the next batch
    held = asyncio.create_task(asyncio.to_thread(lambda: (group.durable.lock.acquire(), locked.set(), gate.wait(),
                                                           group.durable.lock.release())))
    while not locked.is_set():  # the disk is busy: the writer waits, the queue grows
        await asyncio.sleep(0.01)
    waiters = [asyncio.create_task(group.add_durable(item)) for item in [("a", 1), ("b", 2), ("a", 3), ("c", 4)]]
    while group.queued < 5:
        await asyncio.sleep(0.01)
    gate.set()  # the writer now takes the whole queue as one batch
    await held
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert outcomes[0] is None and outcomes[2] is None  # group a: written
    assert isinstance(outcomes[1], StorageUnavailable) and outcomes[1].error == "storage_full"
    assert isinstance(outcomes[3], StorageUnavailable)  # c comes after the refused b: not written, kept
    assert writes == [("a", [0, 1, 3])]  # one write for the three items of a
    assert group.queued == 2  # b and c, in order, for the next attempt
    refuse.clear()
    await group.add_durable(("a", 5))
    assert writes[1:] == [("b", [2]), ("c", [4]), ("a", [5])]
    await group.aclose()


async def test_group_commit_without_a_writer_writes_in_place_and_raises(owner):
    group, writes = commits(owner, {"b"})
    await group.aclose()  # closed: every add is written at once
    group.add(("a", 1))
    with pytest.raises(StorageUnavailable):
        group.add(("b", 2))
    assert writes == [("a", [1])] and group.queued == 1


async def test_group_commit_drops_an_item_that_can_never_be_written(owner):
    durable, _, _ = owner

    def write(group, items):
        raise TypeError("not JSON")
    group = GroupCommit(durable, group=lambda item: item, write=write)
    with pytest.raises(TypeError):
        await group.add_durable("x")
    assert group.queued == 0  # retrying would not help
    await group.aclose()


def test_a_block_of_an_owners_own_thread_is_a_step_and_a_step_inside_a_step_is_said_once(owner, caplog):
    durable, db, _ = owner
    with durable.disk():
        db.table("t").insert({"n": 1})
    with caplog.at_level(logging.WARNING, logger=log.name):
        with pytest.raises(StorageUnavailable) as refused:
            durable.step(lambda: durable.step(full))  # e.g. a change's step calling the owner's locked method
    assert refused.value.error == "storage_full" and isinstance(refused.value.__cause__, OSError)
    assert not isinstance(refused.value.__cause__, StorageUnavailable)  # mapped once, from the disk's own error
    assert len([r for r in caplog.records if "refused by the disk" in r.getMessage()]) == 1


def test_replace_file_keeps_a_secret_private(tmp_path):
    replace_file(tmp_path / "key", b"secret", mode=0o600)
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
