"""The timer queue port's contract: at-or-after ETA, in ETA order, one delivery per task name."""

from __future__ import annotations

import pytest

from shepherd.adapters.embedded import VirtualTimerQueue
from shepherd.model import QueuedTask


@pytest.fixture(params=["virtual"])
def queue(request: pytest.FixtureRequest) -> VirtualTimerQueue:
    return VirtualTimerQueue()


def task(name: str, eta: int) -> QueuedTask:
    return QueuedTask(1, name, "check-buildbucket-build-status", eta)


def test_due_tasks_come_in_eta_order_and_not_before(queue: VirtualTimerQueue) -> None:
    queue.schedule([task("c", 30), task("a", 10), task("b", 20)])
    assert queue.next_eta() == 10
    assert queue.pop_due(9) == []
    assert [t.timer_id for t in queue.pop_due(25)] == ["a", "b"]
    assert [t.timer_id for t in queue.pop_due(100)] == ["c"]
    assert queue.next_eta() is None


def test_a_task_name_is_delivered_once(queue: VirtualTimerQueue) -> None:
    queue.schedule([task("a", 10)])
    queue.schedule([task("a", 10), task("a", 5)])
    assert [t.timer_id for t in queue.pop_due(100)] == ["a"]
    queue.schedule([task("a", 200)])
    assert queue.pop_due(1000) == []


def test_a_failed_delivery_can_be_retried_later(queue: VirtualTimerQueue) -> None:
    queue.schedule([task("a", 10)])
    (delivered,) = queue.pop_due(10)
    queue.requeue(task("a", 50))
    assert queue.pop_due(49) == []
    assert queue.pop_due(50) == [task("a", 50)]
    assert delivered == task("a", 10)
