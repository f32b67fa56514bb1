"""The timer queue port's contract: at-or-after ETA, in ETA order, one delivery per task name.

The in-process queue of replays and the durable SQLite queue of `shepherd dev` both pass it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest

from shepherd.adapters.embedded import VirtualTimerQueue
from shepherd.adapters.sqlite_delivery import LEASE_NS, SqliteDeliveryQueue
from shepherd.model import QueuedTask


class Harness(Protocol):
    def schedule(self, tasks: list[QueuedTask]) -> None: ...
    def due(self, now: int) -> list[str]: ...
    def retry(self, name: str, eta: int) -> None: ...
    def next_eta(self) -> int | None: ...


class Virtual:
    def __init__(self) -> None:
        self.queue = VirtualTimerQueue()
        self.schedule = self.queue.schedule
        self.next_eta = self.queue.next_eta

    def due(self, now: int) -> list[str]:
        return [t.timer_id for t in self.queue.pop_due(now)]

    def retry(self, name: str, eta: int) -> None:
        self.queue.requeue(QueuedTask(1, name, "check-buildbucket-build-status", eta))


class Sqlite:
    def __init__(self, path: Path) -> None:
        self.queue = SqliteDeliveryQueue(path)
        self.schedule = self.queue.schedule
        self._delivering: list[str] = []

    def _settle(self) -> None:
        """Deliveries not retried by the time of the next look succeeded."""
        for name in self._delivering:
            self.queue.complete(name)
        self._delivering = []

    def due(self, now: int) -> list[str]:
        self._settle()
        self._delivering = [item.name for item in self.queue.lease_due(now)]
        return list(self._delivering)

    def retry(self, name: str, eta: int) -> None:
        self._delivering.remove(name)
        self.queue.retry(name, eta)

    def next_eta(self) -> int | None:
        self._settle()
        return self.queue.next_eta()


@pytest.fixture(params=["virtual", "sqlite"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    return Virtual() if request.param == "virtual" else Sqlite(tmp_path / "q.db")


def task(name: str, eta: int) -> QueuedTask:
    return QueuedTask(1, name, "check-buildbucket-build-status", eta)


def test_due_tasks_come_in_eta_order_and_not_before(queue: Harness) -> None:
    queue.schedule([task("c", 30), task("a", 10), task("b", 20)])
    assert queue.next_eta() == 10
    assert queue.due(9) == []
    assert queue.due(25) == ["a", "b"]
    assert queue.due(100) == ["c"]
    assert queue.next_eta() is None


def test_a_task_name_is_delivered_once(queue: Harness) -> None:
    queue.schedule([task("a", 10)])
    queue.schedule([task("a", 10), task("a", 5)])
    assert queue.due(100) == ["a"]
    queue.schedule([task("a", 200)])
    assert queue.due(1000) == []


def test_a_failed_delivery_is_retried_at_its_new_eta(queue: Harness) -> None:
    queue.schedule([task("a", 10)])
    assert queue.due(10) == ["a"]
    queue.retry("a", 50)
    assert queue.due(49) == []
    assert queue.due(50) == ["a"]


def test_sqlite_tasks_survive_reopening_and_leases_expire(tmp_path: Path) -> None:
    SqliteDeliveryQueue(tmp_path / "q.db").schedule([task("a", 10)])
    reopened = SqliteDeliveryQueue(tmp_path / "q.db")
    (leased,) = reopened.lease_due(10)
    assert leased.body == {
        "invocation_id": "1",
        "timer_id": "a",
        "name": "check-buildbucket-build-status",
    }
    assert reopened.lease_due(11) == []  # leased: a second deliverer does not take it
    # A deliverer that died holding the lease: the task comes back once the lease runs out.
    assert reopened.lease_due(10 + LEASE_NS - 1) == []
    assert [d.name for d in reopened.lease_due(10 + LEASE_NS)] == ["a"]
