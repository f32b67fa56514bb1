"""What the HTTP functions answer: each shape defined once, as a plain dataclass.

The api answers with these, `/api/openapi.json` derives its schemas from them (openapi.py, the
only place that imports pydantic for them) and the command line reads them. Dataclasses keep
them cheap to import on every function's cold start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .model import Invocation, LogEntry, LogKind, Status, Trigger, TriggerStatus
from .timestamps import format_rfc3339

# A request body larger than this gets 413 (web.py enforces it, openapi.py documents it).
MAX_BODY_BYTES = 1 << 20


def _time(ns: int | None) -> str | None:
    return None if ns is None else format_rfc3339(ns)


def to_json(view: Any) -> dict[str, Any]:
    """A view as JSON-ready data (enums are str, tuples become arrays)."""
    return dataclasses.asdict(view)


@dataclass(frozen=True)
class LogLine:
    """One debug-log line; readers go by its kind, never by the wording of its text."""

    time: str
    text: str
    kind: LogKind
    call: str | None  # the outbound call the line records ("ScheduleBuild", ...), if any

    @classmethod
    def of(cls, entry: LogEntry) -> LogLine:
        return cls(format_rfc3339(entry.time_ns), entry.text, entry.kind, entry.call)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LogLine:
        # A kind this version does not know (a newer server's) reads as INFO.
        return cls(data["time"], data["text"], LogKind.stored(data["kind"]), data.get("call"))


def trigger_path(job_id: str, trigger_id: str) -> str:
    """Where `GET /api/jobs/{job}/triggers/{id}` finds a trigger, below `/api/`."""
    return f"jobs/{quote(job_id, safe='')}/triggers/{quote(trigger_id, safe='')}"


def _described(
    title: str, url: str, commit_time_ns: int
) -> tuple[str | None, str | None, str | None]:
    """A trigger's title, url and commit time as the views show them (None: not set)."""
    return title or None, url or None, _time(commit_time_ns or None)


@dataclass(frozen=True)
class TriggerRef:
    """One trigger an invocation is made of. `title` and `url` as LUCI's (a gitiles poller's:
    the commit id and its page); `commit_time`: a gitiles trigger's committer time."""

    id: str
    created: str  # when it reached its job
    title: str | None
    url: str | None
    commit_time: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TriggerRef:
        # A server older than title, url and commit_time answers without them.
        described = (data.get(k) for k in ("title", "url", "commit_time"))
        return cls(data["id"], data["created"], *described)


@dataclass(frozen=True)
class EmittedTrigger:
    """One trigger an invocation emitted for another job, as it emitted it; where it is now
    (pending, in which invocation, discarded) is at `GET /api/jobs/{job}/triggers/{id}`."""

    id: str
    job: str
    created: str  # when it was emitted
    title: str | None
    url: str | None
    commit_time: str | None

    @classmethod
    def of(cls, trigger: Trigger) -> EmittedTrigger:
        request = trigger.request
        return cls(
            trigger.id,
            trigger.job_id,
            format_rfc3339(trigger.created_ns),
            *_described(request.title, request.url, request.commit_time_ns),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmittedTrigger:
        described = (data[k] for k in ("title", "url", "commit_time"))
        return cls(data["id"], data["job"], data["created"], *described)


@dataclass(frozen=True)
class BuildRef:
    """One build of an invocation: its first, then each rerun (`reruns` in the job file)."""

    id: str
    status: str | None  # Buildbucket's name for it, as last seen (None: not known)
    view_url: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildRef:
        return cls(data["id"], data["status"], data["view_url"])


def _builds(inv: Invocation) -> tuple[BuildRef, ...]:
    listed = inv.task_data.get("builds")
    if isinstance(listed, list):
        return tuple(BuildRef(b["id"], b["status"] or None, b["view_url"]) for b in listed)
    build_id = inv.task_data.get("build_id")  # stored before builds were listed
    return (BuildRef(build_id, None, inv.view_url or None),) if build_id else ()


@dataclass(frozen=True)
class InvocationView:
    """An invocation as the API shows it (in lists, and as abort's answer)."""

    id: str
    job: str
    status: Status
    attempt: int
    next_attempt: str | None  # while the launch waits for its retry: when the next one comes
    abort_requested: bool  # an abort was accepted and completes on its own
    build_id: str | None  # the latest build's
    view_url: str | None  # the latest build's
    builds: tuple[BuildRef, ...]  # oldest first: the first build, then its reruns
    created: str
    started: str | None
    finished: str | None
    triggers: tuple[TriggerRef, ...]  # oldest first; the invocation is built from the newest

    @classmethod
    def of(cls, inv: Invocation) -> InvocationView:
        return cls(**_invocation_fields(inv))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InvocationView:
        """Raises KeyError or ValueError for an answer of another shape."""
        return cls(**_fields_from_json(data))


@dataclass(frozen=True)
class InvocationWithLog(InvocationView):
    """One invocation with the triggers it emitted and its debug log
    (`GET /api/invocations/{id}`)."""

    emitted_triggers: tuple[EmittedTrigger, ...]  # in the order it emitted them
    log: tuple[LogLine, ...]

    @classmethod
    def of_logged(cls, inv: Invocation, entries: list[LogEntry]) -> InvocationWithLog:
        return cls(
            **_invocation_fields(inv),
            emitted_triggers=tuple(EmittedTrigger.of(t) for t in inv.emitted_triggers),
            log=tuple(LogLine.of(e) for e in entries),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InvocationWithLog:
        lines = tuple(LogLine.from_json(line) for line in data["log"])
        # A server older than emitted_triggers answers without them.
        emitted = tuple(EmittedTrigger.from_json(t) for t in data.get("emitted_triggers", ()))
        return cls(**_fields_from_json(data), emitted_triggers=emitted, log=lines)


@dataclass(frozen=True)
class InvocationList:
    """A job's invocations, newest first."""

    invocations: tuple[InvocationView, ...]


@dataclass(frozen=True)
class Triggered:
    """The trigger's answer: its id, the invocation it started at once (None: it waits in
    the job's pending set), and where to follow it."""

    trigger_id: str
    invocation_id: str | None
    url: str


@dataclass(frozen=True)
class TimerHandled:
    """on_timer's answer: handled, stale (a duplicate or late delivery) or ignored."""

    outcome: str


@dataclass(frozen=True)
class TriggerView:
    """A trigger (`GET /api/jobs/{job}/triggers/{id}`): PENDING in its job's pending set,
    STARTED in `invocation_id`, or DISCARDED for `reason`."""

    id: str
    job: str
    status: TriggerStatus
    invocation_id: str | None
    created: str
    reason: str

    @classmethod
    def of(cls, trigger: Trigger) -> TriggerView:
        invocation_id = None if trigger.invocation_id is None else str(trigger.invocation_id)
        return cls(
            trigger.id,
            trigger.job_id,
            trigger.status,
            invocation_id,
            format_rfc3339(trigger.created_ns),
            trigger.reason,
        )


@dataclass(frozen=True)
class JobView:
    """A job in `GET /api/jobs`."""

    id: str
    kind: str
    paused: bool
    schedule: str | None
    running: int  # invocations counted against max_concurrent_invocations
    pending: int  # triggers waiting
    last_status: Status | None  # of its newest invocation


@dataclass(frozen=True)
class JobList:
    jobs: tuple[JobView, ...]


@dataclass(frozen=True)
class JobDetail(JobView):
    """One job (`GET /api/jobs/{job}`, and the answer of pause, resume and abort)."""

    paused_reason: str
    triggering_policy: dict[str, Any]
    pending_triggers: tuple[TriggerView, ...]
    running_invocations: tuple[InvocationView, ...]


@dataclass(frozen=True)
class Error:
    """Every 4xx and 5xx answer."""

    error: str


def _invocation_fields(inv: Invocation) -> dict[str, Any]:
    return {
        "id": str(inv.id),
        "job": inv.job_id,
        "status": inv.status,
        "attempt": inv.attempt,
        "next_attempt": _time(inv.next_attempt_ns),
        "abort_requested": inv.abort_requested,
        "build_id": inv.task_data.get("build_id"),
        "view_url": inv.view_url or None,
        "builds": _builds(inv),
        "created": format_rfc3339(inv.created_ns),
        "started": _time(inv.started_ns),
        "finished": _time(inv.finished_ns),
        "triggers": tuple(
            TriggerRef(
                t.id,
                format_rfc3339(t.created_ns or inv.created_ns),
                *_described(t.title, t.url, t.request.commit_time_ns),
            )
            for t in inv.incoming_triggers
        ),
    }


def _fields_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    # A server older than builds answers without them.
    values = {
        f.name: data[f.name] for f in dataclasses.fields(InvocationView) if f.name != "builds"
    }
    values["builds"] = tuple(BuildRef.from_json(b) for b in data.get("builds", ()))
    values["status"] = Status(values["status"])
    values["triggers"] = tuple(TriggerRef.from_json(t) for t in values["triggers"])
    return values
