"""Job schedules: a cron expression ("0 */6 * * *") or LUCI's "with 30m interval"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from .durations import SECOND, parse_duration

_INTERVAL = re.compile(r"^with\s+(\S+)\s+interval$")


@dataclass(frozen=True)
class Schedule:
    text: str
    interval_ns: int | None = None  # "with X interval": X after the previous one finished

    def latest_tick(self, now_ns: int) -> int:
        """The last cron time at or before now (cron schedules only)."""
        from croniter import croniter  # only jobs with a cron schedule pay for the import

        now = datetime.fromtimestamp(now_ns / 1e9, UTC)
        if croniter.match(self.text, now.replace(second=0, microsecond=0)) and now.second == 0:
            return now_ns - now_ns % (60 * SECOND)
        previous = croniter(self.text, now).get_prev(datetime)
        return int(previous.timestamp()) * SECOND


MIN_INTERVAL_NS = 60 * SECOND
# A poller (kind "gitiles") may poll as often as every second (interfaces.md).
MIN_POLL_INTERVAL_NS = SECOND


def check_interval(text: str, interval_ns: int, minimum_ns: int = MIN_INTERVAL_NS) -> None:
    if interval_ns < minimum_ns:
        least = "1m" if minimum_ns == MIN_INTERVAL_NS else f"{minimum_ns // SECOND}s"
        raise ValueError(f'the interval in "{text}" must be at least {least}')


def parse_schedule(text: str, min_interval_ns: int = MIN_INTERVAL_NS) -> Schedule:
    """A Schedule, or ValueError saying what is wrong."""
    if m := _INTERVAL.match(text.strip()):
        interval = parse_duration(m[1])
        check_interval(text, interval, min_interval_ns)
        return Schedule(text, interval)
    from croniter import croniter

    if not croniter.is_valid(text):
        raise ValueError(f'"{text}" is neither a cron expression nor "with <duration> interval"')
    return Schedule(text)
