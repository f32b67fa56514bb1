"""Scale (issue 18): thousands of concurrent invocations with every notification lost, so the
status checks alone bring every build's end home.

- embedded, in virtual time: VirtualStack (the SQLite store, the real simulator process),
  builds SCHEDULED 2m, STARTED 1h, SUCCESS, spread over jobs of one server (a job runs at most
  1,000 at once); status_policy "batched", and "shepherd" (a check chain per invocation) to
  compare;
- on the emulators, in real time: a `shepherd dev` process on the Firestore, Pub/Sub and Cloud
  Tasks emulators, triggered over HTTP, builds of a few seconds, status_check_max 2s.

`make test` runs small fleets; `make soak` (SHEPHERD_TESTS=soak) the full ones (5,000 embedded,
500 on the emulators) and writes the figures to bench/scale.json. Timing and memory are
reported, never asserted: what must hold is that every invocation SUCCEEDED with one build of
its own, no later than status_check_max after its build ended, and (batched) that the Batch
calls were far fewer than one per build and check.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators import Emulator, clear_firestore, emulator_env, start_tasks
from localstack import COMMIT_TAGS, FINAL, JOB, DevProcess, Ticker, write_jobs
from shepherd.durations import MINUTE, SECOND, parse_duration
from shepherd.model import Status
from shepherd.timestamps import parse_rfc3339
from shepherd_tools.replay import Scenario, VirtualStack, load_scenario
from shepherd_tools.simulator.control import SimulatorProcess

SOAK = os.environ.get("SHEPHERD_TESTS") == "soak"
# The "shepherd" policy (a check chain per invocation) is the comparison, and slow in
# virtual time (a GetBuild and a commit per build and check): a fifth as many.
EMBEDDED = {"batched": 5000, "shepherd": 1000} if SOAK else {"batched": 200, "shepherd": 60}
EMULATED = 500 if SOAK else 40
PER_JOB = 1000  # a job's max_concurrent_invocations is at most 1,000 (shepherd/jobs.py)
RESULTS = Path(__file__).resolve().parents[1] / "bench" / "scale.json"

# --- embedded, virtual time ------------------------------------------------------------------

CHECK_MAX = 10 * MINUTE
SCRIPT = [
    {"status": "SCHEDULED", "for": "2m"},
    {"status": "STARTED", "for": "1h"},
    {"status": "SUCCESS"},
]
BUILD_NS = sum(parse_duration(step["for"]) for step in SCRIPT if "for" in step)


def record(name: str, figures: dict[str, Any]) -> None:
    """Prints the figures; in soak mode also keeps them in bench/scale.json."""
    print(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    if not SOAK:
        return
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved[name] = figures
    RESULTS.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def reset_peak_rss() -> bool:
    """Makes VmHWM the current RSS (Linux 4.0+), so the peak is this test's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def scenario(jobs: int, policy: str) -> Scenario:
    seed = load_scenario("seed")
    base = seed.jobs["jobs"][0]
    policy_conf = {
        "kind": "greedy_batching",
        "max_concurrent_invocations": PER_JOB,
        "max_batch_size": 1,
    }
    return dataclasses.replace(
        seed,
        jobs={
            "settings": {
                **seed.jobs["settings"],
                "status_check_max": "10m",
                "status_policy": policy,
            },
            "jobs": [
                {
                    **base,
                    "id": f"{base['id']} {n}",
                    "builder": f"{base['builder']} {n}",
                    "triggering_policy": policy_conf,
                }
                for n in range(jobs)
            ],
        },
        simulator={**seed.simulator, "script": SCRIPT, "drop_notifications": 1.0},
    )


@pytest.mark.parametrize("policy", ["batched", "shepherd"])
def test_embedded_fleet_finishes(sim: SimulatorProcess, tmp_path: Path, policy: str) -> None:
    count = EMBEDDED[policy]
    jobs = math.ceil(count / PER_JOB)
    measured = reset_peak_rss()
    rss_before = rss_kib()
    stack = VirtualStack(scenario(jobs, policy), tmp_path / "state.db", sim)
    try:
        began = time.monotonic()
        base = stack.scenario.trigger.to_request()
        job_ids = list(stack.jobs.jobs)
        ids = []
        start_ns = stack.clock.now_ns()
        for n in range(count):
            # Spread over one period, so that builds end all through the checks' periods.
            request = dataclasses.replace(base, job_id=job_ids[n % jobs], request_id=f"t{n}")
            started = stack.trigger_at(start_ns + n * CHECK_MAX // count, request).invocation
            assert started is not None
            ids.append(started.id)
        steps = stack.run_until_idle()
        wall_s = time.monotonic() - began
        invocations = [stack.store.get(i) for i in ids]
        state = sim.state()
    finally:
        stack.close()
    # ru_maxrss (KiB on Linux) is the whole session's peak: only if VmHWM could not be reset.
    peak = rss_kib(field="VmHWM") if measured else resource.getrusage(resource.RUSAGE_SELF)[2]

    assert all(inv is not None for inv in invocations)
    done = [inv for inv in invocations if inv is not None]
    assert {inv.status for inv in done} == {Status.SUCCEEDED}
    builds = {b["id"]: b for b in state["builds"]}
    assert len(builds) == count
    assert len({inv.task_data["build_id"] for inv in done}) == count  # one build each
    calls = state["calls"]
    assert calls["ScheduleBuild"] == count
    late = [
        inv.finished_ns - parse_rfc3339(builds[inv.task_data["build_id"]]["endTime"])
        for inv in done
    ]
    assert min(late) >= 0
    assert max(late) <= CHECK_MAX + stack.scenario.task_latency_ns
    # A build is checked at every boundary it runs through: a check chain per invocation
    # makes a GetBuild each; one chain per server makes a Batch of up to 1,000 each.
    checks = BUILD_NS // CHECK_MAX + 1
    if policy == "batched":
        assert calls.get("GetBuild", 0) == 0
        assert calls["Batch"] <= math.ceil(count / 1000) * (checks + 2)
        assert calls["Batch"] * 100 < count * checks
    else:
        assert calls.get("Batch", 0) == 0
        assert calls["GetBuild"] >= count * checks
    record(
        f"embedded {policy} {count}",
        {
            "invocations": count,
            "jobs": jobs,
            "wall_s": round(wall_s, 1),
            "steps": steps,
            "peak_rss_mib": round(peak / 1024, 1),
            "rss_before_mib": round(rss_before / 1024, 1),
            "simulator_rss_mib": round(rss_kib(sim._proc.pid) / 1024, 1) if sim._proc else None,
            "batch_calls": calls.get("Batch", 0),
            "get_build_calls": calls.get("GetBuild", 0),
            "store_reads": stack.store.stats.reads,
            "store_writes": stack.store.stats.writes,
            "store_queries": stack.store.stats.queries,
            "median_staleness_s": round(statistics.median(late) / SECOND, 1),
            "p95_staleness_s": round(statistics.quantiles(late, n=20)[-1] / SECOND, 1),
            "worst_staleness_s": round(max(late) / SECOND, 1),
            "status_check_max_s": CHECK_MAX // SECOND,
        },
    )


# --- on the emulators, real time ---------------------------------------------------------------

RUN_MS = 3000  # each build runs 3 s after 300 ms in the queue
STATUS_CHECK_MAX_S = 2.0  # as write_jobs sets it
TICK_S = 3.0  # /scheduler, as Cloud Scheduler calls it every minute when deployed
# A build's end is seen at the check chain's next boundary: within status_check_max, plus the
# check's own time (its Batch call, then a commit per invocation that changed) and the queue's
# delivery; two ticks more for a chain the sweep had to arm again, as in test_chaos.py.
BOUND_S = STATUS_CHECK_MAX_S + 2 * TICK_S


@pytest.fixture
def emulated(
    request: pytest.FixtureRequest, sim: SimulatorProcess, tmp_path: Path
) -> Iterator[DevProcess]:
    firestore: Emulator = request.getfixturevalue("firestore_emulator")
    pubsub: Emulator = request.getfixturevalue("pubsub_emulator")
    clear_firestore(firestore.host)
    tasks = start_tasks(tmp_path)
    env = emulator_env(firestore.host, pubsub.host, tasks.host, f"scale-{tmp_path.name}")
    jobs = write_jobs(tmp_path / "jobs.toml", sim.url, status_policy="batched")
    dev = DevProcess(tmp_path, jobs, env).start()
    script = [
        {"status": "SCHEDULED", "for": "300ms"},
        {"status": "STARTED", "for": f"{RUN_MS}ms"},
        {"status": "SUCCESS"},
    ]
    sim.configure(
        {"publish_url": f"http://{pubsub.host}", "script": script, "drop_notifications": 1.0}
    )
    try:
        yield dev
    finally:
        dev.stop()
        tasks.stop()


def trigger(client: httpx.Client, dev: DevProcess, n: int) -> str:
    """As a client does: a 503 is tried again with the same request id."""
    body = {"job": JOB, "tags": COMMIT_TAGS, "request_id": f"scale-{n}"}
    for _ in range(50):
        answer = client.post(dev.url + "/trigger", json=body)
        if answer.status_code != 503:
            break
        time.sleep(0.2)
    assert answer.status_code == 202, answer.text
    invocation_id = answer.json()["invocation_id"]
    assert invocation_id is not None, answer.text
    return invocation_id


@pytest.mark.stack
def test_emulated_fleet_finishes(emulated: DevProcess, sim: SimulatorProcess) -> None:
    dev, count = emulated, EMULATED
    idle_rss = dev.rss_bytes
    peak_rss = idle_rss
    ticker = Ticker(dev.url + "/scheduler", TICK_S)
    final: dict[str, dict[str, Any]] = {}
    try:
        first_ns = time.time_ns()
        with httpx.Client(timeout=30) as client:
            ids = [trigger(client, dev, n) for n in range(count)]
            triggered_s = (time.time_ns() - first_ns) / 1e9
            # Only the ones not yet final are asked about again (the list endpoint shows 50).
            deadline = time.monotonic() + 120 + count * 0.5
            while len(final) < count:
                assert time.monotonic() < deadline, f"{count - len(final)} not final"
                peak_rss = max(peak_rss, dev.rss_bytes)
                for invocation_id in ids:
                    if invocation_id in final:
                        continue
                    answer = client.get(f"{dev.url}/api/invocations/{invocation_id}")
                    assert answer.status_code == 200, answer.text
                    if answer.json()["status"] in FINAL:
                        final[invocation_id] = answer.json()
                time.sleep(0.5)
    finally:
        ticker.stop()
    state = sim.state()
    builds = {b["id"]: b for b in state["builds"]}
    assert len(builds) == count
    late, ends = [], []
    for inv in final.values():
        assert inv["status"] == "SUCCEEDED", inv["id"]
        build = builds.pop(inv["build_id"])  # one build each
        ends.append((inv, parse_rfc3339(build["endTime"])))
        late.append((parse_rfc3339(inv["finished"]) - ends[-1][1]) / 1e9)
    assert min(late) >= 0
    assert max(late) <= BOUND_S
    last_ns = max(parse_rfc3339(inv["finished"]) for inv in final.values())
    # How long after the first boundary past its build's end each invocation's end was
    # committed: the group check's own time (the queue's dispatch, the Batch call, the commits
    # before it), or a period more for a build that ended during a check's Batch call.
    period_ns = int(STATUS_CHECK_MAX_S * SECOND)
    after_boundary = [
        parse_rfc3339(inv["finished"]) - (ended // period_ns + 1) * period_ns for inv, ended in ends
    ]
    calls = state["calls"]
    assert calls.get("GetBuild", 0) == 0
    # Every build is checked at least once (each runs longer than status_check_max) in a
    # Batch that holds every build running then: far fewer calls than builds.
    assert calls["Batch"] * 4 < count
    record(
        f"emulators batched {count}",
        {
            "invocations": count,
            "wall_s": round((last_ns - first_ns) / 1e9, 1),
            "triggering_s": round(triggered_s, 1),
            "idle_rss_mib": round(idle_rss / 2**20, 1),
            "peak_rss_mib": round(peak_rss / 2**20, 1),
            "batch_calls": calls.get("Batch", 0),
            "get_build_calls": calls.get("GetBuild", 0),
            "schedule_build_calls": calls.get("ScheduleBuild", 0),
            "median_staleness_s": round(statistics.median(late), 1),
            "p95_staleness_s": round(statistics.quantiles(late, n=20)[-1], 1),
            "worst_staleness_s": round(max(late), 1),
            "worst_commit_after_boundary_s": round(max(after_boundary) / 1e9, 1),
            "status_check_max_s": STATUS_CHECK_MAX_S,
        },
    )
