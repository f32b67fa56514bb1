"""A task kind the engine has never heard of, for engine tests that need no Buildbucket."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from shepherd.adapters.embedded import EmbeddedTopic, VirtualTimerQueue
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.clock import VirtualClock
from shepherd.durations import SECOND
from shepherd.engine import Engine
from shepherd.jobs import parse_jobs
from shepherd.model import LogKind, PubSubMessage, Status
from shepherd.signing import TokenSigner
from shepherd.tasks.base import Controller
from shepherd.tasks.registry import CONFIG_MODELS


class SleepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: int


class SleepKind:
    """A task kind unknown to the engine: runs for a while, then succeeds on its timer."""

    name: ClassVar[str] = "sleep"
    config_model: ClassVar[type[BaseModel]] = SleepConfig

    def launch(self, ctl: Controller) -> None:
        ctl.debug_log.write(LogKind.INFO, f"Sleeping {ctl.config.seconds}s")
        ctl.status = Status.RUNNING
        ctl.add_timer(ctl.config.seconds * SECOND, "wake-up")

    def examine_notification(self, message: PubSubMessage) -> str | None:
        return None

    def handle_notification(self, ctl: Controller, message: PubSubMessage) -> None:
        raise AssertionError("no notifications for this kind")

    def handle_timer(self, ctl: Controller, name: str, payload: dict[str, Any] | None) -> None:
        ctl.status = Status.SUCCEEDED

    def abort(self, ctl: Controller) -> None:
        pass


def sleep_engine(
    tmp_path: Path, start_ns: int = 0, **job: Any
) -> tuple[Engine, VirtualClock, VirtualTimerQueue]:
    """An engine that knows only SleepKind, with job "infra/nap", in virtual time."""
    jobs = parse_jobs(
        {"jobs": [{"id": "infra/nap", "kind": "sleep", **job}]},
        "jobs.toml",
        {**CONFIG_MODELS, SleepKind.name: SleepKind.config_model},
    )
    clock, queue = VirtualClock(start_ns), VirtualTimerQueue()
    engine = Engine(
        jobs=jobs,
        kinds={SleepKind.name: SleepKind()},
        store=SqliteStore(tmp_path / "s.db"),
        queue=queue,
        topic=EmbeddedTopic("shepherd-test"),
        clock=clock,
        signer=TokenSigner(b"k" * 32),
        rng=random.Random(1),
    )
    return engine, clock, queue
