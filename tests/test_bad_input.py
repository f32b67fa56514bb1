"""Bad input against the local stack: schemathesis on the OpenAPI document, hypothesis on
CloudEvents, Pub/Sub push bodies and trigger bodies. No 5xx, no traceback, nothing changed."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localstack import JOB, SECRET, DevProcess, write_jobs
from shepherd.auth import TIMER_TOKEN_HEADER, timer_token
from shepherd.signing import TokenSigner
from shepherd_tools.simulator.control import SimulatorProcess

pytestmark = pytest.mark.stack

LONG = [
    {"status": "SCHEDULED", "for": "300ms"},
    {"status": "STARTED", "for": "1h"},
    {"status": "SUCCESS"},
]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevProcess, str]]:
    with SimulatorProcess() as sim:
        workdir = tmp_path_factory.mktemp("bad")
        dev = DevProcess(workdir, write_jobs(workdir / "jobs.toml", sim.url)).start()
        sim.configure({"publish_url": dev.url, "script": LONG})
        invocation_id = dev.trigger()
        dev.wait_for(invocation_id, {"RUNNING"})
        # The build's own STARTED notification comes 300 ms in: after it, nothing should.
        deadline = time.monotonic() + 30
        while not any("PubSub notification" in line for line in dev.log_lines(invocation_id)):
            assert time.monotonic() < deadline, "the build's notification never came"
            time.sleep(0.1)
        yield dev, invocation_id
        dev.stop()


def unchanged(dev: DevProcess, invocation_id: str, before: list[str]) -> None:
    after = dev.log_lines(invocation_id)
    # Timers keep running meanwhile: what was there stays, and no notification got in.
    assert after[: len(before)] == before
    assert not any("PubSub notification" in line for line in after[len(before) :])


def test_schemathesis_finds_no_server_error(stack: tuple[DevProcess, str], tmp_path: Path) -> None:
    dev, _ = stack
    cmd = [
        str(SCHEMATHESIS),
        "run",
        f"{dev.url}/api/openapi.json",
        "--url",
        dev.url,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--max-examples",
        "40",
        "--workers",
        "1",
        "--generation-deterministic",
        "--header",
        f"{TIMER_TOKEN_HEADER}: {timer_token(SECRET.encode())}",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:]
    cases = re.search(r"(\d+) generated", done.stdout)
    print(f"schemathesis: {cases[0] if cases else done.stdout[-300:]}")


def push_body(data: bytes | str) -> dict[str, Any]:
    encoded = data if isinstance(data, str) else base64.b64encode(data).decode()
    return {"message": {"data": encoded, "messageId": "1"}, "subscription": "s"}


@SETTINGS
@given(
    payload=st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300),
        st.builds(
            lambda user_data, build: json.dumps(
                {"buildPubsub": {"build": build}, "userData": user_data}
            ).encode(),
            st.one_of(
                st.text(),
                st.integers(),
                st.none(),
                st.binary().map(lambda b: base64.b64encode(b).decode()),
            ),
            json_values,
        ),
        st.integers(0, 10**20).map(
            lambda n: json.dumps(
                {
                    "userData": base64.b64encode(
                        TokenSigner(SECRET.encode()).sign(JOB + "/" + "ü", n % 2**63).encode()
                    ).decode()
                }
            ).encode()
        ),
        st.just(b"[" * 5000 + b"]" * 5000),
    ),
    raw_data=st.one_of(st.none(), st.text(max_size=50)),
)
def test_notifications_of_any_shape_are_acknowledged_and_change_nothing(
    stack: tuple[DevProcess, str], payload: bytes, raw_data: str | None
) -> None:
    dev, invocation_id = stack
    before = dev.log_lines(invocation_id)
    body = push_body(raw_data if raw_data is not None else payload)
    response = dev.http.post(dev.url + "/on-build-notification", json=body)
    assert response.status_code == 200, response.text
    unchanged(dev, invocation_id, before)


CE_TYPES = st.sampled_from(["google.cloud.pubsub.topic.v1.messagePublished", "x.y", ""])
# Event data: any JSON, Pub/Sub-shaped messages with any payload, or nesting thousands deep.
event_data = st.one_of(
    json_values.map(json.dumps),
    st.builds(
        lambda payload: json.dumps({"message": push_body(payload)["message"]}),
        st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())),
    ),
    st.integers(1000, 20000).map(lambda n: "[" * n + "]" * n),
    st.integers(1000, 20000).map(lambda n: '{"a":' * n + "1" + "}" * n),
)


def cloudevent_request(mode: str, ce_type: str, data: str) -> tuple[dict[str, str], str]:
    """Headers and body of a CloudEvent in binary (ce-* headers) or structured mode."""
    attributes = {
        "specversion": "1.0",
        "id": "1",
        "source": "//pubsub.googleapis.com/projects/p/topics/t",
        "type": ce_type,
    }
    if mode == "binary":
        headers = {f"ce-{k}": v for k, v in attributes.items()}
        return {**headers, "Content-Type": "application/json"}, data
    fields = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in attributes.items())
    body = f'{{{fields}, "datacontenttype": "application/json", "data": {data}}}'
    return {"Content-Type": "application/cloudevents+json"}, body


@SETTINGS
@given(data=event_data, ce_type=CE_TYPES, mode=st.sampled_from(["binary", "structured"]))
def test_cloudevents_of_any_shape_get_no_server_error(
    stack: tuple[DevProcess, str], data: str, ce_type: str, mode: str
) -> None:
    dev, invocation_id = stack
    before = dev.log_lines(invocation_id)
    headers, body = cloudevent_request(mode, ce_type, data)
    response = dev.http.post(dev.url + "/on-build-notification", content=body, headers=headers)
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert response.json()["error"]
    unchanged(dev, invocation_id, before)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_cloudevent_nested_5000_deep_gets_400(stack: tuple[DevProcess, str], mode: str) -> None:
    dev, invocation_id = stack
    before = dev.log_lines(invocation_id)
    deep = "[" * 5000 + "]" * 5000
    headers, body = cloudevent_request(mode, "google.cloud.pubsub.topic.v1.messagePublished", deep)
    response = dev.http.post(dev.url + "/on-build-notification", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert "not a readable CloudEvent" in response.json()["error"]
    unchanged(dev, invocation_id, before)


@SETTINGS
@given(body=json_values)
def test_trigger_bodies_of_any_shape_get_a_clear_answer(
    stack: tuple[DevProcess, str], body: Any
) -> None:
    dev, _ = stack
    jobs_url = f"{dev.url}/api/jobs/chromium%2FWindows%20deterministic/invocations"
    count = len(dev.http.get(jobs_url).json()["invocations"])
    response = dev.http.post(dev.url + "/trigger", json=body)
    assert response.status_code in (202, 400, 404), response.text
    if response.status_code != 202:
        assert response.json()["error"]
        assert len(dev.http.get(jobs_url).json()["invocations"]) == count


@SETTINGS
@given(job=st.text(min_size=1, max_size=60), invocation=st.text(min_size=1, max_size=30))
def test_odd_ids_in_paths_get_4xx(stack: tuple[DevProcess, str], job: str, invocation: str) -> None:
    dev, _ = stack
    from urllib.parse import quote

    for path in (
        f"/api/jobs/{quote(job, safe='')}/invocations",
        f"/api/invocations/{quote(invocation, safe='')}",
    ):
        response = dev.http.get(dev.url + path)
        assert response.status_code in (200, 400, 404), (path, response.text)
        assert "Traceback" not in response.text
