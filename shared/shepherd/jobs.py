"""The job file (TOML): global settings and the jobs, each validated by its task kind."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from .config import ConfigError
from .durations import parse_duration
from .policy import DEFAULT_POLICY, TriggeringPolicy, parse_policy
from .schedule import MIN_POLL_INTERVAL_NS, Schedule, check_interval, parse_schedule
from .validation import Model, field

_PROJECT = re.compile(r"^[a-z0-9_\-]+$")
_JOB_NAME = re.compile(r"^[0-9A-Za-z_\-. ()]{1,100}$")
_HOSTNAME = re.compile(
    r"^[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)*(:\d+)?$"
)


def go_duration(value: Any) -> int:
    """A field's Go duration string ("90s", "1m30s"), in nanoseconds; never negative."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError('must be a Go duration string such as "90s" or "1m30s"')
    ns = parse_duration(value)
    if ns < 0:
        raise ValueError("must not be negative")
    return ns


def valid_job_id(job_id: str) -> bool:
    """Whether `job_id` has the form "<project>/<job name>"."""
    project, _, name = job_id.partition("/")
    return bool(_PROJECT.match(project) and _JOB_NAME.match(name))


def _trigger_targets(value: tuple[str, ...]) -> tuple[str, ...]:
    for target in value:
        if not valid_job_id(target):
            raise ValueError(f'"{target}" is not a job id ("<project>/<job name>")')
    if len(set(value)) != len(value):
        raise ValueError("a job must not be listed twice")
    return value


def triggers_field() -> Any:
    """The `triggers = ["job id", ...]` field of a kind that emits triggers (noop, gitiles):
    the jobs it triggers, each once. parse_jobs checks that each is in the file, for every
    kind whose configuration has a `triggers` field."""
    return field(default=(), after=_trigger_targets)


def _hostname(value: str) -> str:
    if value and not _HOSTNAME.match(value):
        raise ValueError(f'"{value}" is not a host name such as "scheduler.example.com"')
    return value


class ConfigModel(Protocol):
    """A task kind's configuration: validation.Model, or a pydantic model (its errors are
    ValueErrors with `errors()` too)."""

    @classmethod
    def model_validate(cls, obj: Any) -> Any: ...


@dataclass(frozen=True)
class Settings(Model):
    status_check_min: int = field(default=parse_duration("1m"), before=go_duration)
    status_check_max: int = field(default=parse_duration("10m"), before=go_duration)
    invocation_timeout: int = field(default=parse_duration("24h"), before=go_duration)
    # The service's name: the `user_agent` tag and the project of embedded topic names.
    app_id: str = "shepherd"
    # "shepherd": trust the build a notification carries and check every status_check_max;
    # "luci": a GetBuild per notification and checks at random delays in [min, max];
    # "batched": as "shepherd", but one check every status_check_max covers all the running
    # builds of a server, in Batch calls of up to status_check_batch_size builds.
    status_policy: Literal["shepherd", "luci", "batched"] = "shepherd"
    # Buildbucket refuses a Batch of more than 1,000 reads.
    status_check_batch_size: int = field(default=1000, minimum=1, maximum=1000)
    # The scheduler's host as builds see it (`hostname` in `$recipe_engine/scheduler`, where
    # the recipes' scheduler module sends EmitTriggers); unset: left out, so recipes keep their
    # default (luci-scheduler.appspot.com) rather than being sent to a host that is not ours.
    hostname: str = field(default="", after=_hostname)

    def check(self) -> None:
        if self.status_check_min <= 0:
            raise ValueError("status_check_min must be positive")
        if self.status_check_min > self.status_check_max:
            raise ValueError("status_check_min must not exceed status_check_max")


def _schedule(value: Any) -> Schedule:
    if not isinstance(value, str):
        raise ValueError('must be a cron expression or "with <duration> interval"')
    # The shortest any kind allows; parse_jobs holds other kinds than pollers to a minute.
    return parse_schedule(value, MIN_POLL_INTERVAL_NS)


@dataclass(frozen=True)
class _JobHeader(Model):
    """The fields every job has, whatever its kind; the rest belongs to the kind."""

    extra: ClassVar = "ignore"

    id: str
    kind: str = "buildbucket"
    schedule: Schedule | None = field(default=None, before=_schedule)
    triggering_policy: TriggeringPolicy | None = field(default=None, before=parse_policy)
    # The older spelling: sets the default policy's max_concurrent_invocations.
    max_concurrent_invocations: int | None = field(default=None, minimum=1, maximum=1000)

    def check(self) -> None:
        if self.triggering_policy is not None and self.max_concurrent_invocations is not None:
            raise ValueError(
                'field "max_concurrent_invocations": not allowed beside "triggering_policy"; '
                "set it inside triggering_policy instead"
            )

    def policy(self) -> TriggeringPolicy:
        if self.triggering_policy is not None:
            return self.triggering_policy
        if self.max_concurrent_invocations is not None:
            return TriggeringPolicy(max_concurrent_invocations=self.max_concurrent_invocations)
        return DEFAULT_POLICY


_HEADER = {f.name for f in dataclasses.fields(_JobHeader)}


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    config: Any  # the kind's own validated model
    schedule: Schedule | None = None
    triggering_policy: TriggeringPolicy = DEFAULT_POLICY

    @property
    def max_concurrent_invocations(self) -> int:
        return self.triggering_policy.max_concurrent_invocations


@dataclass(frozen=True)
class JobsFile:
    settings: Settings
    jobs: dict[str, Job]

    def job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)


def _describe(error: ValueError) -> str:
    if not hasattr(error, "errors"):
        return str(error)
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f'field "{where}": {message}' if where else message)
    return "; ".join(parts)


def parse_jobs(
    data: Mapping[str, Any], source: str, config_models: Mapping[str, ConfigModel]
) -> JobsFile:
    unknown = set(data) - {"settings", "jobs"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}")
    try:
        settings = Settings.model_validate(data.get("settings", {}))
    except ValueError as e:
        raise ConfigError(f"{source}: [settings]: {_describe(e)}") from None

    raw_jobs = data.get("jobs", [])
    if not isinstance(raw_jobs, list):
        raise ConfigError(f'{source}: "jobs" must be an array of tables ([[jobs]])')
    jobs: dict[str, Job] = {}
    for index, raw in enumerate(raw_jobs):
        named = isinstance(raw, dict) and isinstance(raw.get("id"), str)
        label = f'job "{raw["id"]}"' if named else f"job #{index + 1}"
        try:
            header = _JobHeader.model_validate(raw)
        except ValueError as e:
            raise ConfigError(f"{source}: {label}: {_describe(e)}") from None
        label = f'job "{header.id}"'
        schedule = header.schedule
        if schedule is not None and schedule.interval_ns is not None and header.kind != "gitiles":
            try:
                check_interval(schedule.text, schedule.interval_ns)
            except ValueError as e:
                raise ConfigError(f'{source}: {label}: field "schedule": {e}') from None
        if not valid_job_id(header.id):
            raise ConfigError(
                f'{source}: {label}: field "id": must be "<project>/<job name>" '
                "(project: a-z 0-9 _ -; name: up to 100 of A-Z a-z 0-9 _ - . space ( ))"
            )
        if header.id in jobs:
            raise ConfigError(f"{source}: {label}: duplicate job id")
        model = config_models.get(header.kind)
        if model is None:
            raise ConfigError(
                f'{source}: {label}: field "kind": unknown task kind "{header.kind}" '
                f"(known: {', '.join(sorted(config_models))})"
            )
        try:
            config = model.model_validate({k: v for k, v in raw.items() if k not in _HEADER})
        except ValueError as e:
            raise ConfigError(f"{source}: {label}: {_describe(e)}") from None
        jobs[header.id] = Job(
            id=header.id,
            kind=header.kind,
            config=config,
            schedule=header.schedule,
            triggering_policy=header.policy(),
        )
    _check_trigger_targets(jobs, source)
    return JobsFile(settings=settings, jobs=jobs)


def _check_trigger_targets(jobs: Mapping[str, Job], source: str) -> None:
    """Every job a `triggers` field names is in the file (as LUCI's config validation)."""
    for job in jobs.values():
        for target in getattr(job.config, "triggers", ()):
            if target not in jobs:
                raise ConfigError(
                    f'{source}: job "{job.id}": field "triggers": '
                    f'referencing unknown job "{target}"'
                )


def load_jobs(path: str | Path, config_models: Mapping[str, ConfigModel]) -> JobsFile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the job file: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_jobs(data, str(path), config_models)
