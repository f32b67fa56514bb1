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

from .model import Invocation, LogEntry, LogKind, Status
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


@dataclass(frozen=True)
class InvocationView:
    """An invocation as the API shows it (in lists, and as abort's answer)."""

    id: str
    job: str
    status: Status
    attempt: int
    next_attempt: str | None  # while the launch waits for its retry: when the next one comes
    abort_requested: bool  # an abort was accepted and completes on its own
    build_id: str | None
    view_url: str | None
    created: str
    started: str | None
    finished: str | None

    @classmethod
    def of(cls, inv: Invocation) -> InvocationView:
        return cls(**_invocation_fields(inv))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InvocationView:
        """Raises KeyError or ValueError for an answer of another shape."""
        return cls(**_fields_from_json(data))


@dataclass(frozen=True)
class InvocationWithLog(InvocationView):
    """One invocation with its debug log (`GET /api/invocations/{id}`)."""

    log: tuple[LogLine, ...]

    @classmethod
    def of_logged(cls, inv: Invocation, entries: list[LogEntry]) -> InvocationWithLog:
        return cls(**_invocation_fields(inv), log=tuple(LogLine.of(e) for e in entries))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InvocationWithLog:
        lines = tuple(LogLine.from_json(line) for line in data["log"])
        return cls(**_fields_from_json(data), log=lines)


@dataclass(frozen=True)
class InvocationList:
    """A job's invocations, newest first."""

    invocations: tuple[InvocationView, ...]


@dataclass(frozen=True)
class Triggered:
    """The trigger's answer: the invocation it started (or the one its request_id started)."""

    invocation_id: str
    url: str


@dataclass(frozen=True)
class TimerHandled:
    """on_timer's answer: handled, stale (a duplicate or late delivery) or ignored."""

    outcome: str


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
        "created": format_rfc3339(inv.created_ns),
        "started": _time(inv.started_ns),
        "finished": _time(inv.finished_ns),
    }


def _fields_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    values = {f.name: data[f.name] for f in dataclasses.fields(InvocationView)}
    values["status"] = Status(values["status"])
    return values
