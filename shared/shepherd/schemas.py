"""Request bodies at the edge, validated into the domain's dataclasses (validation.py: no
pydantic on the functions' cold path; openapi.py derives their schemas)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .model import GitilesTrigger, TriggerRequest, tag_key
from .tasks.buildbucket import NOT_FINITE, finite_numbers, normalize_repo_url, refless_buildset
from .validation import Model, field

MAX_PROPERTY_DEPTH = 32


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _tags(tags: list[str]) -> list[str]:
    for tag in tags:
        tag_key(tag)
    return tags


def _properties(properties: dict[str, Any]) -> dict[str, Any]:
    if _depth(properties) > MAX_PROPERTY_DEPTH:
        raise ValueError(f"nested deeper than {MAX_PROPERTY_DEPTH} levels")
    if not finite_numbers(properties):
        raise ValueError(NOT_FINITE)
    return properties


def _repo(repo: str) -> str:
    normalize_repo_url(repo)  # the launch would fail on it: refuse it here
    return repo


@dataclass(frozen=True)
class GitilesBody(Model):
    repo: str = field(minLength=1, after=_repo)
    ref: str = field(minLength=1)
    revision: str = field(minLength=1)


@dataclass(frozen=True)
class TriggerBody(Model):
    """`POST /trigger` (interfaces.md)."""

    job: str = field(minLength=1)
    gitiles: GitilesBody | None = None
    tags: list[str] = field(default_factory=list, after=_tags)
    properties: dict[str, Any] = field(default_factory=dict, after=_properties)
    request_id: str | None = field(default=None, minLength=1, maxLength=200)

    def check(self) -> None:
        # A gitiles trigger's own buildset and gitiles_ref tags come first (LUCI's
        # RequestBuilder), so its commit always has a ref.
        if self.gitiles is None and (tag := refless_buildset(self.tags)) is not None:
            raise ValueError(
                f'"{tag}" makes a gitiles commit without a ref, which Buildbucket refuses: '
                'add a "gitiles_ref:refs/heads/<branch>" tag, or leave the buildset tag out and '
                'give the commit as "gitiles": {"repo", "ref", "revision"}'
            )

    def to_request(self) -> TriggerRequest:
        gitiles = self.gitiles
        return TriggerRequest(
            job_id=self.job,
            gitiles=GitilesTrigger(gitiles.repo, gitiles.ref, gitiles.revision)
            if gitiles
            else None,
            tags=tuple(self.tags),
            properties=dict(self.properties),
            request_id=self.request_id,
        )


@dataclass(frozen=True)
class RerunBody(Model):
    """`POST /api/invocations/<id>/rerun`: the new trigger's id, if the caller names it (a
    retried call then makes no second trigger)."""

    request_id: str | None = field(default=None, minLength=1, maxLength=200)


@dataclass(frozen=True)
class TimerBody(Model):
    """What the timer queue POSTs to `on_timer` (interfaces.md)."""

    extra: ClassVar = "ignore"

    invocation_id: str = field(pattern=r"^[0-9]{1,19}$")
    timer_id: str = field(minLength=1)
    name: str = field(minLength=1)


@dataclass(frozen=True)
class PushedMessage(Model):
    """A Pub/Sub message as a push subscription (or the messagePublished event) carries it."""

    extra: ClassVar = "ignore"

    data: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    message_id: str = field(default="", alias="messageId")
