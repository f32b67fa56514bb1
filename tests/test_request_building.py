"""ScheduleBuild request building for every trigger form, with LUCI's debug lines."""

from __future__ import annotations

from typing import Any

import pytest

from shepherd.clock import VirtualClock
from shepherd.debuglog import DebugLog
from shepherd.model import GitilesTrigger, LogKind, TriggerRequest
from shepherd.tasks.base import TaskError
from shepherd.tasks.buildbucket import BuildbucketConfig, build_schedule_request

JOB = "chromium/Windows deterministic"
INV = 8974454865591757088
REPO = "https://chromium.googlesource.com/chromium/src"
REV = "3ce3f1d71a1492176d69ed432d5cfa7b95be4a3e"
BUILDSET = f"buildset:commit/gitiles/chromium.googlesource.com/chromium/src/+/{REV}"
COMMIT = {
    "host": "chromium.googlesource.com",
    "project": "chromium/src",
    "id": REV,
    "ref": "refs/heads/main",
}
DEFAULT_TAGS = [
    {"key": "scheduler_invocation_id", "value": str(INV)},
    {"key": "scheduler_job_id", "value": JOB},
    {"key": "user_agent", "value": "luci-scheduler"},
]


def config(**extra: Any) -> BuildbucketConfig:
    return BuildbucketConfig(
        server="cr-buildbucket.appspot.com", bucket="ci", builder="Windows deterministic", **extra
    )


def build(trigger: TriggerRequest, cfg: BuildbucketConfig | None = None) -> tuple[dict, list[str]]:
    debug_log = DebugLog(VirtualClock(0))
    request = build_schedule_request(
        cfg or config(),
        job_id=JOB,
        invocation_id=INV,
        trigger=trigger,
        app_id="luci-scheduler",
        debug_log=debug_log,
    )
    assert {e.kind for e in debug_log.entries} <= {LogKind.INFO}
    return request, [e.text for e in debug_log.entries]


def trigger(**fields: Any) -> TriggerRequest:
    return TriggerRequest(job_id=JOB, **fields)


def test_seed_form_gitiles_and_tags_agree() -> None:
    request, lines = build(
        trigger(
            gitiles=GitilesTrigger(REPO, "refs/heads/main", REV),
            tags=(BUILDSET, "gitiles_ref:refs/heads/main"),
        )
    )
    assert lines == [
        f'Popped buildset tag "{BUILDSET}"',
        "Popped gitiles commit info from properties and tags",
    ]
    assert request == {
        "requestId": str(INV),
        "builder": {"project": "chromium", "bucket": "ci", "builder": "Windows deterministic"},
        "properties": {},
        "gitilesCommit": COMMIT,
        "tags": DEFAULT_TAGS,
    }
    assert list(request) == ["requestId", "builder", "properties", "gitilesCommit", "tags"]


def test_gitiles_trigger_only() -> None:
    request, lines = build(trigger(gitiles=GitilesTrigger(REPO + ".git", "refs/heads/main", REV)))
    assert lines == []
    assert request["gitilesCommit"] == COMMIT
    assert request["tags"] == DEFAULT_TAGS


def test_buildset_tag_only_reconstructs_the_commit_without_ref() -> None:
    request, lines = build(trigger(tags=(BUILDSET,)))
    assert lines == [f'Popped buildset tag "{BUILDSET}"', "Reconstructed gitiles commit from tags"]
    assert request["gitilesCommit"] == {k: v for k, v in COMMIT.items() if k != "ref"}


def test_buildset_and_ref_tags_without_trigger() -> None:
    request, lines = build(trigger(tags=(BUILDSET, "gitiles_ref:main", "team:infra")))
    assert lines[-1] == "Reconstructed gitiles commit from tags"
    assert request["gitilesCommit"] == COMMIT  # "main" normalized to refs/heads/main
    assert request["tags"] == [*DEFAULT_TAGS, {"key": "team", "value": "infra"}]


def test_disagreeing_trigger_and_tags_use_the_tags() -> None:
    other = "0" * 40
    request, lines = build(
        trigger(
            gitiles=GitilesTrigger(REPO, "refs/heads/main", other),
            tags=(BUILDSET, "gitiles_ref:refs/heads/main"),
        )
    )
    assert lines[1] == (
        "crbug.com/1182002: Gitiles commit from triggers doesn't match the one from tags"
    )
    assert lines[2].startswith("From triggers:\n{\n") and f'"id": "{other}"' in lines[2]
    assert lines[3].startswith("From properties:\n{\n") and f'"id": "{REV}"' in lines[3]
    assert lines[4] == "Using the one from tags"
    assert request["gitilesCommit"] == COMMIT


def test_gitiles_ref_without_buildset_is_dropped() -> None:
    request, lines = build(trigger(tags=("gitiles_ref:refs/heads/main", "a:b")))
    assert lines == ["Ignoring gitiles_ref tag without the buildset tag"]
    assert "gitilesCommit" not in request
    assert request["tags"] == [*DEFAULT_TAGS, {"key": "a", "value": "b"}]


def test_extra_and_unrecognized_tags_are_logged() -> None:
    _, lines = build(
        trigger(
            tags=("buildset:patch/gerrit/1", BUILDSET, BUILDSET, "gitiles_ref:a", "gitiles_ref:b")
        )
    )
    assert lines == [
        'Ignoring unrecognized buildset tag "buildset:patch/gerrit/1"',
        f'Popped buildset tag "{BUILDSET}"',
        f'Ignoring extra buildset tag "{BUILDSET}"',
        'Ignoring extra gitiles_ref "refs/heads/a"',
        "Reconstructed gitiles commit from tags",
    ]


def test_trigger_properties_override_config_properties() -> None:
    cfg = config(properties={"a": "config", "b": "config"}, tags=("team:infra",))
    request, _ = build(trigger(properties={"b": "trigger", "c": 3}, tags=("x:y",)), cfg)
    assert request["properties"] == {"a": "config", "b": "trigger", "c": 3}
    keys = [t["key"] for t in request["tags"]]
    assert keys == ["scheduler_invocation_id", "scheduler_job_id", "user_agent", "team", "x"]


def test_gitiles_properties_are_popped_and_checked_against_tags() -> None:
    props = {
        "repository": "https://other.googlesource.com/other/repo",
        "branch": "release",
        "revision": "f" * 40,
        "keep": "me",
    }
    request, lines = build(
        trigger(tags=(BUILDSET, "gitiles_ref:refs/heads/main"), properties=props)
    )
    assert request["properties"] == {"keep": "me"}
    assert lines[1:] == [
        'Git host in properties "other.googlesource.com" doesn\'t match the one in tags '
        '"chromium.googlesource.com"',
        'Git project in properties "other/repo" doesn\'t match the one in tags "chromium/src"',
        'Git ref in properties "refs/heads/release" doesn\'t match the one in tags '
        '"refs/heads/main"',
        f'Git commit in properties "{"f" * 40}" doesn\'t match the one in tags "{REV}"',
        "Reconstructed gitiles commit from tags",
    ]


def test_gitiles_properties_without_buildset_are_ignored() -> None:
    request, lines = build(trigger(properties={"repository": REPO, "branch": "main"}))
    assert request["properties"] == {}
    assert lines == [
        f'No buildset tag present, ignoring property "repository": "{REPO}"',
        'No buildset tag present, ignoring property "branch": "refs/heads/main"',
    ]


def test_bad_repo_url_is_a_task_error() -> None:
    with pytest.raises(TaskError, match="bad repo URL"):
        build(trigger(gitiles=GitilesTrigger("http://insecure/repo", "refs/heads/main", REV)))


def test_bucket_with_project_prefix() -> None:
    request, _ = build(trigger(), config().model_copy(update={"bucket": "infra:try"}))
    assert request["builder"] == {
        "project": "infra",
        "bucket": "try",
        "builder": "Windows deterministic",
    }
