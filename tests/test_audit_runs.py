"""A subscription's pushes are written to the audit log as runs (agent/audit.py `record_push`): one entry per run of
consecutive windows whose every detail is the same, cut at the clock hour. Real AuditLog on real files: where a
run breaks, what GET /audit's reader gives of runs (since/until/who/limit), the runs not in a day file yet, files of
the format before (one entry per window) read as before and beside runs, the access page index reading runs as it
read single entries, retention, and what a kill -9 of a real writer leaves (tests/test_event_loop_io_audit.py has
the single entries' kill -9)."""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import replace
from pathlib import Path

from agent.audit import OPEN_RUNS, AuditLog
from agent.store.segment import SegmentStream
from agent.web import views
from agent.web.access_index import AccessIndex
from tests.helpers.agent import delivery_config, make_config
from tests.helpers.clock import HOUR, StepClock
from tests.helpers.openapi import conforms
from tests.helpers.process import kill_9_when
from tests.helpers.receiver import receiver  # noqa: F401  (receiver: the fixture)

DAY0 = int(HOUR // 86400 * 86400)
START = int(HOUR) - 30  # 13:59:30
SENT = {"released": True, "households": 12}


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def push(audit: AuditLog, clock: Clock, start: int, sub: str = "sub-1", window: str = "1s", who: str = "org-1",
         **details) -> None:
    clock.now = start + 0.4
    audit.record_push(who, sub, window, start, **(details or SENT))


def shape(entries: list[dict]) -> list[tuple]:
    return [(e["subscription_id"], e["window_start"], e.get("windows"), e.get("released"), e.get("households"),
             e.get("filtered")) for e in entries if e["action"] == "data.push"]


def on_disk(directory: Path) -> list[dict]:
    return [dict(e) for path in sorted(directory.glob("*.seg")) for e in SegmentStream(path).docs("audit")]


def test_a_run_breaks_at_every_detail_a_reader_shows_and_at_the_clock_hour(tmp_path):
    clock = Clock(START)
    audit = AuditLog(tmp_path, clock=clock)
    for i in range(60):  # 13:59:30 to 14:00:29: across the hour
        start = START + i
        if i == 40:
            push(audit, clock, start, released=False)  # withheld
        elif i == 41:
            push(audit, clock, start, released=True, filtered=True)
        elif 42 <= i < 45:
            push(audit, clock, start, released=True, households=13)  # one more household
        elif i != 50:  # window 50 not decided (the agent was down)
            push(audit, clock, start)
        push(audit, clock, start, sub="sub-2", who="org-2", released=True, households=12)  # never cut by sub-1's
    push(audit, clock, START + 60, window="1m")  # a window of another width
    audit.flush()
    got = shape(audit.entries(since=0, until=HOUR + 3600))
    assert got == [
        ("sub-1", START, 30, True, 12, None), ("sub-2", START, 30, True, 12, None),
        ("sub-1", START + 30, 10, True, 12, None), ("sub-2", START + 30, 30, True, 12, None),
        ("sub-1", START + 40, 1, False, None, None), ("sub-1", START + 41, 1, True, None, True),
        ("sub-1", START + 42, 3, True, 13, None), ("sub-1", START + 45, 5, True, 12, None),
        ("sub-1", START + 51, 9, True, 12, None), ("sub-1", START + 60, 1, True, 12, None)], got
    run = next(e for e in audit.entries(since=0, until=HOUR + 3600) if e["window_start"] == START + 51)
    assert (run["at"], run["last_window_start"], run["last_at"], run["window"]) == (
        START + 51.4, START + 59, START + 59.4, "1s")
    # what is on disk are the runs that ended; the open ones are in OPEN_RUNS until they end
    assert len(on_disk(tmp_path)) == len(got) - 2  # sub-1's 1 min run and sub-2's second: still open
    assert any((tmp_path / name).exists() for name in OPEN_RUNS)
    audit.close()
    assert sorted(shape(on_disk(tmp_path))) == sorted(got)  # a clean stop ends and writes every run


def test_a_steady_stream_is_a_run_an_hour_and_the_readers_filters_keep_their_meaning(tmp_path):
    clock = Clock(DAY0)
    audit = AuditLog(tmp_path, clock=clock)
    for i in range(3 * 3600):  # three hours of a 1 s subscription
        push(audit, clock, DAY0 + i)
        if i % 1800 == 900:
            clock.now += 0.1
            audit.record("org-9", "organization", "data.read", window="1m", window_start=DAY0, released=True)
        if i % 5 == 4:
            audit.flush()
    audit.close()
    on_file = on_disk(tmp_path)
    assert len(on_file) == 3 + 6 and sum(e.get("windows", 0) for e in on_file) == 3 * 3600
    reopened = AuditLog(tmp_path, clock=lambda: DAY0 + 86000)
    every = reopened.entries(since=0)
    assert [(e["action"], e.get("window_start")) for e in every] == [
        ("data.push", DAY0), ("data.read", DAY0), ("data.read", DAY0), ("data.push", DAY0 + 3600),
        ("data.read", DAY0), ("data.read", DAY0), ("data.push", DAY0 + 7200), ("data.read", DAY0),
        ("data.read", DAY0)]  # by time, a run at its first window's
    # since/until: a run is in the answer if one of its windows was decided in them
    inside = reopened.entries(since=DAY0 + 1000, until=DAY0 + 1001)
    assert [(e["action"], e.get("windows")) for e in inside] == [("data.push", 3600)]
    assert [e["window_start"] for e in reopened.entries(since=DAY0 + 3599.4, until=DAY0 + 3600.4)] == [
        DAY0, DAY0 + 3600]
    assert reopened.entries(since=DAY0 + 3 * 3600 + 1, until=DAY0 + 4 * 3600) == []
    # who, and limit: a run is one entry; the newest `limit`
    assert [e["action"] for e in reopened.entries(since=0, who="org-9")] == ["data.read"] * 6
    assert [(e["action"], e.get("window_start")) for e in reopened.entries(since=0, limit=2)] == [
        ("data.read", DAY0), ("data.read", DAY0)]
    assert [e.get("window_start") for e in reopened.entries(since=0, who="org-1", limit=2)] == [
        DAY0 + 3600, DAY0 + 7200]
    reopened.close()


def test_the_runs_not_in_a_file_yet_are_read_with_the_files(tmp_path):
    clock = Clock(START)
    audit = AuditLog(tmp_path, clock=clock)
    for i in range(20):
        push(audit, clock, START + i)
    assert on_disk(tmp_path) == []
    assert shape(audit.entries(since=0)) == [("sub-1", START, 20, True, 12, None)]  # open: from memory
    index = AccessIndex(tmp_path, audit.pending_runs)
    assert index.days() == [DAY0]  # no day file yet: the page looks at the day all the same
    mine = index.own(DAY0, "h-1", ["org-1"], lambda e: views.concerns(e, "h-1", {("org-1", "aggregates")}))
    assert [(e["window_start"], e["windows"]) for e in mine] == [(START, 20)]
    for i in range(20, 40):  # the hour ends: the first run ends; not flushed yet, it is read from memory
        push(audit, clock, START + i)
    assert shape(audit.pending_runs()) == [("sub-1", START, 30, True, 12, None), ("sub-1", START + 30, 10, True, 12,
                                                                                     None)]
    mine = index.own(DAY0, "h-1", ["org-1"], lambda e: views.concerns(e, "h-1", {("org-1", "aggregates")}))
    assert [(e["window_start"], e["windows"]) for e in mine] == [(START, 30), (START + 30, 10)]
    audit.flush()
    assert shape(on_disk(tmp_path)) == [("sub-1", START, 30, True, 12, None)]
    assert shape(audit.entries(since=0)) == [("sub-1", START, 30, True, 12, None),
                                             ("sub-1", START + 30, 10, True, 12, None)]
    clock.now = HOUR + 3599  # the subscription stopped: its run stays open while a window of its hour may come
    audit.flush()
    assert len(on_disk(tmp_path)) == 1
    clock.now = HOUR + 2 * 3600  # none can any more: the flush writes it to its day file
    audit.flush()
    assert shape(on_disk(tmp_path)) == [("sub-1", START, 30, True, 12, None), ("sub-1", START + 30, 10, True, 12,
                                                                                None)]
    assert audit.pending_runs() == []
    audit.close()


def test_files_of_the_format_before_read_as_before_and_beside_runs(tmp_path):
    """A day written one entry per window (as `record` still writes, and every agent did before runs) gives
    exactly its entries, as decoded from the file; a day file where runs follow them gives both."""
    clock = Clock(START)
    old = AuditLog(tmp_path, clock=clock)
    for i in range(40):
        clock.now = START + i + 0.4
        old.record("org-1", "organization", "data.push", durable=False, subscription_id="sub-1", window="1s",
                   window_start=START + i, released=i % 3 != 0, **({"households": 12} if i % 3 else {}))
    old.close()
    written = on_disk(tmp_path)
    assert len(written) == 40
    reopened = AuditLog(tmp_path, clock=Clock(START + 100))
    assert reopened.entries(since=0) == written  # identical, entry by entry
    index = AccessIndex(tmp_path, reopened.pending_runs)

    def mine() -> list[dict]:
        return index.own(DAY0, "h-1", ["org-1"], lambda e: views.concerns(e, "h-1", {("org-1", "aggregates")}))
    assert [(e["window_start"], e["windows"]) for e in mine()] == [(START, 30), (START + 30, 10)]
    # the same subscription goes on, now written as runs: one file holds both formats
    clock = Clock(START + 40)
    reopened.clock = clock
    for i in range(40, 60):
        push(reopened, clock, START + i, released=True, households=11 + i % 2)  # a run a window
    reopened.flush()
    assert reopened.entries(since=0)[:40] == written
    assert [(e["window_start"], e.get("windows")) for e in reopened.entries(since=0)[40:]] == [
        (START + i, 1) for i in range(40, 60)]
    # the page: the old entries' run of the hour goes on with the new format's (its outcomes are not shown)
    assert [(e["window_start"], e["windows"]) for e in mine()] == [(START, 30), (START + 30, 30)]
    reopened.close()


def test_the_access_page_shows_the_same_runs_whatever_the_outcomes_cut_on_disk(tmp_path):
    """On disk a run is cut where an outcome changed (withheld, a household more): that depends on other
    households. The page's rows must not: the same windows give the same entries, however they came out, and the
    same as one entry per window gave."""
    def page(name: str, outcome, runs: bool) -> list[dict]:
        directory = tmp_path / name
        clock = Clock(START)
        audit = AuditLog(directory, clock=clock)
        index = AccessIndex(directory, audit.pending_runs)
        pages = []
        for i in range(90):
            if i in range(70, 75):
                continue  # not decided
            clock.now = START + i + 0.4
            if runs:
                audit.record_push("org-1", "sub-1", "1s", START + i, **outcome(i))
            else:
                audit.record("org-1", "organization", "data.push", durable=False, subscription_id="sub-1",
                             window="1s", window_start=START + i, **outcome(i))
            if i == 45:
                audit.record("org-1", "organization", "data.read", window="1m", window_start=int(HOUR),
                             released=False)
            if i % 7 == 6:
                audit.flush()
            if i % 11 == 10:  # a page read now and then (it flushes first, as the page does): files and memory
                audit.flush()
                pages.append(index.own(DAY0, "h-1", ["org-1"],
                                       lambda e: views.concerns(e, "h-1", {("org-1", "aggregates")})))
        audit.close()
        pages.append(index.own(DAY0, "h-1", ["org-1"], lambda e: views.concerns(e, "h-1", {("org-1", "aggregates")})))
        return pages

    def steady(i: int) -> dict:
        return dict(SENT)

    def flapping(i: int) -> dict:
        return {"released": bool(i % 3), **({"households": 12 + i % 5} if i % 3 else {}),
                **({"filtered": True} if i % 3 == 2 else {})}
    expected = page("before", flapping, runs=False)
    assert [(e["action"], e["window_start"], e.get("windows")) for e in expected[-1]] == [
        ("data.push", START, 30), ("data.push", START + 30, 40), ("data.read", int(HOUR), None),
        ("data.push", START + 75, 15)]
    for name, outcome in (("steady", steady), ("flapping", flapping)):
        got = page(name, outcome, runs=True)
        assert got == expected, name
        # and a page read before is a prefix of a later one (its cursors hold), but for open runs' counts
        for before, after in zip(got, got[1:]):
            assert [{**e, "windows": None} for e in before] == [{**e, "windows": None} for e in after[:len(before)]]


def test_retention_removes_old_days_of_runs_and_keeps_the_open_ones(tmp_path):
    past = DAY0 - 500 * 86400
    clock = Clock(past)
    audit = AuditLog(tmp_path, clock=clock)
    for i in range(10):
        push(audit, clock, past + i)
    audit.close()
    old = next(tmp_path.glob("*.seg"))
    os.utime(old, (past + 100, past + 100))
    clock = Clock(START)
    audit = AuditLog(tmp_path, clock=clock)
    for i in range(10):
        push(audit, clock, START + i)
    audit.flush()
    assert audit.apply_retention() == 1 and not old.exists()
    assert any((tmp_path / name).exists() for name in OPEN_RUNS)  # the open run's state is no day file
    assert shape(audit.entries(since=0)) == [("sub-1", START, 10, True, 12, None)]
    audit.close()


WRITER = textwrap.dedent("""\
    import sys
    from agent.audit import AuditLog

    DAY0, now = int(sys.argv[2]), [0.0]
    log = AuditLog(sys.argv[1], clock=lambda: now[0])
    i = 0
    while True:
        now[0] = DAY0 + i + 0.4  # 1 s windows, decided 0.4 s after they start
        details = {"released": False} if i % 500 == 499 else {"released": True, "households": 12}
        log.record_push("org-1", "sub-1", "1s", DAY0 + i, **details)
        if i % 5 == 4:  # the agent's periodic flush
            log.flush()
            print(i, flush=True)  # every window up to i is on disk (in a day file or OPEN_RUNS)
        i += 1
""")


def test_a_kill_9_mid_run_loses_only_what_followed_the_last_flush(tmp_path):
    """A real writer process, killed while it records and flushes: a new AuditLog's start appends the runs that
    were open to their day files. Every window flushed before the kill is in exactly one run, in order, each run
    in one clock hour, with its details; a window after the last flush may be lost, nothing before it."""
    directory = tmp_path / "audit"
    flushed = kill_9_when(WRITER, [str(directory), str(DAY0)], 4000)  # past the first hour and some cuts
    audit = AuditLog(directory, clock=lambda: DAY0 + 86000)
    runs = audit.entries(since=0)
    windows = [run["window_start"] + k for run in runs for k in range(run.get("windows", 1))]
    assert windows == list(range(DAY0, DAY0 + len(windows))), "windows out of order, missing or twice"
    assert len(windows) > flushed, "a flushed window was lost"
    for run in runs:
        last = run.get("last_window_start", run["window_start"])  # a run of one has none
        assert run["window_start"] // 3600 == last // 3600 and last == run["window_start"] + run["windows"] - 1
        cut = [w for w in range(run["window_start"], last + 1) if (w - DAY0) % 500 == 499]
        assert cut in ([], [run["window_start"]]) and run["released"] == (not cut)
    # the page reads the same windows
    index = AccessIndex(directory, audit.pending_runs)
    mine = index.own(DAY0, "h-1", ["org-1"], lambda e: views.concerns(e, "h-1", {("org-1", "aggregates")}))
    assert sum(e["windows"] for e in mine) == len(windows) and len(mine) == len({w // 3600 for w in windows})
    audit.close()


def test_a_crash_between_a_runs_write_and_the_open_runs_one_reads_it_once(tmp_path):
    """The flush appends the ended runs to their day files, then writes OPEN_RUNS: a stop between the two leaves
    an ended run in both, and the start appends it again. Readers take it once, with its most windows."""
    clock = Clock(START + 40)
    audit = AuditLog(tmp_path, clock=clock)
    for i in range(40, 50):
        push(audit, clock, START + i)
    audit.flush()  # the run of 10 in OPEN_RUNS
    states = {name: (tmp_path / name).read_bytes() for name in OPEN_RUNS if (tmp_path / name).exists()}
    for i in range(50, 55):
        push(audit, clock, START + i)
    push(audit, clock, START + 55, released=False)  # ends the run of 15
    original = audit._write_open_runs

    def stop(runs):
        raise SystemExit("killed before OPEN_RUNS was written")
    audit._write_open_runs = stop  # type: ignore[method-assign]
    try:
        audit.flush()
    except SystemExit:
        pass
    audit._write_open_runs = original  # type: ignore[method-assign]
    assert shape(on_disk(tmp_path)) == [("sub-1", START + 40, 15, True, 12, None)]
    for name, data in states.items():  # OPEN_RUNS as the stop left them
        (tmp_path / name).write_bytes(data)
    restarted = AuditLog(tmp_path, clock=Clock(START + 100))
    assert shape(on_disk(tmp_path)) == [("sub-1", START + 40, 15, True, 12, None),
                                        ("sub-1", START + 40, 10, True, 12, None)]  # appended again
    assert shape(restarted.entries(since=0)) == [("sub-1", START + 40, 15, True, 12, None)]
    index = AccessIndex(tmp_path, restarted.pending_runs)
    mine = index.own(DAY0, "h-1", ["org-1"], lambda e: views.concerns(e, "h-1", {("org-1", "aggregates")}))
    assert [(e["window_start"], e["windows"]) for e in mine] == [(START + 40, 15)]
    restarted.close()


async def test_get_audit_lists_a_subscriptions_withheld_windows_as_one_run(tmp_path, start_agent, receiver):
    """A real agent: a 1 min subscription of an organization nobody consented to is withheld every window; the
    operator's GET /audit lists them as one run, as its document says an entry is."""
    config = make_config(tmp_path)
    levels = {**config.levels, "dso": replace(config.levels["dso"], windows=("1m", "15m", "1h"))}
    clock = StepClock(HOUR + 10)
    running = await start_agent(replace(config, levels=levels, delivery=delivery_config()), clock=clock)
    _, dso_key = await running.create_org("Grid operator", "dso")
    status, out = await running.call("POST", "/data/subscribe", token=dso_key, json={
        "endpoint": receiver.url, "interval": 60, "window": "1m"})
    assert status == 201, out
    for _ in range(6):
        clock.now = (math.floor(clock.now / 60) + 1) * 60 + 1
        await running.agent.releases.settle()
        running.agent.delivery.produce_due()
    status, body = await running.call("GET", "/audit?since=0")
    assert status == 200
    conforms("Audit", body)
    pushes = [e for e in body["entries"] if e["action"] == "data.push"]
    assert len(pushes) == 1 and pushes[0]["subscription_id"] == out["id"] and pushes[0]["released"] is False
    run = pushes[0]
    assert run["windows"] >= 5 and run["last_window_start"] == run["window_start"] + 60 * (run["windows"] - 1)
