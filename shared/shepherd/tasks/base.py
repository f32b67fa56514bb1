"""What a task kind is, and what the engine gives it (LUCI's task.Manager / task.Controller)."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from ..jobs import ConfigModel, Settings
from ..model import PubSubMessage, Status, TriggerRequest


class TransientError(Exception):
    """Try the event again later; the invocation is left as it was."""


class TaskError(Exception):
    """A fatal error of the task: the invocation fails."""


class Controller(Protocol):
    """The engine's side of one event: state, log, timers, topic and clock."""

    @property
    def job_id(self) -> str: ...

    @property
    def invocation_id(self) -> int: ...

    @property
    def config(self) -> Any:
        """The job's kind-specific configuration (what the kind's config_model validated)."""
        ...

    @property
    def request(self) -> TriggerRequest: ...

    @property
    def settings(self) -> Settings:
        """The job file's global settings (status check delays, app id)."""
        ...

    status: Status
    view_url: str
    task_data: dict[str, Any]

    def log(self, text: str) -> None: ...

    def add_timer(
        self, delay_ns: int, title: str, payload: dict[str, Any] | None = None
    ) -> None: ...

    def prepare_topic(self, publisher: str) -> tuple[str, str]:
        """Returns (topic name, signed token that identifies this invocation)."""
        ...

    def now_ns(self) -> int: ...

    def save(self) -> None:
        """Stores what was done so far before a slow call; best effort."""
        ...


class TaskKind(Protocol):
    """What one kind of task does. The engine knows nothing more about it."""

    name: ClassVar[str]
    config_model: ClassVar[ConfigModel]

    def launch(self, ctl: Controller) -> None:
        """Starts the task; must move the invocation out of STARTING unless it raises."""
        ...

    def examine_notification(self, message: PubSubMessage) -> str | None:
        """Returns the token the task put in its notification config, if the message has one."""
        ...

    def handle_notification(self, ctl: Controller, message: PubSubMessage) -> None: ...

    def handle_timer(self, ctl: Controller, name: str, payload: dict[str, Any] | None) -> None: ...

    def abort(self, ctl: Controller) -> None: ...
