"""The small interfaces the engine talks through; adapters implement them at the edge."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .grpc_codes import RpcError
from .model import Invocation, JobState, LogEntry, QueuedTask, Trigger


@dataclass
class StoreStats:
    """What a store did, in its own units (documents or rows), for benchmarks."""

    reads: int = 0
    writes: int = 0
    transactions: int = 0
    queries: int = 0  # list_overdue's, for the sweep's benchmark


class ConflictError(Exception):
    """Someone else changed the invocation first: the event must be handled again."""


class Unavailable(Exception):
    """A backing service (store, timer queue) could not be reached or gave up: try again later.

    Adapters translate their libraries' transient errors into it; the functions answer 503,
    so that Cloud Tasks and Pub/Sub deliver again."""


@dataclass(frozen=True)
class TriageView:
    """What a triage reads of its job, in its transaction."""

    job: JobState
    pending: tuple[Trigger, ...]  # oldest first (created_ns, order, id)
    finished: frozenset[int]  # the job's active invocations that are final (or gone)


@dataclass(frozen=True)
class TriagePlan:
    """What a triage writes: the job's new state, the triggers it took or dropped, and the
    invocations it creates with their first log lines."""

    job: JobState
    triggers: tuple[Trigger, ...] = ()
    invocations: tuple[tuple[Invocation, tuple[LogEntry, ...]], ...] = ()


class StoreUnavailable(Unavailable):
    """The store could not be reached or gave up; nothing changed; try again."""


class Store(Protocol):
    """Invocations and their debug logs. Every write is one transaction."""

    def create(self, invocation: Invocation, log: Sequence[LogEntry]) -> None:
        """Stores a new invocation (triage creates them; tests and benchmarks seed with this);
        ConflictError if its id is taken."""
        ...

    def get(self, invocation_id: int) -> Invocation | None: ...

    def commit(
        self,
        invocation: Invocation,
        expected_mutation_count: int,
        log: Sequence[LogEntry],
        kind_state: dict[str, Any] | None = None,
    ) -> None:
        """Replaces the invocation and appends to its log if its stored mutation count is
        still `expected_mutation_count`; raises ConflictError otherwise. `kind_state`, if
        given, replaces its job's kind state in the same transaction."""
        ...

    def read_log(self, invocation_id: int) -> list[LogEntry]: ...

    def list_invocations(self, job_id: str, limit: int = 50) -> list[Invocation]:
        """Newest first."""
        ...

    def list_active(self) -> list[Invocation]:
        """Invocations not yet finished, for recovering their timers after a crash."""
        ...

    def list_overdue(self, before_ns: int, limit: int) -> list[Invocation]:
        """Up to `limit` invocations whose `next_check_ns` is before `before_ns`, earliest
        first: one query on an index of that field, never a scan of every invocation."""
        ...

    def list_check_group(self, group: str, limit: int | None = None) -> list[Invocation]:
        """The invocations whose `check_group` is `group` (up to `limit`): one query on an
        index of that field."""
        ...

    # --- triggers and jobs ---

    def add_trigger(self, trigger: Trigger) -> Trigger:
        """Stores a new trigger, or returns the one already stored under its job and id."""
        ...

    def get_trigger(self, job_id: str, trigger_id: str) -> Trigger | None: ...

    def list_pending(self, job_id: str, limit: int) -> list[Trigger]:
        """The job's PENDING triggers, oldest first (created_ns, order, id), at most `limit`."""
        ...

    def get_job(self, job_id: str) -> JobState:
        """The job's state; a job never changed has the default one."""
        ...

    def triage(
        self,
        job_id: str,
        limit: int,
        plan: Callable[[TriageView], TriagePlan | None],
        read_active: bool = True,
    ) -> TriagePlan | None:
        """One transaction: reads the job's state, its oldest `limit` PENDING triggers and, if
        `read_active`, which of its active invocations have finished (one read each; else none
        are reported finished), hands them to `plan`, and writes what the plan returns (nothing
        for None). `plan` may run more than once (a contended transaction is tried again) and
        must not do I/O."""
        ...

    # --- a task kind's own state per job ---

    def get_kind_state(self, job_id: str) -> dict[str, Any]:
        """What the job's task kind kept between invocations (a poller's last seen commits);
        {} if nothing yet."""
        ...

    def put_kind_state(self, job_id: str, state: dict[str, Any]) -> None:
        """Replaces the job's kind state: one write, last writer wins. The engine writes it
        with the invocation's change instead (`commit`), so that neither is kept without the
        other; this is for seeding it."""
        ...


class TimerQueue(Protocol):
    """Delivers each task to `on_timer` at or after its ETA, at least once."""

    def schedule(self, tasks: Sequence[QueuedTask]) -> None:
        """Idempotent per task name (timer id): scheduling a task twice delivers it once."""
        ...


class NotificationTopic(Protocol):
    def prepare(self, manager: str, publisher: str) -> str:
        """Makes sure the `publisher` account may publish to the topic; returns the topic's
        full name."""
        ...


class BuildsAPI(Protocol):
    """Buildbucket v2 `Builds` service of one server; failures raise grpc_codes.RpcError."""

    def schedule_build(self, server: str, request: dict[str, Any]) -> dict[str, Any]: ...

    def get_build(self, server: str, build_id: str) -> dict[str, Any]: ...

    def cancel_build(self, server: str, build_id: str, summary: str) -> dict[str, Any]: ...

    def batch_get_builds(
        self, server: str, build_ids: Sequence[str]
    ) -> list[dict[str, Any] | RpcError]:
        """One Batch call of GetBuilds: an answer per id, in order, each a build or the
        error of that item alone; a failure of the whole call raises."""
        ...

    def publisher_account(self, server: str) -> str:
        """The service account the server publishes its notifications as."""
        ...
