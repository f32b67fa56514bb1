"""Request bodies at the edge, validated with pydantic into the domain's dataclasses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

from .model import GitilesTrigger, TriggerRequest, tag_key
from .tasks.buildbucket import NOT_FINITE, finite_numbers, refless_buildset

MAX_PROPERTY_DEPTH = 32


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


class GitilesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: StrictStr = Field(min_length=1)
    ref: StrictStr = Field(min_length=1)
    revision: StrictStr = Field(min_length=1)


class TriggerBody(BaseModel):
    """`POST /trigger` (interfaces.md)."""

    model_config = ConfigDict(extra="forbid")

    job: StrictStr = Field(min_length=1)
    gitiles: GitilesBody | None = None
    tags: list[StrictStr] = Field(default_factory=list)
    properties: dict[str, Any] = Field(default_factory=dict)
    request_id: StrictStr | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            tag_key(tag)
        return tags

    @field_validator("properties")
    @classmethod
    def _properties(cls, properties: dict[str, Any]) -> dict[str, Any]:
        if _depth(properties) > MAX_PROPERTY_DEPTH:
            raise ValueError(f"nested deeper than {MAX_PROPERTY_DEPTH} levels")
        if not finite_numbers(properties):
            raise ValueError(NOT_FINITE)
        return properties

    @model_validator(mode="after")
    def _commit_has_a_ref(self) -> TriggerBody:
        if (tag := refless_buildset(self.tags)) is not None:
            raise ValueError(
                f'"{tag}" makes a gitiles commit without a ref, which Buildbucket refuses: '
                'add a "gitiles_ref:refs/heads/<branch>" tag, or leave the buildset tag out and '
                'give the commit as "gitiles": {"repo", "ref", "revision"}'
            )
        return self

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


class TimerBody(BaseModel):
    """What the timer queue POSTs to `on_timer` (interfaces.md)."""

    model_config = ConfigDict(extra="ignore")

    invocation_id: str = Field(pattern=r"^[0-9]{1,19}$")
    timer_id: str = Field(min_length=1)
    name: str = Field(min_length=1)


class PushedMessage(BaseModel):
    """A Pub/Sub message as a push subscription (or the messagePublished event) carries it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    data: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)
    message_id: str = Field(default="", alias="messageId")
