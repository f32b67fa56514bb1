"""The contract every task kind keeps with the engine, checked on each kind the same way
(buildbucket against the simulator's state machine, noop, url_fetch against a local server,
gitiles against the Gitiles simulator): a start delivered twice launches once; once an
invocation is final, no delivery changes it or reaches the outside world again; an abort before
the launch skips it; a bad job field is refused naming the job and the field."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from in_process import InProcessBuilds
from localstack import serving
from shepherd.adapters.embedded import EmbeddedTopic, VirtualTimerQueue
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.clock import VirtualClock
from shepherd.durations import HOUR, SECOND
from shepherd.engine import START_TASK, Engine, Outcome
from shepherd.jobs import ConfigError, parse_jobs
from shepherd.model import Invocation, QueuedTask, Status, TriggerRequest
from shepherd.signing import TokenSigner
from shepherd.tasks.registry import CONFIG_MODELS, make_kinds
from shepherd_tools.gitiles_sim.control import GitilesSimProcess
from shepherd_tools.simulator.server import Simulator

T0 = 1_700_000_000 * SECOND
JOB = "infra/subject"
TARGET = "infra/target"  # where the subject's triggers go (noop, gitiles)
PROJECT = "infra/repo"
MAIN = "refs/heads/main"


class Hits(BaseHTTPRequestHandler):
    count = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with Hits.lock:
            Hits.count += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class World:
    """One kind's job and what it touches outside: `effects()` counts what the outside world
    saw (builds scheduled, fetches served, Gitiles requests, triggers delivered)."""

    job: dict[str, Any]
    effects: Callable[[], int]
    sim: Simulator = field(default_factory=lambda: Simulator({"clock": "manual", "start_ns": T0}))


@pytest.fixture(scope="module")
def gitiles() -> Iterator[GitilesSimProcess]:
    with GitilesSimProcess() as process:
        yield process


@pytest.fixture(scope="module")
def fetched() -> Iterator[str]:
    with serving(Hits) as url:
        yield url


KINDS = ["buildbucket", "noop", "url_fetch", "gitiles"]


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest) -> World:
    kind = request.param
    if kind == "buildbucket":
        job = {"id": JOB, "server": "cr-buildbucket.appspot.com", "bucket": "ci", "builder": "b"}
        world = World(job, lambda: 0)
        world.effects = lambda: world.sim.calls.get("ScheduleBuild", 0)
        return world
    if kind == "noop":
        # Without a sleep its launch emits at once (the sleep's timer: test_noop_and_url_fetch).
        return World({"id": JOB, "kind": "noop", "triggers": [TARGET]}, lambda: 0)
    if kind == "url_fetch":
        url: str = request.getfixturevalue("fetched")
        return World({"id": JOB, "kind": "url_fetch", "url": url}, lambda: Hits.count)
    gitiles: GitilesSimProcess = request.getfixturevalue("gitiles")
    gitiles.reset()
    gitiles.create_repo(PROJECT)
    gitiles.push(PROJECT, MAIN)
    job = {
        "id": JOB,
        "kind": "gitiles",
        "repo": gitiles.repo_url(PROJECT),
        "refs": [MAIN],
        "triggers": [TARGET],
    }
    return World(job, lambda: sum(gitiles.request_counts().values()))


@dataclass
class Stack:
    engine: Engine
    clock: VirtualClock
    queue: VirtualTimerQueue
    world: World
    delivered: list[QueuedTask] = field(default_factory=list)

    def deliver(self, task: QueuedTask) -> Outcome:
        self.delivered.append(task)
        return self.engine.handle_task(task.invocation_id, task.timer_id, task.name)

    def run_until_final(self, invocation_id: int) -> Invocation:
        for _ in range(100):
            inv = self.engine.store.get(invocation_id)
            assert inv is not None
            if inv.status.final:
                return inv
            due = self.queue.pop_due(self.clock.now_ns())
            if not due:
                eta = self.queue.next_eta()
                assert eta is not None, f"{inv.status} with nothing in the queue"
                self.clock.advance_to(max(eta, self.clock.now_ns()))
                self.world.sim.advance(self.clock.now_ns())
            for task in due:
                self.deliver(task)
        raise AssertionError("the invocation did not end")

    def effects(self) -> tuple[int, int]:
        """What the outside saw: the kind's own effects, and triggers the target received."""
        return self.world.effects(), len(self.engine.store.list_pending(TARGET, 1000))


def make_stack(tmp_path: Path, world: World) -> Stack:
    # The target waits for an hour, so the subject's triggers stay visible in its pending set.
    target = {"id": TARGET, "kind": "noop", "sleep": "1h"}
    policy = {"max_concurrent_invocations": 1, "max_batch_size": 1}
    jobs = parse_jobs(
        {"jobs": [world.job, {**target, "triggering_policy": policy}]}, "jobs.toml", CONFIG_MODELS
    )
    clock, queue = VirtualClock(T0), VirtualTimerQueue()
    engine = Engine(
        jobs=jobs,
        kinds=make_kinds(InProcessBuilds(world.sim), random.Random(1)),
        store=SqliteStore(tmp_path / "s.db"),
        queue=queue,
        topic=EmbeddedTopic("shepherd-test"),  # a project id Buildbucket accepts
        clock=clock,
        signer=TokenSigner(b"k" * 32),
        rng=random.Random(1),
    )
    # Busy with a trigger of its own, so the subject's wait in the pending set.
    engine.trigger(TriggerRequest(TARGET, request_id="busy"))
    for task in queue.pop_due(T0):
        engine.handle_task(task.invocation_id, task.timer_id, task.name)
    return Stack(engine, clock, queue, world)


def start(stack: Stack) -> tuple[Invocation, QueuedTask]:
    done = stack.engine.trigger(TriggerRequest(JOB, request_id="contract"))
    assert done.invocation is not None
    (task,) = [t for t in stack.queue.pop_due(stack.clock.now_ns()) if t.name == START_TASK]
    return done.invocation, task


def snapshot(stack: Stack, invocation_id: int) -> tuple[Invocation | None, int]:
    return stack.engine.store.get(invocation_id), len(stack.engine.store.read_log(invocation_id))


def test_a_start_delivered_twice_launches_once(tmp_path: Path, world: World) -> None:
    stack = make_stack(tmp_path, world)
    before = stack.effects()
    inv, task = start(stack)
    assert stack.deliver(task) is Outcome.HANDLED
    after_one = snapshot(stack, inv.id), stack.effects()
    assert after_one[1] != before, "the launch reached nothing outside"
    assert stack.deliver(task) is Outcome.STALE
    assert (snapshot(stack, inv.id), stack.effects()) == after_one


def test_nothing_changes_once_final(tmp_path: Path, world: World) -> None:
    stack = make_stack(tmp_path, world)
    inv, task = start(stack)
    stack.deliver(task)
    final = stack.run_until_final(inv.id)
    assert final.status is Status.SUCCEEDED
    done = snapshot(stack, inv.id), stack.effects()
    stack.clock.advance(HOUR)
    stack.world.sim.advance(stack.clock.now_ns())
    for again in list(stack.delivered):
        assert stack.deliver(again) in (Outcome.STALE, Outcome.IGNORED)
    assert (snapshot(stack, inv.id), stack.effects()) == done


def test_an_abort_before_the_launch_skips_it(tmp_path: Path, world: World) -> None:
    stack = make_stack(tmp_path, world)
    before = stack.effects()
    inv, task = start(stack)
    requested = stack.engine.abort(inv.id)  # 202: it completes at the start's delivery
    assert (requested.status, requested.abort_requested) == (Status.STARTING, True)
    stack.deliver(task)
    final = stack.engine.store.get(inv.id)
    assert final is not None and final.status is Status.ABORTED
    assert stack.effects() == before


BAD_FIELDS = {
    "buildbucket": ("bucket", ""),
    "noop": ("sleep", "soon"),
    "url_fetch": ("url", "ftp://example.com/x"),
    "gitiles": ("refs", ["main"]),
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_field_is_refused_naming_the_job_and_field(kind: str) -> None:
    base = {
        "buildbucket": {"server": "cr-buildbucket.appspot.com", "bucket": "ci", "builder": "b"},
        "noop": {"kind": "noop"},
        "url_fetch": {"kind": "url_fetch", "url": "https://example.com/"},
        "gitiles": {"kind": "gitiles", "repo": "https://x.googlesource.com/p", "refs": [MAIN]},
    }[kind]
    name, value = BAD_FIELDS[kind]
    parse_jobs({"jobs": [{"id": JOB, **base}]}, "jobs.toml", CONFIG_MODELS)  # the base is good
    with pytest.raises(ConfigError, match=f'job "{JOB}": field "{name}"'):
        parse_jobs({"jobs": [{"id": JOB, **base, name: value}]}, "jobs.toml", CONFIG_MODELS)
