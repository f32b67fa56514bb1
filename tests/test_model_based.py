"""Model-based test of the engine: hypothesis plays random interleavings of deliveries, faults,
aborts and crashes against the real engine, SQLite store and the simulator's own state machine
(in process, manual clock), and checks the promises after every step."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from emulators import PROJECT, Emulator
from shepherd.adapters.embedded import EmbeddedTopic
from shepherd.adapters.firestore_store import FirestoreStore
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.clock import VirtualClock
from shepherd.durations import MINUTE, SECOND
from shepherd.engine import Engine, InvocationFinished, JobPaused, RetryLater
from shepherd.grpc_codes import Code
from shepherd.jobs import JobsFile, parse_jobs
from shepherd.model import (
    Invocation,
    LogEntry,
    LogKind,
    PubSubMessage,
    QueuedTask,
    Status,
    Trigger,
    TriggerRequest,
    TriggerStatus,
)
from shepherd.signing import TokenSigner
from shepherd.tasks.registry import CONFIG_MODELS, make_kinds
from shepherd_tools.simulator.server import Simulator

JOB = "chromium/Windows deterministic"
# Each history runs under one of them (drawn first): each kind, one slot and more.
POLICIES = [
    {"kind": "greedy_batching", "max_concurrent_invocations": 2, "max_batch_size": 2},
    {"kind": "greedy_batching"},
    {"kind": "logarithmic_batching", "max_concurrent_invocations": 2, "log_base": 2.0},
    {"kind": "newest_first", "pending_timeout": "30m"},
]


def jobs_with(policy: dict[str, Any]) -> JobsFile:
    return parse_jobs(
        {
            "settings": {"status_check_min": "1m", "status_check_max": "10m"},
            "jobs": [
                {
                    "id": JOB,
                    "server": "cr-buildbucket.appspot.com",
                    "bucket": "ci",
                    "builder": "Windows deterministic",
                    "triggering_policy": policy,
                }
            ],
        },
        "jobs.toml",
        CONFIG_MODELS,
    )


BUILDSET = (
    "buildset:commit/gitiles/chromium.googlesource.com/chromium/src/+/"
    "3ce3f1d71a1492176d69ed432d5cfa7b95be4a3e"
)
GITILES_REF = "gitiles_ref:refs/heads/main"
FINAL_BUILD = {
    "SUCCESS": Status.SUCCEEDED,
    "FAILURE": Status.FAILED,
    "INFRA_FAILURE": Status.FAILED,
    "CANCELED": Status.ABORTED,
}
FAULTS = [
    Code.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED,
    Code.INTERNAL,
    Code.NOT_FOUND,
    Code.PERMISSION_DENIED,
]
T0 = 1_700_000_000 * SECOND


class Crash(Exception):
    """The process died: the handler's transaction is not committed, the delivery not acked."""


class Crashing:
    """Mixed into a store: the next commit dies before it writes anything."""

    crash_next = False

    def commit(self, invocation: Invocation, expected: int, log: Any) -> None:
        if self.crash_next:
            self.crash_next = False
            raise Crash
        super().commit(invocation, expected, log)  # type: ignore[misc]


class CrashingSqlite(Crashing, SqliteStore):
    pass


class CrashingFirestore(Crashing, FirestoreStore):
    pass


class InProcessBuilds:
    """The BuildsAPI port on the simulator's own state machine, without sockets."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def schedule_build(self, server: str, request: dict[str, Any]) -> dict[str, Any]:
        return self.sim.call("ScheduleBuild", json.loads(json.dumps(request)))

    def get_build(self, server: str, build_id: str) -> dict[str, Any]:
        return self.sim.call("GetBuild", {"id": build_id})

    def cancel_build(self, server: str, build_id: str, summary: str) -> dict[str, Any]:
        return self.sim.call("CancelBuild", {"id": build_id, "summaryMarkdown": summary})

    def publisher_account(self, server: str) -> str:
        return str(self.sim.server_info()["service_account_name"])


class Queue:
    """Cloud Tasks' contract: a name is enqueued once; deliveries happen at or after the ETA."""

    def __init__(self) -> None:
        self.pending: list[QueuedTask] = []
        self.names: set[str] = set()

    def schedule(self, tasks: Any) -> None:
        for task in tasks:
            if task.timer_id not in self.names:
                self.names.add(task.timer_id)
                self.pending.append(task)


class EngineMachine(RuleBasedStateMachine):
    def make_store(self) -> Any:
        return CrashingSqlite(Path(self.dir.name) / "s.db")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = VirtualClock(T0)
        self.sim = Simulator({"clock": "manual", "start_ns": T0})
        self.store = self.make_store()
        self.queue = Queue()
        self.engine = Engine(
            jobs=jobs_with(POLICIES[0]),
            kinds=make_kinds(InProcessBuilds(self.sim), random.Random(2)),
            store=self.store,
            queue=self.queue,
            topic=EmbeddedTopic("test"),
            clock=self.clock,
            signer=TokenSigner(b"s" * 32),
            rng=random.Random(3),
        )
        self.inbox: list[PubSubMessage] = []
        self.invocations: list[int] = []
        self.triggers: list[str] = []
        self.seen: dict[int, tuple[int, list[LogEntry]]] = {}
        self.aborted: set[int] = set()  # an abort was accepted (200 or 202)
        self.aborted_unlaunched: set[int] = set()  # ... before any launch attempt began
        self.deliveries = 0

    def teardown(self) -> None:
        # Nothing stuck: with faults gone, the pending deliveries finish every invocation.
        self.sim.config.faults.clear()
        self.store.crash_next = False
        for _ in range(2000):
            self._find_invocations()
            if all(self._inv(i).status.final for i in self.invocations) and not any(
                self._trigger(t).status is TriggerStatus.PENDING for t in self.triggers
            ):
                break
            self.engine.recover()
            self._advance(1 * MINUTE)
            self.engine.sweep(self.clock.now_ns())  # the scheduler tick: triages every job
            for task in [t for t in self.queue.pending if t.eta_ns <= self.clock.now_ns()]:
                self._deliver_task(task, keep=False)
            while self.inbox:
                self._deliver_message(0, keep=False)
        assert all(self._inv(i).status.final for i in self.invocations), "an invocation is stuck"
        self._check_invariants()
        self.dir.cleanup()

    # --- helpers --------------------------------------------------------------------------

    def _inv(self, invocation_id: int) -> Invocation:
        inv = self.store.get(invocation_id)
        assert inv is not None
        return inv

    def _advance(self, ns: int) -> None:
        self.clock.advance(ns)
        for message in self.sim.advance(self.clock.now_ns())["published"]:
            self.inbox.append(
                PubSubMessage(
                    json.dumps(message["data"]).encode(),
                    message["attributes"],
                    message["messageId"],
                )
            )

    def _deliver_task(self, task: QueuedTask, keep: bool) -> None:
        try:
            self.engine.handle_task(task.invocation_id, task.timer_id, task.name)
        except (RetryLater, Crash):
            return  # not acknowledged: it comes again
        if not keep and task in self.queue.pending:
            self.queue.pending.remove(task)

    def _deliver_message(self, index: int, keep: bool) -> None:
        message = self.inbox[index]
        try:
            self.engine.handle_notification(message)
        except (RetryLater, Crash):
            return
        if not keep:
            self.inbox.pop(index)

    # --- rules ----------------------------------------------------------------------------

    @initialize(policy=st.sampled_from(POLICIES))
    def job_policy(self, policy: dict[str, Any]) -> None:
        self.engine.jobs = jobs_with(policy)

    @property
    def max_concurrent(self) -> int:
        return self.engine.jobs.jobs[JOB].triggering_policy.max_concurrent_invocations

    @initialize(final=st.sampled_from([*FINAL_BUILD, "STATUS_UNSPECIFIED"]))
    def builds_end_with(self, final: str) -> None:
        script = [{"status": "SCHEDULED", "for": "3m"}, {"status": "STARTED", "for": "40m"}]
        self.sim.configure(
            {"clock": "manual", "start_ns": T0, "script": [*script, {"status": final}]}
        )

    @precondition(lambda self: len(self.triggers) < 5)
    @rule(again=st.booleans())
    def trigger(self, again: bool) -> None:
        request_id = self.triggers[-1] if again and self.triggers else f"t{len(self.triggers)}"
        request = TriggerRequest(job_id=JOB, tags=(BUILDSET, GITILES_REF), request_id=request_id)
        try:
            done = self.engine.trigger(request)
        except JobPaused:
            assert self.store.get_job(JOB).paused
            return
        if request_id not in self.triggers:
            self.triggers.append(request_id)
        assert done.trigger.id == request_id
        self._find_invocations()

    @rule(paused=st.booleans())
    def pause_or_resume(self, paused: bool) -> None:
        if paused:
            self.engine.pause(JOB, "model")
        else:
            self.engine.resume(JOB)
        assert not any(
            self._trigger(t).status is TriggerStatus.PENDING for t in self.triggers if paused
        ), "a pause discards what was pending"

    def _find_invocations(self) -> None:
        for inv in self.store.list_invocations(JOB, limit=100):
            if inv.id not in self.invocations:
                self.invocations.append(inv.id)

    def _trigger(self, trigger_id: str) -> Trigger:
        found = self.store.get_trigger(JOB, trigger_id)
        assert found is not None, "a trigger is never lost"
        return found

    @rule(seconds=st.integers(min_value=1, max_value=15 * 60))
    def time_passes(self, seconds: int) -> None:
        self._advance(seconds * SECOND)

    @precondition(lambda self: any(t.eta_ns <= self.clock.now_ns() for t in self.queue.pending))
    @rule(data=st.data(), duplicate=st.booleans())
    def deliver_due_task(self, data: st.DataObject, duplicate: bool) -> None:
        due = [t for t in self.queue.pending if t.eta_ns <= self.clock.now_ns()]
        self._deliver_task(data.draw(st.sampled_from(due)), keep=duplicate)

    @precondition(lambda self: bool(self.inbox))
    @rule(data=st.data(), duplicate=st.booleans())
    def deliver_notification(self, data: st.DataObject, duplicate: bool) -> None:
        # Any message of the inbox: Pub/Sub reorders.
        self._deliver_message(data.draw(st.integers(0, len(self.inbox) - 1)), keep=duplicate)

    @precondition(lambda self: bool(self.invocations))
    @rule(data=st.data(), kind=st.sampled_from(["other key", "garbage", "not base64", "bad id"]))
    def forged_notification(self, data: st.DataObject, kind: str) -> None:
        target = data.draw(st.sampled_from(self.invocations))
        before = (self._inv(target), self.store.read_log(target))
        token = {
            "other key": TokenSigner(b"x" * 32).sign(JOB, target),
            "garbage": "a.b",
            "bad id": TokenSigner(b"s" * 32).sign(JOB, 12345),
        }.get(kind)
        user_data = base64.b64encode(token.encode()).decode() if token else "%%%"
        body = json.dumps({"buildPubsub": {"build": {}}, "userData": user_data}).encode()
        self.engine.handle_notification(PubSubMessage(body, {}, "forged"))
        assert (self._inv(target), self.store.read_log(target)) == before

    @rule(
        method=st.sampled_from(["ScheduleBuild", "GetBuild", "CancelBuild"]),
        code=st.sampled_from(FAULTS),
        times=st.integers(1, 3),
    )
    def buildbucket_fails(self, method: str, code: Code, times: int) -> None:
        self.sim.inject_fault(method, code, times)

    @precondition(lambda self: bool(self.invocations))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self.invocations))
        with contextlib.suppress(InvocationFinished, RetryLater, Crash):
            answer = self.engine.abort(target)
            # Accepted whatever the state, STARTING included: it must complete on its own.
            assert answer.status.final or answer.abort_requested
            self.aborted.add(target)
            if answer.status is Status.STARTING and answer.attempt == 0:
                self.aborted_unlaunched.add(target)

    @rule()
    def crash_in_the_next_handler(self) -> None:
        self.store.crash_next = True

    @rule()
    def restart(self) -> None:
        self.engine.recover()

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def promises_hold(self) -> None:
        self._check_invariants()

    def _check_invariants(self) -> None:
        self._find_invocations()
        made_of: dict[str, int] = {}
        running = 0
        for invocation_id in self.invocations:
            inv = self._inv(invocation_id)
            running += not inv.status.final
            for t in inv.triggers:
                assert t.id not in made_of, "a trigger runs in one invocation at most"
                made_of[t.id] = invocation_id
        assert running <= self.max_concurrent, "never more than max_concurrent_invocations"
        for trigger_id in self.triggers:
            trigger = self._trigger(trigger_id)
            if trigger.status is TriggerStatus.STARTED:
                assert made_of.get(trigger_id) == trigger.invocation_id
            else:
                assert trigger_id not in made_of
            if trigger.status is TriggerStatus.DISCARDED:
                assert trigger.reason
        builds = self.sim.builds_by_request()
        # One build per invocation: every ScheduleBuild used the invocation id as requestId.
        assert set(builds) <= {str(i) for i in self.invocations}
        assert len(set(builds.values())) == len(builds)
        sim_builds = {b["id"]: b for b in self.sim.state()["builds"]}
        for invocation_id in self.invocations:
            inv = self._inv(invocation_id)
            log = self.store.read_log(invocation_id)
            count, old_log = self.seen.get(invocation_id, (-1, []))
            assert inv.mutation_count >= count, "mutation counts only rise"
            assert log[: len(old_log)] == old_log, "the debug log only grows"
            self.seen[invocation_id] = (inv.mutation_count, log)
            handled = [e.text for e in log if e.text.startswith("Handling timer")]
            assert len(handled) == len(set(handled)), "a timer is handled once"
            if inv.status is Status.RUNNING:
                assert inv.pending_timers, "a running invocation always has a status check pending"
            build_id = inv.task_data.get("build_id")
            if build_id is not None:
                assert builds.get(str(invocation_id)) == build_id
            finals = [e.text for e in log if e.text.startswith("Build:\n")]
            if finals:
                seen_status = json.loads(finals[-1].split("\n", 1)[1])["status"]
                assert inv.status is FINAL_BUILD.get(seen_status, Status.FAILED)
                assert sim_builds[build_id]["status"] == seen_status
            if inv.status.final:
                assert sum(e.text.startswith("Invocation finished") for e in log) == 1
            if invocation_id in self.aborted_unlaunched:
                assert str(invocation_id) not in builds, "an abort before the launch skips it"
            if invocation_id in self.aborted and not inv.status.final:
                assert inv.abort_requested, "an accepted abort is never lost"
            if invocation_id in self.aborted and inv.status.final:
                # ABORTED, unless the build finished first or a fatal error ended it first.
                assert (
                    inv.status is Status.ABORTED
                    or finals
                    or any(e.kind is LogKind.ERROR for e in log)
                ), inv.status


class FirestoreEngineMachine(EngineMachine):
    """The same histories on the Firestore store, against its emulator."""

    client: Any = None

    def make_store(self) -> Any:
        return CrashingFirestore(self.client, prefix=f"m{uuid.uuid4().hex[:12]}_")


def test_the_same_model_on_firestore(firestore_emulator: Emulator) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
        FirestoreEngineMachine.client = firestore.Client(
            project=PROJECT, credentials=AnonymousCredentials()
        )
    examples = 80 if os.environ.get("SHEPHERD_TESTS") == "soak" else 12
    run_state_machine_as_test(
        FirestoreEngineMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


TestEngineModel = EngineMachine.TestCase
# `make soak` runs long histories, `make test-fast` a handful, `make test` the figure in the README.
HISTORIES = {"soak": 400, "fast": 12}.get(os.environ.get("SHEPHERD_TESTS", ""), 60)
TestEngineModel.settings = settings(
    max_examples=HISTORIES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
