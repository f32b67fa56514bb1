"""The local stack under SIGKILL and under load: nothing lost, nothing done twice.

`make test` runs the bounded variants; `make soak` sets SHEPHERD_TESTS=soak for the long ones.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from localstack import COMMIT_TAGS, FINAL, JOB, DevProcess, write_jobs
from shepherd_tools.simulator.control import SimulatorProcess

pytestmark = pytest.mark.stack

SOAK = os.environ.get("SHEPHERD_TESTS") == "soak"
CRASH_INVOCATIONS = 200 if SOAK else 50
LOAD_INVOCATIONS = 1000 if SOAK else 150
SCRIPT = [
    {"status": "SCHEDULED", "for": "300ms"},
    {"status": "STARTED", "for": "1500ms"},
    {"status": "SUCCESS"},
]


@pytest.fixture
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess() as process:
        yield process


UNAVAILABLE: list[str] = []  # 503 answers seen (a lock or race surfacing to a client)


def trigger_with_retries(dev: DevProcess, request_id: str, deadline_s: float = 60) -> str:
    """A client that retries until the stack answers, with the same request id."""
    body = {"job": JOB, "tags": COMMIT_TAGS, "request_id": request_id}
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            response = httpx.post(dev.url + "/trigger", json=body, timeout=30)
            if response.status_code == 202:
                return response.json()["invocation_id"]
            assert response.status_code == 503, response.text  # only "try again" is acceptable
            UNAVAILABLE.append(response.text)
        except httpx.TransportError:
            pass  # the stack is down right now
        assert time.monotonic() < deadline, f"no answer for {request_id}"
        time.sleep(0.1)


def final_states(dev: DevProcess, ids: list[str], timeout_s: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    results: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for invocation_id in ids:
            if invocation_id not in results:
                inv = dev.invocation(invocation_id)
                if inv["status"] in FINAL:
                    results[invocation_id] = inv
        if len(results) == len(ids):
            return results
        time.sleep(0.5)
    raise AssertionError(f"{len(ids) - len(results)} invocations did not finish in {timeout_s}s")


def test_sigkill_at_random_moments_loses_nothing(sim: SimulatorProcess, tmp_path: Path) -> None:
    rng = random.Random(20261125)
    dev = DevProcess(tmp_path, write_jobs(tmp_path / "jobs.toml", sim.url)).start()
    sim.configure({"publish_url": dev.url, "script": SCRIPT})
    kills = 0
    ids: list[str] = []
    try:
        for n in range(CRASH_INVOCATIONS):
            ids.append(trigger_with_retries(dev, f"crash-{n}"))
            if rng.random() < 0.12:
                time.sleep(rng.uniform(0, 0.8))  # mid-launch, mid-timer, mid-notification
                dev.kill()
                kills += 1
                time.sleep(rng.uniform(0, 1.5))
                dev.start(port=dev.port)
        for _ in range(3):  # and while they finish
            time.sleep(rng.uniform(0.2, 1.5))
            dev.kill()
            kills += 1
            dev.start(port=dev.port)
        results = final_states(dev, ids, timeout_s=180)
    finally:
        dev.stop()
    assert len(set(ids)) == CRASH_INVOCATIONS
    assert {inv["status"] for inv in results.values()} == {"SUCCEEDED"}
    state = sim.state()
    assert len(state["builds"]) == CRASH_INVOCATIONS  # one build per invocation, none twice
    assert kills >= 5
    print(
        f"crash test: {CRASH_INVOCATIONS} invocations, {kills} SIGKILLs, all SUCCEEDED, "
        f"{state['calls']['ScheduleBuild']} ScheduleBuild calls for {len(state['builds'])} builds"
    )


def test_many_invocations_at_once(sim: SimulatorProcess, tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.toml", sim.url)
    jobs.write_text(jobs.read_text().replace('status_check_max = "2s"', 'status_check_max = "5s"'))
    dev = DevProcess(tmp_path, jobs).start()
    sim.configure({"publish_url": dev.url, "script": SCRIPT})
    try:
        idle_rss = dev.rss_bytes
        UNAVAILABLE.clear()
        with ThreadPoolExecutor(16) as pool:
            ids = list(
                pool.map(lambda n: trigger_with_retries(dev, f"load-{n}"), range(LOAD_INVOCATIONS))
            )
        results = final_states(dev, ids, timeout_s=600)
        busy_rss = dev.rss_bytes
    finally:
        dev.stop()
    assert {inv["status"] for inv in results.values()} == {"SUCCEEDED"}
    assert UNAVAILABLE == [], "no lock or race surfaced to a client"
    assert len(sim.state()["builds"]) == LOAD_INVOCATIONS
    # Bounded: state lives in SQLite, not in the process (a generous bound, not a benchmark).
    assert busy_rss - idle_rss < 200 * 2**20, (idle_rss, busy_rss)
    print(
        f"load test: {LOAD_INVOCATIONS} invocations, RSS {idle_rss >> 20} -> {busy_rss >> 20} MiB"
    )
