"""The engine: invocation state, debug log and timers, one stored change per event.

It knows nothing of what a task does; a task kind (see tasks/) does that through a Controller.
Each event (trigger, start, timer, notification, abort) reads the invocation, lets the task
work (possibly calling out), then commits with a compare-and-swap on the mutation count, as
the LUCI Scheduler does. Timers are stored in the invocation first and handed to the timer
queue after the commit, so a crash in between loses nothing: `recover()` hands them again,
and so does `sweep()`, on every scheduler tick, for whatever a queue lost since.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .clock import Clock
from .debuglog import DebugLog
from .durations import MINUTE, SECOND, format_duration
from .jobs import Job, JobsFile, Settings
from .logs import bind_invocation
from .model import (
    IncomingTrigger,
    Invocation,
    JobState,
    LogEntry,
    LogKind,
    PubSubMessage,
    QueuedTask,
    Status,
    Timer,
    Trigger,
    TriggerRequest,
    TriggerStatus,
    timer_id,
)
from .policy import MAX_PENDING, decide, split_excess
from .ports import (
    ConflictError,
    NotificationTopic,
    Store,
    TimerQueue,
    TriagePlan,
    TriageView,
    Unavailable,
)
from .signing import BadToken, Signer
from .tasks.base import ChecksInGroups, TaskKind, TransientError

logger = logging.getLogger(__name__)

START_TASK = "start-invocation"
# An interval-scheduled job's next tick, handed to the queue when an invocation ends: its
# schedule runs at the queue's pace, not only on the scheduler's minute ticks.
TICK_TASK = "schedule-tick"
# A group's periodic status check (Engine.check_group): not tied to one invocation.
GROUP_CHECK_TASK = "group-status-check"
ABORT_TIMER = "abort-invocation"  # the engine's own timer: retries a cancel that failed
LAUNCH_RETRY_LIMIT = 50
# LUCI's launch queue (scheduler/appengine/queue.yaml): min_backoff 5s, max_backoff 10m.
RETRY_MIN_BACKOFF = 5 * SECOND
RETRY_MAX_BACKOFF = 10 * MINUTE
# Commits lost to another event before an abort or a start gives up with a 503.
CONFLICT_RETRIES = 5


def retry_delay(failures: int) -> int:
    """The wait after `failures` failed tries: 5 s after the first, doubling, at most 10 min."""
    return min(RETRY_MIN_BACKOFF << min(failures - 1, 20), RETRY_MAX_BACKOFF)


# The engine's own timer: the sweep arms it for an invocation past its invocation_timeout, so
# that on_timer (which may call the task's backend) times it out.
TIMEOUT_TIMER = "invocation-timeout"
# A check this late is lost rather than slow: a delivery and its handler take seconds.
SWEEP_MARGIN_NS = MINUTE
SWEEP_LIMIT = 500  # per tick; the rest, earliest first, on the next ones
# Triggers one triage may change: Firestore takes at most 500 writes in a transaction.
TRIAGE_WRITES = 400
# How long a launch in progress may take before the sweep hands its start again.
START_GRACE_NS = 5 * MINUTE
# A cron tick missed by less than this (a late or failed scheduler call) still runs.
CATCH_UP_NS = 10 * MINUTE


class Outcome(StrEnum):
    HANDLED = "handled"
    STALE = "stale"  # a duplicate or late delivery: nothing to do
    IGNORED = "ignored"  # not ours or not valid: acknowledged, nothing changed


class RetryLater(Exception):
    """A transient condition: the delivery should come again (a 5xx to the queue)."""


class UnknownJob(LookupError):
    pass


class UnknownInvocation(LookupError):
    pass


class InvocationFinished(Exception):
    pass


class InvocationRunning(Exception):
    """Only a finished invocation can be rerun."""


class JobPaused(Exception):
    """The job is paused: it takes no trigger until resumed."""


@dataclass(frozen=True)
class Triggered:
    """A trigger as stored, and the invocation it started at once, if any."""

    trigger: Trigger
    invocation: Invocation | None


class _Controller:
    """The engine's side of one event, handed to the task kind."""

    def __init__(self, engine: Engine, invocation: Invocation, job: Job) -> None:
        self._engine = engine
        self._job = job
        self.saved = invocation
        self.status = invocation.status
        self.view_url = invocation.view_url
        self.task_data: dict[str, Any] = dict(invocation.task_data)
        self._pending = list(invocation.pending_timers)
        self.abort_requested = invocation.abort_requested
        self.next_attempt_ns = invocation.next_attempt_ns
        self.debug_log = DebugLog(engine.clock)
        self._timers: list[Timer] = []
        self._emitted: list[Trigger] = []
        self._kind_state: dict[str, Any] | None = None
        self._group = invocation.check_group
        # While STARTING: when the next start task is due (None: a launch is in progress).

    def rebase(self, onto: Invocation) -> None:
        """Commits this event's changes over `onto`, a newer version of the invocation."""
        self.saved = onto
        self._pending = list(onto.pending_timers)
        self.abort_requested = self.abort_requested or onto.abort_requested

    @property
    def job_id(self) -> str:
        return self.saved.job_id

    @property
    def invocation_id(self) -> int:
        return self.saved.id

    @property
    def config(self) -> Any:
        return self._job.config

    @property
    def request(self) -> TriggerRequest:
        return self.saved.request

    @property
    def triggers(self) -> Sequence[IncomingTrigger]:
        return self.saved.incoming_triggers

    @property
    def settings(self) -> Settings:
        return self._engine.jobs.settings

    def now_ns(self) -> int:
        return self._engine.clock.now_ns()

    def add_timer(self, delay_ns: int, title: str, payload: dict[str, Any] | None = None) -> None:
        # Unique once committed: commits are serialized by the mutation count, and the index
        # tells apart the timers of one commit.
        tid = timer_id(
            self.job_id, self.invocation_id, self.saved.mutation_count, len(self._timers)
        )
        self.debug_log.write(
            LogKind.TIMER_SCHEDULED,
            f'Scheduling timer "{title}" ({tid}) after {format_duration(delay_ns)}',
        )
        now = self.now_ns()
        self._timers.append(Timer(tid, title, now, now + delay_ns, payload))

    def check_with_group(self, group: str) -> None:
        self._group = group

    def emit_trigger(self, job_id: str, request: TriggerRequest | None = None) -> None:
        # Counted over the invocation, so unique across its events; the same on a redelivery,
        # which starts again from the same stored invocation.
        n = len(self.saved.emitted_triggers) + len(self._emitted)
        given = request.request_id if request is not None else None
        tid = given or f"{self.job_id}:{self.invocation_id}:{n}"
        refusal = self._engine.emit_refusal(job_id)
        if refusal is not None:
            self.debug_log.write(
                LogKind.TRIGGER, f'Discarding the trigger {tid} for job "{job_id}": {refusal}'
            )
            return
        self.debug_log.write(LogKind.TRIGGER, f'Emitting a trigger {tid} for job "{job_id}"')
        carried = dataclasses.replace(
            request or TriggerRequest(job_id=job_id), job_id=job_id, request_id=tid
        )
        self._emitted.append(Trigger(tid, job_id, self.now_ns(), carried, order=n))

    def drop_emitted(self) -> None:
        """Forgets the triggers emitted since the last commit (a launch that will be retried),
        and the kind state that was to follow them."""
        self._emitted = []
        self._kind_state = None

    def prepare_topic(self, publisher: str) -> tuple[str, str]:
        kind = self._engine.kinds[self._job.kind]
        topic = self._engine.topic.prepare(kind.name, publisher)
        return topic, self._engine.signer.sign(self.job_id, self.invocation_id)

    def get_kind_state(self) -> dict[str, Any]:
        return self._engine.store.get_kind_state(self.job_id)

    def put_kind_state(self, state: dict[str, Any]) -> None:
        self._kind_state = dict(state)

    def consume_timer(self, tid: str) -> Timer | None:
        for t in self._pending:
            if t.id == tid:
                self._pending.remove(t)
                return t
        return None

    def save(self) -> None:
        """The task's best-effort save before a slow call; a conflict surfaces at commit()."""
        try:
            self.commit()
        except ConflictError:
            logger.warning(
                "invocation %d changed under a save; the final commit will fail", self.invocation_id
            )

    def commit(self) -> None:
        """Commits what changed; raises ConflictError if someone committed first."""
        before = self.saved
        after = before.evolve(
            status=self.status,
            view_url=self.view_url,
            task_data=dict(self.task_data),
            pending_timers=tuple(self._pending),
            abort_requested=self.abort_requested,
            next_attempt_ns=self.next_attempt_ns if self.status is Status.STARTING else None,
            emitted_triggers=before.emitted_triggers + tuple(self._emitted),
            check_group=self._group if self.status is Status.RUNNING else None,
        )
        if (
            after == before
            and not self.debug_log.entries
            and not self._timers
            and self._kind_state is None
        ):
            return
        new_timers = self._timers
        if self.status.final and not before.status.final:
            now = self.now_ns()
            after = after.evolve(finished_ns=now, pending_timers=())
            took = format_duration(now - before.created_ns)
            self.debug_log.write(
                LogKind.FINISHED, f"Invocation finished in {took} with status {self.status}"
            )
            for t in new_timers:
                self.debug_log.write(
                    LogKind.TIMER_IGNORED, f'Ignoring timer "{t.title}" ({t.id})...'
                )
            new_timers = []
        after = after.evolve(
            mutation_count=before.mutation_count + 1,
            pending_timers=after.pending_timers + tuple(new_timers),
        )
        after = after.evolve(next_check_ns=self._engine.next_check_ns(after))
        # The kind state goes with the change that stores the triggers it emitted: those are
        # added below, or by a delivery that comes again (_emit_again), never lost, whereas a
        # state written apart could be (a crash after the commit), and the next poll would take
        # a ref it had seen for a new one (emitting its head only) or a force push.
        self._engine.store.commit(
            after, before.mutation_count, self.debug_log.entries, self._kind_state
        )
        self.debug_log.take()
        self.saved = after
        self._pending = list(after.pending_timers)
        self._timers = []
        emitted, self._emitted = self._emitted, []
        self._kind_state = None
        tasks = [t.task(after.id) for t in new_timers]
        if after.check_group is not None and after.check_group != before.check_group:
            tasks.append(self._engine.group_task(after.check_group, self.now_ns()))
        if after.status.final and not before.status.final:
            tasks += self._engine.tick_tasks(after)
        self._engine.queue.schedule(tasks)
        if emitted:
            self._engine.deliver_emitted(after, emitted)
        if after.status.final and not before.status.final:
            self._engine.triage_after_finish(after.job_id, after.id)


@dataclass
class SweepResult:
    """What one sweep found and did; the scheduler function answers with it."""

    overdue: int = 0  # invocations the query found
    timers: int = 0  # due timers handed to the queue again
    starts: int = 0  # start tasks handed again (STARTING)
    timeouts: int = 0  # timeout timers armed (past invocation_timeout)
    conflicts: int = 0  # changed under the sweep: left to the next tick
    started: int = 0  # invocations its triages started (a triage after an end that was lost)
    groups: int = 0  # group status checks armed (the next of each group with a member)

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class Engine:
    jobs: JobsFile
    kinds: Mapping[str, TaskKind]
    store: Store
    queue: TimerQueue
    topic: NotificationTopic
    clock: Clock
    signer: Signer
    rng: random.Random = field(default_factory=random.Random)
    # How late a check must be before the sweep takes it for lost (SHEPHERD_SWEEP_MARGIN).
    sweep_margin_ns: int = SWEEP_MARGIN_NS
    # One triage of a job at a time in this process: the store's transaction still guards
    # against other processes, but contending transactions cost far more than waiting here.
    _triage_locks: defaultdict[str, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock), init=False, repr=False
    )
    # How many members' changes one group check commits side by side.
    group_check_threads: int = 8
    # Each group's checks in this process: the boundary of the last one done, and those
    # under way. A queue that does not refuse a second task of the same name (the Cloud Tasks
    # emulator) would otherwise run a check, and its chain, for every launch in the period.
    _groups_checked: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _groups_checking: set[tuple[str, int]] = field(default_factory=set, init=False, repr=False)
    _groups_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # --- events -------------------------------------------------------------------------

    def trigger(self, request: TriggerRequest, order: int = 0) -> Triggered:
        """Adds a trigger to its job's pending set (its request_id is its id: the same one
        twice is one trigger), then triages the job."""
        if self.jobs.job(request.job_id) is None:
            raise UnknownJob(request.job_id)
        state = self.store.get_job(request.job_id)
        if state.paused:
            reason = f": {state.paused_reason}" if state.paused_reason else ""
            raise JobPaused(f'job "{request.job_id}" is paused{reason}')
        fresh = Trigger(
            id=request.request_id or f"{self.rng.getrandbits(64):016x}",
            job_id=request.job_id,
            created_ns=self.clock.now_ns(),
            request=request,
            order=order,
        )
        trigger = self.store.add_trigger(fresh)
        if trigger is not fresh:  # the same id again: as it stands
            return self._as_stored(trigger)
        try:
            plan = self._triage(request.job_id, state=state)
        except RetryLater as e:
            # Stored, so not lost: the triage that won, the next one, or the next tick's takes it.
            logger.warning("trigger %s waits for the next triage: %s", trigger.id, e)
            return Triggered(trigger, None)
        taken = next((t for t in plan.triggers if t.id == trigger.id), None) if plan else None
        if taken is None:  # still pending, or another triage took it first
            return self._with_invocation(self.store.get_trigger(trigger.job_id, trigger.id))
        assert plan is not None
        inv = next((i for i, _ in plan.invocations if i.id == taken.invocation_id), None)
        if inv is not None:
            bind_invocation(inv.job_id, inv.id)
        return Triggered(taken, inv)

    def _with_invocation(self, trigger: Trigger | None) -> Triggered:
        assert trigger is not None, "triggers are never deleted"
        inv = None if trigger.invocation_id is None else self.store.get(trigger.invocation_id)
        if inv is not None:
            bind_invocation(inv.job_id, inv.id)
        return Triggered(trigger, inv)

    def _as_stored(self, trigger: Trigger) -> Triggered:
        """A trigger that came again: its invocation, whose lost start it re-arms."""
        if trigger.status is TriggerStatus.PENDING:
            self.triage(trigger.job_id)
            trigger = self.store.get_trigger(trigger.job_id, trigger.id) or trigger
        done = self._with_invocation(trigger)
        inv = done.invocation
        if inv is not None and inv.status is Status.STARTING and inv.attempt == 0:
            # Idempotent per task name: a start that was lost is armed again.
            self.queue.schedule([self._start_task(inv, 1, inv.created_ns)])
        return done

    def triage(
        self,
        job_id: str,
        pause: tuple[bool, str] | None = None,
        finished: frozenset[int] = frozenset(),
        reconcile: bool = False,
    ) -> list[Invocation]:
        """Applies the job's triggering policy to its pending triggers: starts the invocations
        it asks for, each made of a batch of triggers and built from the newest, and discards
        what it drops (all of them while the job is paused; `pause` sets or clears that first).
        One transaction over the job, its pending triggers and its active invocations, so
        racing triages and duplicate events start nothing twice.

        `finished`: active invocations known to have ended (the one whose end asks for this
        triage). While every slot is taken a batching policy can do nothing, so nothing is
        read or written (newest_first still discards what waited too long); the sweep's
        triage (`reconcile`) reads the active invocations (one read each) to free the slots of
        ends whose triage was lost. Taking an ended invocation for a running one only delays
        the next start, never doubles one."""
        plan = self._triage(job_id, pause, finished, reconcile)
        return [inv for inv, _ in plan.invocations] if plan else []

    def _triage(
        self,
        job_id: str,
        pause: tuple[bool, str] | None = None,
        finished: frozenset[int] = frozenset(),
        reconcile: bool = False,
        state: JobState | None = None,
    ) -> TriagePlan | None:
        """triage(), answering with what it wrote; `state`: the job's, if just read."""
        job = self.jobs.job(job_id)
        if job is None:
            raise UnknownJob(job_id)
        policy = job.triggering_policy
        if not reconcile and pause is None and policy.kind != "newest_first":
            active = set((state or self.store.get_job(job_id)).active) - finished
            if len(active) >= policy.max_concurrent_invocations:
                return None
        try:
            with self._triage_locks[job_id]:
                plan = self.store.triage(
                    job_id,
                    MAX_PENDING + TRIAGE_WRITES,
                    lambda view: self._plan(
                        job, dataclasses.replace(view, finished=view.finished | finished), pause
                    ),
                    read_active=reconcile,
                )
        except ConflictError as e:
            raise RetryLater(str(e)) from e
        if plan is not None:
            starts = [self._start_task(inv, 1, inv.created_ns) for inv, _ in plan.invocations]
            self.queue.schedule(starts)
        return plan

    def _plan(
        self, job: Job, view: TriageView, pause: tuple[bool, str] | None
    ) -> TriagePlan | None:
        """The triage's decision over what its transaction read; no I/O (it may run twice)."""
        now = self.clock.now_ns()
        state = view.job
        if pause is not None:
            state = state.evolve(paused=pause[0], paused_reason=pause[1])
        active = tuple(i for i in state.active if i not in view.finished)
        pending, dropped = split_excess(view.pending)
        changed = [
            t.evolve(status=TriggerStatus.DISCARDED, reason=f"more than {MAX_PENDING} pending")
            for t in dropped
        ]
        batches: tuple[tuple[Trigger, ...], ...] = ()
        if state.paused:
            why = f": {state.paused_reason}" if state.paused_reason else ""
            reason = f"the job was paused{why}"
            changed += [t.evolve(status=TriggerStatus.DISCARDED, reason=reason) for t in pending]
        else:
            decision = decide(job.triggering_policy, now, len(active), pending)
            changed += [
                t.evolve(status=TriggerStatus.DISCARDED, reason=why)
                for t, why in decision.discarded
            ]
            batches = decision.batches
        # What does not fit in one transaction stays pending for the next triage.
        changed = changed[:TRIAGE_WRITES]
        created: list[tuple[Invocation, tuple[LogEntry, ...]]] = []
        for batch in batches:
            if len(changed) + len(batch) > TRIAGE_WRITES:
                break
            inv = self._new_invocation(job.id, batch, now)
            changed += [t.evolve(status=TriggerStatus.STARTED, invocation_id=inv.id) for t in batch]
            debug_log = DebugLog(self.clock)
            debug_log.write(LogKind.QUEUED, "New invocation is queued and will start shortly")
            if len(batch) > 1:
                debug_log.write(
                    LogKind.TRIGGER, f"Made of {len(batch)} triggers, the newest {batch[-1].id}"
                )
            created.append((inv, tuple(debug_log.take())))
        after = state.evolve(active=active + tuple(inv.id for inv, _ in created))
        if not changed and after == view.job:
            return None
        return TriagePlan(after, tuple(changed), tuple(created))

    def _new_invocation(self, job_id: str, batch: Sequence[Trigger], now: int) -> Invocation:
        return Invocation(
            id=self.rng.randrange(10**18, 2**63),
            job_id=job_id,
            request=batch[-1].request,
            created_ns=now,
            next_check_ns=now,  # its start task's ETA
            triggers=tuple(t.incoming() for t in batch),
        )

    def triage_after_finish(self, job_id: str, invocation_id: int) -> None:
        """An invocation ended, so a slot is free. Best effort: the sweep triages every job on
        each tick, so a failure here only delays the next invocation."""
        if self.jobs.job(job_id) is None:
            return  # the job left the job file: nothing of it starts any more
        try:
            self.triage(job_id, finished=frozenset({invocation_id}))
        except (RetryLater, Unavailable) as e:
            logger.warning("triage of %s after an invocation ended: %s", job_id, e)

    def emit_refusal(self, job_id: str) -> str | None:
        """Why a trigger emitted for job `job_id` would be refused now, if it would."""
        if self.jobs.job(job_id) is None:
            return "the job is not in the job file"
        state = self.store.get_job(job_id)
        if state.paused:
            return "the job is paused" + (f": {state.paused_reason}" if state.paused_reason else "")
        return None

    def deliver_emitted(self, emitter: Invocation, triggers: Sequence[Trigger]) -> None:
        """Adds triggers `emitter` emitted to their jobs, through `trigger` (so their policies
        apply), once the change that stores them has committed. Each id is stable, so adding
        one again changes nothing. A job paused since (or gone from the job file) drops its
        trigger with a log record; a store outage propagates, and the delivery that comes again
        finds the invocation stale and adds them then (`_emit_again`)."""
        for t in triggers:
            try:
                self.trigger(t.request, order=t.order)
            except (JobPaused, UnknownJob, RetryLater) as e:
                logger.warning(
                    "trigger %s emitted by invocation %d for %s: %s", t.id, emitter.id, t.job_id, e
                )
        if triggers:
            bind_invocation(emitter.job_id, emitter.id)  # `trigger` bound the target's

    def _emit_again(self, inv: Invocation) -> None:
        """A stale delivery may follow a crash between a commit and the delivery of the
        triggers it stored: add them again (each once, by its id)."""
        if inv.emitted_triggers:
            self.deliver_emitted(inv, inv.emitted_triggers)

    def rerun(self, invocation_id: int, request_id: str | None = None) -> Triggered:
        """A new trigger of a finished invocation's job, made from its newest trigger; it goes
        through the job's triggering policy as any trigger does."""
        inv = self.store.get(invocation_id)
        if inv is None:
            raise UnknownInvocation(invocation_id)
        if not inv.status.final:
            raise InvocationRunning(f"invocation {invocation_id} is {inv.status}: not finished")
        newest = inv.triggers[-1].request if inv.triggers else inv.request
        rerun_id = request_id or f"rerun:{invocation_id}:{self.rng.getrandbits(64):016x}"
        return self.trigger(dataclasses.replace(newest, request_id=rerun_id))

    def pause(self, job_id: str, reason: str = "") -> JobState:
        """Pauses the job: its pending triggers are discarded, new ones refused, its schedule
        stopped; running invocations go on."""
        self.triage(job_id, pause=(True, reason))
        return self.store.get_job(job_id)

    def resume(self, job_id: str) -> JobState:
        self.triage(job_id, pause=(False, ""))
        return self.store.get_job(job_id)

    def abort_job(self, job_id: str, by: str = "user") -> list[Invocation]:
        """Aborts every running invocation of the job."""
        if self.jobs.job(job_id) is None:
            raise UnknownJob(job_id)
        aborted = []
        for invocation_id in self.store.get_job(job_id).active:
            try:
                aborted.append(self.abort(invocation_id, by))
            except (InvocationFinished, UnknownInvocation):
                continue
        return aborted

    def handle_task(self, invocation_id: int, tid: str, name: str) -> Outcome:
        """A delivery from the timer queue: an invocation's start, one of its timers, or a
        group's status check."""
        if name == GROUP_CHECK_TASK:
            return self.check_group(tid)
        inv = self.store.get(invocation_id)
        if inv is None:
            logger.warning("task %s for unknown invocation %d", tid, invocation_id)
            return Outcome.IGNORED
        bind_invocation(inv.job_id, inv.id)
        outcome = self._handle_task(inv, tid, name)
        if outcome is Outcome.STALE:
            self._emit_again(inv)
        return outcome

    def _handle_task(self, inv: Invocation, tid: str, name: str) -> Outcome:
        if name == START_TASK:
            return self._start(inv, tid)
        if name == TICK_TASK:
            return self._tick_after(inv)
        if inv.status.final:
            return Outcome.STALE
        ctl, kind = self._controller(inv)
        timer = ctl.consume_timer(tid)
        if timer is None:
            # A redelivery after a commit whose timers never reached the queue (the hand-off
            # failed): hand them again, or the invocation would wait for nothing.
            self.queue.schedule([t.task(inv.id) for t in inv.pending_timers])
            return Outcome.STALE
        ctl.debug_log.write(LogKind.TIMER_HANDLED, f'Handling timer "{timer.title}" ({timer.id})')
        timeout = self.jobs.settings.invocation_timeout
        if (
            kind is not None
            and inv.status is Status.RUNNING
            and self.clock.now_ns() - inv.created_ns > timeout
        ):
            self._time_out(ctl, kind, timeout)
        elif timer.title == ABORT_TIMER:
            self._cancel(ctl, kind, failures=int((timer.payload or {}).get("failures", 1)))
        elif timer.title == TIMEOUT_TIMER and kind is not None:
            pass  # the engine's own timer: nothing for the task
        else:
            self._act(
                ctl,
                kind,
                lambda k: k.handle_timer(ctl, timer.title, timer.payload),
                "Fatal error when handling timer, aborting invocation",
            )
        self._commit(ctl)
        return Outcome.HANDLED

    def handle_notification(self, message: PubSubMessage) -> Outcome:
        token = next(
            (t for k in self.kinds.values() if (t := k.examine_notification(message))), None
        )
        if token is None:
            logger.warning("notification %s carries no token", message.message_id)
            return Outcome.IGNORED
        try:
            job_id, invocation_id = self.signer.verify(token)
        except BadToken as e:
            logger.warning("notification %s: %s", message.message_id, e)
            return Outcome.IGNORED
        inv = self.store.get(invocation_id)
        if inv is None or inv.job_id != job_id:
            logger.warning("notification %s for unknown invocation", message.message_id)
            return Outcome.IGNORED
        bind_invocation(inv.job_id, inv.id)
        if inv.status.final:
            self._emit_again(inv)
            return Outcome.STALE
        if inv.status is Status.STARTING:
            # The launch may still be running; touching the invocation now would collide.
            raise RetryLater("invocation is still starting, try again later")
        ctl, kind = self._controller(inv)
        self._act(
            ctl,
            kind,
            lambda k: k.handle_notification(ctl, message),
            "Fatal error when handling PubSub notification, aborting invocation",
        )
        self._commit(ctl)
        return Outcome.HANDLED

    def abort(self, invocation_id: int, by: str = "user") -> Invocation:
        """Aborts the invocation: final (ABORTED) once done; else the abort is recorded
        (`abort_requested`) and completes on its own. While it is STARTING its launch is
        skipped, or the build the launch made is cancelled; while the cancel fails
        transiently, a timer tries it again. A repeated call changes nothing."""
        for tries in range(CONFLICT_RETRIES):
            inv = self.store.get(invocation_id)
            if inv is None:
                raise UnknownInvocation(invocation_id)
            bind_invocation(inv.job_id, inv.id)
            if inv.status.final:
                if tries and inv.status is Status.ABORTED:
                    # The cancelled build's own notification finished the invocation first: the
                    # abort has then done what it was asked.
                    return inv
                raise InvocationFinished(
                    f"invocation {invocation_id} already finished: {inv.status}"
                )
            if inv.abort_requested:
                return inv
            ctl, kind = self._controller(inv)
            ctl.abort_requested = True
            ctl.debug_log.write(LogKind.ABORT, f"Invocation was manually aborted by {by}")
            if inv.status is Status.STARTING:
                # A launch may be under way: it sees the request when it commits.
                ctl.debug_log.write(
                    LogKind.INFO,
                    "The invocation is still starting: its launch will be skipped, "
                    "or the task it launches cancelled",
                )
            else:
                self._cancel(ctl, kind, failures=0)
            try:
                ctl.commit()
            except ConflictError:
                continue
            return ctl.saved
        raise RetryLater(f"invocation {invocation_id} kept changing under the abort")

    def recover(self) -> int:
        """Hands every pending timer and start of unfinished invocations to the queue again."""
        tasks = []
        for inv in self.store.list_active():
            tasks += [t.task(inv.id) for t in inv.pending_timers]
            if inv.status is Status.STARTING:
                tasks.append(self._start_task(inv, inv.attempt + 1, self.clock.now_ns()))
        tasks += self._group_tasks(self.clock.now_ns())
        self.queue.schedule(tasks)
        return len(tasks)

    def sweep(self, now_ns: int, limit: int = SWEEP_LIMIT) -> SweepResult:
        """Reconciles what the queues lost: one indexed query for the invocations whose next
        check is overdue by more than the sweep margin, then work for those only.

        A STARTING one gets its start task again; a RUNNING one past invocation_timeout gets
        the engine's timeout timer (compare-and-swap, so a racing sweep or event wins or loses
        whole); any other gets its due timers again. Queues deduplicate by task name and the
        handlers ignore stale or repeated deliveries, so sweeping twice changes nothing twice."""
        overdue = self.store.list_overdue(now_ns - self.sweep_margin_ns, limit)
        tasks: list[QueuedTask] = []
        result = SweepResult(overdue=len(overdue))
        timeout = self.jobs.settings.invocation_timeout
        for inv in overdue:
            if inv.status.final:
                continue
            if inv.status is Status.STARTING:
                tasks.append(self._start_task(inv, inv.attempt + 1, now_ns))
                result.starts += 1
                continue
            armed = any(t.title == TIMEOUT_TIMER for t in inv.pending_timers)
            if now_ns - inv.created_ns > timeout and not armed:
                ctl, _ = self._controller(inv)
                ctl.add_timer(0, TIMEOUT_TIMER)
                try:
                    ctl.commit()  # hands the new timer to the queue
                    result.timeouts += 1
                except ConflictError:
                    result.conflicts += 1  # it moved on: the next tick sees where to
                continue
            due = [t.task(inv.id) for t in inv.pending_timers if t.eta_ns <= now_ns]
            tasks += due
            result.timers += len(due)
        groups = self._group_tasks(now_ns)
        result.groups = len(groups)
        self.queue.schedule(tasks + groups)
        for job_id in self.jobs.jobs:
            # Reconciling reads every active invocation of the job: worth it only when a
            # trigger waits (an ended invocation's slot matters to nothing else).
            if not self.store.list_pending(job_id, 1):
                continue
            try:
                result.started += len(self.triage(job_id, reconcile=True))
            except RetryLater:
                result.conflicts += 1
        if overdue or result.started:
            logger.info("sweep: %s", result.to_json())
        return result

    # --- group status checks --------------------------------------------------------------

    def group_task(self, group: str, now_ns: int) -> QueuedTask:
        """The group's check at the first period boundary after `now_ns`. Named for its
        boundary, so whoever arms it (the check before it, a launch, the sweep) arms one."""
        period = self.jobs.settings.status_check_max
        boundary = now_ns // period + 1
        return QueuedTask(0, f"{group}@{boundary}", GROUP_CHECK_TASK, boundary * period)

    def _group_tasks(self, now_ns: int) -> list[QueuedTask]:
        """The next check of every group an invocation runs in (one query each, limit 1):
        harmless when the group's own chain armed it already, and rearms one whose task the
        queue lost."""
        groups = {
            group
            for job in self.jobs.jobs.values()
            if isinstance(kind := self.kinds[job.kind], ChecksInGroups)
            and (group := kind.check_group_of(job.config, self.jobs.settings)) is not None
        }
        return [
            self.group_task(group, now_ns)
            for group in sorted(groups)
            if self.store.list_check_group(group, limit=1)
        ]

    def check_group(self, tid: str) -> Outcome:
        """A group's periodic check: the kind checks every running invocation of the group in
        as few calls as it can; each one whose status moved takes the news through its own
        compare-and-swap commit. The next check is armed while any invocation remains."""
        group, _, boundary = tid.rpartition("@")
        kind = next(
            (
                k
                for k in self.kinds.values()
                if isinstance(k, ChecksInGroups) and group.startswith(k.check_group_prefix)
            ),
            None,
        )
        if kind is None or not boundary.isdigit():
            logger.warning("group check %s: no kind checks that group", tid)
            return Outcome.IGNORED
        claim = (group, int(boundary))
        with self._groups_lock:
            if claim in self._groups_checking or self._groups_checked.get(group, -1) >= claim[1]:
                return Outcome.STALE  # this check again, or one of an earlier boundary
            self._groups_checking.add(claim)
        try:
            outcome = self._check_group(tid, kind, group, int(boundary))
        finally:
            with self._groups_lock:
                self._groups_checking.discard(claim)
        # Done (and the next one armed): a delivery of it again, or of an earlier boundary,
        # changes nothing. One that failed is not recorded: the queue delivers it again.
        with self._groups_lock:
            self._groups_checked[group] = max(self._groups_checked.get(group, -1), claim[1])
        return outcome

    def _check_group(self, tid: str, kind: ChecksInGroups, group: str, boundary: int) -> Outcome:
        members = [i for i in self.store.list_check_group(group) if i.status is Status.RUNNING]
        if not members:
            return Outcome.STALE  # the chain ends; the next launch in the group starts it again
        try:
            news = kind.check_group(group, members, self.jobs.settings)
        except TransientError as e:
            raise RetryLater(str(e)) from e

        def take(inv: Invocation) -> None:
            bind_invocation(inv.job_id, inv.id)
            ctl, member_kind = self._controller(inv)
            try:
                self._act(
                    ctl,
                    member_kind,
                    lambda _: kind.handle_group_check(ctl, news[inv.id]),
                    "Fatal error when handling the status check, aborting invocation",
                )
                ctl.commit()
            except (RetryLater, ConflictError) as e:
                # Another event moved it on, or this check failed for it alone: the next
                # check (or a notification) brings the news.
                logger.info("group check %s: invocation %d: %s", tid, inv.id, e)

        found = [inv for inv in members if inv.id in news]
        if self.group_check_threads > 1 and len(found) > 1:
            # Each commit waits on the store (tens of ms on Firestore): side by side, so that
            # thousands of builds ending in one period fit in one function invocation.
            with ThreadPoolExecutor(self.group_check_threads) as pool:
                for done in [pool.submit(copy_context().run, take, inv) for inv in found]:
                    done.result()
        else:
            for inv in found:
                take(inv)
        # The next boundary, whatever this clock says (a delivery may come early in tests).
        now = max(self.clock.now_ns(), boundary * self.jobs.settings.status_check_max)
        self.queue.schedule([self.group_task(group, now)])
        return Outcome.HANDLED

    # --- schedules ------------------------------------------------------------------------

    def due_tick(self, job: Job, now_ns: int) -> tuple[str | None, str]:
        """The request id of the job's schedule tick due at `now_ns`, or None with the reason.
        An interval tick is due `interval` after the last invocation ended, none running; a
        cron tick at its time, or up to CATCH_UP_NS later (a late or failed scheduler call)."""
        assert job.schedule is not None
        recent = self.store.list_invocations(job.id, limit=max(10, job.max_concurrent_invocations))
        running = [inv for inv in recent if not inv.status.final]
        if job.schedule.interval_ns is not None:
            if running:
                return None, f"invocation {running[0].id} still runs"
            if not recent:
                return "interval:first", ""
            last = recent[0]
            assert last.finished_ns is not None
            if now_ns < last.finished_ns + job.schedule.interval_ns:
                return None, "interval not over"
            return f"interval:after:{last.id}", ""
        tick = job.schedule.latest_tick(now_ns)
        if now_ns - tick > CATCH_UP_NS:
            return None, "no tick in the last 10 minutes"
        request_id = f"cron:{tick}"
        if self.store.get_trigger(job.id, request_id) is not None:
            return None, "this tick already triggered"
        return request_id, ""

    def tick(self, job_id: str, request_id: str) -> Triggered:
        """Triggers the job for its schedule's tick `request_id` (the same tick twice is one
        trigger)."""
        return self.trigger(
            TriggerRequest(
                job_id=job_id, tags=(f"scheduler_tick:{request_id}",), request_id=request_id
            )
        )

    def tick_tasks(self, ended: Invocation) -> list[QueuedTask]:
        """The queue task that ticks an interval-scheduled job when `ended`'s interval is
        over. Best effort, as every hand-off after a commit: the scheduler's minute tick
        triggers a tick whose task was lost."""
        job = self.jobs.job(ended.job_id)
        if job is None or job.schedule is None or job.schedule.interval_ns is None:
            return []
        assert ended.finished_ns is not None
        eta = ended.finished_ns + job.schedule.interval_ns
        return [QueuedTask(ended.id, f"{ended.job_id}:{ended.id}:tick", TICK_TASK, eta)]

    def _tick_after(self, ended: Invocation) -> Outcome:
        job = self.jobs.job(ended.job_id)
        if job is None or job.schedule is None or ended.finished_ns is None:
            return Outcome.IGNORED
        interval = job.schedule.interval_ns
        if interval is None:
            return Outcome.IGNORED  # the job's schedule became a cron one
        # At the task's ETA at the earliest, whatever this clock says.
        now = max(self.clock.now_ns(), ended.finished_ns + interval)
        request_id, _ = self.due_tick(job, now)
        if request_id != f"interval:after:{ended.id}":
            return Outcome.STALE  # another invocation ran or runs since: it arms its own tick
        try:
            self.tick(job.id, request_id)
        except JobPaused:
            return Outcome.IGNORED
        return Outcome.HANDLED

    def next_check_ns(self, inv: Invocation) -> int | None:
        """When the invocation next needs the queue: its earliest timer, its start task while
        STARTING (`next_attempt_ns`; None: the launch in progress, given START_GRACE_NS), and
        while RUNNING its invocation_timeout. None once final."""
        if inv.status.final:
            return None
        times = [t.eta_ns for t in inv.pending_timers]
        if inv.status is Status.STARTING:
            no_later = self.clock.now_ns() + START_GRACE_NS
            times.append(inv.next_attempt_ns if inv.next_attempt_ns is not None else no_later)
        else:
            times.append(inv.created_ns + self.jobs.settings.invocation_timeout)
        return min(times)

    # --- helpers ------------------------------------------------------------------------

    def _controller(self, inv: Invocation) -> tuple[_Controller, TaskKind | None]:
        """The event's controller, and the job's task kind (None: the job left the job file)."""
        job = self.jobs.job(inv.job_id)
        if job is None:
            return _Controller(self, inv, Job(inv.job_id, "", None)), None
        return _Controller(self, inv, job), self.kinds[job.kind]

    def _act(
        self,
        ctl: _Controller,
        kind: TaskKind | None,
        action: Callable[[TaskKind], None],
        fatal: str,
    ) -> None:
        """The kind's part of an event: a transient error leaves everything as it was (the
        delivery comes again); any other error fails the invocation."""
        if kind is None:
            self._fail(
                ctl, f"Failed to initialize task controller - job {ctl.job_id!r} is not configured"
            )
            return
        try:
            action(kind)
        except TransientError as e:
            raise RetryLater(str(e)) from e
        except Exception as e:
            self._fail(ctl, f"{fatal} - {e}")

    @staticmethod
    def _start_task(inv: Invocation, attempt: int, eta_ns: int) -> QueuedTask:
        return QueuedTask(inv.id, f"{inv.job_id}:{inv.id}:start:{attempt}", START_TASK, eta_ns)

    @staticmethod
    def _commit(ctl: _Controller) -> None:
        try:
            ctl.commit()
        except ConflictError as e:
            raise RetryLater(str(e)) from e

    def _time_out(self, ctl: _Controller, kind: TaskKind, timeout: int) -> None:
        ctl.debug_log.write(
            LogKind.TIMEOUT,
            f"Invocation timed out after {format_duration(timeout)}, cancelling it",
        )
        try:
            kind.abort(ctl)
        except Exception as e:
            ctl.debug_log.write(LogKind.ERROR, f"Failed to cancel the task - {e}")
        ctl.status = Status.ABORTED if ctl.abort_requested else Status.FAILED

    def _cancel(self, ctl: _Controller, kind: TaskKind | None, failures: int) -> None:
        """Cancels the task of an aborted invocation, then ABORTED; while the cancel fails
        transiently (`failures` times so far), a timer tries again with backoff, without end:
        the abort was accepted, so it must complete."""
        try:
            if kind is not None:
                kind.abort(ctl)
        except TransientError as e:
            delay = retry_delay(failures + 1)
            ctl.debug_log.write(
                LogKind.ERROR, f"Transient error when aborting the invocation, will retry - {e}"
            )
            ctl.add_timer(delay, ABORT_TIMER, {"failures": failures + 1})
            return
        except Exception as e:
            ctl.debug_log.write(LogKind.ERROR, f"Fatal error when aborting the invocation - {e}")
        if not ctl.status.final:
            ctl.status = Status.ABORTED

    @staticmethod
    def _fail(ctl: _Controller, line: str) -> None:
        if ctl.status is not Status.FAILED:
            ctl.debug_log.write(LogKind.ERROR, line)
            ctl.status = Status.FAILED

    def _start(self, inv: Invocation, tid: str) -> Outcome:
        prefix, _, number = tid.rpartition(":start:")
        if prefix != f"{inv.job_id}:{inv.id}" or not number.isdigit():
            logger.warning("start task %r does not name invocation %d", tid, inv.id)
            return Outcome.IGNORED
        for _ in range(CONFLICT_RETRIES):
            # attempt - 1: the normal case; attempt: that attempt died before it saved its end.
            if inv.status is not Status.STARTING or inv.attempt not in (
                int(number) - 1,
                int(number),
            ):
                return Outcome.STALE
            if inv.abort_requested and inv.attempt == 0:
                return self._skip_launch(inv)
            attempt = inv.attempt + 1
            now = self.clock.now_ns()
            starting = inv.evolve(
                attempt=attempt,
                mutation_count=inv.mutation_count + 1,
                started_ns=inv.started_ns or now,
                next_attempt_ns=None,
            )
            starting = starting.evolve(next_check_ns=self.next_check_ns(starting))
            debug_log = DebugLog(self.clock)
            debug_log.write(LogKind.STARTED, f"Starting the invocation (attempt {attempt})")
            try:
                self.store.commit(starting, inv.mutation_count, debug_log.take())
                break
            except ConflictError:
                fresh = self.store.get(inv.id)
                if fresh is None or fresh.attempt != inv.attempt:
                    return Outcome.STALE  # a duplicate delivery of this start got there first
                inv = fresh  # something else changed, an abort recorded: look again
        else:
            raise RetryLater(f"invocation {inv.id} kept changing under its start")
        ctl, kind = self._controller(starting)
        if kind is None:
            self._act(ctl, None, lambda k: None, "")  # fails it: the job is gone
            self._commit(ctl)
            return Outcome.HANDLED
        error: str | None = None
        transient = False
        try:
            kind.launch(ctl)
        except TransientError as e:
            error, transient = str(e), True
        except Exception as e:
            error = str(e) or type(e).__name__
        if ctl.status is Status.STARTING and error is None:
            error = "the task did not move the invocation out of STARTING"
        if transient and attempt >= LAUNCH_RETRY_LIMIT:
            error, transient = f"Too many retries, giving up (original error - {error})", False
        retrying = ctl.status is Status.STARTING and transient
        if transient:
            ctl.drop_emitted()  # the launch comes again, and emits again
        if retrying:
            ctl.debug_log.write(LogKind.RETRY, "The invocation will be retried")
            ctl.next_attempt_ns = self.clock.now_ns() + retry_delay(attempt)
        elif ctl.status is Status.STARTING:
            self._fail(ctl, f"Failed to launch the task - {error}")
        self._commit_launch(ctl, kind)
        if ctl.saved.next_attempt_ns is not None:
            eta = ctl.saved.next_attempt_ns
            self.queue.schedule([self._start_task(ctl.saved, attempt + 1, eta)])
        return Outcome.HANDLED

    def _skip_launch(self, inv: Invocation) -> Outcome:
        """An abort came before any launch attempt began: nothing to launch or cancel."""
        ctl, _ = self._controller(inv)
        ctl.debug_log.write(LogKind.INFO, "Skipping the launch: the invocation was aborted")
        ctl.status = Status.ABORTED
        self._commit(ctl)
        return Outcome.HANDLED

    def _commit_launch(self, ctl: _Controller, kind: TaskKind) -> None:
        """Commits a launch attempt. An abort recorded meanwhile (or before, if an earlier
        attempt may have made the build) is carried out first: the build is cancelled."""
        if ctl.abort_requested:
            self._cancel_launched(ctl, kind)
        try:
            ctl.commit()
            return
        except ConflictError as e:
            fresh = self.store.get(ctl.invocation_id)
            if (
                fresh is None
                or not fresh.abort_requested
                or ctl.abort_requested
                or fresh.status is not Status.STARTING
                or fresh.attempt != ctl.saved.attempt
            ):
                raise RetryLater(str(e)) from e
            ctl.rebase(fresh)
        self._cancel_launched(ctl, kind)
        self._commit(ctl)

    def _cancel_launched(self, ctl: _Controller, kind: TaskKind) -> None:
        if ctl.status is Status.RUNNING:
            ctl.debug_log.write(
                LogKind.ABORT, "The invocation was aborted while it started: cancelling its task"
            )
            self._cancel(ctl, kind, failures=0)
