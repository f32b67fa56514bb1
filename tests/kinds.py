"""A task kind the engine has never heard of, for engine tests that need no Buildbucket."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from shepherd.durations import SECOND
from shepherd.model import PubSubMessage, Status
from shepherd.tasks.base import Controller


class SleepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: int


class SleepKind:
    """A task kind unknown to the engine: runs for a while, then succeeds on its timer."""

    name: ClassVar[str] = "sleep"
    config_model: ClassVar[type[BaseModel]] = SleepConfig

    def launch(self, ctl: Controller) -> None:
        ctl.log(f"Sleeping {ctl.config.seconds}s")
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
