"""What a task kind is, and what the engine gives it (LUCI's task.Manager / task.Controller).

The contract of a task kind, for whoever writes a new one:

- The engine drives one invocation by events: its launch, each timer the kind added, each
  Pub/Sub notification that carries the kind's token, an abort. Each event reads the invocation,
  lets the kind act through a `Controller`, then commits what the kind changed (status,
  view_url, task_data, debug-log lines, new timers) as one stored change, compare-and-swap on
  the invocation's mutation count.
- Delivery is at least once and unordered: expect every timer and notification to come twice,
  late, or before an older one. Handlers must be idempotent; the engine drops a timer it already
  handled, but a notification may repeat news the kind has seen (compare what it carries with
  what `task_data` knows).
- `TransientError` from a timer, notification or abort handler means "deliver this event
  again later, state untouched": nothing the handler did is kept (status, task data and debug
  log stay as they were), so a side effect before it must be safe to repeat. From `launch`,
  the attempt's debug log (and anything `ctl.save()` stored) is kept and the launch is tried
  again with backoff, up to a limit, while the invocation stays STARTING.
- Any other exception fails the invocation: the engine writes it to the debug log and sets
  FAILED (an abort still ends ABORTED).
- Lost races are the engine's business: if another event committed first, the commit fails and
  the whole event is delivered again, so handlers may run more than once for one change.
- Triggers for other jobs (`ctl.emit_trigger`) are stored with the event's change and added to
  their jobs only once it commits; their ids are stable across redeliveries of the event, so a
  handler that runs twice for one change emits once. Emit once the outcome is known: what a
  launch emitted is dropped when it raises `TransientError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..debuglog import DebugLog
from ..jobs import ConfigModel, Settings
from ..model import IncomingTrigger, Invocation, PubSubMessage, Status, TriggerRequest


class TransientError(Exception):
    """Try the event again later; the invocation is left as it was."""


class TaskError(Exception):
    """A fatal error of the task: the invocation fails."""


class Controller(Protocol):
    """The engine's side of one event: state, debug log, timers, topic and clock.

    Valid only during the call it is handed to. The kind changes `status`, `view_url` and
    `task_data` in place; the engine stores them when the handler returns.
    """

    @property
    def job_id(self) -> str: ...

    @property
    def invocation_id(self) -> int:
        """Unique and stable across launch attempts: use it as the key that makes an outbound
        request idempotent (Buildbucket's requestId)."""
        ...

    @property
    def config(self) -> Any:
        """The job's kind-specific configuration (what the kind's config_model validated)."""
        ...

    @property
    def request(self) -> TriggerRequest: ...

    @property
    def triggers(self) -> Sequence[IncomingTrigger]:
        """The triggers the invocation is made of, oldest first (`request` is the newest's)."""
        ...

    @property
    def settings(self) -> Settings:
        """The job file's global settings (status check delays, app id)."""
        ...

    @property
    def debug_log(self) -> DebugLog:
        """The invocation's debug log: every line is written here with its kind."""
        ...

    status: Status
    view_url: str
    task_data: dict[str, Any]
    # An abort was asked (it may still be completing): what it cancelled must not run again.
    abort_requested: bool

    def add_timer(self, delay_ns: int, title: str, payload: dict[str, Any] | None = None) -> None:
        """A later call to `handle_timer(title, payload)`. Timers cannot be cancelled (ignore
        them instead) and are dropped once the invocation is final; they are handed to the
        queue only after the event's change is stored."""
        ...

    def prepare_topic(self, publisher: str) -> tuple[str, str]:
        """Returns (topic name, signed token that identifies this invocation) for the
        `publisher` service account. The publisher must send the token back in each message,
        where `examine_notification` finds it."""
        ...

    def check_with_group(self, group: str) -> None:
        """While it runs, the invocation's status is checked by `group`'s one periodic check
        (ChecksInGroups) rather than by timers of its own. Idempotent; left once final."""
        ...

    def emit_trigger(self, job_id: str, request: TriggerRequest | None = None) -> None:
        """Triggers job `job_id` (LUCI's EmitTrigger) once this event's change is stored, as
        `POST /trigger` would: its triggering policy applies. `request` carries what the
        trigger brings (commit, properties, tags; its job_id is replaced by `job_id`); its
        `request_id`, if set, is the trigger's id, else the engine makes one that is stable
        across redeliveries (`<job id>:<invocation id>:<n>`, n counting the invocation's
        emitted triggers). A job that is paused or not in the job file is skipped, with a
        debug-log line."""
        ...

    def now_ns(self) -> int: ...

    def save(self) -> None:
        """Stores what was done so far before a slow call; best effort (a conflict surfaces
        when the engine commits at the end of the event)."""
        ...

    def get_kind_state(self) -> dict[str, Any]:
        """What this job's kind kept with `put_kind_state` ({} if nothing yet)."""
        ...

    def put_kind_state(self, state: dict[str, Any]) -> None:
        """Replaces this job's kind state with this event's change, in the same transaction as
        the triggers it emitted (which are added to their jobs right after, or by the delivery
        that comes again if that fails); not at all if the change is not stored (nor after a
        launch that raised `TransientError`)."""
        ...


class TaskKind(Protocol):
    """What one kind of task does. The engine knows nothing more about it.

    See the module's docstring for the contract every method follows.
    """

    name: ClassVar[str]
    config_model: ClassVar[ConfigModel]

    def launch(self, ctl: Controller) -> None:
        """Starts the task. Must move the invocation out of STARTING unless it raises: to
        RUNNING (and then arrange, by a timer or a notification, to reach a final status
        eventually) or straight to a final status. May run again for the same invocation after
        a crash or a `TransientError`, so its outbound requests must be idempotent."""
        ...

    def examine_notification(self, message: PubSubMessage) -> str | None:
        """Returns the token the task put in its notification config, if the message has one.
        No state: the engine verifies the token and finds the invocation."""
        ...

    def handle_notification(self, ctl: Controller, message: PubSubMessage) -> None:
        """A notification for a RUNNING invocation. Expect duplicates and reordering."""
        ...

    def handle_timer(self, ctl: Controller, name: str, payload: dict[str, Any] | None) -> None:
        """A timer the kind added, delivered at or after its time, late or early by the
        queue's slack. The engine has dropped duplicates of it; expect reordering."""
        ...

    def abort(self, ctl: Controller) -> None:
        """Stops the task on the remote side, best effort; the engine then sets ABORTED (or
        FAILED on a timeout) whatever the kind did. Must be idempotent."""
        ...


@runtime_checkable
class ChecksInGroups(Protocol):
    """A kind that checks many invocations' remote status in one call (Buildbucket's Batch):
    an invocation joins its group (`ctl.check_with_group`) instead of adding status timers, and
    the engine runs one check chain per group on the timer queue, every `status_check_max`.

    Group names are `check_group_prefix` + something of the kind's (a server)."""

    check_group_prefix: ClassVar[str]

    def check_group_of(self, config: Any, settings: Settings) -> str | None:
        """The group a job's invocations check in, or None (they use timers of their own)."""
        ...

    def check_group(
        self, group: str, invocations: Sequence[Invocation], settings: Settings
    ) -> Mapping[int, Any]:
        """One check of the group's RUNNING invocations: by invocation id, what each should
        take in (`handle_group_check`); an invocation left out has no news. TransientError:
        the whole check comes again (with backoff)."""
        ...

    def handle_group_check(self, ctl: Controller, found: Any) -> None:
        """What the group check found for this invocation. Expect it late, twice, or after
        a notification brought newer news."""
        ...


class NoNotifications:
    """For a kind that no build server notifies: every notification is someone else's."""

    def examine_notification(self, message: PubSubMessage) -> str | None:
        return None

    def handle_notification(self, ctl: Controller, message: PubSubMessage) -> None:
        raise TaskError("not implemented")


class LaunchOnly(NoNotifications):
    """For a kind whose work is over when its launch returns: no timers, nothing to abort."""

    def handle_timer(self, ctl: Controller, name: str, payload: dict[str, Any] | None) -> None:
        raise TaskError("not implemented")

    def abort(self, ctl: Controller) -> None:
        pass
