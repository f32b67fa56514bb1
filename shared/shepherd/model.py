"""The invocation and what it carries: pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    @property
    def final(self) -> bool:
        return self in (Status.SUCCEEDED, Status.FAILED, Status.ABORTED)


def tag_key(tag: str) -> str:
    """The key of a "key:value" tag; ValueError for anything else."""
    key, colon, _ = tag.partition(":")
    if not colon or not key:
        raise ValueError(f'tag "{tag}" must be "key:value"')
    return key


@dataclass(frozen=True)
class GitilesTrigger:
    repo: str
    ref: str
    revision: str


@dataclass(frozen=True)
class TriggerRequest:
    """What a trigger asks for: the job, the commit, extra properties and tags.

    `title` and `url` are LUCI's Trigger.title and .url (a gitiles poller's: the commit id and
    its page), shown with the trigger and passed to builds in `$recipe_engine/scheduler`.
    `commit_time_ns`: a gitiles trigger's committer time (LUCI makes it the trigger's creation
    time; here it is shown only, see Trigger.created_ns), 0 if unknown."""

    job_id: str
    gitiles: GitilesTrigger | None = None
    tags: tuple[str, ...] = ()
    properties: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    title: str = ""
    url: str = ""
    commit_time_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "job_id": self.job_id,
            "gitiles": None if self.gitiles is None else vars(self.gitiles).copy(),
            "tags": list(self.tags),
            "properties": self.properties,
            "request_id": self.request_id,
        }
        # Only when set: what triggers without them store stays as it was.
        described = (("title", self.title), ("url", self.url))
        out.update((k, v) for k, v in (*described, ("commit_time_ns", self.commit_time_ns)) if v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TriggerRequest:
        gitiles = data.get("gitiles")
        return cls(
            job_id=data["job_id"],
            gitiles=GitilesTrigger(**gitiles) if gitiles else None,
            tags=tuple(data.get("tags", ())),
            properties=dict(data.get("properties", {})),
            request_id=data.get("request_id"),
            # Absent from requests stored before triggers carried them.
            title=data.get("title", ""),
            url=data.get("url", ""),
            commit_time_ns=data.get("commit_time_ns", 0),
        )


@dataclass(frozen=True)
class IncomingTrigger:
    """One trigger an invocation is made of, as LUCI's public scheduler.Trigger
    (scheduler/api/scheduler/v1/triggers.proto)."""

    id: str
    request: TriggerRequest
    title: str = ""
    url: str = ""
    created_ns: int = 0

    @classmethod
    def of(cls, request: TriggerRequest, invocation_id: int) -> IncomingTrigger:
        """The trigger an invocation's request is: its request_id names it, else the
        invocation (one trigger per invocation, so unique in its job)."""
        return cls(request.request_id or str(invocation_id), request, request.title, request.url)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request": self.request.to_dict(),
            "title": self.title,
            "url": self.url,
            "created_ns": self.created_ns,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IncomingTrigger:
        return cls(
            id=data["id"],
            request=TriggerRequest.from_dict(data["request"]),
            title=data.get("title", ""),
            url=data.get("url", ""),
            created_ns=data.get("created_ns", 0),
        )

    def to_json(self) -> dict[str, Any]:
        """Its protojson, empty fields left out as LUCI's jsonpb does: a gitiles payload when
        the request names a commit, else a buildbucket one (properties and tags)."""
        out: dict[str, Any] = {
            k: v for k, v in (("id", self.id), ("title", self.title), ("url", self.url)) if v
        }
        payload: dict[str, Any] = {}
        if gitiles := self.request.gitiles:
            fields = (("repo", gitiles.repo), ("ref", gitiles.ref), ("revision", gitiles.revision))
            payload = {k: v for k, v in fields if v}
        if self.request.properties:
            payload["properties"] = self.request.properties
        if self.request.tags:
            payload["tags"] = list(self.request.tags)
        out["gitiles" if self.request.gitiles else "buildbucket"] = payload
        return out


class LogKind(StrEnum):
    """What a debug-log entry records, set where it is written: readers (the page, the API,
    tooling) go by the kind, never by the wording of the text."""

    QUEUED = "queued"
    STARTED = "started"  # a launch attempt begins
    TIMER_SCHEDULED = "timer_scheduled"
    TIMER_HANDLED = "timer_handled"
    TIMER_IGNORED = "timer_ignored"  # added by the event that finished the invocation
    NOTIFICATION = "notification"  # a Pub/Sub notification was handled
    REQUEST = "request"  # an outbound request, its JSON after the first line
    BUILD = "build"  # a build, its JSON after the first line
    BUILD_STATUS = "build_status"
    ABORT = "abort"
    TIMEOUT = "timeout"
    RETRY = "retry"  # the launch will be tried again
    FINISHED = "finished"
    ERROR = "error"
    INFO = "info"
    # Reserved for the task kinds and engine features that come next.
    TRIGGER = "trigger"
    RERUN = "rerun"
    POLL = "poll"

    @classmethod
    def stored(cls, value: str | None) -> LogKind:
        """The kind a store holds; entries stored before kinds existed (or by a newer version,
        with a kind this one does not know) read as INFO."""
        try:
            return cls(value)
        except ValueError:
            return cls.INFO


@dataclass(frozen=True)
class LogEntry:
    """One debug-log line. `call` names the outbound call the entry records, if any (as
    "ScheduleBuild", "GetBuild", "CancelBuild"), whether the call succeeded or failed."""

    time_ns: int
    text: str
    kind: LogKind
    call: str | None = None


@dataclass(frozen=True)
class Timer:
    """A delayed call into the invocation's task, identified as LUCI does."""

    id: str
    title: str
    created_ns: int
    eta_ns: int
    payload: dict[str, Any] | None = None

    def task(self, invocation_id: int) -> QueuedTask:
        """What the timer queue delivers for this timer."""
        return QueuedTask(invocation_id, self.id, self.title, self.eta_ns)


def timer_id(job_id: str, invocation_id: int, mutation_count: int, index: int) -> str:
    return f"{job_id}:{invocation_id}:{mutation_count}:{index}"


@dataclass(frozen=True)
class Invocation:
    """One run of a job. `mutation_count` rises by one with every stored change.

    `abort_requested`: an abort was accepted and completes on its own (the launch is skipped or
    its build cancelled; a failed cancel is retried by a timer). `next_attempt_ns`: while a
    launch waits for its retry, when the next attempt comes.

    `next_check_ns` is when the invocation next needs the queue (its earliest timer, its start,
    or its timeout), None once final: stores index it for the reconciling sweep.

    `check_group`: while RUNNING, the group whose one status check covers this invocation's
    (Controller.check_with_group; stores index it), None otherwise."""

    id: int
    job_id: str
    request: TriggerRequest
    status: Status = Status.STARTING
    attempt: int = 0
    mutation_count: int = 0
    created_ns: int = 0
    started_ns: int | None = None
    finished_ns: int | None = None
    view_url: str = ""
    task_data: dict[str, Any] = field(default_factory=dict)
    pending_timers: tuple[Timer, ...] = ()
    abort_requested: bool = False
    next_attempt_ns: int | None = None
    next_check_ns: int | None = None
    check_group: str | None = None
    # The triggers it is made of, oldest first; its request is the newest one's.
    triggers: tuple[IncomingTrigger, ...] = ()
    # The triggers it emitted for other jobs (Controller.emit_trigger), as its changes
    # stored them: each is added to its job after the change that carries it commits.
    emitted_triggers: tuple[Trigger, ...] = ()

    @property
    def incoming_triggers(self) -> tuple[IncomingTrigger, ...]:
        """Its triggers; an invocation stored before triggers existed was its own request."""
        return self.triggers or (IncomingTrigger.of(self.request, self.id),)

    def evolve(self, **changes: Any) -> Invocation:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "job_id": self.job_id,
            "request": self.request.to_dict(),
            "status": self.status.value,
            "attempt": self.attempt,
            "mutation_count": self.mutation_count,
            "created_ns": self.created_ns,
            "started_ns": self.started_ns,
            "finished_ns": self.finished_ns,
            "view_url": self.view_url,
            "task_data": self.task_data,
            "pending_timers": [vars(t).copy() for t in self.pending_timers],
            "abort_requested": self.abort_requested,
            "next_attempt_ns": self.next_attempt_ns,
            "next_check_ns": self.next_check_ns,
            "check_group": self.check_group,
            "triggers": [t.to_dict() for t in self.triggers],
            "emitted_triggers": [t.to_dict() for t in self.emitted_triggers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Invocation:
        return cls(
            id=int(data["id"]),
            job_id=data["job_id"],
            request=TriggerRequest.from_dict(data["request"]),
            status=Status(data["status"]),
            attempt=data["attempt"],
            mutation_count=data["mutation_count"],
            created_ns=data["created_ns"],
            started_ns=data["started_ns"],
            finished_ns=data["finished_ns"],
            view_url=data["view_url"],
            task_data=dict(data["task_data"]),
            pending_timers=tuple(Timer(**t) for t in data["pending_timers"]),
            # Absent from invocations stored before aborts and launch retries were recorded.
            abort_requested=data.get("abort_requested", False),
            next_attempt_ns=data.get("next_attempt_ns"),
            next_check_ns=data.get("next_check_ns"),
            check_group=data.get("check_group"),
            triggers=tuple(IncomingTrigger.from_dict(t) for t in data.get("triggers", ())),
            emitted_triggers=tuple(Trigger.from_dict(t) for t in data.get("emitted_triggers", ())),
        )


class TriggerStatus(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    DISCARDED = "DISCARDED"


@dataclass(frozen=True)
class Trigger:
    """A request to run a job. It waits in the job's pending set until the job's triggering
    policy takes it into an invocation (STARTED) or drops it (DISCARDED, with the reason).
    Its id is unique in its job: the same id twice is one trigger."""

    id: str
    job_id: str
    # When it reached the engine: the policies' order and newest_first's pending_timeout go by
    # it. LUCI takes a gitiles trigger's commit time instead; here that is only shown
    # (request.commit_time_ns), as a committer's clock may be far off or the commit old.
    created_ns: int
    request: TriggerRequest
    order: int = 0  # among the triggers that arrived at the same created_ns
    status: TriggerStatus = TriggerStatus.PENDING
    invocation_id: int | None = None
    reason: str = ""

    def evolve(self, **changes: Any) -> Trigger:
        return replace(self, **changes)

    def incoming(self) -> IncomingTrigger:
        """As the invocation that takes it holds it: its title and url are its request's."""
        request = self.request
        return IncomingTrigger(self.id, request, request.title, request.url, self.created_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "created_ns": self.created_ns,
            "request": self.request.to_dict(),
            "order": self.order,
            "status": self.status.value,
            "invocation_id": None if self.invocation_id is None else str(self.invocation_id),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trigger:
        invocation_id = data.get("invocation_id")
        return cls(
            id=data["id"],
            job_id=data["job_id"],
            created_ns=data["created_ns"],
            request=TriggerRequest.from_dict(data["request"]),
            order=data.get("order", 0),
            status=TriggerStatus(data["status"]),
            invocation_id=None if invocation_id is None else int(invocation_id),
            reason=data.get("reason", ""),
        )


@dataclass(frozen=True)
class JobState:
    """What the store keeps of a job between events: whether it is paused, and the
    invocations that count against its max_concurrent_invocations (from their creation until
    a triage sees them finished)."""

    job_id: str
    paused: bool = False
    paused_reason: str = ""
    active: tuple[int, ...] = ()

    def evolve(self, **changes: Any) -> JobState:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "paused": self.paused,
            "paused_reason": self.paused_reason,
            "active": [str(i) for i in self.active],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobState:
        return cls(
            job_id=data["job_id"],
            paused=data.get("paused", False),
            paused_reason=data.get("paused_reason", ""),
            active=tuple(int(i) for i in data.get("active", ())),
        )


@dataclass(frozen=True)
class QueuedTask:
    """What the timer queue delivers to `on_timer` (the body of interfaces.md)."""

    invocation_id: int
    timer_id: str
    name: str
    eta_ns: int

    def body(self) -> dict[str, str]:
        return {
            "invocation_id": str(self.invocation_id),
            "timer_id": self.timer_id,
            "name": self.name,
        }


@dataclass(frozen=True)
class PubSubMessage:
    """A Pub/Sub message as a push subscription delivers it, data already decoded."""

    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    message_id: str = ""
