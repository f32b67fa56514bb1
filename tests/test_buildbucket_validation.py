"""Buildbucket's own validation cases, ported from luci-go as data: schedule_build_test.go
(validateSchedule), common_test.go (build sets, tags, summary markdown, commits),
get_build_test.go and cancel_build_test.go, batch.go's limits. Each request is protojson, read
into the real message first, so a case also checks that the body parses with the protos.
Last, the committed classes are checked against a fresh `make protos`.
As there, an expected error is a part of the message (ErrLike); None means accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from shepherd_tools.simulator import genprotos, validation
from shepherd_tools.simulator.pb.buildbucket.proto import builds_service_pb2, common_pb2

SHA1 = "a" * 40
GITILES = f"commit/gitiles/chromium.googlesource.com/chromium/src/+/{SHA1}"
T = {"templateBuildId": "1"}  # as the Go cases: no builder needed


def dim(**fields: Any) -> dict[str, Any]:
    return {**T, "dimensions": [fields]}


def gerrit(**fields: Any) -> dict[str, Any]:
    return {**T, "gerritChanges": [fields]}


SCHEDULE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("empty", {}, "builder or template_build_id is required"),
    ("builder ID", {"builder": {}}, "project must match"),
    ("builder ok", {"builder": {"project": "p", "bucket": "b", "builder": "x y (z)"}}, None),
    ("builder bucket", {"builder": {"project": "p", "bucket": "B!", "builder": "b"}}, "bucket"),
    ("builder missing", {"builder": {"project": "p", "bucket": "b"}}, "builder is required"),
    (
        "builder v1 bucket",
        {"builder": {"project": "p", "bucket": "luci.p.ci", "builder": "b"}},
        'invalid use of v1 bucket in v2 API (hint: try "ci")',
    ),
    ("dimensions empty", dim(), "dimensions"),
    ("expiration empty", dim(expiration="0s", key="key", value="value"), None),
    (
        "expiration nanos",
        dim(expiration="0.000000001s", key="key", value="value"),
        "nanos must not be specified",
    ),
    (
        "expiration negative",
        dim(expiration="-60s", key="key", value="value"),
        "seconds must not be negative",
    ),
    (
        "expiration whole minute",
        dim(expiration="61s", key="key", value="value"),
        "seconds must be a multiple of 60",
    ),
    ("expiration ok", dim(expiration="60s", key="key", value="value"), None),
    ("key empty", dim(value="value"), "the key cannot be empty"),
    ("key caches", dim(key="caches", value="value"), "caches may only be specified in builder"),
    ("key pool", dim(key="pool", value="value"), "pool may only be specified in builder configs"),
    ("key ok", dim(key="key", value="value"), None),
    (
        "empty value & non-value",
        {**T, "dimensions": [{"key": "req_key", "value": "value"}, {"key": "req_key"}]},
        'dimensions: contain both empty and non-empty value for the same key - "req_key"',
    ),
    ("exe empty", {**T, "exe": {}}, None),
    ("exe package", {**T, "exe": {"cipdPackage": "package"}}, "cipd_package must not be"),
    ("exe version invalid", {**T, "exe": {"cipdVersion": "invalid!"}}, "cipd_version"),
    ("exe version valid", {**T, "exe": {"cipdVersion": "valid"}}, None),
    ("gerrit empty", {**T, "gerritChanges": []}, None),
    ("gerrit unspecified", gerrit(), "gerrit_changes"),
    (
        "gerrit change",
        gerrit(host="host", patchset="1", project="project"),
        "change must be specified",
    ),
    ("gerrit host", gerrit(change="1", patchset="1", project="p"), "host must be specified"),
    (
        "gerrit host invalid",
        gerrit(change="1", host="https://somehost", patchset="1", project="p"),
        "host does not match pattern",
    ),
    (
        "gerrit host too long",
        gerrit(change="1", host="h" * 256, patchset="1", project="p"),
        "host must not exceed 255 characters",
    ),
    ("gerrit patchset", gerrit(change="1", host="host", project="p"), "patchset must be"),
    ("gerrit project", gerrit(change="1", host="host", patchset="1"), "project must be"),
    ("gerrit ok", gerrit(change="1", host="host", patchset="1", project="project"), None),
    ("gitiles commit", {**T, "gitilesCommit": {"host": "example.com"}}, "gitiles_commit"),
    # Finding 1 of issue 13: the README's trigger sent a commit with an id and no ref.
    (
        "gitiles commit without ref",
        {**T, "gitilesCommit": {"host": "h", "project": "p", "id": SHA1}},
        "gitiles_commit: ref is required",
    ),
    # Finding 2: "main" is not a ref Buildbucket takes.
    (
        "gitiles commit short ref",
        {**T, "gitilesCommit": {"host": "h", "project": "p", "id": SHA1, "ref": "main"}},
        "gitiles_commit: ref must match refs/.*",
    ),
    (
        "gitiles commit ok",
        {**T, "gitilesCommit": {"host": "h", "project": "p", "id": SHA1, "ref": "refs/heads/m"}},
        None,
    ),
    ("notify empty", {**T, "notify": {}}, "notify"),
    ("notify pubsub topic", {**T, "notify": {"userData": "dXNlciBkYXRh"}}, "pubsub_topic"),
    (
        "notify user data",
        {**T, "notify": {"pubsubTopic": "projects/project/topics/topic", "userData": "A" * 5464}},
        "user_data",
    ),
    (
        "notify ok",
        {**T, "notify": {"pubsubTopic": "projects/project/topics/topic", "userData": "dXNlcg=="}},
        None,
    ),
    (
        "notify topic name",
        {**T, "notify": {"pubsubTopic": "topics/x"}},
        'invalid pubsub_topic topics/x: topic "topics/x" does not match',
    ),
    (
        "notify cloud project",
        {**T, "notify": {"pubsubTopic": "projects/Bad/topics/topic"}},
        'cloud project id "Bad" does not match',
    ),
    (
        "notify goog topic",
        {**T, "notify": {"pubsubTopic": "projects/project/topics/google"}},
        "shouldn't begin with the string goog",
    ),
    ("priority negative", {**T, "priority": -1}, "priority must be in"),
    ("priority excessive", {**T, "priority": 256}, "priority must be in"),
    (
        "properties prohibited",
        {**T, "properties": {"buildbucket": "value"}},
        "must not be specified",
    ),
    (
        "properties nested prohibited",
        {**T, "properties": {"$recipe_engine/runtime": {"is_luci": True}}},
        '"$recipe_engine/runtime.is_luci" must not be specified',
    ),
    ("properties ok", {**T, "properties": {"key": "value"}}, None),
    ("tags", {**T, "tags": [{"key": "key:value"}]}, "tags"),
    ("experiments ok", {**T, "experiments": {"my.experiment": True}}, None),
    ("experiments bad name", {**T, "experiments": {"bad name": True}}, "does not match"),
    (
        "experiments bad reserved",
        {**T, "experiments": {"luci.use_ralms": True}},
        "unknown experiment has reserved prefix",
    ),
    ("missing parent", {**T, "canOutliveParent": "NO"}, "can_outlive_parent is specified"),
    ("request ID", {**T, "requestId": "request/id"}, "request_id cannot contain"),
    (
        "internal request ID",
        {**T, "requestId": "__bb__:123"},
        'request_id prefix "__bb__:" is reserved for internal use',
    ),
]


def check(error: str | None, expected: str | None) -> None:
    if expected is None:
        assert error is None
    else:
        assert error is not None and expected in error, error


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in SCHEDULE_CASES],
                         ids=[c[0] for c in SCHEDULE_CASES])  # fmt: skip
def test_validate_schedule(body: dict[str, Any], expected: str | None) -> None:
    request = json_format.ParseDict(body, builds_service_pb2.ScheduleBuildRequest())
    check(validation.validate_schedule(request), expected)


BUILD_SET_CASES = [
    (GITILES, None),
    ("patch/gerrit/chromium-review.googlesource.com/123/456", None),
    ("myformat/x", None),
    (GITILES.replace("googlesource.com/", "googlesource.com/a/"), 'must not start with "a/"'),
    (GITILES.replace("src/+", "src.git/+"), 'gitiles project must not end with ".git"'),
    (
        "patch/gerrit/chromium-review.googlesource.com/aa/bb",
        'does not match regex "^patch/gerrit/([^/]+)/(\\d+)/(\\d+)$"',
    ),
    ("a" * 2000, "buildset tag is too long"),
    (f"commit/gitiles/h/p/+/{'a' * 39}", "does not match regex"),
]


@pytest.mark.parametrize(("buildset", "expected"), BUILD_SET_CASES)
def test_validate_build_set(buildset: str, expected: str | None) -> None:
    check(validation.validate_build_set(buildset), expected)


def pairs(*items: tuple[str, str]) -> list[common_pb2.StringPair]:
    return [common_pb2.StringPair(key=k, value=v) for k, v in items]


TAG_CASES = [
    (pairs(("k:1", "v")), "cannot have a colon"),
    (pairs(("build_address", "v")), 'tag "build_address" is reserved'),
    (pairs(("buildset", "patch/gerrit/foo")), 'does not match regex "^patch/gerrit/'),
    (pairs(("buildset", GITILES), ("buildset", GITILES.replace("a", "b"))), None),
    (pairs(("buildset", GITILES), ("buildset", GITILES)), None),
    (pairs(("builder", "1"), ("builder", "2")), 'tag "builder:2" conflicts with tag "builder:1"'),
    (pairs(("builder", "1"), ("builder", "1")), None),
    (pairs(("", "v")), "the key cannot be empty"),
    (pairs(("k" * 65, "v")), "the key should be no longer than 64 (got 65)"),
    (pairs(("k", "v" * 257)), "the value should be no longer than 256 (got 257)"),
    (pairs(("k", " v")), "the value should have no leading or trailing spaces"),
]


@pytest.mark.parametrize(("tags", "expected"), TAG_CASES)
def test_validate_tags(tags: list[common_pb2.StringPair], expected: str | None) -> None:
    check(validation.validate_tags(tags), expected)


def commit(**fields: Any) -> common_pb2.GitilesCommit:
    return common_pb2.GitilesCommit(**fields)


COMMIT_CASES = [
    (commit(), "host is required"),
    (commit(host="host"), "project is required"),
    (commit(host="host", project="project", id="id"), "id must match"),
    (commit(host="host", project="project", id="id", position=1), "position requires ref"),
    (commit(host="host", project="project", ref="ref"), "ref must match"),
    (commit(host="host", project="project", ref="refs/r1", id="id"), "id must match"),
    (commit(host="host", project="project"), "one of"),
    (commit(host="host", project="project", id="1234567890123456789012345678901234567890"), None),
    (commit(host="host", project="project", ref="refs/ref", position=1), None),
]


@pytest.mark.parametrize(("cm", "expected"), COMMIT_CASES)
def test_validate_commit(cm: common_pb2.GitilesCommit, expected: str | None) -> None:
    check(validation.validate_commit(cm), expected)


COMMIT_WITH_REF_CASES = [
    (commit(), "ref is required"),
    (commit(host="host", project="project", id="id"), "ref is required"),
    (commit(host="host", project="project", ref="refs/", position=1), None),
]


@pytest.mark.parametrize(("cm", "expected"), COMMIT_WITH_REF_CASES)
def test_validate_commit_with_ref(cm: common_pb2.GitilesCommit, expected: str | None) -> None:
    check(validation.validate_commit_with_ref(cm), expected)


GET_CASES = [
    ({}, "one of id or (builder and build_number) is required"),
    ({"id": "1", "buildNumber": 1}, "id is mutually exclusive with (builder and build_number)"),
    ({"id": "1", "builder": {}}, "id is mutually exclusive"),
    ({"builder": {"project": "p", "bucket": "b"}}, "one of id or"),
    ({"builder": {"project": "p", "bucket": "b"}, "buildNumber": 1}, "builder is required"),
    ({"builder": {"project": "p", "bucket": "b", "builder": "b"}, "buildNumber": 1}, None),
    ({"id": "1"}, None),
]


@pytest.mark.parametrize(("body", "expected"), GET_CASES)
def test_validate_get(body: dict[str, Any], expected: str | None) -> None:
    request = json_format.ParseDict(body, builds_service_pb2.GetBuildRequest())
    check(validation.validate_get(request), expected)


CANCEL_CASES = [
    ({}, "id is required"),
    ({"id": "1"}, "summary_markdown is required"),
    ({"id": "1", "summaryMarkdown": "[this](http://example.org) is a link"}, None),
    ({"id": "1", "summaryMarkdown": "☕" * 4000}, "too big to accept (12000 > 4000 bytes)"),
]


@pytest.mark.parametrize(("body", "expected"), CANCEL_CASES)
def test_validate_cancel(body: dict[str, Any], expected: str | None) -> None:
    request = json_format.ParseDict(body, builds_service_pb2.CancelBuildRequest())
    check(validation.validate_cancel(request), expected)


BATCH_CASES = [
    ({"requests": [{"getBuild": {"id": "1"}}] * 1000}, None),
    ({"requests": [{"getBuild": {"id": "1"}}] * 1001}, "read request count in Batch is 1000."),
    ({"requests": [{"cancelBuild": {"id": "1"}}] * 201}, "write request count in Batch is 200."),
    ({"requests": [{}]}, "request includes an unsupported type"),
]


@pytest.mark.parametrize(("body", "expected"), BATCH_CASES, ids=["1000", "1001", "201", "none"])
def test_validate_batch(body: dict[str, Any], expected: str | None) -> None:
    request = json_format.ParseDict(body, builds_service_pb2.BatchRequest())
    check(validation.validate_batch(request), expected)


def test_the_committed_classes_are_what_make_protos_generates(tmp_path: Path) -> None:
    assert genprotos.main(tmp_path / "pb") == 0

    def files(root: Path) -> dict[Path, bytes]:
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*.py")}

    generated, committed = files(tmp_path / "pb"), files(genprotos.OUT)
    assert len(generated) > 20
    assert generated == committed
