"""Reads a debug log in the seed's text form and checks it has the seed's shape."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from shepherd.durations import MINUTE, SECOND, parse_duration

_ENTRY = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\.(\d{3})\] ", re.M)
KINDS = [
    ("queued", r"New invocation is queued and will start shortly"),
    ("starting", r"Starting the invocation \(attempt (\d+)\)"),
    ("popped_buildset", r'Popped buildset tag "(.+)"'),
    ("popped_commit", r"Popped gitiles commit info from properties and tags"),
    ("preparing_topic", r'Preparing PubSub topic for "(.+)"'),
    ("topic", r'PubSub topic is "(.+)"'),
    ("request", r"Buildbucket request:\n(\{.*\})"),
    ("scheduled", r"Scheduled build:\n(\{.*\})"),
    ("task_url", r"Task URL: (\S+)"),
    ("timer_scheduled", r'Scheduling timer "([^"]+)" \((.+):(\d+):(\d+):(\d+)\) after (\S+)'),
    ("timer_handled", r'Handling timer "([^"]+)" \((.+):(\d+):(\d+):(\d+)\)'),
    ("status", r"Build status: (\w+)"),
    ("notification", r"Received PubSub notification, asking Buildbucket for the build status"),
    ("final_build", r"Build:\n(\{.*\})"),
    ("finished", r"Invocation finished in (\S+) with status (\w+)"),
]
_KIND_RES = [(kind, re.compile(pattern, re.S)) for kind, pattern in KINDS]
PREFIX = [kind for kind, _ in KINDS[:9]] + ["timer_scheduled"]
SUFFIX = ["notification", "final_build", "finished"]


@dataclass(frozen=True)
class Entry:
    ms: int  # milliseconds since midnight
    kind: str
    groups: tuple[str, ...]
    text: str

    def json(self) -> Any:
        return json.loads(self.groups[0])


def parse_log(text: str) -> list[Entry]:
    starts = list(_ENTRY.finditer(text))
    if not starts or starts[0].start() != 0:
        raise AssertionError("the log does not start with a [HH:MM:SS.mmm] line")
    entries = []
    for m, following in zip(starts, [*starts[1:], None], strict=True):
        body = text[m.end() : following.start() if following else len(text)].rstrip("\n")
        h, mi, s, ms = (int(g) for g in m.groups())
        for kind, pattern in _KIND_RES:
            if found := pattern.fullmatch(body):
                entries.append(
                    Entry(((h * 60 + mi) * 60 + s) * 1000 + ms, kind, found.groups(), body)
                )
                break
        else:
            raise AssertionError(f"unknown log line: {body!r}")
    return entries


def check_shape(entries: list[Entry]) -> None:
    """The seed's order of lines, its status sequence and LUCI's timer id rule."""
    kinds = [e.kind for e in entries]
    assert kinds[: len(PREFIX)] == PREFIX, kinds[: len(PREFIX)]
    assert kinds[-len(SUFFIX) :] == SUFFIX, kinds[-len(SUFFIX) :]
    job_id = entries[0:1] and entries[len(PREFIX) - 1].groups[1]
    invocation_id = entries[len(PREFIX) - 1].groups[2]
    pending = entries[len(PREFIX) - 1]
    mutations = int(pending.groups[3])
    assert mutations == 2, "the launch adds its timer at mutation count 2"
    mutations += 1
    statuses = []
    middle = entries[len(PREFIX) : -len(SUFFIX)]
    i = 0
    while i < len(middle):
        group = [e.kind for e in middle[i : i + 3]]
        if group == ["timer_handled", "status", "timer_scheduled"]:
            handled, status, scheduled = middle[i : i + 3]
            assert handled.groups[:5] == pending.groups[:5], "handles the pending timer"
            delay_ms = parse_duration(pending.groups[5]) // 1_000_000
            # Cloud Tasks may run a task a few milliseconds before its ETA (the seed has one
            # 27 ms early), never a whole second.
            assert handled.ms > pending.ms + delay_ms - 1000, "a timer never fires early"
            assert scheduled.groups[1:3] == (job_id, invocation_id)
            assert int(scheduled.groups[3]) == mutations, "timer id carries the mutation count"
            assert scheduled.groups[4] == "0"
            pending = scheduled
            i += 3
        elif group[:2] == ["notification", "status"]:
            status = middle[i + 1]
            i += 2
        else:
            raise AssertionError(f"unexpected lines in the middle: {group}")
        statuses.append(status.groups[0])
        mutations += 1
    assert "SCHEDULED" in statuses and "STARTED" in statuses
    assert statuses == sorted(statuses, key=["SCHEDULED", "STARTED"].index)
    for e in entries:
        if e.kind == "timer_scheduled":
            delay = parse_duration(e.groups[5])
            assert delay % SECOND == 0 and MINUTE <= delay <= 10 * MINUTE, e.text
    times = [e.ms for e in entries]
    assert times == sorted(times), "log times never go backwards"
