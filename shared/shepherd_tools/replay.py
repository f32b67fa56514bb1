"""Replays a scripted invocation in virtual time: six hours of build in a second or two.

The same engine and adapters as the functions use, with a virtual clock, the SQLite store, the
pRPC client talking to the simulator process (its clock driven from here), and a driver that
delivers timers and notifications in time order, each after its channel's latency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import random
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from shepherd.adapters.buildbucket_prpc import PrpcBuildsClient
from shepherd.adapters.embedded import EmbeddedTopic, VirtualTimerQueue
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.clock import VirtualClock
from shepherd.debuglog import format_log
from shepherd.durations import SECOND, parse_duration
from shepherd.engine import Engine, RetryLater, Triggered
from shepherd.jobs import ConfigError, parse_jobs
from shepherd.model import Invocation, PubSubMessage, TriggerRequest
from shepherd.ports import Store
from shepherd.schemas import TriggerBody
from shepherd.signing import TokenSigner
from shepherd.tasks.registry import CONFIG_MODELS, make_kinds
from shepherd.timestamps import parse_rfc3339

from .simulator.control import SimulatorProcess

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
        source = resources.files("shepherd_tools") / "scenarios" / f"{name_or_path}.toml"
        if not source.is_file():
            raise FileNotFoundError(f'no scenario named "{name_or_path}"')
        text, name = source.read_text(encoding="utf-8"), name_or_path
    try:
        data = tomllib.loads(text)
        delivery = data.get("delivery", {})
        jobs = {"settings": data.get("settings", {}), "jobs": data.get("jobs", [])}
        parse_jobs(jobs, f"scenario {name}", CONFIG_MODELS)  # refused here, not mid-replay
        return Scenario(
            name=name,
            start_ns=parse_rfc3339(data["start"]),
            seed=int(data.get("seed", 0)),
            task_latency_ns=parse_duration(delivery.get("task", "0s")),
            notification_latency_ns=parse_duration(delivery.get("notification", "0s")),
            jobs=jobs,
            trigger=TriggerBody.model_validate(data["trigger"]),
            simulator=data.get("simulator", {}),
        )
    except ConfigError:
        raise
    except (tomllib.TOMLDecodeError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"scenario {name}: {e}") from None


def many_at_once(
    scenario: Scenario,
    builds: int,
    settings: dict[str, Any] | None = None,
    simulator: dict[str, Any] | None = None,
) -> Scenario:
    """`scenario` with its first job taking `builds` triggers at once, each an invocation of its
    own (greedy_batching, batches of 1), its settings and simulator config updated with these."""
    job = {
        **scenario.jobs["jobs"][0],
        "triggering_policy": {
            "kind": "greedy_batching",
            "max_concurrent_invocations": builds,
            "max_batch_size": 1,
        },
    }
    return dataclasses.replace(
        scenario,
        jobs={"settings": {**scenario.jobs["settings"], **(settings or {})}, "jobs": [job]},
        simulator={**scenario.simulator, **(simulator or {})},
    )


@dataclass
class ReplayResult:
    invocation: Invocation
    log_text: str
    simulator_calls: dict[str, int]


class VirtualStack:
    """The engine wired to the simulator in virtual time, and the driver that moves it."""

    def __init__(
        self,
        scenario: Scenario,
        state_path: str | Path,
        sim: SimulatorProcess,
        store: Store | None = None,
    ) -> None:
        self.scenario = scenario
        self.sim = sim
        self.jobs = parse_jobs(scenario.jobs, f"scenario {scenario.name}", CONFIG_MODELS)
        self.clock = VirtualClock(scenario.start_ns)
        self.queue = VirtualTimerQueue()
        rng = random.Random(scenario.seed)
        sim.configure({**scenario.simulator, "clock": "manual", "start_ns": scenario.start_ns})
        servers = {
            job.config.server for job in self.jobs.jobs.values() if job.kind == "buildbucket"
        }
        self.client = PrpcBuildsClient(
            self.clock, endpoints={server: sim.url for server in servers}
        )
        self.store = store or SqliteStore(state_path)
        self.engine = Engine(
            jobs=self.jobs,
            kinds=make_kinds(self.client, rng),
            store=self.store,
            queue=self.queue,
            topic=EmbeddedTopic(self.jobs.settings.app_id),
            clock=self.clock,
            signer=TokenSigner(rng.randbytes(32)),
            # Invocation ids from the system's randomness: a replay into a store that holds an
            # earlier one must not collide with it.
            rng=random.Random(),
        )
        self._inbox: list[tuple[int, int, PubSubMessage]] = []  # (delivery time, order, message)
        self._order = 0
        self._sim_next: int | None = None

    def close(self) -> None:
        self.client.close()

    def trigger(self) -> Invocation:
        started = self.engine.trigger(self.scenario.trigger.to_request()).invocation
        assert started is not None, "a scenario's job runs one invocation at a time"
        return started

    def trigger_at(self, when_ns: int, request: TriggerRequest, order: int = 0) -> Triggered:
        """Sends a trigger at `when_ns`, after everything due until then: a stream of triggers,
        each at its own time, under the job's triggering policy."""
        self.run_until(when_ns)
        return self.engine.trigger(request, order)

    def run_until(self, when_ns: int) -> None:
        """Delivers everything due up to `when_ns`, then moves the clocks there."""
        for _ in range(MAX_STEPS):
            upcoming = self.next_time()
            if upcoming is None or upcoming > when_ns:
                break
            self.step()
        else:
            raise RuntimeError(f"the replay did not reach {when_ns} in {MAX_STEPS} steps")
        self.clock.advance_to(when_ns)
        self._sync_simulator(self.clock.now_ns())

    def run_until_idle(self) -> int:
        """Delivers everything until nothing is left to happen; answers the steps taken."""
        for steps in range(MAX_STEPS):
            if not self.step():
                return steps
        raise RuntimeError(f"the replay did not go idle in {MAX_STEPS} steps")

    def next_time(self) -> int | None:
        """When something happens next: a build step, a delivery, or a due task."""
        candidates = [t for t in (self._sim_next,) if t is not None]
        if (eta := self.queue.next_eta()) is not None:
            candidates.append(eta + self.scenario.task_latency_ns)
        if self._inbox:
            candidates.append(self._inbox[0][0])
        return min(candidates) if candidates else None

    def step(self) -> bool:
        """Moves time to the next event and delivers everything due; False when idle."""
        when = self.next_time()
        if when is None:
            return False
        self.clock.advance_to(when)
        now = self.clock.now_ns()
        self._sync_simulator(now)
        while self._inbox and self._inbox[0][0] <= now:
            _, order, delivery = heapq.heappop(self._inbox)
            try:
                self.engine.handle_notification(delivery)
            except RetryLater:
                heapq.heappush(self._inbox, (now + RETRY_DELAY_NS, order, delivery))
        for task in self.queue.pop_due(now - self.scenario.task_latency_ns):
            try:
                self.engine.handle_task(task.invocation_id, task.timer_id, task.name)
            except RetryLater:
                self.queue.requeue(dataclasses.replace(task, eta_ns=now + RETRY_DELAY_NS))
        # The deliveries may have scheduled builds: learn when they change next.
        self._sync_simulator(now)
        return True

    def _sync_simulator(self, now: int) -> None:
        """Moves the simulator's clock to now; what it publishes goes to the inbox."""
        answer = self.sim.advance(now)
        self._sim_next = answer["next_event_ns"]
        for message in answer["published"]:
            delivery = PubSubMessage(
                data=json.dumps(message["data"]).encode(),
                attributes=message["attributes"],
                message_id=message["messageId"],
            )
            self._order += 1
            heapq.heappush(
                self._inbox, (now + self.scenario.notification_latency_ns, self._order, delivery)
            )

    def run_until_final(self, invocation_id: int) -> Invocation:
        for _ in range(MAX_STEPS):
            current = self.store.get(invocation_id)
            assert current is not None
            if current.status.final:
                return current
            if not self.step():
                raise RuntimeError("the replay stalled: nothing left to deliver")
        raise RuntimeError(f"the replay did not finish in {MAX_STEPS} steps")


def replay(
    scenario: Scenario, state_path: str | Path, sim: SimulatorProcess | None = None
) -> ReplayResult:
    with contextlib.ExitStack() as stack:
        if sim is None:
            sim = stack.enter_context(SimulatorProcess())
        virtual = VirtualStack(scenario, state_path, sim)
        stack.callback(virtual.close)
        final = virtual.run_until_final(virtual.trigger().id)
        log_text = format_log(virtual.store.read_log(final.id))
        return ReplayResult(final, log_text, sim.state()["calls"])
