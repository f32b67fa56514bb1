"""End to end over real HTTP: the simulator and `shepherd dev` as processes, status checks 1-2 s."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from localstack import FINAL, JOB, LONG, QUICK, SECRET, DevProcess, write_jobs
from shepherd.auth import TIMER_TOKEN_HEADER, timer_token
from shepherd.signing import TokenSigner
from shepherd_tools.simulator.control import SimulatorProcess

pytestmark = pytest.mark.stack

TIMER_HEADERS = {TIMER_TOKEN_HEADER: timer_token(SECRET.encode())}


def configure(sim: SimulatorProcess, dev: DevProcess, **config: Any) -> None:
    """The simulator publishes to the build's topic on the stack's embedded Pub/Sub."""
    sim.configure({"publish_url": dev.url, **config})


def signed(invocation_id: str) -> dict[str, Any]:
    token = TokenSigner(SECRET.encode()).sign(JOB, int(invocation_id))
    return {"buildPubsub": {"build": {}}, "userData": base64.b64encode(token.encode()).decode()}


@pytest.mark.parametrize(
    ("build_status", "final"),
    [
        ("SUCCESS", "SUCCEEDED"),
        ("FAILURE", "FAILED"),
        ("INFRA_FAILURE", "FAILED"),
        ("CANCELED", "ABORTED"),
    ],
)
def test_build_outcomes(
    sim: SimulatorProcess, dev: DevProcess, build_status: str, final: str
) -> None:
    configure(sim, dev, script=[*QUICK, {"status": build_status}])
    invocation_id = dev.trigger()
    inv = dev.wait_for(invocation_id, FINAL)
    assert inv["status"] == final
    assert inv["build_id"] == sim.state()["builds"][0]["id"]
    assert inv["view_url"] == f"{sim.url}/build/{inv['build_id']}"
    lines = dev.log_lines(invocation_id)
    assert lines[0] == "New invocation is queued and will start shortly"
    assert lines[1] == "Starting the invocation (attempt 1)"
    assert any(line.startswith("Scheduled build:\n") for line in lines)
    # Published to the build's topic and pushed by the embedded Pub/Sub before any timer fires.
    received = next(i for i, line in enumerate(lines) if line.startswith("Received PubSub"))
    timers = [i for i, line in enumerate(lines) if line.startswith("Handling timer")]
    assert not timers or received < timers[0]
    assert lines[-2].startswith("Build:\n") and f'"status": "{build_status}"' in lines[-2]
    assert lines[-1].endswith(f"with status {final}")
    calls = sim.state()["calls"]
    assert calls["ScheduleBuild"] == 1
    # The default policy trusts the build a notification carries: GetBuild only on timers.
    assert calls["GetBuild"] == sum(line.startswith("Handling timer") for line in lines)
    assert "Received PubSub notification with the build as of " in lines[received]
    log_text = dev.http.get(f"{dev.url}/api/invocations/{invocation_id}/log")
    assert log_text.headers["content-type"].startswith("text/plain")
    assert log_text.text.splitlines()[0].endswith(
        "] New invocation is queued and will start shortly"
    )


def test_a_buildbucket_like_server_can_push_straight_to_the_function(
    sim: SimulatorProcess, dev: DevProcess
) -> None:
    sim.configure(
        {"sink_url": dev.url + "/on-build-notification", "script": [*QUICK, {"status": "SUCCESS"}]}
    )
    invocation_id = dev.trigger()
    assert dev.wait_for(invocation_id, FINAL)["status"] == "SUCCEEDED"
    lines = dev.log_lines(invocation_id)
    assert any(line.startswith("Received PubSub notification") for line in lines)


def test_embedded_pubsub_publishes_only_to_prepared_topics(dev: DevProcess) -> None:
    message = {"messages": [{"data": base64.b64encode(b"{}").decode(), "attributes": {}}]}
    unknown = dev.http.post(dev.url + "/v1/projects/x/topics/never-prepared:publish", json=message)
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"
    malformed = dev.http.post(dev.url + "/v1/projects/x/topics/t:publish", json={"messages": 3})
    assert malformed.status_code == 400


def test_timers_alone_finish_when_notifications_are_lost(
    sim: SimulatorProcess, dev: DevProcess
) -> None:
    configure(sim, dev, script=[*QUICK, {"status": "SUCCESS"}], drop_notifications=1.0)
    invocation_id = dev.trigger()
    assert dev.wait_for(invocation_id, FINAL)["status"] == "SUCCEEDED"
    lines = dev.log_lines(invocation_id)
    assert not any(line.startswith("Received PubSub notification") for line in lines)
    assert lines[-3].startswith('Handling timer "check-buildbucket-build-status"')
    calls = sim.state()["calls"]
    assert calls["ScheduleBuild"] == 1
    assert calls["GetBuild"] == sum(line.startswith("Handling timer") for line in lines)


def test_duplicated_and_reordered_notifications_change_nothing_twice(
    sim: SimulatorProcess, dev: DevProcess
) -> None:
    configure(sim, dev, script=[*QUICK, {"status": "SUCCESS"}], duplicate_notifications=True)
    invocation_id = dev.trigger()
    assert dev.wait_for(invocation_id, FINAL)["status"] == "SUCCEEDED"
    time.sleep(0.5)  # let the last duplicate land
    lines = dev.log_lines(invocation_id)
    assert sum(line.startswith("Build:\n") for line in lines) == 1
    assert sum(line.startswith("Invocation finished") for line in lines) == 1
    published = dev.http.get(sim.url + "/sim/outbox").json()["published"]
    assert len(published) == 4  # STARTED and SUCCESS, each twice
    for message in reversed(published):
        assert dev.push(message["data"], message["messageId"]).status_code == 200
    assert dev.log_lines(invocation_id) == lines


def test_forged_and_malformed_notifications_are_acknowledged_and_ignored(
    sim: SimulatorProcess, dev: DevProcess
) -> None:
    configure(sim, dev, script=LONG)
    invocation_id = dev.trigger()
    dev.wait_for(invocation_id, {"RUNNING"})
    before = dev.invocation(invocation_id)
    forged = TokenSigner(b"not-the-real-secret-at-all").sign(JOB, int(invocation_id))
    bodies: list[Any] = [
        {"userData": base64.b64encode(forged.encode()).decode()},
        {"userData": "!!!"},
        {"build": {}, "user_data": "x.y"},
        b"\xff\xfe not json",
        ["a", "list"],
        signed("123456789"),  # a real signature, for an invocation that does not exist
    ]
    for body in bodies:
        assert dev.push(body).status_code == 200
    bad_base64 = {"message": {"data": "%%%", "messageId": "1"}, "subscription": "s"}
    assert dev.http.post(dev.url + "/on-build-notification", json=bad_base64).status_code == 200
    after = dev.invocation(invocation_id)
    assert (after["status"], after["log"]) == ("RUNNING", before["log"][: len(after["log"])])
    assert all("notification" not in line["text"] for line in after["log"][len(before["log"]) :])


def test_notification_for_a_starting_invocation_is_retried_not_lost(
    sim: SimulatorProcess, dev: DevProcess
) -> None:
    # ScheduleBuild answers only after 1.5 s: the invocation stays STARTING meanwhile.
    configure(sim, dev, script=LONG, latency="1500ms")
    invocation_id = dev.trigger()
    dev.wait_for(invocation_id, {"STARTING"})
    early = dev.push(signed(invocation_id))
    assert early.status_code == 503, early.text
    dev.wait_for(invocation_id, {"RUNNING"})
    count = len(dev.log_lines(invocation_id))
    # The redelivery; another 503 only if it raced with the simulator's own notification.
    statuses = [dev.push(signed(invocation_id)).status_code for _ in range(1)]
    while statuses[-1] == 503 and len(statuses) < 20:
        time.sleep(0.2)
        statuses.append(dev.push(signed(invocation_id)).status_code)
    assert statuses[-1] == 200, statuses
    lines = dev.log_lines(invocation_id)
    assert any(line.startswith("Received PubSub notification") for line in lines[count:])


def test_concurrent_notifications_and_timers_give_one_consistent_log(
    sim: SimulatorProcess, dev: DevProcess
) -> None:
    configure(sim, dev, script=LONG, drop_notifications=1.0)  # only the test's pushes
    invocation_id = dev.trigger()
    dev.wait_for(invocation_id, {"RUNNING"})
    before = len(dev.log_lines(invocation_id))

    def deliver(n: int) -> int:
        # As Pub/Sub does: a 503 (lost the race on the invocation) is delivered again.
        for _ in range(50):
            status = dev.push(signed(invocation_id), f"race-{n}").status_code
            if status != 503:
                return status
            time.sleep(0.05)
        return 503

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(deliver, range(8)))
    assert statuses == [200] * 8
    time.sleep(2.5)  # a status-check timer fires meanwhile too
    lines = dev.log_lines(invocation_id)[before:]
    received = [i for i, line in enumerate(lines) if line.startswith("Received PubSub")]
    assert len(received) == 8
    assert all(lines[i + 1].startswith("Build status: ") for i in received), lines
    inv = dev.invocation(invocation_id)
    assert inv["status"] == "RUNNING"
    assert any(line.startswith("Handling timer") for line in lines)


def test_abort_cancels_the_build(sim: SimulatorProcess, dev: DevProcess) -> None:
    configure(sim, dev, script=LONG)
    invocation_id = dev.trigger()
    dev.wait_for(invocation_id, {"RUNNING"})
    response = dev.http.post(f"{dev.url}/api/invocations/{invocation_id}/abort")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ABORTED"
    state = sim.state()
    assert state["calls"]["CancelBuild"] == 1
    assert state["builds"][0]["status"] == "CANCELED"
    lines = dev.log_lines(invocation_id)
    assert lines[-2:] == [
        "Invocation was manually aborted by user",
        lines[-1],
    ] and lines[-1].endswith("with status ABORTED")
    again = dev.http.post(f"{dev.url}/api/invocations/{invocation_id}/abort")
    assert again.status_code == 409 and "already finished" in again.json()["error"]
    time.sleep(2.5)  # the pending timer and the CANCELED notification change nothing
    assert dev.log_lines(invocation_id) == lines


def test_an_abort_while_the_launch_retries_is_accepted_and_completes(
    sim: SimulatorProcess, dev: DevProcess
) -> None:
    # The first launch attempt fails (three tries in the client); the next comes 5 s later.
    configure(
        sim,
        dev,
        script=LONG,
        faults=[{"method": "ScheduleBuild", "code": "UNAVAILABLE", "times": 3}],
    )
    invocation_id = dev.trigger()
    deadline = time.monotonic() + 30
    while (inv := dev.invocation(invocation_id))["next_attempt"] is None:
        assert inv["status"] == "STARTING" and time.monotonic() < deadline, inv
        time.sleep(0.1)
    assert inv["attempt"] == 1
    abort_url = f"{dev.url}/api/invocations/{invocation_id}/abort"
    for _ in range(2):  # a repeated abort is harmless
        response = dev.http.post(abort_url)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "STARTING" and response.json()["abort_requested"]
    final = dev.wait_for(invocation_id, {"ABORTED", "SUCCEEDED", "FAILED"})
    assert final["status"] == "ABORTED" and final["next_attempt"] is None
    state = sim.state()
    # An attempt had begun, so a build may exist under the requestId: the next attempt makes
    # (or finds) it and cancels it at once.
    assert (state["calls"]["ScheduleBuild"], state["calls"]["CancelBuild"]) == (4, 1)
    assert [b["status"] for b in state["builds"]] == ["CANCELED"]
    again = dev.http.post(abort_url)
    assert again.status_code == 409 and "already finished" in again.json()["error"]


def test_schedule_build_unavailable_twice_makes_one_build(
    sim: SimulatorProcess, dev: DevProcess
) -> None:
    configure(
        sim,
        dev,
        script=[*QUICK, {"status": "SUCCESS"}],
        faults=[{"method": "ScheduleBuild", "code": "UNAVAILABLE", "times": 2}],
    )
    invocation_id = dev.trigger()
    assert dev.wait_for(invocation_id, FINAL)["status"] == "SUCCEEDED"
    state = sim.state()
    assert state["calls"]["ScheduleBuild"] == 3
    assert len(state["builds"]) == 1


def test_request_id_starts_one_invocation(sim: SimulatorProcess, dev: DevProcess) -> None:
    configure(sim, dev, script=[*QUICK, {"status": "SUCCESS"}])
    first = dev.trigger(request_id="nightly-2026-11-25")
    second = dev.trigger(request_id="nightly-2026-11-25")
    assert first == second
    dev.wait_for(first, FINAL)
    assert sim.state()["calls"]["ScheduleBuild"] == 1
    listed = dev.http.get(f"{dev.url}/api/jobs/chromium%2FWindows%20deterministic/invocations")
    assert listed.status_code == 200
    ids = [inv["id"] for inv in listed.json()["invocations"]]
    assert ids[0] == first and ids.count(first) == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/trigger", b"{not json", 400, "not valid JSON"),
        ("POST", "/trigger", {"job": 5}, 400, "job: Input should be a valid string"),
        (
            "POST",
            "/trigger",
            {"job": JOB, "tags": "a:b"},
            400,
            "tags: Input should be a valid list",
        ),
        (
            "POST",
            "/trigger",
            {"job": JOB, "tags": ["nocolon"]},
            400,
            'tag "nocolon" must be "key:value"',
        ),
        (
            "POST",
            "/trigger",
            {"job": JOB, "gitiles": {"repo": "https://chromium.googlesource.com/x"}},
            400,
            "gitiles.ref: Field required",
        ),
        ("POST", "/trigger", {"job": JOB, "surprise": 1}, 400, "surprise: Extra inputs"),
        ("POST", "/trigger", {"job": "chromium/nope"}, 404, 'unknown job "chromium/nope"'),
        ("GET", "/trigger", None, 405, "use POST"),
        ("POST", "/trigger", b"[" * 2_000_000, 413, "larger than"),
        ("GET", "/api/invocations/42", None, 404, "no invocation 42"),
        ("GET", "/api/invocations/4x2", None, 400, "decimal int64"),
        ("GET", "/api/invocations/99999999999999999999", None, 400, "decimal int64"),
        ("POST", "/api/invocations/42/abort", None, 404, "no invocation 42"),
        ("GET", "/api/jobs/chromium%2Fnope/invocations", None, 404, 'unknown job "chromium/nope"'),
        ("GET", "/api/elsewhere", None, 404, "no such route"),
        ("POST", "/on-timer", {"invocation_id": "x"}, 400, "invocation_id"),
        ("POST", "/on-timer", b"", 400, "not valid JSON"),
        ("GET", "/nowhere", None, 404, "no function"),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    dev: DevProcess, method: str, path: str, body: Any, status: int, error: str
) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    kwargs = {} if body is None else kwargs
    response = dev.http.request(method, dev.url + path, headers=TIMER_HEADERS, **kwargs)
    assert response.status_code == status, response.text
    assert error in response.json()["error"]
    assert "Traceback" not in response.text


def test_routes_answer_at_their_exact_path_without_redirects(dev: DevProcess) -> None:
    for path in ("/on-timer", "/trigger", "/on-build-notification"):
        response = dev.http.post(dev.url + path, content=b"{}", follow_redirects=False)
        assert response.status_code not in (301, 302, 307, 308), path
    stale = {
        "invocation_id": "42",
        "timer_id": "x:42:1:0",
        "name": "check-buildbucket-build-status",
    }
    response = dev.http.post(dev.url + "/on-timer", json=stale, headers=TIMER_HEADERS)
    assert response.status_code == 200 and response.json() == {"outcome": "ignored"}


@pytest.mark.parametrize(
    ("headers", "error"),
    [({}, "missing X-Shepherd-Timer-Token"), ({TIMER_TOKEN_HEADER: "guess"}, "wrong X-Shepherd")],
)
def test_on_timer_refuses_callers_without_the_queue_token(
    sim: SimulatorProcess, dev: DevProcess, headers: dict[str, str], error: str
) -> None:
    configure(sim, dev, script=LONG)
    invocation_id = dev.trigger()
    inv = dev.wait_for(invocation_id, {"RUNNING"})
    (timer,) = [e["text"] for e in inv["log"] if e["text"].startswith("Scheduling timer")][-1:]
    timer_id = timer.split("(", 1)[1].split(")", 1)[0]
    body = {
        "invocation_id": invocation_id,
        "timer_id": timer_id,
        "name": "check-buildbucket-build-status",
    }
    before = dev.log_lines(invocation_id)
    response = dev.http.post(dev.url + "/on-timer", json=body, headers=headers)
    assert response.status_code == 401 and error in response.json()["error"]
    assert SECRET not in response.text and TIMER_HEADERS[TIMER_TOKEN_HEADER] not in response.text
    assert dev.log_lines(invocation_id)[: len(before)] == before
    assert not any(
        line.startswith(f'Handling timer "check-buildbucket-build-status" ({timer_id})')
        for line in dev.log_lines(invocation_id)[len(before) :]
    )
    log_file = (dev.workdir / "dev.log").read_text()
    assert SECRET not in log_file and TIMER_HEADERS[TIMER_TOKEN_HEADER] not in log_file


def test_restart_mid_build_loses_nothing(sim: SimulatorProcess, tmp_path: Path) -> None:
    dev = DevProcess(tmp_path, write_jobs(tmp_path / "jobs.toml", sim.url)).start()
    try:
        # Notifications dropped: only the durable timers can finish this build.
        sim.configure(
            {
                "script": [*QUICK[:1], {"status": "STARTED", "for": "4s"}, {"status": "SUCCESS"}],
                "drop_notifications": 1.0,
            }
        )
        invocation_id = dev.trigger()
        dev.wait_for(invocation_id, {"RUNNING"})
        before = dev.log_lines(invocation_id)
        dev.kill()
        time.sleep(3)  # the pending timer comes due while nothing runs
        dev.start(port=dev.port)
        inv = dev.wait_for(invocation_id, FINAL)
        assert inv["status"] == "SUCCEEDED"
        lines = dev.log_lines(invocation_id)
        assert lines[: len(before)] == before
        assert sim.state()["calls"]["ScheduleBuild"] == 1
    finally:
        dev.stop()


def test_invocation_timeout_cancels_and_fails(sim: SimulatorProcess, tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.toml", sim.url, invocation_timeout="3s")
    dev = DevProcess(tmp_path, jobs).start()
    try:
        configure(sim, dev, script=LONG)
        invocation_id = dev.trigger()
        inv = dev.wait_for(invocation_id, FINAL)
        assert inv["status"] == "FAILED"
        lines = dev.log_lines(invocation_id)
        assert "Invocation timed out after 3s, cancelling it" in lines
        assert sim.state()["calls"]["CancelBuild"] == 1
    finally:
        dev.stop()


def test_one_function_served_alone_by_functions_framework(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    """What terraform deploys: one target of functions/main.py, here the api over the same store."""
    jobs = write_jobs(tmp_path / "jobs.toml", sim.url)
    env = {**os.environ, "SHEPHERD_JOBS": str(jobs), "SHEPHERD_STATE": str(tmp_path / "state.db")}
    port = free_port()
    source = Path(__file__).resolve().parents[1] / "functions" / "main.py"
    cmd = [str(Path(sys.executable).parent / "functions-framework"), "--source", str(source)]
    cmd += ["--target", "api", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        response = None
        deadline = time.monotonic() + 30
        while response is None and time.monotonic() < deadline:
            try:
                response = httpx.get(f"{url}/jobs/chromium%2FWindows%20deterministic/invocations")
            except httpx.TransportError:
                time.sleep(0.1)
        assert response is not None and response.status_code == 200, response
        assert response.json() == {"invocations": []}
        missing = httpx.get(f"{url}/invocations/42")
        assert missing.status_code == 404 and missing.json() == {"error": "no invocation 42"}
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deeply_nested_properties_and_chunked_bodies_get_4xx(dev: DevProcess) -> None:
    deep: dict = {}
    for _ in range(40):
        deep = {"a": deep}
    response = dev.http.post(dev.url + "/trigger", json={"job": JOB, "properties": deep})
    assert response.status_code == 400 and "nested deeper than 32" in response.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(3):
            yield b" " * (1 << 20)

    response = dev.http.post(dev.url + "/trigger", content=chunks())
    assert response.status_code == 413, response.text
    assert "error" in response.json()
