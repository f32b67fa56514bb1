"""The API's answer shapes (views.py), the OpenAPI schemas derived from them, and the cheap
validation (validation.py) of the request bodies and the job file."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

import jsonschema_rs
import pytest

from shepherd.model import (
    GitilesTrigger,
    Invocation,
    LogEntry,
    LogKind,
    Status,
    Trigger,
    TriggerRequest,
)
from shepherd.openapi import document
from shepherd.schemas import PushedMessage, TimerBody, TriggerBody
from shepherd.validation import ValidationError
from shepherd.views import (
    EmittedTrigger,
    InvocationList,
    InvocationView,
    InvocationWithLog,
    LogLine,
    TriggerRef,
    to_json,
)

INVOCATION = Invocation(
    id=42,
    job_id="chromium/x",
    request=TriggerRequest("chromium/x", GitilesTrigger("r", "refs/heads/main", "abc")),
    status=Status.RUNNING,
    attempt=1,
    created_ns=1_657_456_313_000_000_000,
    started_ns=1_657_456_313_500_000_000,
    view_url="https://ci.example.com/b/1",
    task_data={"build_id": "8790"},
)
ENTRIES = [
    LogEntry(1_657_456_313_000_000_000, "New invocation", LogKind.QUEUED),
    LogEntry(1, "line\ntwo", LogKind.REQUEST, "ScheduleBuild"),
]


def test_an_invocation_reads_back_as_it_was_answered() -> None:
    shown = InvocationWithLog.of_logged(INVOCATION, ENTRIES)
    answer = json.loads(json.dumps(to_json(shown)))
    assert answer["id"] == "42" and answer["status"] == "RUNNING" and answer["finished"] is None
    assert answer["created"] == "2022-07-10T12:31:53Z"
    assert answer["log"][0]["kind"] == "queued" and answer["log"][0]["call"] is None
    assert answer["log"][1] == {
        "time": "1970-01-01T00:00:00.000000001Z",
        "text": "line\ntwo",
        "kind": "request",
        "call": "ScheduleBuild",
    }
    assert InvocationWithLog.from_json(answer) == shown
    listed = json.loads(json.dumps(to_json(InvocationList((InvocationView.of(INVOCATION),)))))
    assert InvocationView.from_json(listed["invocations"][0]) == InvocationView.of(INVOCATION)
    newer = {**answer, "log": [{**answer["log"][0], "kind": "a-kind-from-the-future"}]}
    assert InvocationWithLog.from_json(newer).log[0].kind is LogKind.INFO
    with pytest.raises(KeyError):
        InvocationView.from_json({"id": "1"})
    with pytest.raises(ValueError):
        InvocationView.from_json({**answer, "status": "SLEEPING"})


COMMIT = "d" * 40
EMITTED = Trigger(
    f"r/+/refs/heads/main@{COMMIT}",
    "chromium/y",
    1_657_456_314_000_000_000,
    TriggerRequest(
        "chromium/y",
        GitilesTrigger("r", "refs/heads/main", COMMIT),
        request_id=f"r/+/refs/heads/main@{COMMIT}",
        title=COMMIT,
        url=f"r/+/{COMMIT}",
        commit_time_ns=1_657_000_000_000_000_000,
    ),
)
EMITTER = INVOCATION.evolve(
    triggers=(EMITTED.evolve(job_id="chromium/x").incoming(),),
    emitted_triggers=(
        EMITTED,
        Trigger("chromium/x:42:1", "chromium/z", 1, TriggerRequest("chromium/z", request_id="n")),
    ),
)


def matches_openapi(answer: dict[str, Any], view: type) -> bool:
    document_ = document()
    schema = {
        "$ref": f"#/components/schemas/{view.__name__}",
        "components": document_["components"],
    }
    return jsonschema_rs.validator_for(schema).is_valid(answer)


def test_an_invocation_lists_the_triggers_it_emitted_and_their_commits() -> None:
    shown = InvocationWithLog.of_logged(EMITTER, ENTRIES)
    answer = json.loads(json.dumps(to_json(shown)))
    assert answer["triggers"] == [
        {
            "id": f"r/+/refs/heads/main@{COMMIT}",
            "created": "2022-07-10T12:31:54Z",  # when it came, not the commit's time
            "title": COMMIT,
            "url": f"r/+/{COMMIT}",
            "commit_time": "2022-07-05T05:46:40Z",
        }
    ]
    assert answer["emitted_triggers"] == [
        {
            "id": f"r/+/refs/heads/main@{COMMIT}",
            "job": "chromium/y",
            "created": "2022-07-10T12:31:54Z",
            "title": COMMIT,
            "url": f"r/+/{COMMIT}",
            "commit_time": "2022-07-05T05:46:40Z",
        },
        {
            "id": "chromium/x:42:1",
            "job": "chromium/z",
            "created": "1970-01-01T00:00:00.000000001Z",
            "title": None,
            "url": None,
            "commit_time": None,
        },
    ]
    assert list(answer)[-2:] == ["emitted_triggers", "log"]
    assert InvocationWithLog.from_json(answer) == shown
    assert matches_openapi(answer, InvocationWithLog)
    assert not matches_openapi({**answer, "emitted_triggers": [{"id": "x"}]}, InvocationWithLog)
    listed = to_json(InvocationView.of(EMITTER))
    assert "emitted_triggers" not in listed and matches_openapi(listed, InvocationView)
    # An older server's answer: no emitted triggers, triggers without titles.
    older = {k: v for k, v in answer.items() if k != "emitted_triggers"}
    older["triggers"] = [{"id": "t", "created": "2022-07-10T12:31:54Z"}]
    read = InvocationWithLog.from_json(older)
    assert read.emitted_triggers == () and read.triggers[0].title is None


@pytest.mark.parametrize(
    "view", [InvocationView, InvocationWithLog, LogLine, InvocationList, TriggerRef, EmittedTrigger]
)
def test_the_openapi_schemas_are_the_views(view: type) -> None:
    schemas = document()["components"]["schemas"]
    schema = schemas[view.__name__]
    names = [f.name for f in dataclasses.fields(view)]
    assert list(schema["properties"]) == names
    assert schema["required"] == names  # every field is in every answer, null or not
    assert schemas["Status"]["enum"] == [s.value for s in Status]
    assert schemas["LogKind"]["enum"] == [k.value for k in LogKind]


def test_openapi_does_not_import_web_and_functions_do_not_import_pydantic() -> None:
    code = (
        "import sys; sys.path.insert(0, 'functions'); import main, shepherd.service; "
        "print('pydantic' in sys.modules); import shepherd.openapi; "
        "print('pydantic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
    source = (document.__code__.co_filename, "r")
    assert "from .web" not in open(source[0]).read()  # noqa: SIM115


REPO = "https://chromium.googlesource.com/chromium/src"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"job": 5}, "job: Input should be a valid string"),
        ({"job": ""}, "job: String should have at least 1 character"),
        ({"job": "a/b", "tags": "a:b"}, "tags: Input should be a valid list"),
        ({"job": "a/b", "tags": [1]}, "tags.0: Input should be a valid string"),
        ({"job": "a/b", "tags": ["x"]}, 'tags: tag "x" must be "key:value"'),
        ({"job": "a/b", "gitiles": {"repo": REPO}}, "gitiles.ref: Field required"),
        (
            {"job": "a/b", "gitiles": {"repo": REPO, "ref": "r", "revision": "v", "z": 1}},
            "gitiles.z",
        ),
        ({"job": "a/b", "gitiles": {"repo": "x"}}, "gitiles.repo: only https scheme"),
        ({"job": "a/b", "surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"job": "a/b", "request_id": "x" * 201}, "request_id: String should have at most 200"),
        ({"job": "a/b", "properties": {"a": [[[]]] * 1, "b": 1}}, None),
        ({"job": "a/b", "properties": {"a": json.loads("[" * 40 + "]" * 40)}}, "deeper than 32"),
        ({"job": "a/b", "properties": []}, "properties: Input should be a valid dictionary"),
        ([], "Input should be a valid dictionary"),
    ],
)
def test_trigger_bodies_are_refused_with_the_field_and_reason(
    body: Any, message: str | None
) -> None:
    if message is None:
        assert TriggerBody.model_validate(body).job == "a/b"
        return
    with pytest.raises(ValidationError) as error:
        TriggerBody.model_validate(body)
    assert message in str(error.value)


def test_queue_and_push_bodies_ignore_extra_fields_and_read_aliases() -> None:
    timer = TimerBody.model_validate({"invocation_id": "7", "timer_id": "t", "name": "n", "x": 1})
    assert timer == TimerBody("7", "t", "n")
    with pytest.raises(ValidationError, match="invocation_id: String should match pattern"):
        TimerBody.model_validate({"invocation_id": "7x", "timer_id": "t", "name": "n"})
    pushed = PushedMessage.model_validate({"data": "", "messageId": "9", "publishTime": "t"})
    assert pushed.message_id == "9" and pushed.attributes == {}
    with pytest.raises(ValidationError, match=r"attributes\.k: Input should be a valid string"):
        PushedMessage.model_validate({"attributes": {"k": 1}})
