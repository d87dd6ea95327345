"""The device's pseudonym key (the households' per-organization pseudonyms in trigger events): written twice, each
copy with its checksum, and its checksum on record in triggers.seg. One damaged copy is recovered; a key damaged
beyond repair, deleted or replaced is never made again (new pseudonyms would give every household a second
identity, linkable to the first by time): /health is 503 and no event under a pseudonym goes out until the file
is restored."""

from __future__ import annotations

import stat

from agent.triggers.store import TriggerStore
from tests.helpers.receiver import receiver  # noqa: F401  (the fixture)
from tests.helpers.store import flip
from tests.helpers.agent import grant
from tests.helpers.triggers import body, town  # noqa: F401  (town: the fixture)


def test_the_key_is_made_once_kept_twice_and_one_damaged_copy_recovered(tmp_path):
    store = TriggerStore(tmp_path)
    key, path = store.key, tmp_path / "pseudonym.key"
    store.close()
    assert key is not None and len(key) == 32 and store.key_problem is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first, second = path.read_text().split()
    assert first == second and first.startswith(key.hex() + ",")
    flip(path, 5)  # the first copy's key
    store = TriggerStore(tmp_path)
    assert store.key == key and store.key_problem is None
    assert path.read_text().split() == [first, second]  # both copies again
    store.close()


def test_a_key_damaged_deleted_or_replaced_is_refused_never_made_again(tmp_path):
    for case in ("damaged", "deleted", "replaced"):
        directory = tmp_path / case
        TriggerStore(directory).close()
        path = directory / "pseudonym.key"
        kept = path.read_bytes()
        if case == "damaged":
            flip(path, 5)
            flip(path, len(kept) // 2 + 5)  # both copies
        elif case == "deleted":
            path.unlink()
        else:
            other = tmp_path / f"other-{case}"
            TriggerStore(other).close()
            path.write_bytes((other / "pseudonym.key").read_bytes())  # a valid key, but not this device's
        before = path.read_bytes() if path.exists() else None
        for _ in range(2):  # and again at the next start
            store = TriggerStore(directory)
            assert store.key is None and case in store.key_problem, store.key_problem
            store.close()
            assert (path.read_bytes() if path.exists() else None) == before  # nothing made in its place
        path.write_bytes(kept)  # restored from a backup
        store = TriggerStore(directory)
        assert store.key is not None and store.key_problem is None
        store.close()


def test_a_key_from_before_the_checksums_is_kept_and_recorded(tmp_path):
    legacy = bytes(range(32))
    (tmp_path / "pseudonym.key").write_text(legacy.hex())
    store = TriggerStore(tmp_path)
    assert store.key == legacy and store.key_problem is None
    store.close()
    (tmp_path / "pseudonym.key").unlink()
    store = TriggerStore(tmp_path)  # its checksum is on record now: a deletion is seen
    assert store.key is None and "deleted" in store.key_problem
    store.close()


async def test_no_event_goes_out_under_a_new_pseudonym_after_the_key_is_lost(town, receiver, start_agent):  # noqa: F811
    t = await town(3)
    always = "def condition(household_power_consumption):\n    return True\n"
    status, trig = await t.create(body(["household_power_consumption"], always, interval=1, description="power use",
                                       action={"type": "webhook", "endpoint": receiver.url}))
    assert status == 201, trig
    for _, token in t.households:
        await grant(t.running, token, t.org_id, f"trigger_events:{trig['id']}")
    await t.window(power_import_w=100.0)
    pseudonyms = {m["household"] for m in receiver.messages()}
    assert len(pseudonyms) == 3

    config, path = t.running.agent.config, t.running.agent.triggers.store.directory / "pseudonym.key"
    kept = path.read_bytes()
    await t.running.http.close()
    await t.running.agent.stop()
    path.unlink()
    t.running = await start_agent(config, clock=t.clock)
    status, health = await t.running.call("GET", "/health")
    assert status == 503 and "deleted" in health["faults"]["pseudonym_key_lost"]
    receiver.received.clear()
    for _ in range(3):  # (the window a start falls in is never evaluated: the next ones are)
        await t.window(power_import_w=100.0)
    assert receiver.received == []  # no event under a new pseudonym
    assert not path.exists()

    await t.running.http.close()
    await t.running.agent.stop()
    path.write_bytes(kept)  # the operator restores the file
    t.running = await start_agent(config, clock=t.clock)
    assert (await t.running.call("GET", "/health"))[1]["faults"]["pseudonym_key_lost"] is None
    for _ in range(2):
        await t.window(power_import_w=100.0)
    assert receiver.received and {m["household"] for m in receiver.messages()} == pseudonyms  # the same pseudonyms again
