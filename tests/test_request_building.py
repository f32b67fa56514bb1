"""ScheduleBuild request building for every trigger form, with LUCI's debug lines.

The cases of luci-go's scheduler/appengine/task/buildbucket/buildbucket_test.go and
scheduler/appengine/engine/policy/request_builder_test.go, as our own data: each gives the
triggers, the expected request (or the parts LUCI checks) and the expected debug lines. Our
launch always does what LUCI's engine does (RequestBuilder on the newest trigger, then
LaunchTask), so a gitiles trigger's own buildset and gitiles_ref tags are popped again.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from shepherd.clock import VirtualClock
from shepherd.config import ConfigError
from shepherd.debuglog import DebugLog
from shepherd.jobs import parse_jobs
from shepherd.model import GitilesTrigger, IncomingTrigger, LogKind, TriggerRequest
from shepherd.schemas import TriggerBody
from shepherd.tasks.base import TaskError
from shepherd.tasks.buildbucket import (
    SCHEDULER_PROPERTY,
    BuildbucketConfig,
    build_schedule_request,
    build_status,
    go_quote,
    invocation_status,
    normalize_repo_url,
    properties_and_tags,
    scheduler_property,
)
from shepherd.tasks.registry import CONFIG_MODELS
from shepherd_tools.replay import load_scenario, replay
from shepherd_tools.simulator import wire
from shepherd_tools.simulator.control import SimulatorProcess
from shepherd_tools.simulator.pb.buildbucket.proto import builds_service_pb2
from shepherd_tools.simulator.server import Simulator

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
NO_BUILDSET = "Ignoring gitiles_ref tag without the buildset tag"


def config(**extra: Any) -> BuildbucketConfig:
    return BuildbucketConfig(
        server="cr-buildbucket.appspot.com", bucket="ci", builder="Windows deterministic", **extra
    )


def build(
    trigger: TriggerRequest | list[IncomingTrigger],
    cfg: BuildbucketConfig | None = None,
    *,
    job: str = JOB,
    invocation: int = INV,
    app_id: str = "luci-scheduler",
    hostname: str = "",
) -> tuple[dict, list[str]]:
    debug_log = DebugLog(VirtualClock(0))
    triggers = trigger if isinstance(trigger, list) else [IncomingTrigger.of(trigger, invocation)]
    request = build_schedule_request(
        cfg or config(),
        job_id=job,
        invocation_id=invocation,
        triggers=triggers,
        app_id=app_id,
        hostname=hostname,
        debug_log=debug_log,
    )
    assert {e.kind for e in debug_log.entries} <= {LogKind.INFO}
    return request, [e.text for e in debug_log.entries]


def trigger(**fields: Any) -> TriggerRequest:
    return TriggerRequest(job_id=JOB, **fields)


def tags_of(request: dict[str, Any]) -> list[str]:
    return [f"{t['key']}:{t['value']}" for t in request["tags"]]


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


def test_a_gitiles_only_trigger_logs_what_luci_logs() -> None:
    # RequestBuilder gives it the buildset and gitiles_ref tags and the repository, branch and
    # revision properties; LaunchTask pops them again and finds they agree with the trigger.
    request, lines = build(trigger(gitiles=GitilesTrigger(REPO + ".git", "refs/heads/main", REV)))
    assert lines == [
        f'Popped buildset tag "{BUILDSET}"',
        "Popped gitiles commit info from properties and tags",
    ]
    assert request["gitilesCommit"] == COMMIT
    assert request["tags"] == DEFAULT_TAGS
    assert request["properties"] == {}


def test_a_short_ref_in_a_gitiles_trigger_agrees_with_its_tags() -> None:
    request, lines = build(trigger(gitiles=GitilesTrigger(REPO, "main", REV)))
    assert lines[-1] == "Popped gitiles commit info from properties and tags"
    assert request["gitilesCommit"] == COMMIT


def test_buildset_tag_only_reconstructs_the_commit_without_ref() -> None:
    request, lines = build(trigger(tags=(BUILDSET,)))
    assert lines == [f'Popped buildset tag "{BUILDSET}"', "Reconstructed gitiles commit from tags"]
    assert request["gitilesCommit"] == {k: v for k, v in COMMIT.items() if k != "ref"}


def test_buildset_and_ref_tags_without_trigger() -> None:
    request, lines = build(trigger(tags=(BUILDSET, "gitiles_ref:main", "team:infra")))
    assert lines[-1] == "Reconstructed gitiles commit from tags"
    assert request["gitilesCommit"] == COMMIT  # "main" normalized to refs/heads/main
    assert request["tags"] == [*DEFAULT_TAGS, {"key": "team", "value": "infra"}]


def test_a_gitiles_ref_tag_after_the_trigger_s_own_wins_and_disagrees() -> None:
    # request_builder_test's "extra properties and tags", through LaunchTask: the last
    # gitiles_ref wins (BBv1's rule), so the commit from tags differs from the trigger's.
    request, lines = build(
        trigger(
            gitiles=GitilesTrigger(REPO, "refs/heads/main", REV),
            tags=("tag1:val1", "gitiles_ref:not-overridden", "tag1:val1"),
            properties={"revision": "will-be-overridden", "stuff": "remains"},
        )
    )
    assert lines[:3] == [
        f'Popped buildset tag "{BUILDSET}"',
        'Ignoring extra gitiles_ref "refs/heads/main"',
        'Git ref in properties "refs/heads/main" doesn\'t match the one in tags '
        '"refs/heads/not-overridden"',
    ]
    assert lines[3] == (
        "crbug.com/1182002: Gitiles commit from triggers doesn't match the one from tags"
    )
    assert lines[4].startswith("From triggers:\n{\n") and '"ref": "refs/heads/main"' in lines[4]
    assert lines[5].startswith("From properties:\n{\n")
    assert '"ref": "refs/heads/not-overridden"' in lines[5]
    assert lines[6:] == ["Using the one from tags"]
    assert request["gitilesCommit"] == {**COMMIT, "ref": "refs/heads/not-overridden"}
    assert request["properties"] == {"stuff": "remains"}
    assert tags_of(request)[3:] == ["tag1:val1"]  # the duplicate was dropped


def test_a_buildset_tag_of_another_commit_is_ignored_for_a_gitiles_trigger() -> None:
    other = "0" * 40
    request, lines = build(
        trigger(
            gitiles=GitilesTrigger(REPO, "refs/heads/main", other),
            tags=(BUILDSET, "gitiles_ref:refs/heads/main"),
        )
    )
    own = BUILDSET.replace(REV, other)
    assert lines == [
        f'Popped buildset tag "{own}"',
        f'Ignoring extra buildset tag "{BUILDSET}"',
        "Popped gitiles commit info from properties and tags",
    ]
    assert request["gitilesCommit"] == {**COMMIT, "id": other}


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


def test_no_buildset_tag_logs_luci_s_line_even_without_gitiles_ref() -> None:
    request, lines = build(trigger(properties={"a": 1}))
    assert lines == [NO_BUILDSET]
    assert "gitilesCommit" not in request
    assert request["properties"] == {"a": 1}


def test_trigger_properties_override_config_properties() -> None:
    cfg = config(properties={"a": "config", "b": "config"}, tags=("team:infra",))
    request, _ = build(trigger(properties={"b": "trigger", "c": 3}, tags=("x:y",)), cfg)
    assert request["properties"] == {"a": "config", "b": "trigger", "c": 3}
    keys = [t["key"] for t in request["tags"]]
    assert keys == ["scheduler_invocation_id", "scheduler_job_id", "user_agent", "team", "x"]


def test_properties_are_sorted_as_protojson_writes_a_struct() -> None:
    request, _ = build(trigger(properties={"b": {"z": 1, "a": [{"y": 2, "x": 3}]}, "a": 0}))
    assert json.dumps(request["properties"]) == '{"a": 0, "b": {"a": [{"x": 3, "y": 2}], "z": 1}}'


def test_quoted_values_are_written_as_go_s_percent_q() -> None:
    _, lines = build(trigger(tags=("buildset:é\x01\x7f\u200b",)))
    assert lines[0] == 'Ignoring unrecognized buildset tag "buildset:é\\x01\\x7f\\u200b"'


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", '"plain"'),
        ('say "hi" \\', '"say \\"hi\\" \\\\"'),
        ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
        ("\x00\x1f\x7f", '"\\x00\\x1f\\x7f"'),
        ("ünï 😀", '"ünï 😀"'),
        ("\u00a0\u2028\ufeff", '"\\u00a0\\u2028\\ufeff"'),
        ("\U000e0001", '"\\U000e0001"'),
    ],
)
def test_go_quote(value: str, quoted: str) -> None:
    assert go_quote(value) == quoted


def test_bad_repo_url_is_a_task_error() -> None:
    debug_log = DebugLog(VirtualClock(0))
    bad = trigger(gitiles=GitilesTrigger("https://zzz.example.com/repo", "refs/heads/main", REV))
    with pytest.raises(TaskError, match="bad repo URL"):
        build_schedule_request(
            config(),
            job_id=JOB,
            invocation_id=INV,
            triggers=[IncomingTrigger.of(bad, INV)],
            app_id="x",
            debug_log=debug_log,
        )
    assert [e.text for e in debug_log.entries] == [
        'Bad repo URL "https://zzz.example.com/repo" in the trigger '
        "- only .googlesource.com repos are supported"
    ]


def test_bucket_with_project_prefix() -> None:
    request, _ = build(trigger(), config().model_copy(update={"bucket": "infra:try"}))
    assert request["builder"] == {
        "project": "infra",
        "bucket": "try",
        "builder": "Windows deterministic",
    }


# --- request_builder_test.go: what a trigger brings -----------------------------------

EXAMPLE = "https://example.googlesource.com/repo.git"
EXAMPLE_BUILDSET = "buildset:commit/gitiles/example.googlesource.com/repo/+/aaaaaaaa"


@pytest.mark.parametrize(
    ("given", "properties", "tags", "lines"),
    [
        pytest.param(trigger(), {}, [], [], id="cron or web UI: nothing"),
        pytest.param(
            trigger(gitiles=GitilesTrigger(EXAMPLE, "refs/heads/master", "aaaaaaaa")),
            {"revision": "aaaaaaaa", "branch": "refs/heads/master", "repository": EXAMPLE},
            [EXAMPLE_BUILDSET, "gitiles_ref:refs/heads/master"],
            [],
            id="gitiles good",
        ),
        pytest.param(
            trigger(
                gitiles=GitilesTrigger(EXAMPLE, "refs/heads/master", "aaaaaaaa"),
                properties={"revision": "will-be-overridden", "stuff": "remains"},
                tags=("tag1:val1", "gitiles_ref:not-overridden", "tag1:val1"),
            ),
            {
                "revision": "aaaaaaaa",
                "branch": "refs/heads/master",
                "repository": EXAMPLE,
                "stuff": "remains",
            },
            [
                EXAMPLE_BUILDSET,
                "gitiles_ref:refs/heads/master",
                "tag1:val1",
                "gitiles_ref:not-overridden",
            ],
            [],
            id="gitiles with extra properties and tags",
        ),
        pytest.param(
            trigger(gitiles=GitilesTrigger("https://zzz.example.com/repo", "refs/x", "aaaaaaaa")),
            {},
            [],
            [
                'Bad repo URL "https://zzz.example.com/repo" in the trigger '
                "- only .googlesource.com repos are supported"
            ],
            id="gitiles bad",
        ),
        pytest.param(
            trigger(properties={"a": "b"}, tags=("c:d",)),
            {"a": "b"},
            ["c:d"],
            [],
            id="buildbucket",
        ),
    ],
)
def test_what_a_trigger_brings(
    given: TriggerRequest, properties: dict, tags: list[str], lines: list[str]
) -> None:
    debug_log = DebugLog(VirtualClock(0))
    assert properties_and_tags(given, debug_log) == (properties, tags)
    assert [e.text for e in debug_log.entries] == lines


# --- buildbucket_test.go: TestFullFlow, TestTriggeredFlow, TestPassedTriggers -----------

R_REPO = "https://r.googlesource.com/repo"
R_COMMIT = {"host": "r.googlesource.com", "project": "repo", "id": "deadbeef"}
FAKE_CONFIG = BuildbucketConfig(
    server="http://127.0.0.1:1",
    bucket="test-bucket",
    builder="builder",
    tags=("a:from-task-def", "b:from-task-def"),
)
FAKE_TAGS = [
    "scheduler_invocation_id:1",
    "scheduler_job_id:some-project/some-job",
    "user_agent:app",
    "a:from-task-def",
    "b:from-task-def",
]


def fake_build(triggers: list[IncomingTrigger]) -> tuple[dict, list[str]]:
    return build(
        triggers,
        FAKE_CONFIG,
        job="some-project/some-job",
        invocation=1,
        app_id="app",
        hostname="app.example.com",
    )


def bb_trigger(properties: dict[str, Any], tags: tuple[str, ...]) -> list[IncomingTrigger]:
    request = TriggerRequest("some-project/some-job", properties=properties, tags=tags)
    return [IncomingTrigger("1", request)]


def test_full_flow_request() -> None:
    gitiles = GitilesTrigger(
        "https://chromium.googlesource.com/chromium/src", "refs/heads/master", "deadbeef"
    )
    incoming = IncomingTrigger(
        "trigger",
        TriggerRequest("some-project/some-job", gitiles=gitiles),
        title="Trigger",
        url="https://trigger.example.com",
    )
    request, _ = fake_build([incoming])
    assert request == {
        "requestId": "1",
        "builder": {"project": "some-project", "bucket": "test-bucket", "builder": "builder"},
        "properties": {
            "$recipe_engine/scheduler": {
                "hostname": "app.example.com",
                "invocation": "1",
                "job": "some-project/some-job",
                "triggers": [
                    {
                        "gitiles": {
                            "ref": "refs/heads/master",
                            "repo": "https://chromium.googlesource.com/chromium/src",
                            "revision": "deadbeef",
                        },
                        "id": "trigger",
                        "title": "Trigger",
                        "url": "https://trigger.example.com",
                    }
                ],
            }
        },
        "gitilesCommit": {
            "host": "chromium.googlesource.com",
            "project": "chromium/src",
            "id": "deadbeef",
            "ref": "refs/heads/master",
        },
        "tags": [{"key": k, "value": v} for k, _, v in (t.partition(":") for t in FAKE_TAGS)],
    }
    # The strict simulator (Buildbucket's protos and validation) takes it, once the commit id
    # is a real one (LUCI's test uses "deadbeef"; Buildbucket wants 40 hex digits).
    notify = {"pubsubTopic": "projects/shepherd/topics/builds", "userData": "dG9rZW4="}
    commit = {**request["gitilesCommit"], "id": REV}
    sent = {**request, "gitilesCommit": commit, "notify": notify}
    assert Simulator({"clock": "manual"}).schedule_build(sent)["status"] == "SCHEDULED"
    decoded = wire.decode(sent, builds_service_pb2.ScheduleBuildRequest)
    assert json_format.MessageToDict(decoded.properties) == request["properties"]


def test_gitiles_triggers_use_the_newest() -> None:
    older = GitilesTrigger(R_REPO, "refs/heads/master", "baadcafe")
    newest = TriggerRequest(
        "some-project/some-job",
        gitiles=GitilesTrigger(R_REPO, "refs/heads/master", "deadbeef"),
        tags=("extra:tag", "gitiles_ref:refs/heads/master"),
        properties={"extra_prop": "val", "branch": "ignored"},
    )
    request, lines = fake_build(
        [
            IncomingTrigger("1", TriggerRequest("some-project/some-job", gitiles=older)),
            IncomingTrigger("2", newest),
        ]
    )
    assert request["gitilesCommit"] == {**R_COMMIT, "ref": "refs/heads/master"}
    assert sorted(request["properties"]) == [SCHEDULER_PROPERTY, "extra_prop"]
    assert tags_of(request) == [*FAKE_TAGS, "extra:tag"]
    triggers = request["properties"][SCHEDULER_PROPERTY]["triggers"]
    assert [(t["id"], t["gitiles"]["revision"]) for t in triggers] == [
        ("1", "baadcafe"),
        ("2", "deadbeef"),
    ]
    assert triggers[1]["gitiles"]["tags"] == ["extra:tag", "gitiles_ref:refs/heads/master"]
    assert lines == [
        'Popped buildset tag "buildset:commit/gitiles/r.googlesource.com/repo/+/deadbeef"',
        "Popped gitiles commit info from properties and tags",
    ]


@pytest.mark.parametrize(
    ("properties", "tags", "commit", "lines"),
    [
        pytest.param(
            {"repository": R_REPO, "branch": "master", "revision": "deadbeef", "extra_prop": "val"},
            (
                "buildset:commit/git/deadbeef",
                "buildset:commit/gitiles/r.googlesource.com/repo/+/deadbeef",
                "gitiles_ref:ignored",
                "gitiles_ref:master",
                "extra:tag",
            ),
            {**R_COMMIT, "ref": "refs/heads/master"},
            [
                'Ignoring unrecognized buildset tag "buildset:commit/git/deadbeef"',
                'Popped buildset tag "buildset:commit/gitiles/r.googlesource.com/repo/+/deadbeef"',
                'Ignoring extra gitiles_ref "refs/heads/ignored"',
                "Reconstructed gitiles commit from tags",
            ],
            id="reconstructs gitiles commit from generic trigger",
        ),
        pytest.param(
            {"repository": R_REPO, "revision": "deadbeef"},
            ("buildset:commit/gitiles/r.googlesource.com/repo/+/deadbeef",),
            R_COMMIT,
            [
                'Popped buildset tag "buildset:commit/gitiles/r.googlesource.com/repo/+/deadbeef"',
                "Reconstructed gitiles commit from tags",
            ],
            id="branch is optional when reconstructing",
        ),
        pytest.param(
            {"repository": R_REPO, "branch": "main", "revision": "deadbeef"},
            ("gitiles_ref:ignored",),
            None,
            [
                NO_BUILDSET,
                f'No buildset tag present, ignoring property "repository": "{R_REPO}"',
                'No buildset tag present, ignoring property "branch": "refs/heads/main"',
                'No buildset tag present, ignoring property "revision": "deadbeef"',
            ],
            id="properties are ignored if buildset tag is missing",
        ),
        pytest.param(
            {
                "repository": "https://prop.googlesource.com/repo-prop",
                "branch": "main-prop",
                "revision": "aaaa",
            },
            (
                "buildset:commit/gitiles/tag.googlesource.com/repo-tag/+/bbbb",
                "gitiles_ref:main-tag",
            ),
            {
                "host": "tag.googlesource.com",
                "project": "repo-tag",
                "id": "bbbb",
                "ref": "refs/heads/main-tag",
            },
            [
                'Popped buildset tag "buildset:commit/gitiles/tag.googlesource.com/'
                'repo-tag/+/bbbb"',
                'Git host in properties "prop.googlesource.com" doesn\'t match the one in tags '
                '"tag.googlesource.com"',
                'Git project in properties "repo-prop" doesn\'t match the one in tags "repo-tag"',
                'Git ref in properties "refs/heads/main-prop" doesn\'t match the one in tags '
                '"refs/heads/main-tag"',
                'Git commit in properties "aaaa" doesn\'t match the one in tags "bbbb"',
                "Reconstructed gitiles commit from tags",
            ],
            id="tags are authoritative over properties",
        ),
    ],
)
def test_generic_triggers(
    properties: dict[str, Any],
    tags: tuple[str, ...],
    commit: dict[str, str] | None,
    lines: list[str],
) -> None:
    request, logged = fake_build(bb_trigger(properties, tags))
    assert request.get("gitilesCommit") == commit
    extra = ["extra_prop"] if "extra_prop" in properties else []
    assert sorted(request["properties"]) == [SCHEDULER_PROPERTY, *extra]
    assert tags_of(request) == FAKE_TAGS + (["extra:tag"] if "extra:tag" in tags else [])
    assert logged == lines


def test_a_ref_less_buildset_is_refused_at_trigger_not_sent() -> None:
    # LUCI sends "branch is optional when reconstructing" as it is, and Buildbucket refuses it
    # ("gitiles_commit: ref is required"); issue 13 decided /trigger refuses it with a 400.
    body = {"job": "some-project/some-job", "tags": [BUILDSET]}
    with pytest.raises(ValueError, match="gitiles_ref:refs/heads/"):
        TriggerBody.model_validate(body)
    # A gitiles trigger's own gitiles_ref gives the commit a ref: accepted.
    gitiles = {"repo": REPO, "ref": "refs/heads/main", "revision": REV}
    TriggerBody.model_validate({**body, "gitiles": gitiles})


def test_at_most_100_triggers_are_passed() -> None:
    def triggers(count: int) -> list[IncomingTrigger]:
        return [
            IncomingTrigger(
                f"id={i}",
                TriggerRequest("p/j", gitiles=GitilesTrigger(R_REPO, "refs/heads/m", f"sha1={i}")),
            )
            for i in range(count)
        ]

    def passed(count: int) -> tuple[str, list[str]]:
        log = DebugLog(VirtualClock(0))
        value = scheduler_property(
            hostname="h",
            job_id="p/j",
            invocation_id=1,
            triggers=triggers(count),
            debug_log=log,
        )
        return json.dumps(value), [e.text for e in log.entries]

    text, lines = passed(100)
    assert '"sha1=0"' in text and '"sha1=99"' in text and lines == []
    text, lines = passed(101)
    assert '"sha1=100"' in text and '"sha1=0"' not in text and '"sha1=1"' in text
    assert lines == ["Capping 101 triggers passed to the build to just 100 latest ones"]


# --- $recipe_engine/scheduler: who gets it ---------------------------------------------


@pytest.mark.parametrize(
    ("job", "bucket", "expected"),
    [
        ("chromium/x", "ci", False),
        ("chrome/x", "ci", False),
        ("infra/x", "ci", True),
        ("chromium/x", "infra:ci", True),  # the builder's project decides, not the job's
        ("infra/x", "chrome:ci", False),
    ],
)
def test_chromium_and_chrome_builders_get_no_scheduler_property(
    job: str, bucket: str, expected: bool
) -> None:
    cfg = config().model_copy(update={"bucket": bucket})
    request, _ = build(TriggerRequest(job), cfg, job=job)
    assert (SCHEDULER_PROPERTY in request["properties"]) is expected


def test_the_scheduler_property_names_the_invocation_and_its_trigger() -> None:
    given = TriggerRequest("infra/x", properties={"p": [1, "two"]}, tags=("a:b",), request_id="r-1")
    request, _ = build(given, job="infra/x", invocation=42, hostname="sched.example.com")
    assert request["properties"][SCHEDULER_PROPERTY] == {
        "hostname": "sched.example.com",
        "invocation": "42",
        "job": "infra/x",
        "triggers": [
            {"buildbucket": {"properties": {"p": [1, "two"]}, "tags": ["a:b"]}, "id": "r-1"}
        ],
    }
    # Without a hostname setting it is left out: recipes keep their default host.
    request, _ = build(TriggerRequest("infra/x"), job="infra/x", invocation=42)
    assert request["properties"][SCHEDULER_PROPERTY] == {
        "invocation": "42",
        "job": "infra/x",
        "triggers": [{"buildbucket": {}, "id": "42"}],
    }


# --- build statuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "name", "final"),
    [
        ({}, "STATUS_UNSPECIFIED", "FAILED"),
        ({"status": None}, "STATUS_UNSPECIFIED", "FAILED"),
        ({"status": 0}, "STATUS_UNSPECIFIED", "FAILED"),
        ({"status": 1}, "SCHEDULED", None),
        ({"status": "STARTED"}, "STARTED", None),
        ({"status": 12}, "SUCCESS", "SUCCEEDED"),
        ({"status": 68}, "CANCELED", "ABORTED"),
        ({"status": 4}, "ENDED_MASK", "FAILED"),
        ({"status": "ENDED_MASK"}, "ENDED_MASK", "FAILED"),
        ({"status": 99}, "99", "FAILED"),
    ],
)
def test_build_status_names_as_luci_prints_them(
    build: dict[str, Any], name: str, final: str | None
) -> None:
    assert build_status(build) == name
    debug_log = DebugLog(VirtualClock(0))
    status = invocation_status(build, debug_log)
    assert (status and status.value) == final
    unexpected = [f"Unexpected Build status {name}, marking the invocation as failed"]
    expected = unexpected if final == "FAILED" else []  # no FAILURE or INFRA_FAILURE here
    assert [e.text for e in debug_log.entries] == expected


# --- end to end: a job outside chromium, replayed against the strict simulator ----------


def test_a_launch_sends_the_property_buildbucket_accepts(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    seed = load_scenario("seed")
    job = {**seed.jobs["jobs"][0], "bucket": "infra:ci"}
    settings = {**seed.jobs["settings"], "hostname": "scheduler.example.com"}
    scenario = dataclasses.replace(seed, jobs={"settings": settings, "jobs": [job]})
    result = replay(scenario, tmp_path / "state.db", sim)
    assert result.invocation.status.value == "SUCCEEDED"
    assert result.simulator_calls["ScheduleBuild"] == 1
    logged = result.log_text.split("Buildbucket request:\n", 1)[1].split("\n[", 1)[0]
    sent = json.loads(logged)
    assert sent["builder"]["project"] == "infra"
    assert sent["properties"][SCHEDULER_PROPERTY] == {
        "hostname": "scheduler.example.com",
        "invocation": str(result.invocation.id),
        "job": "chromium/Windows deterministic",
        "triggers": [
            {
                "gitiles": {
                    "ref": "refs/heads/main",
                    "repo": REPO,
                    "revision": REV,
                    "tags": [BUILDSET, "gitiles_ref:refs/heads/main"],
                },
                "id": result.invocation.triggers[0].id,  # a random one: no request_id
            }
        ],
    }
    assert re.fullmatch(r"[0-9a-f]{16}", result.invocation.triggers[0].id)


@pytest.mark.parametrize("hostname", ["https://x.example.com", "a b", "x/y"])
def test_the_hostname_setting_must_be_a_host(hostname: str) -> None:
    with pytest.raises(ConfigError, match="hostname"):
        parse_jobs({"settings": {"hostname": hostname}}, "jobs.toml", CONFIG_MODELS)
    assert parse_jobs({"settings": {"hostname": "s.example.com:8443"}}, "j", CONFIG_MODELS)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8123/chromium/src", ("127.0.0.1:8123", "chromium/src")),
        ("http://localhost:9/p.git", ("localhost:9", "p")),
        (
            "https://chromium.googlesource.com/a/chromium/src.git",
            ("chromium.googlesource.com", "chromium/src"),
        ),
    ],
)
def test_a_local_gitiles_is_a_repo_too(url: str, expected: tuple[str, str]) -> None:
    assert normalize_repo_url(url) == expected


def test_plain_http_is_only_for_a_local_gitiles() -> None:
    with pytest.raises(ValueError, match="only https scheme is supported"):
        normalize_repo_url("http://chromium.googlesource.com/chromium/src")
