"""Replays a scripted invocation in virtual time: six hours of build in a second or two.

The same engine and adapters as the functions use, with a virtual clock, the SQLite store, the
pRPC client talking to the simulator process (its clock driven from here), and a driver that
delivers timers and notifications in time order, each after its channel's latency.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import random
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .adapters.buildbucket_prpc import PrpcBuildsClient
from .adapters.embedded import EmbeddedTopic, VirtualTimerQueue
from .adapters.sqlite_store import SqliteStore
from .clock import VirtualClock
from .debuglog import format_log
from .durations import SECOND, parse_duration
from .engine import Engine, RetryLater
from .jobs import parse_jobs
from .model import Invocation, PubSubMessage
from .schemas import TriggerBody
from .signing import TokenSigner
from .simulator.control import SimulatorProcess
from .tasks.registry import CONFIG_MODELS, make_kinds
from .timestamps import parse_rfc3339

RETRY_DELAY_NS = 10 * SECOND
MAX_STEPS = 100_000


@dataclass(frozen=True)
class Scenario:
    name: str
    start_ns: int
    seed: int
    task_latency_ns: int
    notification_latency_ns: int
    jobs: dict[str, Any]
    trigger: TriggerBody
    simulator: dict[str, Any]


def load_scenario(name_or_path: str) -> Scenario:
    """A scenario shipped with shepherd ("seed") or a TOML file of the same form."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        text, name = path.read_text(encoding="utf-8"), path.stem
    else:
        source = resources.files("shepherd") / "scenarios" / f"{name_or_path}.toml"
        if not source.is_file():
            raise FileNotFoundError(f'no scenario named "{name_or_path}"')
        text, name = source.read_text(encoding="utf-8"), name_or_path
    data = tomllib.loads(text)
    delivery = data.get("delivery", {})
    return Scenario(
        name=name,
        start_ns=parse_rfc3339(data["start"]),
        seed=int(data.get("seed", 0)),
        task_latency_ns=parse_duration(delivery.get("task", "0s")),
        notification_latency_ns=parse_duration(delivery.get("notification", "0s")),
        jobs={"settings": data.get("settings", {}), "jobs": data.get("jobs", [])},
        trigger=TriggerBody.model_validate(data["trigger"]),
        simulator=data.get("simulator", {}),
    )


@dataclass
class ReplayResult:
    invocation: Invocation
    log_text: str
    simulator_calls: dict[str, int]


def replay(scenario: Scenario, state_path: str | Path) -> ReplayResult:
    jobs = parse_jobs(scenario.jobs, f"scenario {scenario.name}", CONFIG_MODELS)
    clock = VirtualClock(scenario.start_ns)
    rng = random.Random(scenario.seed)
    queue = VirtualTimerQueue()
    with SimulatorProcess() as sim:
        sim.configure({**scenario.simulator, "clock": "manual", "start_ns": scenario.start_ns})
        servers = {job.config.server for job in jobs.jobs.values()}
        client = PrpcBuildsClient(clock, endpoints={server: sim.url for server in servers})
        store = SqliteStore(state_path)
        engine = Engine(
            jobs=jobs,
            kinds=make_kinds(client, rng),
            store=store,
            queue=queue,
            topic=EmbeddedTopic(jobs.settings.app_id),
            clock=clock,
            signer=TokenSigner(rng.randbytes(32)),
            rng=rng,
        )
        try:
            invocation = engine.trigger(scenario.trigger.to_request())
            _drive(engine, sim, clock, queue, scenario, invocation.id)
        finally:
            client.close()
        calls = sim.state()["calls"]
    final = store.get(invocation.id)
    assert final is not None
    return ReplayResult(final, format_log(store.read_log(invocation.id)), calls)


def _drive(
    engine: Engine,
    sim: SimulatorProcess,
    clock: VirtualClock,
    queue: VirtualTimerQueue,
    scenario: Scenario,
    invocation_id: int,
) -> None:
    inbox: list[tuple[int, int, PubSubMessage]] = []  # (delivery time, order, message)
    sim_next: int | None = None
    for step in range(MAX_STEPS):
        current = engine.store.get(invocation_id)
        if current is not None and current.status.final:
            return
        # Tasks reach the handler one latency after their ETA.
        candidates = [t for t in (sim_next,) if t is not None]
        if (eta := queue.next_eta()) is not None:
            candidates.append(eta + scenario.task_latency_ns)
        if inbox:
            candidates.append(inbox[0][0])
        if not candidates:
            raise RuntimeError("the replay stalled: nothing left to deliver")
        clock.advance_to(min(candidates))
        now = clock.now_ns()
        answer = sim.advance(now)
        sim_next = answer["next_event_ns"]
        for message in answer["published"]:
            delivery = PubSubMessage(
                data=json.dumps(message["data"]).encode(),
                attributes=message["attributes"],
                message_id=message["messageId"],
            )
            heapq.heappush(inbox, (now + scenario.notification_latency_ns, step, delivery))
        while inbox and inbox[0][0] <= now:
            _, order, delivery = heapq.heappop(inbox)
            try:
                engine.handle_notification(delivery)
            except RetryLater:
                heapq.heappush(inbox, (now + RETRY_DELAY_NS, order, delivery))
        for task in queue.pop_due(now - scenario.task_latency_ns):
            try:
                engine.handle_task(task.invocation_id, task.timer_id, task.name)
            except RetryLater:
                queue.requeue(dataclasses.replace(task, eta_ns=now + RETRY_DELAY_NS))
    raise RuntimeError(f"the replay did not finish in {MAX_STEPS} steps")
