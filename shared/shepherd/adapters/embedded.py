"""Embedded defaults that need no cloud account: the notification topic and an in-process
timer queue for virtual-time replays."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Sequence

from ..model import QueuedTask


def topic_name(app_id: str, manager: str, publisher: str) -> str:
    """LUCI's naming: one topic per (task kind, publisher account, as the build server names
    it); '@' is not allowed in topic ids."""
    return f"projects/{app_id}/topics/scheduler.{manager}.{publisher.replace('@', '~')}"


class EmbeddedTopic:
    """Names topics as Pub/Sub would, for replays: nothing is published through it."""

    def __init__(self, app_id: str) -> None:
        self._app_id = app_id

    def prepare(self, manager: str, publisher: str) -> str:
        return topic_name(self._app_id, manager, publisher)


class VirtualTimerQueue:
    """Holds tasks until their ETA; a driver pops the due ones as its clock moves."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, QueuedTask]] = []
        self._names: set[str] = set()
        self._seq = 0
        self._lock = threading.Lock()

    def schedule(self, tasks: Sequence[QueuedTask]) -> None:
        with self._lock:
            for task in tasks:
                if task.timer_id in self._names:
                    continue
                self._names.add(task.timer_id)
                self._seq += 1
                heapq.heappush(self._heap, (task.eta_ns, self._seq, task))

    def requeue(self, task: QueuedTask) -> None:
        """Delivers a task again at its (new) ETA, as a queue retries a failed delivery."""
        with self._lock:
            self._seq += 1
            heapq.heappush(self._heap, (task.eta_ns, self._seq, task))

    def next_eta(self) -> int | None:
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ns: int) -> list[QueuedTask]:
        with self._lock:
            due = []
            while self._heap and self._heap[0][0] <= now_ns:
                due.append(heapq.heappop(self._heap)[2])
            return due
