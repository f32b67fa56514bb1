"""Issue 13, findings 1–3: what real Buildbucket refuses, the simulator refuses, and shepherd
refuses it first at its edges, with a 400 (or a one-line CLI error) saying how to fix it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from localstack import BUILDSET, JOB, DevProcess
from shepherd.clock import VirtualClock
from shepherd.debuglog import DebugLog
from shepherd.grpc_codes import Code, RpcError
from shepherd.model import GitilesTrigger, IncomingTrigger, TriggerRequest
from shepherd.tasks.buildbucket import BuildbucketConfig, build_schedule_request
from shepherd_tools.simulator import validation, wire
from shepherd_tools.simulator.control import SimulatorProcess
from shepherd_tools.simulator.pb.buildbucket.proto import builds_service_pb2
from shepherd_tools.simulator.server import Simulator

pytestmark = pytest.mark.stack

REPO = "https://chromium.googlesource.com/chromium/src"
REV = "3ce3f1d71a1492176d69ed432d5cfa7b95be4a3e"
BUILDER = {"project": "chromium", "bucket": "ci", "builder": "Windows deterministic"}
PRPC = "/prpc/buildbucket.v2.Builds/"
TOPIC = "projects/shepherd/topics/builds"


def schedule_request(trigger: TriggerRequest) -> dict[str, Any]:
    cfg = BuildbucketConfig(server="cr-buildbucket.appspot.com", bucket="ci", builder="b")
    return build_schedule_request(
        cfg,
        job_id=JOB,
        invocation_id=1,
        triggers=[IncomingTrigger("1", trigger)],
        app_id="shepherd",
        debug_log=DebugLog(VirtualClock(0)),
    )


def refused_by_buildbucket(request: dict[str, Any]) -> str | None:
    """What Buildbucket answers the request with: None when it accepts it."""
    try:
        message = wire.decode(
            json.loads(json.dumps(request)), builds_service_pb2.ScheduleBuildRequest
        )
    except RpcError as e:
        return e.message
    return validation.validate_schedule(message)


# --- finding 1: a buildset tag and no gitiles_ref -------------------------------------


def test_the_simulator_refuses_a_commit_without_ref() -> None:
    sim = Simulator({"clock": "manual"})
    commit = {"host": "chromium.googlesource.com", "project": "chromium/src", "id": REV}
    with pytest.raises(RpcError) as refused:
        sim.schedule_build({"builder": BUILDER, "gitilesCommit": commit})
    assert (refused.value.code, refused.value.message) == (
        Code.INVALID_ARGUMENT,
        "gitiles_commit: ref is required",
    )
    assert sim.state()["builds"] == []
    assert sim.schedule_build({"builder": BUILDER, "gitilesCommit": commit | {"ref": "refs/x"}})


def test_the_readme_trigger_is_refused_at_trigger_with_how_to_fix_it(dev: DevProcess) -> None:
    response = dev.http.post(dev.url + "/trigger", json={"job": JOB, "tags": [BUILDSET]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert BUILDSET in error
    assert "gitiles_ref:refs/heads/" in error
    assert '"gitiles"' in error


def test_buildset_with_gitiles_ref_runs_against_the_strict_simulator(dev: DevProcess) -> None:
    invocation_id = dev.trigger(tags=[BUILDSET, "gitiles_ref:main"])
    inv = dev.wait_for(invocation_id, {"RUNNING", "SUCCEEDED", "FAILED"})
    assert inv["status"] != "FAILED", dev.log_lines(invocation_id)
    assert inv["build_id"]


def test_a_gitiles_trigger_gives_any_buildset_tag_a_ref(dev: DevProcess) -> None:
    # As LUCI's RequestBuilder does, a gitiles trigger's own buildset and gitiles_ref tags come
    # before the given ones: the commit has the trigger's ref whatever buildset tag is added.
    gitiles = {"repo": REPO, "ref": "refs/heads/main", "revision": REV}
    body = {"job": JOB, "tags": [BUILDSET], "gitiles": gitiles}
    response = dev.http.post(dev.url + "/trigger", json=body)
    assert response.status_code == 202, response.text
    invocation_id = response.json()["invocation_id"]
    inv = dev.wait_for(invocation_id, {"RUNNING", "SUCCEEDED", "FAILED"})
    assert inv["status"] != "FAILED", dev.log_lines(invocation_id)


def test_a_repo_the_launch_would_refuse_is_refused_at_trigger(dev: DevProcess) -> None:
    gitiles = {"repo": "https://github.com/x/y", "ref": "refs/heads/main", "revision": REV}
    response = dev.http.post(dev.url + "/trigger", json={"job": JOB, "gitiles": gitiles})
    assert response.status_code == 400
    assert "only .googlesource.com repos are supported" in response.json()["error"]


# --- finding 2: refs are normalised as LUCI does ---------------------------------------


@pytest.mark.parametrize(
    ("ref", "sent"),
    [("main", "refs/heads/main"), ("refs/heads/main", "refs/heads/main"), ("refs/x", "refs/x")],
)
def test_a_short_gitiles_ref_is_sent_as_refs_heads(ref: str, sent: str) -> None:
    request = schedule_request(TriggerRequest(JOB, gitiles=GitilesTrigger(REPO, ref, REV)))
    assert request["gitilesCommit"]["ref"] == sent
    assert refused_by_buildbucket(request) is None


def test_every_readme_trigger_makes_a_request_buildbucket_accepts() -> None:
    tag_ref = "gitiles_ref:refs/heads/main"
    for trigger in (
        TriggerRequest(JOB, tags=(BUILDSET, tag_ref)),
        TriggerRequest(JOB, gitiles=GitilesTrigger(REPO, "main", REV)),
        TriggerRequest(JOB, properties={"key": "value"}),
    ):
        assert refused_by_buildbucket(schedule_request(trigger)) is None


# --- finding 3: NaN, Infinity and 1e400 ------------------------------------------------


@pytest.mark.parametrize(
    "number", ["NaN", "Infinity", "-Infinity", "1e400", "[1, -1e999]", "1" + "0" * 400]
)
def test_non_finite_numbers_are_refused_at_trigger(dev: DevProcess, number: str) -> None:
    raw = f'{{"job": "{JOB}", "properties": {{"x": {number}}}}}'
    response = dev.http.post(
        dev.url + "/trigger", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "NaN, Infinity" in response.json()["error"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "1e400", "-1" + "0" * 400])
def test_the_simulator_cannot_decode_a_non_finite_number(
    sim: SimulatorProcess, number: str
) -> None:
    raw = f'{{"builder": {json.dumps(BUILDER)}, "properties": {{"x": {number}}}}}'
    response = httpx.post(
        sim.url + PRPC + "ScheduleBuild",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.headers["X-Prpc-Grpc-Code"] == str(int(Code.INVALID_ARGUMENT))
    assert response.text.startswith("could not decode body: ")


def test_job_properties_must_be_finite() -> None:
    with pytest.raises(ValueError, match="NaN, Infinity"):
        BuildbucketConfig.model_validate(
            {"server": "h.example.com", "bucket": "ci", "builder": "b", "properties": {"x": 1e400}}
        )


@pytest.mark.parametrize("value", ["NaN", "1e400", "-Infinity", '{"a": [NaN]}', "9" * 400])
def test_cli_property_gives_one_line_error(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shepherd_tools.cli", "trigger", JOB, "--property", f"x={value}",
         "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"shepherd: property x={value}: JSON (so Buildbucket) has no")


# --- the wire: strict like the protos --------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"builder": BUILDER, "gitilesComit": {}}, "gitilesComit"),  # a misspelt field
        ({"builder": BUILDER, "priority": "high"}, "priority"),
        ({"builder": {**BUILDER, "colour": "red"}}, "colour"),
        ({"builder": BUILDER, "canOutliveParent": "MAYBE"}, "MAYBE"),
        ({"builder": BUILDER, "notify": {"pubsubTopic": TOPIC, "userData": "no!"}}, "userData"),
        ({"builder": BUILDER, "requestId": 1, "requestId ": 2}, "requestId "),
    ],
)
def test_unknown_fields_and_bad_values_cannot_be_decoded(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(RpcError) as refused:
        Simulator({"clock": "manual"}).schedule_build(body)
    assert refused.value.code is Code.INVALID_ARGUMENT
    assert refused.value.message.startswith("could not decode body: ")
    assert message in refused.value.message


def test_batch_answers_each_request(sim: SimulatorProcess) -> None:
    sim.configure({"clock": "manual"})
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        build = json.loads(http.post(PRPC + "ScheduleBuild", json={"builder": BUILDER}).content[5:])
        body = {
            "requests": [
                {"getBuild": {"id": build["id"]}},
                {"getBuild": {"id": "1"}},
                {"cancelBuild": {"id": build["id"]}},
                {"cancelBuild": {"id": build["id"], "summaryMarkdown": "stop"}},
            ]
        }
        response = http.post(PRPC + "Batch", json=body)
    assert response.status_code == 200, response.text
    first, missing, no_summary, canceled = json.loads(response.content[5:])["responses"]
    assert first == {"getBuild": build}
    assert missing["error"]["code"] == int(Code.NOT_FOUND)
    assert no_summary == {
        "error": {"code": int(Code.INVALID_ARGUMENT), "message": "summary_markdown is required"}
    }
    assert canceled["cancelBuild"]["status"] == "CANCELED"
