"""The debug log's text form, as the LUCI Scheduler prints it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .model import LogEntry
from .timestamps import format_log_time


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
