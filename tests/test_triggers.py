"""Triggers through the engine: pending sets, batching, pauses, racing triggers, a lost triage;
and a batch built into one Buildbucket request against the simulator."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from emulators import PROJECT, Emulator, clear_firestore
from kinds import sleep_engine
from shepherd.adapters.embedded import VirtualTimerQueue
from shepherd.adapters.firestore_store import FirestoreStore
from shepherd.clock import VirtualClock
from shepherd.durations import MINUTE
from shepherd.engine import START_TASK, Engine, JobPaused
from shepherd.model import GitilesTrigger, Status, TriggerRequest, TriggerStatus
from shepherd.tasks.buildbucket import SCHEDULER_PROPERTY
from shepherd_tools.replay import VirtualStack, load_scenario
from shepherd_tools.simulator.control import SimulatorProcess

JOB = "infra/nap"


@dataclasses.dataclass
class Stack:
    engine: Engine
    clock: VirtualClock
    queue: VirtualTimerQueue

    def run_due(self) -> list[str]:
        names = []
        for task in self.queue.pop_due(self.clock.now_ns()):
            self.engine.handle_task(task.invocation_id, task.timer_id, task.name)
            names.append(task.name)
        return names

    def trigger(self, request_id: str) -> TriggerStatus:
        done = self.engine.trigger(TriggerRequest(job_id=JOB, request_id=request_id))
        return done.trigger.status


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A sleep job of 10 minutes, one invocation at a time (the default policy)."""
    engine, clock, queue = sleep_engine(tmp_path, seconds=600)
    if request.param == "firestore":
        emulator: Emulator = request.getfixturevalue("firestore_emulator")
        clear_firestore(emulator.host)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FIRESTORE_EMULATOR_HOST", emulator.host)
            client = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
        engine.store = FirestoreStore(client)
    yield Stack(engine, clock, queue)


def test_triggers_while_a_build_runs_fold_into_one_next_invocation(stack: Stack) -> None:
    assert stack.trigger("a") is TriggerStatus.STARTED
    assert stack.run_due() == [START_TASK]
    for request_id in ("b", "c", "d"):
        stack.clock.advance(MINUTE)
        assert stack.trigger(request_id) is TriggerStatus.PENDING
    assert [t.id for t in stack.engine.store.list_pending(JOB, 10)] == ["b", "c", "d"]
    stack.clock.advance(10 * MINUTE)
    assert stack.run_due() == ["wake-up"]  # a ends: the triage after it starts b, c, d at once
    first, second = stack.engine.store.list_invocations(JOB)[::-1]
    assert first.status is Status.SUCCEEDED and second.status is Status.STARTING
    assert [t.id for t in second.triggers] == ["b", "c", "d"]
    assert second.request.request_id == "d"  # built from the newest
    for request_id in ("b", "c", "d"):
        found = stack.engine.store.get_trigger(JOB, request_id)
        assert found is not None and found.invocation_id == second.id
    assert stack.engine.store.list_pending(JOB, 10) == []


def test_the_same_trigger_id_twice_is_one_trigger(stack: Stack) -> None:
    first = stack.engine.trigger(TriggerRequest(job_id=JOB, request_id="k"))
    again = stack.engine.trigger(TriggerRequest(job_id=JOB, request_id="k", tags=("x:y",)))
    assert first.invocation is not None and again.invocation is not None
    assert again.trigger == first.trigger and again.invocation.id == first.invocation.id
    assert len(stack.engine.store.list_invocations(JOB)) == 1


def test_a_pause_discards_what_waits_and_refuses_new_triggers(stack: Stack) -> None:
    stack.trigger("a")
    stack.run_due()
    stack.trigger("b")
    state = stack.engine.pause(JOB, "tree closed")
    assert state.paused and state.paused_reason == "tree closed"
    discarded = stack.engine.store.get_trigger(JOB, "b")
    assert discarded is not None and discarded.status is TriggerStatus.DISCARDED
    assert discarded.reason == "the job was paused: tree closed"
    with pytest.raises(JobPaused, match="tree closed"):
        stack.trigger("c")
    stack.clock.advance(10 * MINUTE)
    stack.run_due()  # the running one goes on to its end; nothing starts after it
    assert [i.status for i in stack.engine.store.list_invocations(JOB)] == [Status.SUCCEEDED]
    assert not stack.engine.resume(JOB).paused
    assert stack.trigger("c") is TriggerStatus.STARTED


def test_abort_all_aborts_every_running_invocation(tmp_path: Path) -> None:
    engine, clock, queue = sleep_engine(
        tmp_path, seconds=600, triggering_policy={"max_concurrent_invocations": 3}
    )
    stack = Stack(engine, clock, queue)
    for request_id in ("a", "b", "c"):
        assert stack.trigger(request_id) is TriggerStatus.STARTED
    stack.run_due()
    aborted = engine.abort_job(JOB)
    assert sorted(i.status for i in aborted) == [Status.ABORTED] * 3


def test_racing_triggers_start_one_invocation_and_lose_none(stack: Stack) -> None:
    barrier = threading.Barrier(8)
    statuses: list[TriggerStatus] = []

    def trigger(n: int) -> None:
        barrier.wait()
        statuses.append(stack.trigger(f"t{n}"))

    threads = [threading.Thread(target=trigger, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = stack.engine.store.list_invocations(JOB)
    assert len(started) == 1, "max_concurrent_invocations = 1"
    waiting = {t.id for t in stack.engine.store.list_pending(JOB, 10)}
    assert {t.id for t in started[0].triggers} | waiting == {f"t{n}" for n in range(8)}
    assert not {t.id for t in started[0].triggers} & waiting
    assert len(statuses) == 8, "every trigger was answered (a lost race leaves it PENDING)"


def test_a_triage_lost_after_an_end_is_done_by_the_next_tick(stack: Stack) -> None:
    stack.trigger("a")
    stack.run_due()
    stack.trigger("b")
    stack.engine.triage_after_finish = lambda job_id, inv_id: None  # type: ignore[method-assign]
    stack.clock.advance(10 * MINUTE)
    stack.run_due()  # a ended; the process died before its triage
    assert stack.engine.store.list_pending(JOB, 10)[0].id == "b"
    assert stack.engine.sweep(stack.clock.now_ns()).started == 1
    found = stack.engine.store.get_trigger(JOB, "b")
    assert found is not None and found.status is TriggerStatus.STARTED


def test_newest_first_discards_what_waited_too_long(tmp_path: Path) -> None:
    policy = {"kind": "newest_first", "pending_timeout": "5m"}
    engine, clock, queue = sleep_engine(tmp_path, seconds=600, triggering_policy=policy)
    stack = Stack(engine, clock, queue)
    stack.trigger("a")
    stack.run_due()
    stack.trigger("old")
    clock.advance(6 * MINUTE)
    stack.trigger("new")  # its triage finds "old" past pending_timeout
    old = engine.store.get_trigger(JOB, "old")
    assert old is not None and old.status is TriggerStatus.DISCARDED
    assert "pending_timeout" in old.reason
    clock.advance(4 * MINUTE)
    assert stack.run_due() == ["wake-up"]  # "a" ends after 10 minutes: "new" waited 4
    newest = engine.store.list_invocations(JOB)[0]
    assert [t.id for t in newest.triggers] == ["new"]


# --- the batch as Buildbucket sees it -------------------------------------------------------


def test_a_batch_is_one_build_of_the_newest_commit_carrying_every_trigger(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    seed = load_scenario("seed")
    job = {**seed.jobs["jobs"][0], "bucket": "infra:ci"}  # outside chromium: the property is sent
    script = [{"status": "STARTED", "for": "20m"}, {"status": "SUCCESS"}]
    scenario = dataclasses.replace(
        seed,
        jobs={**seed.jobs, "jobs": [job]},
        simulator={**seed.simulator, "script": script, "drop_notifications": 0.0},
    )
    stack = VirtualStack(scenario, tmp_path / "state.db", sim)
    repo = "https://chromium.googlesource.com/chromium/src"
    try:
        t0 = stack.clock.now_ns()
        for n, revision in enumerate(["a" * 40, "b" * 40, "c" * 40]):
            commit = GitilesTrigger(repo, "refs/heads/main", revision)
            request = TriggerRequest(job_id=job["id"], gitiles=commit, request_id=f"c{n}")
            stack.trigger_at(t0 + n * MINUTE, request)
        stack.run_until_idle()
    finally:
        stack.close()
    first, second = stack.store.list_invocations(job["id"])[::-1]
    assert [t.id for t in first.triggers] == ["c0"]
    assert [t.id for t in second.triggers] == ["c1", "c2"]
    assert first.status is second.status is Status.SUCCEEDED
    sent = next(
        json.loads(e.text.split("\n", 1)[1])
        for e in stack.store.read_log(second.id)
        if e.text.startswith("Buildbucket request:")
    )
    assert sent["gitilesCommit"]["id"] == "c" * 40
    carried = sent["properties"][SCHEDULER_PROPERTY]["triggers"]
    assert [t["id"] for t in carried] == ["c1", "c2"]
    assert [t["gitiles"]["revision"] for t in carried] == ["b" * 40, "c" * 40]
    assert sim.state()["calls"]["ScheduleBuild"] == 2
