"""The store port's contract, run unchanged against SQLite and against Firestore on its emulator."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from emulators import PROJECT, Emulator, clear_firestore
from shepherd.adapters.firestore_store import FirestoreStore
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.model import (
    IncomingTrigger,
    Invocation,
    JobState,
    LogEntry,
    LogKind,
    Status,
    Timer,
    Trigger,
    TriggerRequest,
    TriggerStatus,
)
from shepherd.ports import ConflictError, Store, TriagePlan, TriageView

JOB = "chromium/Windows deterministic"


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield SqliteStore(tmp_path / "state.db")
        return
    emulator: Emulator = request.getfixturevalue("firestore_emulator")
    clear_firestore(emulator.host)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FIRESTORE_EMULATOR_HOST", emulator.host)
        client = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    yield FirestoreStore(client, retention_ns=90 * 24 * 3600 * 10**9)
    client.close()


def invocation(inv_id: int, created: int = 1, job: str = JOB) -> Invocation:
    return Invocation(
        id=inv_id,
        job_id=job,
        request=TriggerRequest(job_id=job, tags=("a:b",), properties={"k": [1, "x"]}),
        created_ns=created,
    )


def test_create_then_get_round_trips_everything(store: Store) -> None:
    inv = invocation(7).evolve(
        pending_timers=(Timer("t:7:0:0", "check", 1, 2, {"p": 1}),),
        task_data={"build_id": "9"},
        triggers=(IncomingTrigger("t/+/x@1", TriggerRequest(job_id=JOB), created_ns=3),),
    )
    store.create(inv, [LogEntry(1, "queued", LogKind.QUEUED)])
    assert store.get(7) == inv
    assert store.read_log(7) == [LogEntry(1, "queued", LogKind.QUEUED)]
    assert store.get(8) is None
    with pytest.raises(ConflictError):
        store.create(invocation(7), [])
    assert store.get(7) == inv


def test_commit_is_a_compare_and_swap_on_the_mutation_count(store: Store) -> None:
    inv = invocation(1)
    store.create(inv, [LogEntry(1, "a", LogKind.INFO)])
    running = inv.evolve(status=Status.RUNNING, mutation_count=1)
    store.commit(running, 0, [LogEntry(2, "b", LogKind.INFO), LogEntry(3, "c", LogKind.INFO)])
    with pytest.raises(ConflictError):
        store.commit(
            inv.evolve(status=Status.FAILED, mutation_count=1),
            0,
            [LogEntry(4, "lost", LogKind.INFO)],
        )
    assert store.get(1) == running
    assert [e.text for e in store.read_log(1)] == ["a", "b", "c"]


def test_racing_commits_exactly_one_wins(store: Store) -> None:
    store.create(invocation(1), [])
    wins: list[int] = []
    conflicts: list[int] = []
    barrier = threading.Barrier(8)

    def contender(n: int) -> None:
        barrier.wait()
        try:
            store.commit(
                invocation(1).evolve(mutation_count=1, view_url=str(n)),
                0,
                [LogEntry(n, str(n), LogKind.INFO)],
            )
            wins.append(n)
        except ConflictError:
            conflicts.append(n)

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(conflicts) == 7
    stored = store.get(1)
    assert stored is not None and stored.view_url == str(wins[0])
    assert [e.text for e in store.read_log(1)] == [str(wins[0])]


def test_lists_newest_first_and_active_only(store: Store) -> None:
    for n in range(5):
        store.create(invocation(n + 1, created=n), [])
    store.create(invocation(99, created=50, job="chromium/other"), [])
    store.commit(invocation(2, created=1).evolve(status=Status.SUCCEEDED, mutation_count=1), 0, [])
    assert [i.id for i in store.list_invocations(JOB)] == [5, 4, 3, 2, 1]
    assert [i.id for i in store.list_invocations(JOB, limit=2)] == [5, 4]
    assert sorted(i.id for i in store.list_active()) == [1, 3, 4, 5, 99]


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.db"
    SqliteStore(path).create(invocation(1), [LogEntry(1, "queued", LogKind.QUEUED)])
    reopened = SqliteStore(path)
    assert reopened.get(1) == invocation(1)
    assert reopened.read_log(1) == [LogEntry(1, "queued", LogKind.QUEUED)]


def test_read_then_commit_as_the_engine_does_exactly_one_racer_wins(store: Store) -> None:
    store.create(invocation(1), [LogEntry(1, "queued", LogKind.QUEUED)])
    barrier = threading.Barrier(6)
    wins: list[int] = []

    def contender(n: int) -> None:
        seen = store.get(1)  # each handler reads first, then commits on what it read
        assert seen is not None
        barrier.wait()
        try:
            store.commit(
                seen.evolve(mutation_count=1, view_url=str(n)),
                0,
                [LogEntry(n, str(n), LogKind.INFO)],
            )
            wins.append(n)
        except ConflictError:
            pass

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    stored = store.get(1)
    assert stored is not None and stored.view_url == str(wins[0]) and stored.mutation_count == 1
    assert [e.text for e in store.read_log(1)] == ["queued", str(wins[0])]
    # A stale read cannot commit either, even after the winner is done.
    again = stored.evolve(mutation_count=2)
    store.commit(again, 1, [LogEntry(9, "next", LogKind.INFO)])
    with pytest.raises(ConflictError):
        store.commit(
            stored.evolve(mutation_count=2, view_url="late"),
            1,
            [LogEntry(10, "late", LogKind.INFO)],
        )
    assert [e.text for e in store.read_log(1)][-1] == "next"


def test_kinds_and_calls_round_trip(store: Store) -> None:
    store.create(invocation(1), [LogEntry(1, "queued", LogKind.QUEUED)])
    every_kind = [LogEntry(10 + i, kind.value, kind) for i, kind in enumerate(LogKind)]
    with_calls = [
        LogEntry(50, "Scheduled build:\n{}", LogKind.BUILD, "ScheduleBuild"),
        LogEntry(51, "Failed to fetch build - x", LogKind.ERROR, "GetBuild"),
        LogEntry(52, "Invocation was manually aborted by user", LogKind.ABORT, "CancelBuild"),
    ]
    store.commit(invocation(1).evolve(mutation_count=1), 0, every_kind + with_calls)
    assert store.read_log(1) == [
        LogEntry(1, "queued", LogKind.QUEUED),
        *every_kind,
        *with_calls,
    ]


# The log table as the first versions wrote it, before entries had a kind and a call.
_OLD_SCHEMA = """
CREATE TABLE invocations (id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, request_id TEXT,
    status TEXT NOT NULL, mutation_count INTEGER NOT NULL, created_ns INTEGER NOT NULL,
    data TEXT NOT NULL);
CREATE TABLE log_lines (invocation_id INTEGER NOT NULL, mutation_count INTEGER NOT NULL,
    idx INTEGER NOT NULL, time_ns INTEGER NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (invocation_id, mutation_count, idx));
"""


def test_an_old_sqlite_file_gains_kinds_on_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = invocation(1)
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_SCHEMA)
        db.execute(
            "INSERT INTO invocations VALUES (1, ?, NULL, 'STARTING', 0, 1, ?)",
            (JOB, json.dumps(old.to_dict())),
        )
        db.execute("INSERT INTO log_lines VALUES (1, 0, 0, 1, 'written before kinds')")
    db.close()
    store = SqliteStore(path)
    assert store.read_log(1) == [LogEntry(1, "written before kinds", LogKind.INFO)]
    started = LogEntry(2, "Starting the invocation (attempt 1)", LogKind.STARTED)
    store.commit(old.evolve(mutation_count=1), 0, [started])
    reopened = SqliteStore(path)  # the migration is done once, then nothing more
    assert reopened.read_log(1) == [
        LogEntry(1, "written before kinds", LogKind.INFO),
        started,
    ]


def test_old_firestore_chunks_read_as_info(firestore_emulator: Emulator) -> None:
    clear_firestore(firestore_emulator.host)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
        client = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    store = FirestoreStore(client)
    store.create(invocation(1), [LogEntry(1, "queued", LogKind.QUEUED)])
    old_chunk = {"entries": [{"t": 2, "x": "written before kinds"}]}
    client.collection("invocations").document("1").collection("log").document(f"{1:08d}").set(
        old_chunk
    )
    assert store.read_log(1) == [
        LogEntry(1, "queued", LogKind.QUEUED),
        LogEntry(2, "written before kinds", LogKind.INFO),
    ]
    client.close()


def test_list_overdue_finds_only_overdue_unfinished_ones_earliest_first(store: Store) -> None:
    for n, next_check in enumerate([50, 10, 30, 1000, None], start=1):
        store.create(invocation(n).evolve(next_check_ns=next_check), [])
    store.commit(
        invocation(2).evolve(status=Status.RUNNING, mutation_count=1, next_check_ns=20), 0, []
    )
    store.commit(invocation(3).evolve(status=Status.SUCCEEDED, mutation_count=1), 0, [])
    assert [i.id for i in store.list_overdue(100, limit=10)] == [2, 1]
    assert [i.id for i in store.list_overdue(100, limit=1)] == [2]
    assert store.list_overdue(20, limit=10) == []
    found = store.list_overdue(2000, limit=10)
    assert [(i.id, i.next_check_ns) for i in found] == [(2, 20), (1, 50), (4, 1000)]
    assert found[0] == store.get(2)


def test_the_overdue_query_reads_the_index_not_the_table(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    with sqlite3.connect(tmp_path / "state.db") as db:
        plan = db.execute("EXPLAIN QUERY PLAN " + store.OVERDUE_QUERY, (1, 10)).fetchall()
    db.close()
    details = " ".join(row[-1] for row in plan)
    assert "USING INDEX invocations_next_check" in details and "SCAN" not in details


def test_list_check_group_finds_the_groups_members_only(store: Store) -> None:
    group, other = "buildbucket:a.appspot.com", "buildbucket:b.appspot.com"
    for n, in_group in enumerate([group, other, group, None], start=1):
        store.create(invocation(n).evolve(status=Status.RUNNING, check_group=in_group), [])
    assert sorted(i.id for i in store.list_check_group(group)) == [1, 3]
    assert len(store.list_check_group(group, limit=1)) == 1
    assert store.list_check_group("buildbucket:c.appspot.com") == []
    # Left with its last change (the engine clears the group once final).
    store.commit(invocation(3).evolve(status=Status.SUCCEEDED, mutation_count=1), 0, [])
    assert [i.id for i in store.list_check_group(group)] == [1]
    assert store.list_check_group(group)[0] == store.get(1)


def test_the_check_group_query_reads_the_index_not_the_table(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    with sqlite3.connect(tmp_path / "state.db") as db:
        plan = db.execute("EXPLAIN QUERY PLAN " + store.CHECK_GROUP_QUERY, ("g", 10)).fetchall()
    db.close()
    details = " ".join(row[-1] for row in plan)
    assert "USING INDEX invocations_check_group" in details and "SCAN" not in details


def test_an_old_sqlite_file_gains_next_checks_on_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_SCHEMA)
        for inv_id, status in ((1, "RUNNING"), (2, "SUCCEEDED")):
            old = invocation(inv_id, created=inv_id * 10)
            db.execute(
                "INSERT INTO invocations VALUES (?, ?, NULL, ?, 0, ?, ?)",
                (inv_id, JOB, status, old.created_ns, json.dumps(old.to_dict())),
            )
    db.close()
    # The unfinished one is due at once, for the sweep to look at.
    assert [i.id for i in SqliteStore(path).list_overdue(100, 10)] == [1]


# --- triggers and triage ---------------------------------------------------------------------


def trigger(trigger_id: str, created: int, order: int = 0, job: str = JOB) -> Trigger:
    request = TriggerRequest(job_id=job, tags=(f"n:{trigger_id}",), request_id=trigger_id)
    return Trigger(trigger_id, job, created, request, order)


def test_a_trigger_id_is_one_trigger_per_job(store: Store) -> None:
    first = trigger("cron:1/+/ref@x", 5)
    assert store.add_trigger(first) == first
    assert store.add_trigger(trigger("cron:1/+/ref@x", 9)) == first  # the stored one
    other = trigger("cron:1/+/ref@x", 9, job="chromium/other")
    assert store.add_trigger(other) == other
    assert store.get_trigger(JOB, "cron:1/+/ref@x") == first
    assert store.get_trigger(JOB, "nope") is None


def test_a_triggers_title_url_and_commit_time_round_trip(store: Store) -> None:
    described = dataclasses.replace(
        trigger("r/+/refs/heads/main@c1", 5),
        request=TriggerRequest(
            JOB, request_id="r/+/refs/heads/main@c1", title="c1", url="r/+/c1", commit_time_ns=3
        ),
    )
    assert store.add_trigger(described) == described
    assert store.get_trigger(JOB, described.id) == described
    assert store.list_pending(JOB, 10) == [described]
    plan = store.triage(JOB, 10, take_all)
    assert plan is not None
    (taken,) = plan.triggers
    assert store.get_trigger(JOB, described.id) == taken and taken.request == described.request
    emitter = invocation(11).evolve(emitted_triggers=(described,))
    store.create(emitter, [])
    assert store.get(11) == emitter


def test_triggers_without_titles_are_stored_as_before_titles_existed(tmp_path: Path) -> None:
    plain = trigger("cron:1", 5)
    stored = plain.to_dict()
    assert not {"title", "url", "commit_time_ns"} & set(stored["request"])
    assert Trigger.from_dict(stored) == plain and plain.incoming().title == ""
    store = SqliteStore(tmp_path / "state.db")
    store.add_trigger(plain)
    assert store.get_trigger(JOB, "cron:1") == plain


def test_pending_triggers_come_oldest_first_by_time_order_and_id(store: Store) -> None:
    for t in [trigger("b", 20), trigger("a_t3", 20), trigger("t2", 10), trigger("c", 20, -1)]:
        store.add_trigger(t)
    store.add_trigger(trigger("elsewhere", 1, job="chromium/other"))
    assert [t.id for t in store.list_pending(JOB, 10)] == ["t2", "c", "a_t3", "b"]
    assert [t.id for t in store.list_pending(JOB, 2)] == ["t2", "c"]


def take_all(view: TriageView) -> TriagePlan | None:
    """A plan that starts one invocation of every pending trigger, as greedy batching does."""
    if not view.pending:
        return None
    inv = invocation(hash(view.pending[-1].id) % 10**9 + 1)
    started = tuple(
        t.evolve(status=TriggerStatus.STARTED, invocation_id=inv.id) for t in view.pending
    )
    job = view.job.evolve(active=(*(i for i in view.job.active if i not in view.finished), inv.id))
    return TriagePlan(job, started, ((inv, (LogEntry(1, "queued", LogKind.QUEUED),)),))


def test_a_triage_reads_and_writes_in_one_transaction(store: Store) -> None:
    assert store.get_job(JOB) == JobState(JOB)
    store.add_trigger(trigger("t1", 1))
    store.add_trigger(trigger("t2", 2))
    plan = store.triage(JOB, 10, take_all)
    assert plan is not None
    ((inv, _),) = plan.invocations
    assert store.get(inv.id) == inv
    assert store.read_log(inv.id) == [LogEntry(1, "queued", LogKind.QUEUED)]
    assert store.list_pending(JOB, 10) == []
    assert store.get_trigger(JOB, "t2") == plan.triggers[1]
    assert store.get_job(JOB).active == (inv.id,)
    seen: list[TriageView] = []
    assert store.triage(JOB, 10, lambda view: seen.append(view)) is None  # writes nothing
    assert seen[0].finished == frozenset()
    store.commit(inv.evolve(status=Status.SUCCEEDED, mutation_count=1), 0, [])
    store.triage(JOB, 10, lambda view: seen.append(view))
    assert seen[1].finished == {inv.id}  # final: its slot is free


def test_racing_triages_start_each_trigger_once(store: Store) -> None:
    for n in range(6):
        store.add_trigger(trigger(f"t{n}", n))
    barrier = threading.Barrier(4)
    plans: list[TriagePlan | None] = []
    conflicts: list[ConflictError] = []

    def triage() -> None:
        barrier.wait()
        try:
            plans.append(store.triage(JOB, 10, take_all))
        except ConflictError as e:  # gave up contending: it changed nothing
            conflicts.append(e)

    threads = [threading.Thread(target=triage) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [p for p in plans if p is not None]
    assert len(plans) + len(conflicts) == 4
    assert len(made) == 1, "one triage took them all; the others found nothing or gave up"
    ((inv, _),) = made[0].invocations
    assert {t.invocation_id for t in made[0].triggers} == {inv.id}
    assert store.get_job(JOB).active == (inv.id,)


def test_a_kinds_state_is_kept_per_job_and_replaced_whole(store: Store) -> None:
    assert store.get_kind_state("infra/poller") == {}
    store.put_kind_state("infra/poller", {"refs": {"refs/heads/main": "a" * 40}, "n": [1]})
    store.put_kind_state("infra/other poller", {"refs": {}})
    assert store.get_kind_state("infra/poller") == {"refs": {"refs/heads/main": "a" * 40}, "n": [1]}
    store.put_kind_state("infra/poller", {"refs": {"refs/heads/dev": "b" * 40}})
    assert store.get_kind_state("infra/poller") == {"refs": {"refs/heads/dev": "b" * 40}}
    assert store.get_kind_state("infra/other poller") == {"refs": {}}


def test_a_commit_writes_the_kind_state_it_carries_or_nothing(store: Store) -> None:
    """The engine stores a poll's end, the triggers it emitted and its kind state in one write."""
    poller = "infra/poller"
    store.create(invocation(7, job=poller), [])
    store.commit(invocation(7, job=poller).evolve(mutation_count=1), 0, [], {"n": 1})
    assert store.get_kind_state(poller) == {"n": 1}
    with pytest.raises(ConflictError):
        store.commit(invocation(7, job=poller).evolve(mutation_count=6), 5, [], {"n": 2})
    assert store.get_kind_state(poller) == {"n": 1}
    inv = store.get(7)  # Firestore: the next commit is a batch on the version read
    assert inv is not None
    log = [LogEntry(1, "Saved 1 known refs", LogKind.POLL)]
    store.commit(inv.evolve(mutation_count=2), 1, log, {"n": 3})
    assert store.get_kind_state(poller) == {"n": 3}
    assert store.read_log(7) == log
    store.commit(inv.evolve(mutation_count=3), 2, [])  # none: the state stays
    assert store.get_kind_state(poller) == {"n": 3}
