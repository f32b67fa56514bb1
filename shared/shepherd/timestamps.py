"""Timestamps as integer nanoseconds since the Unix epoch, in the text forms LUCI uses."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def _split(ns: int) -> tuple[datetime, int]:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC), nanos


def format_rfc3339(ns: int) -> str:
    """protojson's Timestamp form: UTC, 'Z', with 0, 3, 6 or 9 fractional digits."""
    moment, nanos = _split(ns)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return base + "Z"
    for digits in (3, 6, 9):
        scale = 10 ** (9 - digits)
        if nanos % scale == 0:
            return f"{base}.{nanos // scale:0{digits}d}Z"
    raise AssertionError("unreachable")


def parse_rfc3339(text: str) -> int:
    """Parses an RFC 3339 timestamp (up to nanoseconds, any offset) into epoch nanoseconds."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    nanos = int((m.group(7) or "").ljust(9, "0"))
    offset = 0
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        if m.group(9) == "-":
            offset = -offset
    return (int(moment.timestamp()) - offset) * 1_000_000_000 + nanos


def format_log_time(ns: int) -> str:
    """Go's "15:04:05.000" layout: the fraction is truncated, not rounded."""
    moment, nanos = _split(ns)
    return f"{moment:%H:%M:%S}.{nanos // 1_000_000:03d}"
