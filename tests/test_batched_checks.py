"""status_policy "batched" in virtual time against the real simulator process: one check chain
per Buildbucket server covers every running build in Batch calls, each invocation's news goes
through its own compare-and-swap commit, and no invocation learns of its build's end later
than status_check_max, even with every notification lost."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from localstack import FINAL, QUICK, DevProcess, write_jobs
from shepherd.adapters.embedded import VirtualTimerQueue
from shepherd.durations import MINUTE, SECOND
from shepherd.engine import GROUP_CHECK_TASK, Outcome
from shepherd.model import Invocation, QueuedTask, Status
from shepherd.timestamps import parse_rfc3339
from shepherd_tools.replay import Scenario, VirtualStack, load_scenario, many_at_once
from shepherd_tools.simulator.control import SimulatorProcess

GROUP = "buildbucket:cr-buildbucket.appspot.com"
CHECK_MAX = 10 * MINUTE
SHORT = [
    {"status": "SCHEDULED", "for": "2m"},
    {"status": "STARTED", "for": "25m"},
    {"status": "SUCCESS"},
]


def scenario(builds: int, batch_size: int = 1000, **simulator: Any) -> Scenario:
    return many_at_once(
        load_scenario("seed"),
        builds,
        settings={"status_policy": "batched", "status_check_batch_size": batch_size},
        simulator={"script": SHORT, "drop_notifications": 1.0, **simulator},
    )


@dataclasses.dataclass
class Fleet:
    stack: VirtualStack
    ids: list[int]

    def final(self) -> list[Invocation]:
        for _ in range(10_000):
            invs = [self.stack.store.get(i) for i in self.ids]
            if all(inv is not None and inv.status.final for inv in invs):
                return [inv for inv in invs if inv is not None]
            assert self.stack.step(), "stalled"
        raise AssertionError("did not finish")

    def log(self, invocation_id: int) -> list[str]:
        return [e.text for e in self.stack.store.read_log(invocation_id)]

    def calls(self) -> dict[str, int]:
        return dict(self.stack.sim.state()["calls"])

    def ended_ns(self) -> dict[str, int]:
        return {b["id"]: parse_rfc3339(b["endTime"]) for b in self.stack.sim.state()["builds"]}


@pytest.fixture
def fleet(sim: SimulatorProcess, tmp_path: Path) -> Iterator[Any]:
    stacks: list[VirtualStack] = []

    def go(builds: int, queue: VirtualTimerQueue | None = None, **options: Any) -> Fleet:
        stack = VirtualStack(scenario(builds, **options), tmp_path / f"s{len(stacks)}.db", sim)
        if queue is not None:
            stack.queue = stack.engine.queue = queue
        stacks.append(stack)
        base = stack.scenario.trigger.to_request()
        ids = []
        for n in range(builds):
            request = dataclasses.replace(base, request_id=f"t{n}")
            started = stack.engine.trigger(request).invocation
            assert started is not None
            ids.append(started.id)
        return Fleet(stack, ids)

    yield go
    for stack in stacks:
        stack.close()


def test_one_batch_a_period_checks_every_build_within_status_check_max(fleet: Any) -> None:
    run = fleet(20)
    done = run.final()
    assert {inv.status for inv in done} == {Status.SUCCEEDED}
    calls = run.calls()
    # 27 minutes of builds, a check every 10: three Batch calls for 20 builds, no GetBuild.
    assert calls.get("GetBuild", 0) == 0
    assert calls["Batch"] == 3
    ended = run.ended_ns()
    for inv in done:
        late = inv.finished_ns - ended[inv.task_data["build_id"]]
        assert 0 <= late <= CHECK_MAX + run.stack.scenario.task_latency_ns
        # The log says what each change was, and only when something changed.
        log = run.log(inv.id)
        assert log.count("Build status: STARTED") == 1
        assert not any(line.startswith("Scheduling timer") for line in log)
        assert (
            "The build's status is checked every 10m0s with every running build of "
            "cr-buildbucket.appspot.com, in Batch calls"
        ) in log
        assert inv.check_group is None and not inv.pending_timers


def test_a_batch_holds_at_most_the_batch_size(fleet: Any) -> None:
    run = fleet(20, batch_size=7)
    run.final()
    assert run.calls()["Batch"] == 3 * 3  # 7 + 7 + 6, three times


def test_an_items_error_is_that_invocations_alone(fleet: Any) -> None:
    # Buildbucket answers each item of a Batch on its own: the first item of the first check
    # is NOT_FOUND (its invocation fails), the second UNAVAILABLE (checked again next time).
    run = fleet(
        5,
        faults=[
            {"method": "GetBuild", "code": "NOT_FOUND", "times": 1},
            {"method": "GetBuild", "code": "UNAVAILABLE", "times": 1, "after": 1},
        ],
    )
    done = run.final()
    failed = [inv for inv in done if inv.status is Status.FAILED]
    assert len(failed) == 1
    assert "Failed to fetch build - rpc error: code = NotFound desc = " in "\n".join(
        run.log(failed[0].id)
    )
    assert sum(inv.status is Status.SUCCEEDED for inv in done) == 4
    assert run.calls()["Batch"] == 3


def test_a_failing_batch_is_retried_and_loses_nothing(fleet: Any) -> None:
    run = fleet(5, faults=[{"method": "Batch", "code": "UNAVAILABLE", "times": 2}])
    done = run.final()
    assert {inv.status for inv in done} == {Status.SUCCEEDED}
    assert run.calls()["Batch"] == 3 + 2


def test_a_lost_check_is_armed_again_by_the_sweep(fleet: Any) -> None:
    run = fleet(3)
    stack = run.stack
    stack.run_until(stack.clock.now_ns() + SECOND)  # launched: each in the group
    # The chain's next check is lost with the queue's tasks.
    (lost,) = stack.queue.pop_due(stack.clock.now_ns() + CHECK_MAX)
    assert lost.name == GROUP_CHECK_TASK
    assert stack.queue.next_eta() is None
    # Armed again by the sweep at its next tick: the check of the boundary after, a name of
    # its own (the queue keeps the lost one's), so it is one period later at worst.
    stack.run_until(lost.eta_ns + MINUTE)
    assert stack.engine.sweep(stack.clock.now_ns()).groups == 1
    assert stack.queue.next_eta() == lost.eta_ns + CHECK_MAX
    # A sweep while the chain is alive arms the same check, which the queue holds already.
    stack.engine.sweep(stack.clock.now_ns())
    (rearmed,) = stack.queue.pop_due(lost.eta_ns + CHECK_MAX)
    stack.queue.requeue(rearmed)
    assert {inv.status for inv in run.final()} == {Status.SUCCEEDED}


def test_a_check_delivered_twice_changes_nothing_twice(fleet: Any) -> None:
    run = fleet(2)
    stack = run.stack
    stack.run_until(stack.clock.now_ns() + SECOND)
    (check,) = [t for t in stack.queue.pop_due(stack.clock.now_ns() + CHECK_MAX)]
    stack.queue.requeue(check)
    stack.run_until(check.eta_ns + SECOND)  # the first check: both builds STARTED
    logs = {i: run.log(i) for i in run.ids}
    assert all("Build status: STARTED" in log for log in logs.values())
    # Again, to this process (which knows the check is done), then to another instance of the
    # function (which does not: it checks again, and finds nothing new to write).
    assert stack.engine.handle_task(0, check.timer_id, GROUP_CHECK_TASK) is Outcome.STALE
    other = dataclasses.replace(stack.engine)
    assert other.handle_task(0, check.timer_id, GROUP_CHECK_TASK) is Outcome.HANDLED
    assert {i: run.log(i) for i in run.ids} == logs
    assert {inv.status for inv in run.final()} == {Status.SUCCEEDED}


def test_notifications_still_end_invocations_and_the_chain_ends_with_them(fleet: Any) -> None:
    run = fleet(2, drop_notifications=0.0)
    done = run.final()
    assert {inv.status for inv in done} == {Status.SUCCEEDED}
    for inv in done:
        assert inv.finished_ns - run.ended_ns()[inv.task_data["build_id"]] < SECOND
    run.stack.run_until_idle()
    # The check after the builds found no member and armed no other.
    assert run.stack.queue.next_eta() is None


def test_shepherd_dev_checks_in_batches(sim: SimulatorProcess, tmp_path: Path) -> None:
    """The real thing: `shepherd dev` and its queue, the simulator over HTTP, every
    notification lost; each build's end learned by the server's one check chain."""
    jobs = write_jobs(tmp_path / "jobs.toml", sim.url, status_policy="batched")
    sim.configure({"script": [*QUICK, {"status": "SUCCESS"}], "drop_notifications": 1.0})
    dev = DevProcess(tmp_path, jobs).start()
    try:
        ids = [dev.trigger(request_id=f"batched-{n}") for n in range(6)]
        done = [dev.wait_for(i, FINAL) for i in ids]
    finally:
        dev.stop()
    assert {inv["status"] for inv in done} == {"SUCCEEDED"}
    calls = sim.state()["calls"]
    assert calls.get("GetBuild", 0) == 0 and 1 <= calls["Batch"] <= 6


class NoDedupQueue(VirtualTimerQueue):
    """As the Cloud Tasks emulator: a second task of the same name is a second task."""

    def schedule(self, tasks: Sequence[QueuedTask]) -> None:
        for task in tasks:
            self.requeue(task)


def test_a_queue_that_does_not_dedup_still_runs_one_check_a_period(fleet: Any) -> None:
    # Every launch arms the group's next check; the Cloud Tasks emulator keeps each of them.
    run = fleet(20, queue=NoDedupQueue())
    done = run.final()
    assert {inv.status for inv in done} == {Status.SUCCEEDED}
    assert run.calls()["Batch"] == 3  # as with a queue that refuses a name it holds
