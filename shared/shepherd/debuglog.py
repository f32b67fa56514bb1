"""The debug log: its one writer, and its text form (as the LUCI Scheduler's); the API's JSON
form of a line is views.LogLine."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from .clock import Clock
from .model import LogEntry, LogKind
from .timestamps import format_log_time


class DebugLog:
    """The debug-log entries one event writes, each stamped with the clock when written
    (LUCI's `ctl.DebugLog`). The engine stores them with the event's change."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: list[LogEntry] = []

    def write(self, kind: LogKind, text: str, *, call: str | None = None) -> None:
        """Appends a line; `call` names the outbound call it records, if any."""
        self._entries.append(LogEntry(self._clock.now_ns(), text, kind, call))

    def record_call(self, call: str) -> None:
        """Marks the latest line as having led to `call`, for a call that writes no line of its
        own (CancelBuild, after the engine's abort or timeout line)."""
        if not self._entries:
            raise ValueError(f"no line to record {call} on")
        self._entries[-1] = replace(self._entries[-1], call=call)

    @property
    def entries(self) -> tuple[LogEntry, ...]:
        return tuple(self._entries)

    def take(self) -> list[LogEntry]:
        """The entries written so far, which leave the writer (they are about to be stored)."""
        taken, self._entries = self._entries, []
        return taken


def format_line(entry: LogEntry) -> str:
    return f"[{format_log_time(entry.time_ns)}] {entry.text}"


def format_log(entries: Iterable[LogEntry]) -> str:
    return "".join(format_line(e) + "\n" for e in entries)


def json_block(value: Any) -> str:
    """JSON one token per line with no indentation, empty objects as "{\\n}" (the seed's form)."""
    if isinstance(value, dict):
        if not value:
            return "{\n}"
        items = ",\n".join(
            f"{json.dumps(k, ensure_ascii=False)}: {json_block(v)}" for k, v in value.items()
        )
        return "{\n" + items + "\n}"
    if isinstance(value, list | tuple):
        if not value:
            return "[\n]"
        return "[\n" + ",\n".join(json_block(v) for v in value) + "\n]"
    return json.dumps(value, ensure_ascii=False)
