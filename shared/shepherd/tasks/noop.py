"""The noop task kind: waits, succeeds, and triggers the jobs it names (LUCI's noop task,
scheduler/appengine/task/noop/noop.go)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..durations import format_duration
from ..jobs import go_duration, triggers_field
from ..model import LogKind, Status, TriggerRequest
from ..validation import Model, field
from .base import Controller, NoNotifications

WAKE_UP_TIMER = "noop-wake-up"


@dataclass(frozen=True)
class NoopConfig(Model):
    """A job's `kind = "noop"` fields."""

    sleep: int = field(default=0, before=go_duration)  # "0s": done at once
    triggers: tuple[str, ...] = triggers_field()


class NoopKind(NoNotifications):
    """Succeeds after `sleep` (a timer, so no handler waits), then emits one trigger to each
    job in `triggers`. LUCI's noop sleeps inside its launch, 20 s when unset; here an unset
    sleep is none."""

    name: ClassVar[str] = "noop"
    config_model: ClassVar[type[NoopConfig]] = NoopConfig

    def launch(self, ctl: Controller) -> None:
        sleep = ctl.config.sleep
        ctl.debug_log.write(LogKind.INFO, f"Running noop task for {format_duration(sleep)}")
        if sleep == 0:
            self._succeed(ctl)
            return
        ctl.status = Status.RUNNING
        ctl.add_timer(sleep, WAKE_UP_TIMER)

    def handle_timer(self, ctl: Controller, name: str, payload: dict[str, Any] | None) -> None:
        if name == WAKE_UP_TIMER and ctl.status is Status.RUNNING:
            self._succeed(ctl)

    def abort(self, ctl: Controller) -> None:
        pass  # nothing runs anywhere: the engine sets ABORTED

    @staticmethod
    def _succeed(ctl: Controller) -> None:
        for job_id in ctl.config.triggers:
            ctl.emit_trigger(job_id, TriggerRequest(job_id=job_id))
        ctl.status = Status.SUCCEEDED
