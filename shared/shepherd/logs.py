"""The functions' log records as Cloud Logging reads them: one JSON object a line.

Deployed, each record carries its severity, the request's trace (from `traceparent` or
`X-Cloud-Trace-Context`) and the job and invocation it concerns, so that one invocation's
requests can be found together in the console. The context lives in a contextvar: web.py sets
the request's trace, the engine adds the invocation once it knows it. Only the standard library
is imported here: the functions import it at start.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime

TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
LABELS_FIELD = "logging.googleapis.com/labels"
JOB_FIELD = "shepherd.job"
INVOCATION_FIELD = "shepherd.invocation"

# W3C Trace Context: version-trace-parent-flags; version ff and all-zero ids are invalid.
_TRACEPARENT = (
    r"^(?!ff)[0-9a-f]{2}-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$"
)
# Google's legacy header: TRACE_ID[/SPAN_ID][;o=OPTIONS], the span id in decimal.
_CLOUD_TRACE = r"^([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([0-9]+))?$"
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Trace:
    trace_id: str  # 32 lowercase hex digits
    span_id: str | None = None  # 16 lowercase hex digits, as Cloud Logging's spanId wants
    sampled: bool = False


@dataclass(frozen=True)
class LogContext:
    trace: Trace | None = None
    job_id: str | None = None
    invocation_id: int | None = None


_NONE = LogContext()
_context: ContextVar[LogContext | None] = ContextVar("shepherd_log_context", default=None)


def parse_trace(headers: Mapping[str, str]) -> Trace | None:
    """The request's trace: `traceparent` first (as Google's own logging library), then
    `X-Cloud-Trace-Context`. A malformed header is ignored."""
    match = re.match(_TRACEPARENT, headers.get("traceparent", "").strip())
    if match:
        trace_id, span_id, flags, _ = match.groups()
        return Trace(trace_id, span_id, bool(int(flags, 16) & 1))
    match = re.match(_CLOUD_TRACE, headers.get("X-Cloud-Trace-Context", "").strip())
    if match:
        trace_id, span, options = match.groups()
        span_id = None
        if span is not None and 0 < int(span) <= _UINT64_MAX:
            span_id = f"{int(span):016x}"
        return Trace(trace_id.lower(), span_id, options == "1")
    return None


@contextmanager
def request_scope(headers: Mapping[str, str]) -> Iterator[None]:
    """One request's context: its trace, and what the engine binds while it runs."""
    token = _context.set(LogContext(trace=parse_trace(headers)))
    try:
        yield
    finally:
        _context.reset(token)


def bind_invocation(job_id: str, invocation_id: int) -> None:
    """Marks what follows in this request as about that invocation. Outside a request (a
    replay, the sweep's loop, a test) there is nothing to mark, and nothing may leak into what
    comes next on the thread."""
    if (context := _context.get()) is not None:
        _context.set(replace(context, job_id=job_id, invocation_id=invocation_id))


def current() -> LogContext:
    return _context.get() or _NONE


class CloudLoggingFormatter(logging.Formatter):
    """A record as one line of JSON with Cloud Logging's special fields
    (https://cloud.google.com/logging/docs/structured-logging)."""

    def __init__(self, project: str | None) -> None:
        super().__init__()
        self._project = project

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            # Error Reporting reads the traceback from the message.
            message = f"{message}\n{self.formatException(record.exc_info)}"
        elif record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        entry: dict[str, object] = {
            "severity": _severity(record.levelno),
            "message": message,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        context = current()
        labels: dict[str, str] = {}
        if context.job_id is not None:
            entry[JOB_FIELD] = labels[JOB_FIELD] = context.job_id
        if context.invocation_id is not None:
            # A string: int64 ids do not survive JSON readers that use doubles.
            entry[INVOCATION_FIELD] = labels[INVOCATION_FIELD] = str(context.invocation_id)
        if labels:
            entry[LABELS_FIELD] = labels
        trace = context.trace
        if trace is not None:
            if self._project:
                entry[TRACE_FIELD] = f"projects/{self._project}/traces/{trace.trace_id}"
            if trace.span_id:
                entry[SPAN_FIELD] = trace.span_id
            entry[SAMPLED_FIELD] = trace.sampled
        return json.dumps(entry, ensure_ascii=False, default=str)


def _severity(level: int) -> str:
    if level >= logging.CRITICAL:
        return "CRITICAL"
    if level >= logging.ERROR:
        return "ERROR"
    if level >= logging.WARNING:
        return "WARNING"
    if level >= logging.INFO:
        return "INFO"
    return "DEBUG"


class JsonLinesHandler(logging.Handler):
    """Writes each record as one line to the stderr of the moment: functions-framework
    redirects it per request when LOG_EXECUTION_ID is set, to add the execution id."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure(log_format: str, project: str | None) -> None:
    """Deployed (JSON): the root logger writes Cloud Logging's lines at INFO and above, in place
    of any handler installed before (the framework's or `shepherd dev`'s). Text: left as is."""
    if log_format != JSON:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = JsonLinesHandler()
    handler.setFormatter(CloudLoggingFormatter(project))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
