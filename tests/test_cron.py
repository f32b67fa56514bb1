"""Cron schedules in virtual time: once per tick, skipped while running, intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kinds import SleepKind, sleep_engine
from shepherd.adapters.embedded import VirtualTimerQueue
from shepherd.clock import VirtualClock
from shepherd.cron import run_schedules
from shepherd.durations import HOUR, MINUTE, SECOND
from shepherd.engine import Engine
from shepherd.jobs import ConfigError, parse_jobs
from shepherd.model import Status, TriggerStatus
from shepherd.schedule import parse_schedule
from shepherd.tasks.registry import CONFIG_MODELS

T0 = 1_700_000_000 * SECOND - 1_700_000_000 * SECOND % (6 * HOUR)  # 18:00 UTC, a 6-hour tick


def engine(tmp_path: Path, **job: Any) -> tuple[Engine, VirtualClock, VirtualTimerQueue]:
    return sleep_engine(tmp_path, T0, seconds=600, **job)


def run_due(built: Engine, clock: VirtualClock, queue: VirtualTimerQueue) -> None:
    for task in queue.pop_due(clock.now_ns()):
        built.handle_task(task.invocation_id, task.timer_id, task.name)


def actions(built: Engine, clock: VirtualClock) -> list[str]:
    return [r.action for r in run_schedules(built, clock.now_ns())]


def test_a_tick_triggers_once_even_when_called_twice(tmp_path: Path) -> None:
    built, clock, _ = engine(tmp_path, schedule="0 */6 * * *", max_concurrent_invocations=5)
    clock.advance(30 * SECOND)
    assert actions(built, clock) == ["triggered"]
    assert actions(built, clock) == ["not due"]
    clock.advance(MINUTE)
    assert actions(built, clock) == ["not due"]
    assert len(built.store.list_invocations("infra/nap")) == 1


def test_a_tick_while_the_previous_invocation_runs_waits_for_it(tmp_path: Path) -> None:
    built, clock, queue = engine(tmp_path, schedule="*/5 * * * *")
    assert actions(built, clock) == ["triggered"]
    run_due(built, clock, queue)  # started: RUNNING for 10 minutes
    clock.advance(5 * MINUTE)
    (result,) = run_schedules(built, clock.now_ns())
    assert (result.action, result.invocation_id) == ("triggered", None)  # pending
    waiting = built.store.get_trigger("infra/nap", result.trigger_id or "")
    assert waiting is not None and waiting.status is TriggerStatus.PENDING
    clock.advance(5 * MINUTE)
    run_due(built, clock, queue)  # the first one finishes: the tick's trigger starts
    first, second = built.store.list_invocations("infra/nap")[::-1]
    assert first.status is Status.SUCCEEDED and not second.status.final
    assert [t.id for t in second.triggers] == [waiting.id]


def test_max_concurrent_invocations_lets_ticks_overlap(tmp_path: Path) -> None:
    built, clock, queue = engine(tmp_path, schedule="*/5 * * * *", max_concurrent_invocations=2)
    assert actions(built, clock) == ["triggered"]
    run_due(built, clock, queue)
    clock.advance(5 * MINUTE)
    assert actions(built, clock) == ["triggered"]
    run_due(built, clock, queue)
    assert sum(not i.status.final for i in built.store.list_invocations("infra/nap")) == 2


def test_an_old_missed_tick_does_not_run(tmp_path: Path) -> None:
    built, clock, _ = engine(tmp_path, schedule="0 */6 * * *")
    clock.advance(HOUR)
    assert [r.detail for r in run_schedules(built, clock.now_ns())] == [
        "no tick in the last 10 minutes"
    ]


def test_interval_schedule_waits_after_the_previous_end(tmp_path: Path) -> None:
    built, clock, queue = engine(tmp_path, schedule="with 30m interval")
    assert actions(built, clock) == ["triggered"]
    assert actions(built, clock) == ["not due"]  # still running
    run_due(built, clock, queue)
    clock.advance(10 * MINUTE)
    run_due(built, clock, queue)  # finished at T0 + 10m
    clock.advance(29 * MINUTE)
    assert actions(built, clock) == ["not due"]
    clock.advance(MINUTE)
    assert actions(built, clock) == ["triggered"]
    assert actions(built, clock) == ["not due"]


def invocations(built: Engine) -> list[str]:
    return [str(i.status) for i in reversed(built.store.list_invocations("infra/nap"))]


def test_interval_ticks_come_through_the_queue_without_scheduler_ticks(tmp_path: Path) -> None:
    built, clock, queue = engine(tmp_path, schedule="with 30m interval")
    assert actions(built, clock) == ["triggered"]  # the first tick: the scheduler's
    for _ in range(3):
        run_due(built, clock, queue)
        clock.advance(10 * MINUTE)
        run_due(built, clock, queue)  # finished: its tick is in the queue for +30m
        clock.advance(30 * MINUTE - SECOND)
        run_due(built, clock, queue)
        assert invocations(built)[-1] == "SUCCEEDED"  # not yet
        clock.advance(SECOND)
        run_due(built, clock, queue)
        assert invocations(built)[-1] != "SUCCEEDED"
    assert len(invocations(built)) == 4
    assert actions(built, clock) == ["not due"]  # the queue's tick and the scheduler's are one


def first_interval_run_ended(tmp_path: Path) -> tuple[Engine, VirtualClock, VirtualTimerQueue]:
    """A job `with 30m interval` whose first invocation (10 minutes) has just ended."""
    built, clock, queue = engine(tmp_path, schedule="with 30m interval")
    actions(built, clock)
    run_due(built, clock, queue)
    clock.advance(10 * MINUTE)
    run_due(built, clock, queue)
    return built, clock, queue


def test_a_tick_task_twice_or_after_another_run_starts_nothing(tmp_path: Path) -> None:
    built, clock, queue = first_interval_run_ended(tmp_path)
    (first,) = built.store.list_invocations("infra/nap")
    clock.advance(30 * MINUTE)
    (tick,) = queue.pop_due(clock.now_ns())
    assert built.handle_task(tick.invocation_id, tick.timer_id, tick.name).value == "handled"
    assert built.handle_task(tick.invocation_id, tick.timer_id, tick.name).value == "stale"
    assert len(invocations(built)) == 2
    run_due(built, clock, queue)
    clock.advance(10 * MINUTE)
    run_due(built, clock, queue)  # the second one ended: the first one's tick is old news
    assert built.handle_task(first.id, tick.timer_id, tick.name).value == "stale"
    assert invocations(built) == ["SUCCEEDED", "SUCCEEDED"]


def test_a_lost_tick_task_is_caught_by_the_scheduler_tick(tmp_path: Path) -> None:
    built, clock, queue = first_interval_run_ended(tmp_path)
    clock.advance(31 * MINUTE)
    assert [t.name for t in queue.pop_due(clock.now_ns())] == ["schedule-tick"]  # dropped
    assert actions(built, clock) == ["triggered"]


def test_a_paused_job_ignores_its_tick_task(tmp_path: Path) -> None:
    built, clock, queue = first_interval_run_ended(tmp_path)
    built.pause("infra/nap")
    clock.advance(30 * MINUTE)
    (tick,) = queue.pop_due(clock.now_ns())
    assert built.handle_task(tick.invocation_id, tick.timer_id, tick.name).value == "ignored"
    assert invocations(built) == ["SUCCEEDED"]


@pytest.mark.parametrize("text", ["nope", "with 30s interval", "with soon interval", "61 * * * *"])
def test_bad_schedules_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)
    with pytest.raises(ConfigError, match='job "infra/nap": field "schedule"'):
        parse_jobs(
            {"jobs": [{"id": "infra/nap", "kind": "sleep", "seconds": 1, "schedule": text}]},
            "jobs.toml",
            {**CONFIG_MODELS, SleepKind.name: SleepKind.config_model},
        )
