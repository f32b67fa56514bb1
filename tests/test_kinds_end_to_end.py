"""The task kinds in a real `shepherd dev`, on the embedded stack and on the emulators: a Gitiles
poller and a Buildbucket job against both simulators (a pushed commit becomes a build of that
commit; commits pushed while a build runs become one next build, of the newest), and a noop
that triggers a url_fetch."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import pytest

from emulators import Emulator, clear_firestore, emulator_env
from localstack import FINAL, DevProcess, serving
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


@dataclass
class Where:
    """A stack to run `shepherd dev` on: "embedded", or "emulators" (Firestore, Cloud Tasks
    and Pub/Sub)."""

    name: str
    env: dict[str, str]
    publish_to: str  # where Buildbucket publishes ("" : shepherd dev's embedded Pub/Sub)


@pytest.fixture(params=["embedded", "emulators"])
def where(request: pytest.FixtureRequest) -> Where:
    if request.param == "embedded":
        return Where("embedded", {}, "")
    firestore: Emulator = request.getfixturevalue("firestore_emulator")
    pubsub: Emulator = request.getfixturevalue("pubsub_emulator")
    tasks: Emulator = request.getfixturevalue("tasks_emulator")
    clear_firestore(firestore.host)
    env = emulator_env(firestore.host, pubsub.host, tasks.host, "kinds-e2e")
    return Where("emulators", env, f"http://{pubsub.host}")


@pytest.fixture
def stack(
    where: Where, sim: SimulatorProcess, gitiles: GitilesSimProcess, tmp_path: Path
) -> Iterator[tuple[DevProcess, GitilesSimProcess, SimulatorProcess]]:
    gitiles.reset()
    gitiles.create_repo(PROJECT)
    gitiles.push(PROJECT, MAIN)
    jobs = write_jobs(tmp_path / "jobs.toml", sim.url, gitiles.repo_url(PROJECT))
    # Configured before shepherd dev starts (its first poll may start a build at once), so the
    # port is chosen first.
    port = free_port()
    sim.configure({"publish_url": where.publish_to or f"http://127.0.0.1:{port}", "script": BUILD})
    dev = DevProcess(tmp_path, jobs, where.env).start(port)
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


class Fetched(BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Fetched.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_noop_triggers_a_url_fetch(where: Where, tmp_path: Path) -> None:
    """noop's sleep is a timer (Cloud Tasks on the emulators); its trigger goes through the
    store to the url_fetch job, whose one GET is its outcome."""
    Fetched.paths.clear()
    with serving(Fetched) as url:
        jobs = tmp_path / "jobs.toml"
        jobs.write_text(
            f"""[[jobs]]
id = "infra/nap"
kind = "noop"
sleep = "2s"
triggers = ["infra/fetch"]

[[jobs]]
id = "infra/fetch"
kind = "url_fetch"
url = "{url}/ping"
""",
            encoding="utf-8",
        )
        dev = DevProcess(tmp_path, jobs, where.env).start()
        try:
            response = dev.http.post(dev.url + "/trigger", json={"job": "infra/nap"})
            assert response.status_code == 202, response.text
            nap = dev.wait_for(response.json()["invocation_id"], FINAL)
            deadline = time.monotonic() + 30  # its trigger is delivered right after its end
            while not (fetches := invocations(dev, "infra/fetch")) and time.monotonic() < deadline:
                time.sleep(0.1)
            (fetch,) = fetches
            fetch = dev.wait_for(fetch["id"], FINAL)
        finally:
            dev.stop()
    assert (nap["status"], fetch["status"]) == ("SUCCEEDED", "SUCCEEDED")
    assert parse_rfc3339(nap["finished"]) - parse_rfc3339(nap["started"]) >= 2 * SECOND
    assert [t["id"] for t in fetch["triggers"]] == [f"infra/nap:{nap['id']}:0"]
    assert Fetched.paths == ["/ping"]
