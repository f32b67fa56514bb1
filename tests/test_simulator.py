"""The Buildbucket simulator, driven over real HTTP in a subprocess."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from google.protobuf import json_format

from shepherd.durations import parse_duration
from shepherd.grpc_codes import Code, RpcError
from shepherd.timestamps import format_rfc3339, parse_rfc3339
from shepherd_tools.simulator.server import Simulator
from shepherd_tools.simulator.wire import large_fields

PRPC = "/prpc/buildbucket.v2.Builds/"
C = parse_rfc3339("2022-07-10T12:31:54.345221254Z")
BUILDER = {"project": "chromium", "bucket": "ci", "builder": "Windows deterministic"}
COMMIT = {
    "host": "chromium.googlesource.com",
    "project": "chromium/src",
    "id": "3ce3f1d71a1492176d69ed432d5cfa7b95be4a3e",
    "ref": "refs/heads/main",
}
TOPIC = "projects/shepherd/topics/builds"
USER_DATA = base64.b64encode(b"job-42").decode()


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shepherd_tools.simulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on http://127.0.0.1:"), line
    return proc, line.removeprefix("listening on ").strip()


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc, url = start()
    yield url
    stop(proc)


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10) as client:
        yield client


def configure(http: httpx.Client, **config: Any) -> None:
    response = http.post("/sim/config", json=config)
    assert response.status_code == 200, response.text
    assert response.json() == {}


def manual(http: httpx.Client, **config: Any) -> None:
    configure(http, clock="manual", start_ns=C, **config)


def rpc(http: httpx.Client, method: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(PRPC + method, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["X-Prpc-Grpc-Code"] == "0"
    assert response.headers["Content-Type"] == "application/json"
    assert response.content.startswith(b")]}'\n")
    return json.loads(response.content[5:])


def rpc_error(http: httpx.Client, method: str, body: Any) -> tuple[Code, int, str]:
    response = http.post(PRPC + method, json=body)
    assert response.headers["Content-Type"] == "text/plain"
    assert response.text.endswith("\n")
    return Code(int(response.headers["X-Prpc-Grpc-Code"])), response.status_code, response.text


def schedule(http: httpx.Client, **extra: Any) -> dict[str, Any]:
    return rpc(http, "ScheduleBuild", {"builder": BUILDER, **extra})


def second_large(message: dict[str, Any]) -> str:
    large = message["data"]["buildPubsub"]["buildLargeFields"]
    assert zlib.decompress(base64.b64decode(large))  # a serialized Build, zlib-compressed
    return large


def advance(http: httpx.Client, to_ns: int) -> dict[str, Any]:
    response = http.post("/sim/advance", json={"to_ns": to_ns})
    assert response.status_code == 200, response.text
    return response.json()


def test_server_info_and_unknown_paths(http: httpx.Client) -> None:
    info = http.get("/auth/api/v1/server/info")
    assert info.json() == {
        "app_id": "cr-buildbucket",
        "service_account_name": "cr-buildbucket@appspot.gserviceaccount.com",
    }
    assert http.get("/nope").status_code == 404
    assert http.post("/sim/nope", json={}).status_code == 404


def test_schedule_build_wire_format_ids_and_numbers(http: httpx.Client) -> None:
    manual(http)
    build = schedule(http, requestId="r1", gitilesCommit=COMMIT, tags=[{"key": "k", "value": "v"}])
    created = format_rfc3339(C)
    assert list(build) == [
        "id",
        "builder",
        "number",
        "createdBy",
        "createTime",
        "updateTime",
        "status",
        "input",
    ]
    assert build == {
        "id": "8809024803687588913",
        "builder": BUILDER,
        "number": 1,
        "createdBy": "project:chromium",
        "createTime": created,
        "updateTime": created,
        "status": "SCHEDULED",
        "input": {"gitilesCommit": COMMIT},
    }
    second = schedule(http, requestId="r2")
    assert (second["id"], second["number"]) == ("8809024803687588912", 2)
    assert "input" not in second
    other = rpc(http, "ScheduleBuild", {"builder": {**BUILDER, "builder": "Linux"}})
    assert (other["id"], other["number"]) == ("8809024803687588911", 1)


def test_configured_first_id_and_number(http: httpx.Client) -> None:
    manual(http, first_build_id=100, first_build_number=7)
    assert (schedule(http)["id"], schedule(http)["number"]) == ("100", 8)


def test_request_id_deduplicates(http: httpx.Client) -> None:
    manual(http)
    first = schedule(http, requestId="same")
    again = schedule(http, requestId="same")
    assert again == first
    state = http.get("/sim/state").json()
    assert len(state["builds"]) == 1
    assert state["calls"] == {"ScheduleBuild": 2, "GetBuild": 0, "CancelBuild": 0, "Batch": 0}


def test_lifecycle_in_manual_mode_with_notifications(http: httpx.Client) -> None:
    script = [
        {"status": "SCHEDULED", "for": "9m47s"},
        {"status": "STARTED", "for": "5h36m"},
        {"status": "SUCCESS"},
    ]
    manual(http, scripts={"Windows deterministic": script})
    build = schedule(
        http,
        notify={"pubsubTopic": TOPIC, "userData": USER_DATA},
        properties={"x": 1.5, "nested": {"y": ["z"]}},
    )
    started = C + parse_duration("9m47s")
    ended = started + parse_duration("5h36m")

    early = advance(http, C + parse_duration("1m"))
    assert early == {"now_ns": C + parse_duration("1m"), "published": [], "next_event_ns": started}

    done = advance(http, ended + parse_duration("1h"))
    assert done["now_ns"] == ended + parse_duration("1h")
    assert done["next_event_ns"] is None
    final = rpc(http, "GetBuild", {"id": build["id"]})
    assert final == {
        **{k: build[k] for k in ("id", "builder", "number", "createdBy", "createTime")},
        "startTime": format_rfc3339(started),
        "endTime": format_rfc3339(ended),
        "updateTime": format_rfc3339(ended),
        "status": "SUCCESS",
    }
    assert list(final)[5:8] == ["startTime", "endTime", "updateTime"]

    first, second = done["published"]
    assert first["data"]["userData"] == USER_DATA
    assert first["data"]["buildPubsub"]["build"]["status"] == "STARTED"
    assert first["data"]["buildPubsub"]["build"]["startTime"] == format_rfc3339(started)
    assert "endTime" not in first["data"]["buildPubsub"]["build"]
    assert first["attributes"] == {**BUILDER, "is_completed": "false", "version": "v2"}
    assert first["publishTime"] == format_rfc3339(started)
    # As notification.go makes it: input properties move into zlib-compressed buildLargeFields.
    # Its input stays, emptied, as Go's protojson writes a non-nil empty message; the build's
    # tags (not in GetBuild's default fields) come along.
    tags = [{"key": "builder", "value": "Windows deterministic"}]
    assert second["data"] == {
        "buildPubsub": {
            "build": final | {"tags": tags, "input": {}},
            "buildLargeFields": second_large(second),
        },
        "userData": USER_DATA,
    }
    large = json_format.MessageToDict(large_fields(second["data"]))
    assert large == {"input": {"properties": {"x": 1.5, "nested": {"y": ["z"]}}}, "output": {}}
    assert second["attributes"]["is_completed"] == "true"
    assert int(second["messageId"]) > int(first["messageId"])
    assert advance(http, ended + parse_duration("2h"))["published"] == []


def test_advance_refusals(http: httpx.Client) -> None:
    manual(http)
    advance(http, C + 10)
    back = http.post("/sim/advance", json={"to_ns": C})
    assert back.status_code == 400
    assert "error" in back.json()
    configure(http)
    assert http.post("/sim/advance", json={"to_ns": C}).status_code == 409


def test_bad_config_is_refused(http: httpx.Client) -> None:
    for bad in (
        {"clock": "sundial"},
        {"script": [{"status": "SCHEDULED"}, {"status": "SUCCESS"}]},
        {"script": [{"status": "SCHEDULED", "for": "soon"}, {"status": "SUCCESS"}]},
        {"faults": [{"method": "GetBuild", "code": "NOPE"}]},
        {"drop_notifications": 2},
        {"colour": "blue"},
    ):
        response = http.post("/sim/config", json=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]


def test_unavailable_fault_twice_then_success(http: httpx.Client) -> None:
    manual(http, faults=[{"method": "ScheduleBuild", "code": "UNAVAILABLE", "times": 2}])
    for _ in range(2):
        code, status, _ = rpc_error(http, "ScheduleBuild", {"builder": BUILDER})
        assert (code, status) == (Code.UNAVAILABLE, 503)
    assert http.get("/sim/state").json()["builds"] == []
    response = http.post(PRPC + "ScheduleBuild", json={"builder": BUILDER})
    assert response.headers["X-Prpc-Grpc-Code"] == "0"
    state = http.get("/sim/state").json()
    assert len(state["builds"]) == 1
    assert state["calls"]["ScheduleBuild"] == 3


def test_fault_header_is_fourteen(http: httpx.Client) -> None:
    manual(http, faults=[{"method": "GetBuild", "code": "UNAVAILABLE", "times": 1}])
    response = http.post(PRPC + "GetBuild", json={"id": "1"})
    assert response.headers["X-Prpc-Grpc-Code"] == "14"
    assert response.status_code == 503


def test_a_build_gets_its_tags_as_schedule_build_sets_them(http: httpx.Client) -> None:
    manual(http)
    tags = [{"key": "user_agent", "value": "shepherd"}, {"key": "a", "value": "1"}]
    schedule(http, gitilesCommit=COMMIT, tags=tags)
    schedule(http, gitilesCommit={k: v for k, v in COMMIT.items() if k != "id"}, requestId="2")
    with_id, without_id = [b["tags"] for b in http.get("/sim/state").json()["builds"]]
    assert with_id == [
        {"key": "a", "value": "1"},
        {"key": "builder", "value": "Windows deterministic"},
        {
            "key": "buildset",
            "value": f"commit/gitiles/{COMMIT['host']}/{COMMIT['project']}/+/{COMMIT['id']}",
        },
        {"key": "gitiles_ref", "value": "refs/heads/main"},
        {"key": "user_agent", "value": "shepherd"},
    ]
    assert [t["key"] for t in without_id] == ["builder", "gitiles_ref"]  # no id: no buildset


def test_cancel_build(http: httpx.Client) -> None:
    manual(http)
    build = schedule(http, notify={"pubsubTopic": TOPIC})
    assert len(advance(http, C + parse_duration("1500ms"))["published"]) == 1
    canceled = rpc(http, "CancelBuild", {"id": build["id"], "summaryMarkdown": "stop"})
    now = format_rfc3339(C + parse_duration("1500ms"))
    assert canceled["status"] == "CANCELED"
    assert (canceled["endTime"], canceled["updateTime"]) == (now, now)
    assert canceled["startTime"] == format_rfc3339(C + parse_duration("1s"))
    later = advance(http, C + parse_duration("1h"))
    (message,) = later["published"]
    assert message["attributes"]["is_completed"] == "true"
    assert message["data"] == {
        "buildPubsub": {
            "build": canceled | {"tags": [{"key": "builder", "value": "Windows deterministic"}]},
            "buildLargeFields": second_large(message),
        }
    }
    assert later["next_event_ns"] is None
    assert rpc(http, "CancelBuild", {"id": build["id"], "summaryMarkdown": "again"}) == canceled
    code, status, text = rpc_error(http, "CancelBuild", {"id": build["id"]})
    assert (code, status, text) == (Code.INVALID_ARGUMENT, 400, "summary_markdown is required\n")
    assert rpc(http, "GetBuild", {"id": build["id"]}) == canceled


def test_error_codes(http: httpx.Client) -> None:
    manual(http)
    code, status, text = rpc_error(http, "GetBuild", {"id": "12345"})
    assert (code, status) == (Code.NOT_FOUND, 404)
    assert text.startswith('requested resource not found or "user:')
    assert text.endswith('" does not have permission to view it\n')
    assert rpc_error(http, "ScheduleBuild", {})[:2] == (Code.INVALID_ARGUMENT, 400)
    assert rpc_error(http, "SearchBuilds", {})[:2] == (Code.UNIMPLEMENTED, 501)
    assert http.get("/sim/state").json()["builds"] == []


def test_unexpected_status_names_and_drop_and_duplicate(http: httpx.Client) -> None:
    script = [{"status": "SCHEDULED", "for": "1s"}, {"status": "ENDED_MASK"}]
    manual(http, script=script, duplicate_notifications=True)
    build = schedule(http, notify={"pubsubTopic": TOPIC})
    out = advance(http, C + parse_duration("5s"))
    assert rpc(http, "GetBuild", {"id": build["id"]})["status"] == "ENDED_MASK"
    assert len(out["published"]) == 2
    assert out["published"][0] == out["published"][1]
    assert out["published"][0]["attributes"]["is_completed"] == "true"  # protoutil.IsEnded

    manual(http, drop_notifications=1)
    schedule(http, notify={"pubsubTopic": TOPIC})
    assert advance(http, C + parse_duration("1m"))["published"] == []


def test_latency_in_real_clock_mode(http: httpx.Client) -> None:
    configure(http, latency="300ms")
    began = time.monotonic()
    schedule(http)
    assert time.monotonic() - began >= 0.3


class Sink(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.bodies: list[dict[str, Any]] = []
        self.hits = 0


class SinkHandler(BaseHTTPRequestHandler):
    server: Sink

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.hits += 1
        status = 503 if self.server.hits == 1 else 204
        if status == 204:
            self.server.bodies.append(body)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_real_clock_pushes_to_sink(http: httpx.Client, sink: Sink) -> None:
    script = [
        {"status": "SCHEDULED", "for": "100ms"},
        {"status": "STARTED", "for": "150ms"},
        {"status": "FAILURE"},
    ]
    sink_url = f"http://127.0.0.1:{sink.server_address[1]}/push"
    configure(http, script=script, sink_url=sink_url)
    build = schedule(http, notify={"pubsubTopic": TOPIC, "userData": USER_DATA})
    deadline = time.monotonic() + 10
    while len(sink.bodies) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.hits == 3, "the first push was answered 503 and must be retried"
    pushed = [b["message"] for b in sink.bodies]
    assert {b["subscription"] for b in sink.bodies} == {"projects/sim/subscriptions/builds"}
    data = [json.loads(base64.b64decode(m["data"])) for m in pushed]
    builds = [d["buildPubsub"]["build"] for d in data]
    assert [b["status"] for b in builds] == ["STARTED", "FAILURE"]
    assert {d["userData"] for d in data} == {USER_DATA}
    assert [m["attributes"]["is_completed"] for m in pushed] == ["false", "true"]
    created = parse_rfc3339(build["createTime"])
    assert parse_rfc3339(builds[1]["startTime"]) - created == parse_duration("100ms")
    assert parse_rfc3339(builds[1]["endTime"]) - created == parse_duration("250ms")
    outbox = http.get("/sim/outbox").json()
    assert [m["messageId"] for m in outbox["published"]] == [m["messageId"] for m in pushed]
    assert [m["data"] for m in outbox["published"]] == data
    assert http.get("/sim/outbox").json()["published"] == []


def test_sigterm_exits_cleanly() -> None:
    proc, url = start()
    assert httpx.get(url + "/sim/state").status_code == 200
    code, err = stop(proc)
    assert (code, err) == (0, "")


def test_simulator_without_sockets() -> None:
    sim = Simulator({"clock": "manual", "start_ns": C})
    build = sim.schedule_build({"builder": BUILDER, "notify": {"pubsubTopic": TOPIC}})
    with pytest.raises(RpcError) as error:
        sim.get_build({"id": "1"})
    assert error.value.code is Code.NOT_FOUND
    out = sim.advance(C + parse_duration("3s"))
    assert [m["data"]["buildPubsub"]["build"]["status"] for m in out["published"]] == [
        "STARTED",
        "SUCCESS",
    ]
    assert sim.get_build({"id": build["id"]})["endTime"] == format_rfc3339(C + parse_duration("3s"))
