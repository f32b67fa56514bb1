"""A replay that also counts what its driver delivered, as sources independent of the log."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shepherd.engine import START_TASK, Outcome
from shepherd.model import Invocation, LogEntry, PubSubMessage
from shepherd_tools.replay import Scenario, VirtualStack
from shepherd_tools.simulator.control import SimulatorProcess


@dataclass(frozen=True)
class CountedReplay:
    invocation: Invocation
    entries: list[LogEntry]
    # (what was delivered: "start", "timer" or "notification", the engine's outcome) -> count
    deliveries: Counter[tuple[str, Outcome]]
    simulator_calls: dict[str, int]

    def handled(self, what: str) -> int:
        return self.deliveries[what, Outcome.HANDLED]


def counted_replay(scenario: Scenario, state: Path, sim: SimulatorProcess) -> CountedReplay:
    stack = VirtualStack(scenario, state, sim)
    engine = stack.engine
    deliveries: Counter[tuple[str, Outcome]] = Counter()
    handle_task, handle_notification = engine.handle_task, engine.handle_notification

    def counting_task(invocation_id: int, tid: str, name: str) -> Outcome:
        outcome = handle_task(invocation_id, tid, name)
        deliveries["start" if name == START_TASK else "timer", outcome] += 1
        return outcome

    def counting_notification(message: PubSubMessage) -> Outcome:
        outcome = handle_notification(message)
        deliveries["notification", outcome] += 1
        return outcome

    # Spies around the real handlers: the driver's deliveries are counted, nothing else changes.
    engine.handle_task = counting_task  # type: ignore[method-assign]
    engine.handle_notification = counting_notification  # type: ignore[method-assign]
    try:
        final = stack.run_until_final(stack.trigger().id)
    finally:
        stack.close()
    calls: dict[str, Any] = sim.state()["calls"]
    return CountedReplay(final, stack.store.read_log(final.id), deliveries, calls)
