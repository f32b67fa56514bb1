"""A store that is briefly unavailable: every function answers 503 with an error JSON (so that
Cloud Tasks and Pub/Sub deliver again), changes nothing, and succeeds once the store is back.

SQLite: another connection holds the write lock past the store's busy timeout. Firestore: a
proxy between `shepherd dev` and the emulator closes every connection and refuses new ones.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators import Emulator, TcpProxy, clear_firestore, emulator_env
from localstack import COMMIT_TAGS, JOB, LONG, SECRET, DevProcess, write_jobs
from shepherd.auth import TIMER_TOKEN_HEADER, timer_token
from shepherd.signing import TokenSigner
from shepherd_tools.simulator.control import SimulatorProcess

TIMER_HEADERS = {TIMER_TOKEN_HEADER: timer_token(SECRET.encode())}
SCHEDULED = re.compile(r'^Scheduling timer "(?P<title>[^"]+)" \((?P<id>[^)]+)\)')


pytestmark = pytest.mark.stack


def signed(invocation_id: str) -> dict[str, Any]:
    token = TokenSigner(SECRET.encode()).sign(JOB, int(invocation_id))
    return {"buildPubsub": {"build": {}}, "userData": base64.b64encode(token.encode()).decode()}


def trigger(dev: DevProcess, request_id: str) -> httpx.Response:
    body = {"job": JOB, "tags": COMMIT_TAGS, "request_id": request_id}
    return dev.http.post(dev.url + "/trigger", json=body)


def abort(dev: DevProcess, invocation_id: str) -> httpx.Response:
    return dev.http.post(f"{dev.url}/api/invocations/{invocation_id}/abort")


def unavailable(response: httpx.Response, store: str) -> bool:
    return (
        response.status_code == 503
        and response.headers["content-type"].startswith("application/json")
        and response.json()["error"].startswith(f"try again later: {store}")
    )


def answered_503(call: Callable[[], httpx.Response], store: str, bound_s: float) -> None:
    started = time.monotonic()
    response = call()
    took = time.monotonic() - started
    assert unavailable(response, store), (response.status_code, response.text)
    assert took < bound_s, f"a 503 after {took:.1f}s"


def until_not_503(call: Callable[[], httpx.Response], timeout_s: float = 60) -> httpx.Response:
    """What a queue does: deliver again, with a pause, until the answer is not a 503."""
    deadline = time.monotonic() + timeout_s
    while (response := call()).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.25)
    return response


def pending_timer(dev: DevProcess, invocation_id: str) -> dict[str, str]:
    *_, last = (m for line in dev.log_lines(invocation_id) if (m := SCHEDULED.match(line)))
    return {"invocation_id": invocation_id, "timer_id": last["id"], "name": last["title"]}


def aborted_again(dev: DevProcess, invocation_id: str) -> None:
    """The abort answered 503 during the outage had already asked Buildbucket to cancel (the
    call comes before the commit), so the build's end may have finished the invocation first."""
    response = until_not_503(lambda: abort(dev, invocation_id))
    assert response.status_code in (200, 409), response.text
    inv = dev.wait_for(invocation_id, {"ABORTED"}, timeout_s=30)
    assert inv["status"] == "ABORTED"
    assert dev.log_lines(invocation_id).count("Invocation was manually aborted by user") <= 1


# --- SQLite ----------------------------------------------------------------------------------


def recovered(
    dev: DevProcess, sim: SimulatorProcess, running: str, before: list[str]
) -> httpx.Response:
    """Once the outage is over: the trigger refused during it starts one invocation, the running
    one's log lost nothing, the abort completes, and each invocation has one build."""
    created = until_not_503(lambda: trigger(dev, "during"))
    assert created.status_code == 202, created.text
    again = trigger(dev, "during")
    assert again.json()["invocation_id"] == created.json()["invocation_id"]
    assert dev.log_lines(running)[: len(before)] == before
    aborted_again(dev, running)
    dev.wait_for(created.json()["invocation_id"], {"RUNNING"})
    assert sim.state()["calls"]["ScheduleBuild"] == 2
    return created


@pytest.fixture
def sqlite_dev(sim: SimulatorProcess, tmp_path: Path) -> Iterator[DevProcess]:
    process = DevProcess(
        tmp_path, write_jobs(tmp_path / "jobs.toml", sim.url), {"SHEPHERD_STORE_TIMEOUT": "500ms"}
    ).start()
    sim.configure({"publish_url": process.url, "script": LONG})
    yield process
    process.stop()


def test_sqlite_write_lock_held_elsewhere_answers_503_then_succeeds(
    sqlite_dev: DevProcess, sim: SimulatorProcess
) -> None:
    dev = sqlite_dev
    running = dev.trigger(request_id="before")
    dev.wait_for(running, {"RUNNING"})
    other = sqlite3.connect(dev.workdir / "state.db", isolation_level=None, timeout=10)
    other.execute("BEGIN EXCLUSIVE")
    try:
        before = dev.log_lines(running)  # WAL: readers are not blocked by the writer
        timer = pending_timer(dev, running)
        answered_503(lambda: trigger(dev, "during"), "the SQLite store", bound_s=5)
        answered_503(lambda: abort(dev, running), "the SQLite store", bound_s=5)
        answered_503(lambda: dev.push(signed(running)), "the SQLite store", bound_s=5)
        answered_503(
            lambda: dev.http.post(dev.url + "/on-timer", json=timer, headers=TIMER_HEADERS),
            "the SQLite store",
            bound_s=5,
        )
        assert dev.log_lines(running) == before
        assert dev.invocation(running)["status"] == "RUNNING"
    finally:
        other.execute("ROLLBACK")
        other.close()

    recovered(dev, sim, running, before)
    pushed = dev.push(signed(running))
    assert pushed.status_code == 200, pushed.text  # finished: acknowledged, nothing to do


# --- Firestore -------------------------------------------------------------------------------


@pytest.fixture
def firestore_dev(
    sim: SimulatorProcess,
    firestore_emulator: Emulator,
    firestore_proxy: TcpProxy,
    pubsub_emulator: Emulator,
    tasks_emulator: Emulator,
    tmp_path: Path,
) -> Iterator[DevProcess]:
    clear_firestore(firestore_emulator.host)
    hosts = firestore_proxy.host, pubsub_emulator.host, tasks_emulator.host
    env = emulator_env(*hosts, "outage", SHEPHERD_STORE_TIMEOUT="1s")
    process = DevProcess(tmp_path, write_jobs(tmp_path / "jobs.toml", sim.url), env).start()
    sim.configure({"publish_url": f"http://{pubsub_emulator.host}", "script": LONG})
    yield process
    process.stop()


def test_firestore_briefly_unavailable_answers_503_then_succeeds(
    firestore_dev: DevProcess, firestore_proxy: TcpProxy, sim: SimulatorProcess
) -> None:
    dev = firestore_dev
    running = dev.trigger(request_id="before")
    dev.wait_for(running, {"RUNNING"})
    before = dev.log_lines(running)
    timer = pending_timer(dev, running)

    firestore_proxy.cut()
    try:
        # Within the store's bound (1 s, its own retries included), far inside the function's.
        answered_503(lambda: trigger(dev, "during"), "Firestore", bound_s=10)
        answered_503(
            lambda: dev.http.get(f"{dev.url}/api/invocations/{running}"), "Firestore", bound_s=10
        )
        answered_503(lambda: abort(dev, running), "Firestore", bound_s=10)
        answered_503(lambda: dev.push(signed(running)), "Firestore", bound_s=10)
        answered_503(
            lambda: dev.http.post(dev.url + "/on-timer", json=timer, headers=TIMER_HEADERS),
            "Firestore",
            bound_s=10,
        )
    finally:
        firestore_proxy.restore()

    created = recovered(dev, sim, running, before)
    listed = dev.http.get(f"{dev.url}/api/jobs/chromium%2FWindows%20deterministic/invocations")
    assert sorted(i["id"] for i in listed.json()["invocations"]) == sorted(
        [running, created.json()["invocation_id"]]
    )


# --- Cloud Tasks -----------------------------------------------------------------------------


def test_cloud_tasks_briefly_unavailable_trigger_answers_503_then_starts(
    sim: SimulatorProcess,
    firestore_emulator: Emulator,
    pubsub_emulator: Emulator,
    tasks_emulator: Emulator,
    tmp_path: Path,
) -> None:
    """The invocation is stored before its start is enqueued: the trigger's 503 asks for the
    same request again, which finds the invocation and enqueues its start."""
    clear_firestore(firestore_emulator.host)
    tasks = TcpProxy(tasks_emulator.host)
    env = emulator_env(firestore_emulator.host, pubsub_emulator.host, tasks.host, "tasks-outage")
    dev = DevProcess(tmp_path, write_jobs(tmp_path / "jobs.toml", sim.url), env).start()
    try:
        sim.configure({"publish_url": f"http://{pubsub_emulator.host}", "script": LONG})
        dev.wait_for(dev.trigger(request_id="first"), {"RUNNING"})  # the queue is in use
        tasks.cut()
        try:
            answered_503(lambda: trigger(dev, "during"), "Cloud Tasks", bound_s=25)
        finally:
            tasks.restore()
        created = until_not_503(lambda: trigger(dev, "during"))
        assert created.status_code == 202, created.text
        dev.wait_for(created.json()["invocation_id"], {"RUNNING"})
        assert sim.state()["calls"]["ScheduleBuild"] == 2
    finally:
        dev.stop()
        tasks.close()
