"""The reconciling sweep: what the queues lose, the scheduler tick finds through the store's
index of next checks and hands again; invocation_timeout holds with no timer left."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kinds import SleepKind
from shepherd.adapters.embedded import EmbeddedTopic
from shepherd.adapters.sqlite_delivery import SqliteDeliveryQueue
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.clock import VirtualClock
from shepherd.durations import HOUR, MINUTE, SECOND
from shepherd.engine import START_TASK, SWEEP_MARGIN_NS, TIMEOUT_TIMER, Engine
from shepherd.jobs import parse_jobs
from shepherd.model import LogKind, QueuedTask, Status, TriggerRequest
from shepherd.signing import TokenSigner
from shepherd.tasks.registry import CONFIG_MODELS
from shepherd_tools.replay import VirtualStack, load_scenario
from shepherd_tools.simulator.control import SimulatorProcess

T0 = 1_700_000_000 * SECOND
JOB = "infra/nap"


class LossyQueue:
    """A timer queue that loses every task handed to it while `losing` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.losing = False
        self.lost: list[QueuedTask] = []

    def schedule(self, tasks: Sequence[QueuedTask]) -> None:
        if self.losing:
            self.lost += tasks
        else:
            self.inner.schedule(tasks)


@dataclasses.dataclass
class Embedded:
    engine: Engine
    clock: VirtualClock
    queue: SqliteDeliveryQueue
    lossy: LossyQueue
    path: Path

    def deliver_due(self) -> list[str]:
        """Delivers what the embedded queue holds that is due, as `shepherd dev` would."""
        names = []
        for item in self.queue.lease_due(self.clock.now_ns(), limit=100):
            body = item.body
            self.engine.handle_task(int(body["invocation_id"]), body["timer_id"], body["name"])
            self.queue.complete(item.name)
            names.append(body["name"])
        return names

    def forget_every_delivery(self) -> None:
        with sqlite3.connect(self.path) as db:
            db.execute("DELETE FROM deliveries")
        db.close()


def embedded(tmp_path: Path, seconds: int = 600, timeout: str = "24h") -> Embedded:
    """The engine on the embedded store and delivery queue (one SQLite file), virtual time."""
    jobs = parse_jobs(
        {
            "settings": {"invocation_timeout": timeout},
            "jobs": [
                {
                    "id": JOB,
                    "kind": "sleep",
                    "seconds": seconds,
                    "triggering_policy": {"max_concurrent_invocations": 10},
                }
            ],
        },
        "jobs.toml",
        {**CONFIG_MODELS, SleepKind.name: SleepKind.config_model},
    )
    path = tmp_path / "state.db"
    queue = SqliteDeliveryQueue(path)
    lossy = LossyQueue(queue)
    clock = VirtualClock(T0)
    engine = Engine(
        jobs=jobs,
        kinds={SleepKind.name: SleepKind()},
        store=SqliteStore(path),
        queue=lossy,
        topic=EmbeddedTopic("shepherd-test"),
        clock=clock,
        signer=TokenSigner(b"k" * 32),
        rng=random.Random(1),
    )
    return Embedded(engine, clock, queue, lossy, path)


def running(stack: Embedded) -> int:
    inv = stack.engine.trigger(TriggerRequest(job_id=JOB)).invocation
    assert stack.deliver_due() == [START_TASK]
    stored = stack.engine.store.get(inv.id)
    assert stored is not None and stored.status is Status.RUNNING
    return inv.id


def kinds_of(stack: Embedded, invocation_id: int) -> list[LogKind]:
    return [e.kind for e in stack.engine.store.read_log(invocation_id)]


def test_lost_timers_are_found_and_handed_again(tmp_path: Path) -> None:
    stack = embedded(tmp_path)
    inv_id = running(stack)
    stack.forget_every_delivery()  # the queue lost the wake-up timer
    stack.clock.advance(10 * MINUTE)
    assert stack.deliver_due() == []
    # Not yet overdue by the margin: the sweep leaves it to the queue.
    assert stack.engine.sweep(stack.clock.now_ns()).overdue == 0
    stack.clock.advance(SWEEP_MARGIN_NS + SECOND)
    result = stack.engine.sweep(stack.clock.now_ns())
    assert (result.overdue, result.timers, result.starts, result.timeouts) == (1, 1, 0, 0)
    assert stack.deliver_due() == ["wake-up"]
    final = stack.engine.store.get(inv_id)
    assert final is not None and final.status is Status.SUCCEEDED
    assert final.next_check_ns is None
    assert stack.engine.sweep(stack.clock.now_ns()).overdue == 0


def test_a_healthy_invocation_is_not_touched(tmp_path: Path) -> None:
    stack = embedded(tmp_path)
    inv_id = running(stack)
    stack.clock.advance(9 * MINUTE)  # its timer is due in a minute
    before = stack.engine.store.get(inv_id)
    assert stack.engine.sweep(stack.clock.now_ns()).overdue == 0
    assert stack.engine.store.get(inv_id) == before


def test_a_starting_invocation_whose_start_was_lost_is_started(tmp_path: Path) -> None:
    stack = embedded(tmp_path)
    stack.lossy.losing = True  # the enqueue right after the trigger's commit fails
    inv = stack.engine.trigger(TriggerRequest(job_id=JOB)).invocation
    stack.lossy.losing = False
    assert [t.name for t in stack.lossy.lost] == [START_TASK]
    stack.clock.advance(SWEEP_MARGIN_NS + SECOND)
    assert stack.deliver_due() == []
    result = stack.engine.sweep(stack.clock.now_ns())
    assert (result.overdue, result.starts) == (1, 1)
    assert stack.deliver_due() == [START_TASK]
    started = stack.engine.store.get(inv.id)
    assert started is not None and started.status is Status.RUNNING and started.attempt == 1


def test_a_launch_that_died_is_started_again_after_its_grace(tmp_path: Path) -> None:
    stack = embedded(tmp_path)
    inv = stack.engine.trigger(TriggerRequest(job_id=JOB)).invocation
    # The launch's first commit happened, then the process died; its task was lost.
    stored = stack.engine.store.get(inv.id)
    assert stored is not None
    dying = stored.evolve(attempt=1, mutation_count=1)
    dying = dying.evolve(next_check_ns=stack.engine.next_check_ns(dying))
    stack.engine.store.commit(dying, 0, [])
    stack.forget_every_delivery()
    stack.clock.advance(2 * MINUTE)
    assert stack.engine.sweep(stack.clock.now_ns()).overdue == 0  # may still be launching
    stack.clock.advance(5 * MINUTE)
    assert stack.engine.sweep(stack.clock.now_ns()).starts == 1
    assert stack.deliver_due() == [START_TASK]
    started = stack.engine.store.get(inv.id)
    assert started is not None and started.status is Status.RUNNING and started.attempt == 2


def test_invocation_timeout_is_enforced_when_no_timer_remains(tmp_path: Path) -> None:
    stack = embedded(tmp_path, seconds=48 * 3600, timeout="1h")
    inv_id = running(stack)
    stack.forget_every_delivery()  # its only timer (in 48 hours) is gone
    stack.clock.advance(HOUR + SWEEP_MARGIN_NS + SECOND)
    result = stack.engine.sweep(stack.clock.now_ns())
    assert (result.overdue, result.timeouts, result.timers) == (1, 1, 0)
    assert stack.deliver_due() == [TIMEOUT_TIMER]
    final = stack.engine.store.get(inv_id)
    assert final is not None and final.status is Status.FAILED
    log = stack.engine.store.read_log(inv_id)
    assert [e.text for e in log if e.kind is LogKind.TIMEOUT] == [
        "Invocation timed out after 1h0m0s, cancelling it"
    ]
    assert log[-1].kind is LogKind.FINISHED


def test_a_lost_timeout_timer_is_handed_again_not_armed_twice(tmp_path: Path) -> None:
    stack = embedded(tmp_path, seconds=48 * 3600, timeout="1h")
    inv_id = running(stack)
    stack.clock.advance(HOUR + SWEEP_MARGIN_NS + SECOND)
    stack.lossy.losing = True
    assert stack.engine.sweep(stack.clock.now_ns()).timeouts == 1
    stack.lossy.losing = False
    stack.clock.advance(SWEEP_MARGIN_NS + SECOND)
    again = stack.engine.sweep(stack.clock.now_ns())
    assert (again.timeouts, again.timers) == (0, 1)
    assert stack.deliver_due() == [TIMEOUT_TIMER]
    assert kinds_of(stack, inv_id).count(LogKind.TIMER_SCHEDULED) == 2  # wake-up, timeout


def test_two_sweeps_at_once_change_nothing_twice(tmp_path: Path) -> None:
    stack = embedded(tmp_path, seconds=48 * 3600, timeout="1h")
    ids = [running(stack) for _ in range(6)]
    stack.forget_every_delivery()
    stack.clock.advance(HOUR + SWEEP_MARGIN_NS + SECOND)
    barrier = threading.Barrier(2)
    results = []

    def sweep() -> None:
        barrier.wait()
        results.append(stack.engine.sweep(stack.clock.now_ns()))

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each invocation got one timeout timer: every race was lost whole by one sweep.
    assert sum(r.timeouts for r in results) == 6
    assert sum(r.timeouts + r.conflicts + r.timers for r in results) == 12
    delivered = stack.deliver_due()
    assert delivered.count(TIMEOUT_TIMER) == len(delivered) == 6
    for inv_id in ids:
        assert kinds_of(stack, inv_id).count(LogKind.TIMEOUT) == 1
    assert stack.engine.sweep(stack.clock.now_ns()).overdue == 0


def test_a_lost_check_of_a_real_build_is_found_and_the_build_is_one(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    """Buildbucket (the simulator) in virtual time: every notification and, once running,
    every timer is lost; the sweep alone brings the invocation to its end, with one build."""
    seed = load_scenario("seed")
    script = [{"status": "STARTED", "for": "30m"}, {"status": "SUCCESS"}]
    scenario = dataclasses.replace(
        seed, simulator={**seed.simulator, "script": script, "drop_notifications": 1.0}
    )
    stack = VirtualStack(scenario, tmp_path / "state.db", sim)
    lossy = LossyQueue(stack.queue)
    stack.engine.queue = lossy
    try:
        inv = stack.trigger()
        while (stored := stack.store.get(inv.id)) is not None and stored.status is Status.STARTING:
            assert stack.step()
        lossy.losing = True
        while stack.step():
            pass  # the first check is handled, and its next one is lost
        assert lossy.lost
        lossy.losing = False
        sweeps = 0
        while (stored := stack.store.get(inv.id)) is not None and not stored.status.final:
            stack.clock.advance(MINUTE)  # a scheduler tick
            sweeps += stack.engine.sweep(stack.clock.now_ns()).timers
            while stack.step():
                pass
            assert stack.clock.now_ns() - inv.created_ns < 2 * HOUR
        assert stored is not None and stored.status is Status.SUCCEEDED
        assert sweeps >= 1
        assert sim.state()["calls"]["ScheduleBuild"] == 1
    finally:
        stack.close()


def test_the_scheduler_function_sweeps_and_says_what_it_did(dev: Any) -> None:
    """`shepherd dev` with no scheduled job: the tick still answers with the sweep's counts."""
    answer = dev.http.post(dev.url + "/scheduler")
    assert answer.status_code == 200
    body = answer.json()
    assert body["results"] == []
    assert body["sweep"] == {
        "overdue": 0,
        "timers": 0,
        "starts": 0,
        "timeouts": 0,
        "conflicts": 0,
        "started": 0,
        "groups": 0,
    }
