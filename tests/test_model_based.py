"""Model-based test of the engine: hypothesis plays random interleavings of deliveries, faults,
aborts and crashes against the real engine, SQLite store, the simulator's own state machine
(in process, manual clock) and the Gitiles simulator's (in process, behind the real REST
client), and checks the promises after every step.

Three jobs share the engine: a Buildbucket job, a noop job that triggers it when its sleep ends,
and a Gitiles poller that triggers it for each new commit of the repository the rules push to."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import itertools
import json
import os
import random
import re
import tempfile
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from in_process import InProcessBuilds, InProcessGitiles
from shepherd.adapters.embedded import EmbeddedTopic
from shepherd.adapters.firestore_store import FirestoreStore
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.clock import VirtualClock
from shepherd.durations import MINUTE, SECOND
from shepherd.engine import GROUP_CHECK_TASK, Engine, InvocationFinished, JobPaused, RetryLater
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
from shepherd.tasks.gitiles import MAX_COMMITS_PER_REF_UPDATE
from shepherd.tasks.registry import CONFIG_MODELS, make_kinds
from shepherd_tools.gitiles_sim.repo import Commit, Repository
from shepherd_tools.gitiles_sim.server import GitilesSim
from shepherd_tools.simulator.server import Simulator

JOB = "chromium/Windows deterministic"
NOOP = "chromium/noop"
POLLER = "chromium/src poller"
JOBS = (JOB, NOOP, POLLER)
GIT_PROJECT = "chromium/src"
# Never dialed: the poller's client answers from the Gitiles simulator in process.
REPO = f"http://127.0.0.1:8/{GIT_PROJECT}"
MAIN = "refs/heads/main"
BRANCH_HEAD = re.compile(r"refs/branch-heads/\d+")
# What the rules move: the watched refs, and one the poller must never report.
REFS = [MAIN, "refs/branch-heads/1", "refs/branch-heads/2", "refs/branch-heads/3", "refs/heads/dev"]
# Each history runs under one of them (drawn first): each kind, one slot and more.
POLICIES = [
    {"kind": "greedy_batching", "max_concurrent_invocations": 2, "max_batch_size": 2},
    {"kind": "greedy_batching"},
    {"kind": "logarithmic_batching", "max_concurrent_invocations": 2, "log_base": 2.0},
    {"kind": "newest_first", "pending_timeout": "30m"},
]


# And under one of these rerun settings of JOB (drawn first too): none, one kind, all kinds.
RERUNS = [
    {},
    {"max": 1, "on": ["INFRA_FAILURE"]},
    {"max": 2, "on": ["FAILURE", "INFRA_FAILURE", "CANCELED"]},
]


# And JOB's builds checked each by timers of its own, or all in one Batch call per period.
STATUS_POLICIES = ["shepherd", "batched"]


def jobs_with(
    policy: dict[str, Any], reruns: dict[str, Any], status_policy: str = "shepherd"
) -> JobsFile:
    return parse_jobs(
        {
            "settings": {
                "status_check_min": "1m",
                "status_check_max": "10m",
                "status_policy": status_policy,
                "status_check_batch_size": 2,  # histories run more builds than that
            },
            "jobs": [
                {
                    "id": JOB,
                    "server": "cr-buildbucket.appspot.com",
                    "bucket": "ci",
                    "builder": "Windows deterministic",
                    "triggering_policy": policy,
                    "reruns": reruns,
                },
                {
                    "id": NOOP,
                    "kind": "noop",
                    "sleep": "5m",
                    "triggers": [JOB],
                    "triggering_policy": {
                        "kind": "greedy_batching",
                        "max_concurrent_invocations": 2,
                    },
                },
                {
                    "id": POLLER,
                    "kind": "gitiles",
                    "repo": REPO,
                    "refs": [MAIN, "regexp:refs/branch-heads/\\d+"],
                    "triggers": [JOB],
                },
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


# Where the next crash comes: before a commit writes anything; after it (its timers not handed
# to the queue, its emitted triggers not added, the triage after an end not done); after a
# trigger is added (those emitted after it not added).
CRASH_POINTS = ["before commit", "after commit", "after add_trigger"]


class Crashing:
    """Mixed into a store: dies at the next `crash_next` point; counts the triggers it adds."""

    crash_next: str | None = None

    def _crash_at(self, point: str) -> None:
        if self.crash_next == point:
            self.crash_next = None
            raise Crash

    def commit(self, invocation: Invocation, expected: int, log: Any, *state: Any) -> None:
        self._crash_at("before commit")
        super().commit(invocation, expected, log, *state)  # type: ignore[misc]
        self._crash_at("after commit")

    def add_trigger(self, trigger: Trigger) -> Trigger:
        stored: Trigger = super().add_trigger(trigger)  # type: ignore[misc]
        if stored is trigger:
            self.added: Counter[tuple[str, str]]
            self.added[trigger.job_id, trigger.id] += 1
        self._crash_at("after add_trigger")
        return stored


class CrashingSqlite(Crashing, SqliteStore):
    pass


class CrashingFirestore(Crashing, FirestoreStore):
    pass


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


@dataclass(frozen=True)
class Poll:
    """A poll that succeeded: every ref of the repository as its launch saw them."""

    invocation_id: int
    refs: Mapping[str, str]
    paused: bool  # JOB was paused: the poll dropped what it emitted


def status_of(build: Mapping[str, Any]) -> str:
    return str(build.get("status", "STATUS_UNSPECIFIED"))  # JSON leaves the zero value out


def watched(ref: str) -> bool:
    return ref == MAIN or BRANCH_HEAD.fullmatch(ref) is not None


def commit_trigger(ref: str, commit: str) -> str:
    return f"{REPO}/+/{ref}@{commit}"


def examined(heads: Mapping[str, str], log: Sequence[str]) -> list[str]:
    """The watched refs a poll examined, in its order (by name): all of them, unless an error it
    then ignored (that ref and the rest are left) or its cap on triggers (the rest) cut it."""
    names = sorted(heads)
    named = [i for i, r in enumerate(names) if any(t.startswith(f"Ref {r} ") for t in log)]
    named += [i for i, r in enumerate(names) if any(t.startswith(f"Ref {r}:") for t in log)]
    if any(t.startswith("ignoring error") for t in log):
        return names[: max(named)]
    if any("refs not yet examined" in t for t in log):
        return names[: max(named) + 1]
    return names


class EngineMachine(RuleBasedStateMachine):
    # False: no rule that only concerns Buildbucket (JOB's own triggers, its faults, forged
    # notifications), so that histories spend their steps on the other kinds.
    buildbucket_rules = True

    def make_store(self) -> Any:
        return CrashingSqlite(Path(self.dir.name) / "s.db")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = VirtualClock(T0)
        self.sim = Simulator({"clock": "manual", "start_ns": T0})
        self.git = GitilesSim(clock=lambda: self.clock.now_ns() // SECOND)
        self.git.create_repo({"project": GIT_PROJECT})
        self.git.push({"project": GIT_PROJECT, "ref": MAIN, "commits": [{}]})
        self.git.set_ref({"project": GIT_PROJECT, "ref": REFS[1], "to": MAIN})
        self.store = self.make_store()
        self.store.added = Counter()
        self.queue = Queue()
        self.engine = Engine(
            jobs=jobs_with(POLICIES[0], RERUNS[0]),
            kinds=make_kinds(
                InProcessBuilds(self.sim), random.Random(2), InProcessGitiles(self.git).client
            ),
            store=self.store,
            queue=self.queue,
            topic=EmbeddedTopic("shepherd-test"),
            clock=self.clock,
            signer=TokenSigner(b"s" * 32),
            rng=random.Random(3),
            group_check_threads=1,  # histories replay: one commit after another
        )
        self.inbox: list[PubSubMessage] = []
        self.invocations: dict[str, list[int]] = {job: [] for job in JOBS}
        self.job_of: dict[int, str] = {}
        self.final: dict[int, Invocation] = {}
        self.triggers: list[str] = []  # JOB's, from the trigger rule
        self.started: Counter[str] = Counter()  # triggers of NOOP and POLLER, by job
        self.seen: dict[int, tuple[int, list[LogEntry]]] = {}
        self.settled_triggers: dict[str, Trigger] = {}  # JOB's, STARTED or DISCARDED: for good
        self.aborted: set[int] = set()  # an abort was accepted (200 or 202)
        self.aborted_unlaunched: set[int] = set()  # ... before any launch attempt began
        self.aborted_launching: set[int] = set()  # ... after one began
        self.polls: list[Poll] = []
        # Invocations whose last delivery crashed: what they emitted may not be added yet.
        self.undelivered: set[int] = set()
        # Emitted triggers a pause may have dropped between their commit and their delivery.
        self.excused: set[str] = set()
        self.pushes = 0

    def teardown(self) -> None:
        # Nothing stuck: with faults gone, the pending deliveries finish every invocation.
        self.sim.config.faults.clear()
        self.git.faults.clear()
        self.store.crash_next = None
        # One more poll, after every push: each commit pushed is then owed its trigger.
        self._start(POLLER)
        self._drain()
        assert self.polls and self.polls[-1].invocation_id == self.invocations[POLLER][-1]
        for job, ids in self.invocations.items():
            assert all(self._inv(i).status.final for i in ids), f"an invocation of {job} is stuck"
        assert not self.undelivered, "a crashed delivery never came again"
        self._check_invariants(cached=False)
        self.dir.cleanup()

    def _drain(self) -> None:
        for _ in range(2000):
            if self._settled():
                break
            self.engine.recover()
            # A minute, or up to the next delivery due: nothing happens in between.
            due = min((t.eta_ns for t in self.queue.pending), default=0) - self.clock.now_ns()
            self._advance(max(due, 1 * MINUTE))
            self.engine.sweep(self.clock.now_ns())  # the scheduler tick: triages every job
            for task in [t for t in self.queue.pending if t.eta_ns <= self.clock.now_ns()]:
                self._deliver_task(task, keep=False)
            while self.inbox:
                self._deliver_message(0, keep=False)
        self._find_invocations(cached=False)

    def _settled(self) -> bool:
        return (
            not self.store.list_active()
            and not any(self.store.list_pending(job, 1) for job in JOBS)
            and not self.undelivered
        )

    # --- helpers --------------------------------------------------------------------------

    def _inv(self, invocation_id: int) -> Invocation:
        inv = self.store.get(invocation_id)
        assert inv is not None
        return inv

    def _repo(self) -> Repository:
        return self.git.repos[GIT_PROJECT]

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
        if task.name == GROUP_CHECK_TASK:
            self._deliver_group_check(task, keep)
            return
        invocation_id = task.invocation_id
        job = task.timer_id.split(":", 1)[0]  # timer and start task ids begin with it
        polling = job == POLLER and not self._inv(invocation_id).status.final
        if polling:
            refs = dict(self._repo().refs)
            paused = self.store.get_job(JOB).paused
        crashed = False
        try:
            self.engine.handle_task(invocation_id, task.timer_id, task.name)
        except RetryLater:
            return  # not acknowledged: it comes again
        except Crash:
            crashed = True  # neither
        if polling and self._inv(invocation_id).status is Status.SUCCEEDED:
            self.polls.append(Poll(invocation_id, refs, paused))
        if crashed:
            self.undelivered.add(invocation_id)
            return
        if invocation_id in self.undelivered and self._inv(invocation_id).status.final:
            # Handled once more, or stale: either way every trigger it emitted was added.
            self.undelivered.discard(invocation_id)
        if not keep and task in self.queue.pending:
            self.queue.pending.remove(task)

    def _deliver_group_check(self, task: QueuedTask, keep: bool) -> None:
        """A check of every running build of the server (status_policy "batched"). A crash
        leaves it unacknowledged: it comes again, and each invocation it committed before
        the crash is left alone (its news taken) or ended. Each delivery reaches an instance
        of its own, which does not know which checks another one did."""
        try:
            instance = dataclasses.replace(self.engine)
            instance.handle_task(task.invocation_id, task.timer_id, task.name)
        except (RetryLater, Crash):
            return
        # A JOB invocation it ended emits nothing: a crashed delivery of its own owes nothing.
        self.undelivered -= {
            i for i in self.undelivered if self.job_of.get(i) == JOB and self._inv(i).status.final
        }
        if not keep:
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

    @initialize(
        policy=st.sampled_from(POLICIES),
        reruns=st.sampled_from(RERUNS),
        status_policy=st.sampled_from(STATUS_POLICIES),
    )
    def job_policy(
        self, policy: dict[str, Any], reruns: dict[str, Any], status_policy: str
    ) -> None:
        self.engine.jobs = jobs_with(policy, reruns, status_policy)

    def max_concurrent(self, job: str) -> int:
        return self.engine.jobs.jobs[job].triggering_policy.max_concurrent_invocations

    @initialize(
        final=st.one_of(
            st.sampled_from([*FINAL_BUILD, "STATUS_UNSPECIFIED"]),
            # The builder's nth build ends with the nth (the last repeating): reruns follow some.
            st.lists(st.sampled_from(list(FINAL_BUILD)), min_size=2, max_size=5),
        )
    )
    def builds_end_with(self, final: str | list[str]) -> None:
        script = [{"status": "SCHEDULED", "for": "3m"}, {"status": "STARTED", "for": "40m"}]
        last = {"status": final} if isinstance(final, str) else {"outcomes": final}
        self.sim.configure({"clock": "manual", "start_ns": T0, "script": [*script, last]})

    @precondition(lambda self: self.buildbucket_rules and len(self.triggers) < 5)
    @rule(again=st.booleans())
    def trigger(self, again: bool) -> None:
        request_id = self.triggers[-1] if again and self.triggers else f"t{len(self.triggers)}"
        request = TriggerRequest(job_id=JOB, tags=(BUILDSET, GITILES_REF), request_id=request_id)
        try:
            done = self.engine.trigger(request)
        except JobPaused:
            assert self.store.get_job(JOB).paused
            return
        except Crash:
            done = None  # stored, not triaged yet: the next triage takes it
        if request_id not in self.triggers:
            self.triggers.append(request_id)
        assert done is None or done.trigger.id == request_id

    def _start(self, job: str) -> None:
        self.started[job] += 1
        with contextlib.suppress(Crash):
            self.engine.trigger(TriggerRequest(job_id=job, request_id=f"k{self.started[job]}"))

    @precondition(lambda self: self.started[NOOP] < 4)
    @rule()
    def trigger_noop(self) -> None:
        """The noop job: it triggers JOB when its sleep ends."""
        self._start(NOOP)

    @precondition(lambda self: self.started[POLLER] < 6)
    @rule()
    def poll(self) -> None:
        self._start(POLLER)

    @precondition(lambda self: self.pushes < 10)
    @rule(ref=st.sampled_from(REFS), commits=st.integers(1, 3), root=st.booleans())
    def push(self, ref: str, commits: int, root: bool) -> None:
        """Commits on top of the ref (a new ref: on main), or a force push of a new history."""
        self.pushes += 1
        body: dict[str, Any] = {"project": GIT_PROJECT, "ref": ref, "commits": [{}] * commits}
        if root:
            body.update(parent=None, force=True)
        elif ref not in self._repo().refs:
            body.update(parent=MAIN)
        self.git.push(body)

    @precondition(lambda self: self.pushes < 10)
    @rule(data=st.data(), ref=st.sampled_from(REFS))
    def move_ref(self, data: st.DataObject, ref: str) -> None:
        """Creates the ref, or moves it anywhere: back, sideways, forward."""
        self.pushes += 1
        commits = sorted(o for o, c in self._repo().objects.items() if isinstance(c, Commit))
        to = data.draw(st.sampled_from(commits))
        self.git.set_ref({"project": GIT_PROJECT, "ref": ref, "to": to, "force": True})

    def _deletable(self) -> list[str]:
        # Never main nor the last branch head: a watched ref that matches nothing fails polls.
        refs = sorted(self._repo().refs)
        branches = [r for r in refs if BRANCH_HEAD.fullmatch(r)]
        return [r for r in refs if r != MAIN and (len(branches) > 1 or r not in branches)]

    @precondition(lambda self: bool(self._deletable()))
    @rule(data=st.data())
    def delete_ref(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(self._deletable()))
        self.git.set_ref({"project": GIT_PROJECT, "ref": ref, "to": None})

    @rule(
        status=st.sampled_from([500, 502, 503, 404]),
        kind=st.sampled_from(["refs", "log"]),
        times=st.integers(1, 3),
    )
    def gitiles_fails(self, status: int, kind: str, times: int) -> None:
        # A 404 of +refs fails the poll; of a +log range (old..new), it is taken for a fluke.
        # Not of any other log: the poller would take it for a force push, rightly.
        fault: dict[str, Any] = {"status": status, "times": times, "kind": kind}
        if status == 404 and kind == "log":
            fault["contains"] = ".."
        self.git.add_fault(fault)

    @rule(paused=st.booleans())
    def pause_or_resume(self, paused: bool) -> None:
        if paused:
            for invocation_id in self.undelivered:
                self.excused.update(t.id for t in self._inv(invocation_id).emitted_triggers)
            self.engine.pause(JOB, "model")
        else:
            self.engine.resume(JOB)
        assert not any(
            self._trigger(JOB, t).status is TriggerStatus.PENDING
            for t in self._stored(JOB)
            if paused
        ), "a pause discards what was pending"

    def _find_invocations(self, cached: bool = True) -> dict[int, Invocation]:
        """Every invocation of every job. `cached`: those final when last read are not read
        again (nothing changes a final invocation), the others found by one query."""
        if cached:
            listed = self.store.list_active()
            active = {inv.id for inv in listed}
            listed += [self._inv(i) for i in self.job_of if i not in self.final and i not in active]
        else:
            listed = [i for job in JOBS for i in self.store.list_invocations(job, limit=1000)]
            assert len(listed) < 1000
        found = {**self.final} if cached else {}
        for inv in sorted(listed, key=lambda i: (i.created_ns, i.id)):
            found[inv.id] = inv
            if inv.id not in self.job_of:
                self.invocations[inv.job_id].append(inv.id)
                self.job_of[inv.id] = inv.job_id
            if inv.status.final:
                self.final[inv.id] = inv
        return found

    def _all_invocations(self) -> list[int]:
        return [i for ids in self.invocations.values() for i in ids]

    def _trigger(self, job: str, trigger_id: str) -> Trigger:
        found = self.store.get_trigger(job, trigger_id)
        assert found is not None, "a trigger is never lost"
        return found

    def _stored(self, job: str) -> list[str]:
        return [t for j, t in self.store.added if j == job]

    @rule(seconds=st.integers(min_value=1, max_value=15 * 60))
    def time_passes(self, seconds: int) -> None:
        self._advance(seconds * SECOND)

    @precondition(lambda self: any(t.eta_ns <= self.clock.now_ns() for t in self.queue.pending))
    @rule(
        data=st.data(),
        duplicate=st.booleans(),
        crash=st.one_of(st.none(), st.sampled_from(CRASH_POINTS)),
    )
    def deliver_due_task(self, data: st.DataObject, duplicate: bool, crash: str | None) -> None:
        due = [t for t in self.queue.pending if t.eta_ns <= self.clock.now_ns()]
        if crash is not None:
            self.store.crash_next = crash
        self._deliver_task(data.draw(st.sampled_from(due)), keep=duplicate)
        if crash is not None:
            self.store.crash_next = None  # this delivery's, if it did not come

    @precondition(lambda self: bool(self.inbox))
    @rule(data=st.data(), duplicate=st.booleans())
    def deliver_notification(self, data: st.DataObject, duplicate: bool) -> None:
        # Any message of the inbox: Pub/Sub reorders.
        self._deliver_message(data.draw(st.integers(0, len(self.inbox) - 1)), keep=duplicate)

    @precondition(lambda self: self.buildbucket_rules and bool(self.invocations[JOB]))
    @rule(data=st.data(), kind=st.sampled_from(["other key", "garbage", "not base64", "bad id"]))
    def forged_notification(self, data: st.DataObject, kind: str) -> None:
        target = data.draw(st.sampled_from(self.invocations[JOB]))
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

    @precondition(lambda self: self.buildbucket_rules)
    @rule(
        method=st.sampled_from(["ScheduleBuild", "GetBuild", "CancelBuild"]),
        code=st.sampled_from(FAULTS),
        times=st.integers(1, 3),
    )
    def buildbucket_fails(self, method: str, code: Code, times: int) -> None:
        self.sim.inject_fault(method, code, times)

    @precondition(lambda self: bool(self._all_invocations()))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self._all_invocations()))
        with contextlib.suppress(InvocationFinished, RetryLater, Crash):
            answer = self.engine.abort(target)
            # Accepted whatever the state, STARTING included: it must complete on its own.
            assert answer.status.final or answer.abort_requested
            self.aborted.add(target)
            if answer.status is Status.STARTING:
                launched = self.aborted_launching if answer.attempt else self.aborted_unlaunched
                launched.add(target)

    @rule(point=st.sampled_from(CRASH_POINTS))
    def crash_in_the_next_handler(self, point: str) -> None:
        self.store.crash_next = point

    @rule()
    def restart(self) -> None:
        self.engine.recover()

    @rule()
    def tick(self) -> None:
        with contextlib.suppress(Crash):
            self.engine.sweep(self.clock.now_ns())

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def promises_hold(self) -> None:
        self._check_invariants()

    def _check_invariants(self, cached: bool = True) -> None:
        """`cached`: what cannot have changed since the last check is not read again (a log
        whose invocation's mutation count did not move, a trigger STARTED or DISCARDED)."""
        invs = self._find_invocations(cached)
        assert all(n == 1 for n in self.store.added.values()), "a trigger is stored once"
        logs = self._check_invocations(invs, cached)
        self._check_job_triggers(invs, cached)
        self._check_builds(invs, logs)
        self._check_emitted(invs, logs)
        self._check_polls(logs)

    def _check_invocations(
        self, invs: Mapping[int, Invocation], cached: bool
    ) -> dict[int, list[str]]:
        """What every kind promises of its invocations; answers with their logs' lines."""
        logs: dict[int, list[str]] = {}
        for job, ids in self.invocations.items():
            running = 0
            for invocation_id in ids:
                inv = invs[invocation_id]
                running += not inv.status.final
                count, old_log = self.seen.get(invocation_id, (-1, []))
                assert inv.mutation_count >= count, "mutation counts only rise"
                if cached and inv.mutation_count == count:
                    log = old_log  # each change appends its lines with its mutation count
                else:
                    log = self.store.read_log(invocation_id)
                    assert log[: len(old_log)] == old_log, "the debug log only grows"
                logs[invocation_id] = [e.text for e in log]
                self.seen[invocation_id] = (inv.mutation_count, log)
                handled = [e.text for e in log if e.text.startswith("Handling timer")]
                assert len(handled) == len(set(handled)), "a timer is handled once"
                if inv.status is Status.RUNNING:
                    # Its own timer, or its server's one check (which the sweep arms again
                    # if the hand-off after the commit that joined it was lost).
                    assert inv.pending_timers or inv.check_group, "a running one is checked"
                if inv.check_group is not None:
                    assert inv.status is Status.RUNNING and not any(
                        t.title == "check-buildbucket-build-status" for t in inv.pending_timers
                    ), "in a check group only while running, and then no timer of its own"
                if inv.status.final:
                    assert sum(e.text.startswith("Invocation finished") for e in log) == 1
                if invocation_id in self.aborted and not inv.status.final:
                    assert inv.abort_requested, "an accepted abort is never lost"
                if invocation_id in self.aborted_unlaunched:
                    assert not any(p.invocation_id == invocation_id for p in self.polls)
                if invocation_id in self.aborted and inv.status.final:
                    # ABORTED, unless the build finished first, a fatal error ended it first,
                    # or a poll's launch (retried after the abort: it may have made a build,
                    # for all the engine knows) ended it.
                    assert (
                        inv.status is Status.ABORTED
                        or any(t.startswith("Build:\n") for t in logs[invocation_id])
                        or any(e.kind is LogKind.ERROR for e in log)
                        or invocation_id in self.aborted_launching
                    ), inv.status
            assert running <= self.max_concurrent(job), "never more than max_concurrent"
        return logs

    def _check_job_triggers(self, invs: Mapping[int, Invocation], cached: bool) -> None:
        made_of: dict[str, int] = {}
        for invocation_id in self.invocations[JOB]:
            for t in invs[invocation_id].triggers:
                assert t.id not in made_of, "a trigger runs in one invocation at most"
                made_of[t.id] = invocation_id
        assert set(self.triggers) <= set(self._stored(JOB)), "a trigger is never lost"
        for trigger_id in self._stored(JOB):
            trigger = self.settled_triggers.get(trigger_id) if cached else None
            if trigger is None:
                trigger = self._trigger(JOB, trigger_id)
                if trigger.status is not TriggerStatus.PENDING:
                    self.settled_triggers[trigger_id] = trigger
            if trigger.status is TriggerStatus.STARTED:
                assert made_of.get(trigger_id) == trigger.invocation_id
            else:
                assert trigger_id not in made_of
            if trigger.status is TriggerStatus.DISCARDED:
                assert trigger.reason

    def _check_builds(self, invs: Mapping[int, Invocation], logs: Mapping[int, list[str]]) -> None:
        by_request = self.sim.builds_by_request()
        assert len(set(by_request.values())) == len(by_request)
        sim_builds = {b["id"]: b for b in self.sim.state()["builds"]}
        reruns = self.engine.jobs.jobs[JOB].config.reruns
        accounted: set[str] = set()
        for invocation_id in self.invocations[JOB]:
            inv = invs[invocation_id]
            # Its builds: the first (requestId: the invocation id), then each rerun's, in order.
            requests = [str(invocation_id)]
            requests += [f"{invocation_id}-rerun-{n}" for n in range(1, reruns.max + 1)]
            built = [by_request[r] for r in itertools.takewhile(by_request.__contains__, requests)]
            accounted.update(requests[: len(built)])
            statuses = [status_of(sim_builds[b]) for b in built]
            assert all(s in reruns.on for s in statuses[:-1]), f"rerun after {statuses}"
            # A change that made a build and crashed asks for the same one again (its requestId).
            recorded = [b["id"] for b in inv.task_data.get("builds", ())]
            assert recorded == built[: len(recorded)] and len(built) - len(recorded) <= 1
            reran = [t for t in logs[invocation_id] if "which reruns.on lists" in t]
            assert len(reran) == max(len(recorded) - 1, 0), "one line per rerun"
            build_id = inv.task_data.get("build_id")
            if recorded:
                assert build_id == recorded[-1]
            seen = [
                json.loads(t.split("\n", 1)[1])
                for t in logs[invocation_id]
                if t.startswith("Build:\n")
            ]
            # Each build seen ending before the last was rerun: reruns.on listed its status.
            assert all(status_of(b) in reruns.on for b in seen if b["id"] != build_id)
            ended = [status_of(b) for b in seen if b["id"] == build_id]
            if ended and inv.status.final:
                assert inv.status is FINAL_BUILD.get(ended[-1], Status.FAILED)
                assert status_of(sim_builds[build_id]) == ended[-1]
                if ended[-1] in reruns.on and len(recorded) <= reruns.max:
                    # Not rerun while reruns were left: an abort came first, or the rerun's
                    # ScheduleBuild was refused.
                    assert invocation_id in self.aborted or any(
                        t.startswith("Failed to schedule") for t in logs[invocation_id]
                    ), f"{ended[-1]} not rerun"
            elif ended:
                assert ended[-1] in reruns.on, (
                    "a build seen ending either ends its invocation or reruns"
                )
            if invocation_id in self.aborted_unlaunched:
                assert not built, "an abort before the launch skips it"
        # Every build belongs to an invocation, as its first build or one of its reruns.
        assert set(by_request) == accounted

    def _check_emitted(self, invs: Mapping[int, Invocation], logs: Mapping[int, list[str]]) -> None:
        """Every trigger an invocation's stored change emitted is added to its job, once its
        delivery got through (a crash in between: when it comes again)."""
        stored = set(self._stored(JOB))  # each checked against the store by _check_job_triggers
        for job in (NOOP, POLLER):
            for invocation_id in self.invocations[job]:
                inv = invs[invocation_id]
                emitted = [t.id for t in inv.emitted_triggers]
                if emitted:
                    assert inv.status.final, "a kind emits once its outcome is known"
                if job == NOOP and inv.status is Status.SUCCEEDED:
                    discarded = any(t.startswith("Discarding the trigger") for t in logs[inv.id])
                    assert emitted == ([] if discarded else [f"{NOOP}:{inv.id}:0"])
                if invocation_id in self.undelivered:
                    continue
                for t in emitted:
                    assert t in stored or t in self.excused, f"emitted {t} is lost"

    def _check_polls(self, logs: Mapping[int, list[str]]) -> None:
        """Each commit pushed to a watched ref ends as one trigger once a poll saw it, bar the
        documented limits: a new ref gives its head, a force push (the old head gone) its new
        head, at most MAX_COMMITS_PER_REF_UPDATE a ref update; never one for another commit."""
        repo = self._repo()
        owed: dict[str, int] = {}
        seen: dict[str, str] = {}  # ref -> its head when a poll last examined it
        on_ref: dict[str, set[str]] = {}  # ref -> the commits a poll saw on it
        for poll in self.polls:
            heads = {ref: head for ref, head in poll.refs.items() if watched(ref)}
            seen = {ref: head for ref, head in seen.items() if ref in heads}
            for ref in examined(heads, logs[poll.invocation_id]):
                old, new = seen.get(ref), heads[ref]
                seen[ref] = new
                reachable = repo.ancestors([new])
                on_ref.setdefault(ref, set()).update(reachable)
                if poll.paused or old == new:
                    continue
                if old is None or old not in repo.ancestors(poll.refs.values()):
                    fresh = {new}
                else:
                    fresh = reachable - repo.ancestors([old])
                    if len(fresh) > MAX_COMMITS_PER_REF_UPDATE:
                        fresh = {new}
                for commit in fresh:
                    owed.setdefault(commit_trigger(ref, commit), poll.invocation_id)
        stored = self._stored(JOB)  # each checked against the store by _check_job_triggers
        for trigger_id in stored:
            if trigger_id.startswith(f"{REPO}/+/"):
                ref, _, commit = trigger_id.removeprefix(f"{REPO}/+/").rpartition("@")
                assert commit in on_ref.get(ref, ()), f"{trigger_id}: not a commit of that ref"
        for trigger_id, invocation_id in owed.items():
            if invocation_id not in self.undelivered and trigger_id not in self.excused:
                assert trigger_id in stored, f"{trigger_id} is lost"


def test_a_history_reaches_buildbucket_and_reruns() -> None:
    """The rules make builds that the checks above see: a history without a build checks
    nothing of builds (a topic Buildbucket refused once made every history build-less)."""
    machine = EngineMachine()
    machine.job_policy(POLICIES[0], RERUNS[1], "shepherd")
    machine.builds_end_with(["INFRA_FAILURE", "SUCCESS"])
    machine.trigger(again=False)
    machine.teardown()  # drains every delivery, then checks every promise
    # The trigger's invocation (the teardown's poll triggers more, for the repository's heads).
    (invocation_id,) = [
        i for i, inv in machine.final.items() if [t.id for t in inv.triggers] == ["t0"]
    ]
    builds = machine.sim.builds_by_request()
    assert {str(invocation_id), f"{invocation_id}-rerun-1"} <= set(builds)
    assert f"{invocation_id}-rerun-2" not in builds
    assert machine.final[invocation_id].status is Status.SUCCEEDED


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


class KindsMachine(EngineMachine):
    """The same machine, its steps spent on the noop and Gitiles jobs that trigger JOB."""

    buildbucket_rules = False


TestEngineModel = EngineMachine.TestCase
# `make soak` runs long histories, `make test-fast` a handful, `make test` the figure in the README.
HISTORIES = {"soak": 400, "fast": 12}.get(os.environ.get("SHEPHERD_TESTS", ""), 60)
TestEngineModel.settings = settings(
    max_examples=HISTORIES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestKindsModel = KindsMachine.TestCase
TestKindsModel.settings = settings(
    max_examples=HISTORIES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
