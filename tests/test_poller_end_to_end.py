"""A Gitiles poller and a Buildbucket job in a real `shepherd dev`, against both simulators, on
the embedded stack and on the emulators: a pushed commit becomes a build of that commit, and
commits pushed while a build runs become one next build, of the newest."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from emulators import Emulator, clear_firestore, emulator_env
from localstack import FINAL, DevProcess
from shepherd.durations import SECOND
from shepherd.timestamps import parse_rfc3339
from shepherd_tools.gitiles_sim.control import GitilesSimProcess
from shepherd_tools.simulator.control import SimulatorProcess

pytestmark = pytest.mark.stack

BUILDER = "chromium/Linux"
POLLER = "chromium/src poller"
PROJECT = "chromium/src"
MAIN = "refs/heads/main"
# Long enough for three pushes to land while it runs.
BUILD = [
    {"status": "SCHEDULED", "for": "200ms"},
    {"status": "STARTED", "for": "8s"},
    {"status": "SUCCESS"},
]


@pytest.fixture(scope="module")
def gitiles() -> Iterator[GitilesSimProcess]:
    with GitilesSimProcess() as process:
        yield process


def write_jobs(path: Path, sim_url: str, repo: str) -> Path:
    path.write_text(
        f"""[settings]
status_check_min = "1s"
status_check_max = "2s"

[[jobs]]
id = "{BUILDER}"
server = "{sim_url}"
bucket = "ci"
builder = "Linux"

[[jobs]]
id = "{POLLER}"
kind = "gitiles"
repo = "{repo}"
refs = ["{MAIN}"]
schedule = "with 1s interval"
triggers = ["{BUILDER}"]
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(params=["embedded", "emulators"])
def stack(
    request: pytest.FixtureRequest,
    sim: SimulatorProcess,
    gitiles: GitilesSimProcess,
    tmp_path: Path,
) -> Iterator[tuple[DevProcess, GitilesSimProcess, SimulatorProcess]]:
    gitiles.reset()
    gitiles.create_repo(PROJECT)
    gitiles.push(PROJECT, MAIN)
    jobs = write_jobs(tmp_path / "jobs.toml", sim.url, gitiles.repo_url(PROJECT))
    env: dict[str, str] = {}
    publish_to = ""
    if request.param == "emulators":
        firestore: Emulator = request.getfixturevalue("firestore_emulator")
        pubsub: Emulator = request.getfixturevalue("pubsub_emulator")
        tasks: Emulator = request.getfixturevalue("tasks_emulator")
        clear_firestore(firestore.host)
        env = emulator_env(firestore.host, pubsub.host, tasks.host, "poller-e2e")
        publish_to = f"http://{pubsub.host}"
    # Configured before shepherd dev starts (its first poll may start a build at once), so the
    # port is chosen first.
    port = free_port()
    sim.configure({"publish_url": publish_to or f"http://127.0.0.1:{port}", "script": BUILD})
    dev = DevProcess(tmp_path, jobs, env).start(port)
    try:
        yield dev, gitiles, sim
    finally:
        dev.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job_path(job_id: str) -> str:
    return quote(job_id, safe="")


def invocations(dev: DevProcess, job_id: str) -> list[dict[str, Any]]:
    """Oldest first."""
    response = dev.http.get(f"{dev.url}/api/jobs/{job_path(job_id)}/invocations")
    assert response.status_code == 200, response.text
    return response.json()["invocations"][::-1]


def trigger_id(gitiles: GitilesSimProcess, commit: str) -> str:
    return f"{gitiles.repo_url(PROJECT)}/+/{MAIN}@{commit}"


def build_for(dev: DevProcess, gitiles: GitilesSimProcess, commit: str) -> dict[str, Any]:
    """The builder invocation that took the commit's trigger, once its build is scheduled."""
    url = f"{dev.url}/api/jobs/{job_path(BUILDER)}/triggers/{trigger_id(gitiles, commit)}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = dev.http.get(url)
        if response.status_code == 200 and response.json()["invocation_id"] is not None:
            invocation_id = response.json()["invocation_id"]
            return dev.wait_for(invocation_id, {"RUNNING", *FINAL}, deadline - time.monotonic())
        time.sleep(0.1)
    raise AssertionError(f"no build took commit {commit}: {dev.http.get(url).text}")


def request_sent(dev: DevProcess, invocation_id: str) -> dict[str, Any]:
    line = next(t for t in dev.log_lines(invocation_id) if t.startswith("Buildbucket request:"))
    return json.loads(line.split("\n", 1)[1])


def emitter(dev: DevProcess, gitiles: GitilesSimProcess, commit: str) -> dict[str, Any]:
    """The poll that emitted the commit's trigger."""
    needle = f"Emitting a trigger {trigger_id(gitiles, commit)} "
    for poll in invocations(dev, POLLER):
        if any(line.startswith(needle) for line in dev.log_lines(poll["id"])):
            return poll
    raise AssertionError(f"no poll emitted {commit}")


def test_pushed_commits_become_builds(
    stack: tuple[DevProcess, GitilesSimProcess, SimulatorProcess],
) -> None:
    dev, gitiles, sim = stack
    head = gitiles.state()["repos"][PROJECT]["refs"][MAIN]
    # The first poll (shepherd dev ticks at start) finds the ref new: a build of its head.
    first = build_for(dev, gitiles, head)
    dev.wait_for(first["id"], FINAL)

    pushed_ns = time.time_ns()
    commit = gitiles.push(PROJECT, MAIN)["new"]
    second = build_for(dev, gitiles, commit)
    # Within one poll interval: no poll that started after the push missed the commit.
    emitted_by = parse_rfc3339(emitter(dev, gitiles, commit)["created"])
    polls = [parse_rfc3339(p["created"]) for p in invocations(dev, POLLER)]
    assert not [c for c in polls if pushed_ns < c < emitted_by]
    host = gitiles.url.removeprefix("http://")
    sent = request_sent(dev, second["id"])
    assert sent["gitilesCommit"] == {"host": host, "project": PROJECT, "id": commit, "ref": MAIN}
    (build,) = [b for b in sim.state()["builds"] if b["id"] == second["build_id"]]
    tags = {(t["key"], t["value"]) for t in build["tags"]}
    assert {
        ("buildset", f"commit/gitiles/{host}/{PROJECT}/+/{commit}"),
        ("gitiles_ref", MAIN),
    } <= tags

    # Three pushes while that build runs: one next build, of the newest, carrying all three.
    dev.wait_for(second["id"], {"RUNNING"})
    pushes = []
    for _ in range(3):
        pushes.append(gitiles.push(PROJECT, MAIN)["new"])
        time.sleep(1.2)
    assert dev.invocation(second["id"])["status"] == "RUNNING", "the build ended too soon"
    third = build_for(dev, gitiles, pushes[0])
    assert [t["id"] for t in third["triggers"]] == [trigger_id(gitiles, c) for c in pushes]
    assert request_sent(dev, third["id"])["gitilesCommit"]["id"] == pushes[-1]
    assert dev.wait_for(third["id"], FINAL)["status"] == "SUCCEEDED"
    assert [b["id"] for b in invocations(dev, BUILDER)] == [first["id"], second["id"], third["id"]]
    assert sim.state()["calls"]["ScheduleBuild"] == 3

    # The polls ran back to back on the interval's ticks (the timer queue's, not the scheduler's
    # minute ones), each one no sooner than 1 s after the previous one ended.
    polls_run = invocations(dev, POLLER)
    assert [p["triggers"][0]["id"] for p in polls_run] == ["interval:first"] + [
        f"interval:after:{p['id']}" for p in polls_run[:-1]
    ]
    for before, after in itertools.pairwise(polls_run):
        assert parse_rfc3339(after["created"]) - parse_rfc3339(before["finished"]) >= SECOND
