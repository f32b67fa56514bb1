"""`make bench`: every benchmark of shepherd, written to bench/results.json and bench/RESULTS.md.

Benchmarks, not tests: nothing here passes or fails on speed. Each figure is measured in the
same run as its baseline (LUCI's status policy, a functions-framework hello world).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's process helpers (local stack, emulators)
sys.path.insert(0, str(ROOT / "bench"))  # its steps in modules of their own

from batched import batched_checks, batched_markdown  # noqa: E402

from emulators import PROJECT, clear_firestore, start_firestore  # noqa: E402
from localstack import JOB, SECRET, DevProcess, write_jobs  # noqa: E402
from shepherd.adapters.sqlite_store import SqliteStore  # noqa: E402
from shepherd.durations import HOUR, MINUTE, SECOND, format_duration  # noqa: E402
from shepherd.engine import START_TASK  # noqa: E402
from shepherd.model import Status, TriggerRequest, TriggerStatus  # noqa: E402
from shepherd.ports import StoreStats  # noqa: E402
from shepherd.schemas import TriggerBody  # noqa: E402
from shepherd.signing import TokenSigner  # noqa: E402
from shepherd.timestamps import parse_rfc3339  # noqa: E402
from shepherd_tools.gitiles_sim.control import GitilesSimProcess  # noqa: E402
from shepherd_tools.replay import VirtualStack, load_scenario  # noqa: E402
from shepherd_tools.simulator.control import SimulatorProcess  # noqa: E402

OUT = ROOT / "bench"
POLICIES = ("luci", "shepherd")
DURATIONS_H = (1, 6, 12)
DROPS = (0.0, 0.5, 1.0)
SEEDS = (1, 2, 3)
STEPS = (
    "calls",
    "store_ops",
    "cold_start",
    "throughput",
    "replay",
    "sweep",
    "policies",
    "polls",
    "reruns",
    "batched",
)


def scenario(policy: str, hours: float, drop: float, seed: int) -> Any:
    seed_scenario = load_scenario("seed")
    settings = {**seed_scenario.jobs["settings"], "status_policy": policy}
    script = [
        {"status": "SCHEDULED", "for": "2m"},
        {"status": "STARTED", "for": format_duration(int(hours * HOUR))},
        {"status": "SUCCESS"},
    ]
    return dataclasses.replace(
        seed_scenario,
        seed=seed,
        jobs={**seed_scenario.jobs, "settings": settings},
        simulator={"script": script, "drop_notifications": drop, "seed": seed},
    )


# --- 1. Buildbucket calls per build-hour -------------------------------------------------


def calls_per_build_hour(sim: SimulatorProcess, workdir: Path) -> dict[str, Any]:
    rows = []
    for hours in DURATIONS_H:
        for drop in DROPS:
            figures: dict[str, dict[str, float]] = {}
            for policy in POLICIES:
                calls, staleness = [], []
                for seed in SEEDS:
                    stack = VirtualStack(
                        scenario(policy, hours, drop, seed),
                        workdir / f"calls-{policy}-{hours}-{drop}-{seed}.db",
                        sim,
                    )
                    final = stack.run_until_final(stack.trigger().id)
                    stack.close()
                    state = sim.state()
                    calls.append(state["calls"]["ScheduleBuild"] + state["calls"]["GetBuild"])
                    end = parse_rfc3339(state["builds"][0]["endTime"])
                    assert final.finished_ns is not None
                    staleness.append((final.finished_ns - end) / SECOND)
                build_hours = hours + 2 / 60
                figures[policy] = {
                    "calls_per_build_hour": statistics.mean(calls) / build_hours,
                    "worst_staleness_s": max(staleness),
                }
            rows.append(
                {
                    "build_hours": hours,
                    "notifications_dropped": drop,
                    **{f"{p}_{k}": v for p, f in figures.items() for k, v in f.items()},
                    "ratio": figures["shepherd"]["calls_per_build_hour"]
                    / figures["luci"]["calls_per_build_hour"],
                }
            )
    return {"status_check_max_s": 600, "runs_per_cell": len(SEEDS), "rows": rows}


# --- 2. Store operations per event ------------------------------------------------------


def _count_events(stack: VirtualStack) -> dict[str, StoreStats]:
    """Wraps the engine's entry points to attribute the store's work to each kind of event."""
    per_event: dict[str, StoreStats] = defaultdict(StoreStats)
    counts: dict[str, int] = defaultdict(int)
    stats: StoreStats = stack.store.stats  # type: ignore[attr-defined]

    def wrap(name: str, fn: Callable[..., Any], kind: Callable[..., str]) -> None:
        def counted(*args: Any) -> Any:
            before = dataclasses.replace(stats)
            try:
                return fn(*args)
            finally:
                event = kind(*args)
                counts[event] += 1
                total = per_event[event]
                total.reads += stats.reads - before.reads
                total.writes += stats.writes - before.writes
                total.transactions += stats.transactions - before.transactions

        setattr(stack.engine, name, counted)

    wrap("trigger", stack.engine.trigger, lambda *_: "trigger")
    wrap("handle_notification", stack.engine.handle_notification, lambda *_: "notification")
    wrap(
        "handle_task",
        stack.engine.handle_task,
        lambda _inv, _tid, name: "start" if name == START_TASK else "timer",
    )
    stack.event_counts = counts  # type: ignore[attr-defined]
    return per_event


@contextmanager
def firestore_emulator(workdir: Path) -> Iterator[Any]:
    """A Firestore client on a fresh emulator, stopped on the way out."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore

    emulator = start_firestore(workdir)
    try:
        os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
        clear_firestore(emulator.host)
        yield firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    finally:
        os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        emulator.stop()


def store_ops(sim: SimulatorProcess, workdir: Path) -> dict[str, Any]:
    from shepherd.adapters.firestore_store import FirestoreStore

    results: dict[str, Any] = {}
    with firestore_emulator(workdir) as client:
        for name, store in (("sqlite", None), ("firestore", FirestoreStore(client))):
            stack = VirtualStack(
                scenario("shepherd", 1, 0.0, 1), workdir / f"ops-{name}.db", sim, store
            )
            per_event = _count_events(stack)
            stack.run_until_final(stack.trigger().id)
            stack.close()
            counts = stack.event_counts  # type: ignore[attr-defined]
            results[name] = {
                event: {
                    "events": counts[event],
                    "reads": s.reads / counts[event],
                    "writes": s.writes / counts[event],
                    "transactions": s.transactions / counts[event],
                }
                for event, s in per_event.items()
            }
    return results


# --- 3. Cold start ----------------------------------------------------------------------

HELLO = """import functions_framework


@functions_framework.http
def hello(request):
    return "hello"
"""


@dataclasses.dataclass(frozen=True)
class FirstRequest:
    """A real request a freshly started function handles, and the answer that shows it did."""

    method: str
    path: str
    status: int
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _first_requests() -> dict[str, FirstRequest]:
    """One per deployed function (functions/main.py); each must run the function's whole path."""
    from shepherd.auth import TIMER_TOKEN_HEADER, timer_token

    unknown = 2**62  # an invocation that does not exist: acknowledged, changes nothing
    token = TokenSigner(SECRET.encode()).sign(JOB, unknown)
    notification = json.dumps({"userData": base64.b64encode(token.encode()).decode()})
    message = {"data": base64.b64encode(notification.encode()).decode(), "messageId": "1"}
    return {
        "trigger": FirstRequest("POST", "/", 202, {"job": JOB}),
        "on_timer": FirstRequest(
            "POST",
            "/",
            200,
            {"invocation_id": str(unknown), "timer_id": "cold", "name": "cold"},
            {TIMER_TOKEN_HEADER: timer_token(SECRET.encode())},
        ),
        "on_build_notification": FirstRequest(
            "POST",
            "/",
            200,
            {"message": message, "subscription": "projects/p/subscriptions/s"},
        ),
        "api": FirstRequest("GET", "/jobs/chromium%2FWindows%20deterministic/invocations", 200),
        "scheduler": FirstRequest("POST", "/", 200),
    }


HELLO_REQUEST = FirstRequest("GET", "/", 200)


@dataclasses.dataclass(frozen=True)
class ColdStart:
    wall_s: float  # from the process's start to the first answer
    cpu_s: float  # the process's CPU time (user + system) to its exit: steadier on a busy machine


def _first_answer(
    venv: Path, source: Path, target: str, first: FirstRequest, env: dict[str, str]
) -> ColdStart:
    """Starts the function and sends it a real request until it answers."""
    from emulators import free_port

    port = free_port()
    cmd = [str(venv / "bin" / "functions-framework"), "--source", str(source)]
    cmd += ["--target", target, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}{first.path}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            try:
                answer = httpx.request(
                    first.method, url, json=first.body, headers=first.headers, timeout=30
                )
            except httpx.TransportError:
                time.sleep(0.005)
            else:
                elapsed = time.perf_counter() - started
                if answer.status_code != first.status:
                    raise RuntimeError(f"{target}: {answer.status_code} {answer.text[:300]}")
                break
            if time.perf_counter() - started > 60:
                raise RuntimeError(f"{target} did not answer")
    finally:
        proc.terminate()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return ColdStart(elapsed, usage.ru_utime + usage.ru_stime)


def _deployed_venv(workdir: Path, jobs: Path) -> tuple[Path, Path]:
    """The `make package` archive unpacked, and a virtualenv with only its requirements."""
    from shepherd_tools.package import build

    archive, deployed = workdir / "functions.zip", workdir / "deployed"
    build(archive, jobs, ROOT / "functions" / "main.py")
    with zipfile.ZipFile(archive) as z:
        z.extractall(deployed)
    venv = workdir / "deploy-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    requirements = str(deployed / "requirements.txt")
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "-r", requirements]
    subprocess.run(pip, check=True, capture_output=True)
    return venv, deployed


def cold_start(sim: SimulatorProcess, workdir: Path, runs: int = 7) -> dict[str, Any]:
    """What Cloud Functions runs: each function of the `make package` archive, in a virtualenv
    that has only its requirements.txt, each against a hello world in the same virtualenv. Runs
    alternate (hello, function, hello, next function, ...) so that both see the same machine."""
    jobs = write_jobs(workdir / "cold-jobs.toml", sim.url)
    venv, deployed = _deployed_venv(workdir, jobs)
    hello_source = workdir / "hello" / "main.py"
    hello_source.parent.mkdir(exist_ok=True)
    hello_source.write_text(HELLO)
    env = {
        "SHEPHERD_JOBS": str(deployed / "jobs.toml"),
        "SHEPHERD_STATE": str(workdir / "cold.db"),
        "SHEPHERD_SECRET": SECRET,
        "PYTHONPATH": str(deployed),
    }
    firsts = _first_requests()
    hello: dict[str, list[ColdStart]] = {target: [] for target in firsts}
    ours: dict[str, list[ColdStart]] = {target: [] for target in firsts}
    for _ in range(runs):
        for target, first in firsts.items():
            hello[target].append(_first_answer(venv, hello_source, "hello", HELLO_REQUEST, {}))
            ours[target].append(_first_answer(venv, deployed / "main.py", target, first, env))

    def median(samples: list[ColdStart], what: str) -> float:
        return statistics.median(getattr(s, what) for s in samples)

    functions = {
        target: {
            "min_s": min(s.wall_s for s in ours[target]),
            "median_s": median(ours[target], "wall_s"),
            "hello_median_s": median(hello[target], "wall_s"),
            "ratio_median": median(ours[target], "wall_s") / median(hello[target], "wall_s"),
            "cpu_median_s": median(ours[target], "cpu_s"),
            "hello_cpu_median_s": median(hello[target], "cpu_s"),
            "cpu_ratio_median": median(ours[target], "cpu_s") / median(hello[target], "cpu_s"),
        }
        for target in firsts
    }
    all_hello = [s for samples in hello.values() for s in samples]
    worst = max(functions, key=lambda t: functions[t]["ratio_median"])
    return {
        "runs": runs,
        "hello": {
            "min_s": min(s.wall_s for s in all_hello),
            "median_s": median(all_hello, "wall_s"),
            "cpu_median_s": median(all_hello, "cpu_s"),
        },
        "functions": functions,
        "worst": worst,
        "worst_ratio": functions[worst]["ratio_median"],
        "worst_cpu_ratio": max(f["cpu_ratio_median"] for f in functions.values()),
        "goal_ratio": 1.3,
    }


# --- 4. Throughput and latency through the local stack ------------------------------------


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def throughput(sim: SimulatorProcess, workdir: Path, invocations: int = 300) -> dict[str, Any]:
    dev = DevProcess(
        workdir / "tp", write_jobs(_mkdir(workdir / "tp") / "jobs.toml", sim.url)
    ).start()
    try:
        # Builds that are over at once: trigger -> start -> ScheduleBuild answers SUCCESS.
        sim.configure({"publish_url": dev.url, "script": [{"status": "SUCCESS"}]})
        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda n: dev.trigger(request_id=f"tp-{n}"), range(invocations)))
        pending = set(ids)
        while pending:
            pending = {i for i in pending if dev.invocation(i)["status"] != "SUCCEEDED"}
            time.sleep(0.05)
        elapsed = time.perf_counter() - started

        # Notification handling: the time from a push's arrival to its committed state (the
        # handler answers after the commit), for a running invocation.
        long = [
            {"status": "SCHEDULED", "for": "100ms"},
            {"status": "STARTED", "for": "1h"},
            {"status": "SUCCESS"},
        ]
        sim.configure({"publish_url": dev.url, "script": long, "drop_notifications": 1.0})
        running = dev.trigger()
        dev.wait_for(running, {"RUNNING"})
        token = TokenSigner(SECRET.encode()).sign(JOB, int(running))
        body = {"userData": base64.b64encode(token.encode()).decode()}
        latencies = []
        for n in range(300):
            t0 = time.perf_counter()
            status = dev.push(body, f"lat-{n}").status_code
            if status == 200:
                latencies.append(time.perf_counter() - t0)
        latencies.sort()

        # How many running invocations one process holds, and what each costs in memory.
        idle = _rss(dev._proc.pid)  # type: ignore[union-attr]
        many = 500
        with ThreadPoolExecutor(16) as pool:
            held = list(pool.map(lambda n: dev.trigger(request_id=f"held-{n}"), range(many)))
        for invocation_id in held:
            dev.wait_for(invocation_id, {"RUNNING"}, timeout_s=120)
        busy = _rss(dev._proc.pid)  # type: ignore[union-attr]
    finally:
        dev.stop()
    return {
        "invocations": invocations,
        "invocations_per_s": invocations / elapsed,
        "notification_commit_p50_ms": 1000 * latencies[len(latencies) // 2],
        "notification_commit_p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
        "notifications_measured": len(latencies),
        "running_held": many,
        "rss_idle_mib": idle / 2**20,
        "rss_with_running_mib": busy / 2**20,
        "memory_per_running_invocation_kib": (busy - idle) / many / 1024,
    }


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- 6. The reconciling sweep ---------------------------------------------------------


def sweep_cost(
    workdir: Path, stored: int = 1000, overdue: int = 10, runs: int = 20
) -> dict[str, Any]:
    """One scheduler tick's sweep over `stored` running invocations of which `overdue` lost
    their timer: its store queries and reads, and its time, beside a scan of every active one."""
    from kinds import sleep_engine
    from shepherd.engine import SWEEP_MARGIN_NS
    from shepherd.model import Invocation, Status, Timer, TriggerRequest

    engine, clock, queue = sleep_engine(workdir / "sweep", 0, seconds=600)
    store = engine.store
    now = 10 * HOUR
    for n in range(stored):
        late = n < overdue
        eta = now - 5 * SWEEP_MARGIN_NS if late else now + HOUR
        inv = Invocation(
            id=n + 1,
            job_id="infra/nap",
            request=TriggerRequest(job_id="infra/nap"),
            status=Status.RUNNING,
            created_ns=now - HOUR,
            pending_timers=(Timer(f"infra/nap:{n + 1}:1:0", "wake-up", 0, eta),),
        )
        store.create(inv.evolve(next_check_ns=engine.next_check_ns(inv)), [])
    clock.advance_to(now)
    stats: StoreStats = store.stats  # type: ignore[attr-defined]
    times, scans = [], []
    for _ in range(runs):
        before = dataclasses.replace(stats)
        t0 = time.perf_counter()
        result = engine.sweep(now)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        active = store.list_active()
        scans.append(time.perf_counter() - t0)
    handed = len(queue.pop_due(now))
    return {
        "stored": stored,
        "overdue": overdue,
        "found_per_tick": result.overdue,
        "timers_handed_per_tick": result.timers,
        "queries_per_tick": (stats.queries - before.queries),
        "reads_per_tick": stats.reads - before.reads,
        "writes_per_tick": stats.writes - before.writes,
        "timers_delivered": handed,
        "tick_ms_median": statistics.median(times) * 1000,
        "full_scan_rows": len(active),
        "full_scan_ms_median": statistics.median(scans) * 1000,
    }


# --- 7. Triggering policies under a stream of commits -------------------------------------

# The job's triggering_policy (the job file's table) for each run; the same arrivals for all.
TRIGGERING_POLICIES: dict[str, dict[str, Any]] = {
    "greedy_batching": {
        "kind": "greedy_batching",
        "max_concurrent_invocations": 1,
        "max_batch_size": 1000,
    },
    # What shepherd did before triggering policies: every trigger its own build, at once.
    "one_build_per_trigger": {
        "kind": "greedy_batching",
        "max_concurrent_invocations": 100,
        "max_batch_size": 1,
    },
    "logarithmic_batching": {
        "kind": "logarithmic_batching",
        "max_concurrent_invocations": 1,
        "log_base": 2,
    },
    "newest_first": {"kind": "newest_first", "max_concurrent_invocations": 1},
}
POLICY_JOB = "chromium/linux-rel"
POLICY_REPO = "https://chromium.googlesource.com/chromium/src"


def commit_arrivals(commits: int, window_ns: int, seed: int) -> list[int]:
    """When each commit lands, as offsets into the window: uniform at random (seeded), sorted."""
    rng = random.Random(seed)
    return sorted(rng.randrange(window_ns) for _ in range(commits))


def commit_trigger(n: int) -> TriggerRequest:
    """Commit n's trigger as `POST /trigger` takes it: its own revision and request_id."""
    revision = hashlib.sha1(f"commit {n}".encode()).hexdigest()
    body = {
        "job": POLICY_JOB,
        "gitiles": {"repo": POLICY_REPO, "ref": "refs/heads/main", "revision": revision},
        "request_id": f"commit-{n:03d}",
    }
    return TriggerBody.model_validate(body).to_request()


def _policy_scenario(policy: dict[str, Any], queue_ns: int, build_ns: int, seed: int) -> Any:
    seed_scenario = load_scenario("seed")
    job = {
        "id": POLICY_JOB,
        "kind": "buildbucket",
        "server": "cr-buildbucket.appspot.com",
        "bucket": "ci",
        "builder": "linux-rel",
        "triggering_policy": policy,
    }
    script = [
        {"status": "SCHEDULED", "for": format_duration(queue_ns)},
        {"status": "STARTED", "for": format_duration(build_ns)},
        {"status": "SUCCESS"},
    ]
    settings = {**seed_scenario.jobs["settings"], "status_policy": "shepherd"}
    return dataclasses.replace(
        seed_scenario,
        seed=seed,
        jobs={"settings": settings, "jobs": [job]},
        simulator={"script": script, "seed": seed},
    )


def policy_run(
    sim: SimulatorProcess,
    state_path: Path,
    policy: dict[str, Any],
    arrivals: list[int],
    queue_ns: int,
    build_ns: int,
    seed: int = 1,
) -> dict[str, Any]:
    """The commits arrive at their offsets as triggers of a Buildbucket job under `policy`;
    virtual time runs until everything is over. Latency: a commit's trigger → the start of the
    invocation that took it (its ScheduleBuild)."""
    t0 = time.perf_counter()
    stack = VirtualStack(_policy_scenario(policy, queue_ns, build_ns, seed), state_path, sim)
    start = stack.clock.now_ns()
    try:
        for n, offset in enumerate(arrivals):
            stack.trigger_at(start + offset, commit_trigger(n))
        stack.run_until_idle()
    finally:
        stack.close()
    triggers, invocations = [], {}
    for n in range(len(arrivals)):
        trigger = stack.store.get_trigger(POLICY_JOB, f"commit-{n:03d}")
        assert trigger is not None
        triggers.append(trigger)
        if trigger.invocation_id is not None and trigger.invocation_id not in invocations:
            inv = stack.store.get(trigger.invocation_id)
            assert inv is not None and inv.status is Status.SUCCEEDED and inv.started_ns
            invocations[inv.id] = inv
    latencies = sorted(
        invocations[t.invocation_id].started_ns - t.created_ns  # type: ignore[operator]
        for t in triggers
        if t.invocation_id is not None
    )
    statuses = [t.status for t in triggers]
    builds = sim.state()["builds"]
    build_s = [
        (parse_rfc3339(b["endTime"]) - parse_rfc3339(b["startTime"])) / SECOND for b in builds
    ]
    finished = [i.finished_ns for i in invocations.values() if i.finished_ns is not None]
    return {
        "policy": policy,
        "builds": len(builds),
        "invocations": len(invocations),
        "commits_built": statuses.count(TriggerStatus.STARTED),
        "discarded": statuses.count(TriggerStatus.DISCARDED),
        "pending": statuses.count(TriggerStatus.PENDING),
        "largest_batch": max((len(i.triggers) for i in invocations.values()), default=0),
        "worst_latency_s": latencies[-1] / SECOND if latencies else None,
        "median_latency_s": statistics.median(latencies) / SECOND if latencies else None,
        "build_minutes": sum(build_s) / 60,
        "all_built_s": (max(finished) - start) / SECOND if finished else None,
        "wall_s": time.perf_counter() - t0,
    }


def triggering_policies(
    sim: SimulatorProcess,
    workdir: Path,
    commits: int = 100,
    window_ns: int = HOUR,
    queue_ns: int = MINUTE,
    build_ns: int = 20 * MINUTE,
    seed: int = 15,
) -> dict[str, Any]:
    """The same commits, at seeded random times over the window, under each triggering policy
    of TRIGGERING_POLICIES, in virtual time against the Buildbucket simulator."""
    arrivals = commit_arrivals(commits, window_ns, seed)
    runs = {
        name: policy_run(
            sim, workdir / f"policies-{name}.db", policy, arrivals, queue_ns, build_ns, seed
        )
        for name, policy in TRIGGERING_POLICIES.items()
    }
    return {
        "commits": commits,
        "window_s": window_ns / SECOND,
        "arrivals": f"uniform at random over the window, seed {seed}",
        "first_arrival_s": arrivals[0] / SECOND,
        "last_arrival_s": arrivals[-1] / SECOND,
        "queue_s": queue_ns / SECOND,
        "build_s": build_ns / SECOND,
        "delivery": "start tasks after 100 ms, notifications after 250 ms (the seed's)",
        "runs": runs,
    }


# --- 8. What a Gitiles poll costs ----------------------------------------------------------

POLL_JOB = "infra/poller"
POLL_TARGET = "infra/build"  # a noop job: done at its start, so every trigger starts one
POLL_PROJECT = "chromium/src"
POLL_INTERVAL_S = 30
# Polls before the measured ones: a job's schedule reads its 10 newest invocations (due_tick),
# which a poller that ran a while has.
POLL_WARM_UP = 10
POLLS_PER_DAY = 24 * 3600 // POLL_INTERVAL_S  # back to back: a poll takes no virtual time
SCHEDULER_TICKS_PER_DAY = 24 * 60  # Cloud Scheduler calls the scheduler function each minute
# Each variant: the poller's `refs`, and the refs of the simulated repository (a commit each).
POLL_VARIANTS: dict[str, tuple[list[str], list[str]]] = {
    "main": (["refs/heads/main"], ["refs/heads/main"]),
    "regexp_10_branches": (
        ["regexp:refs/branch-heads/\\d+"],
        [f"refs/branch-heads/{n}" for n in range(10)],
    ),
}
POLL_LABELS = {
    "main": "`refs/heads/main`",
    "regexp_10_branches": "`regexp:refs/branch-heads/\\d+`, 10 branches",
}


@dataclasses.dataclass
class _PollSample:
    """What one poll did: from its tick task's delivery to the end of its invocation."""

    requests: dict[str, int]  # Gitiles requests by kind (refs, log, other)
    functions: int  # queue deliveries of the poller: its tick task, its start task
    tasks: int  # tasks the poll handed to the queue: its start, its next tick
    target_tasks: int  # tasks handed for the target: the start of the invocation it triggered
    stats: StoreStats  # the poller's deliveries only (the target's start is the target's)
    seconds: float  # wall time of the poller's deliveries
    client_seconds: float  # of which making the poll's Gitiles HTTP client
    emitted: int


class _PollBench:
    """An engine with the gitiles and noop kinds in virtual time, its poller job scheduled
    `with 30s interval`, polling a repository of the Gitiles simulator (tests/test_gitiles_kind.py's
    Poller, driven by the schedule: the first poll by the scheduler tick, then each by the tick
    task the poll before it handed to the timer queue)."""

    def __init__(self, gitiles: GitilesSimProcess, store: Any, refs: list[str]) -> None:
        from shepherd.adapters.embedded import EmbeddedTopic, VirtualTimerQueue
        from shepherd.adapters.gitiles_rest import GitilesClient, GitilesClients
        from shepherd.clock import VirtualClock
        from shepherd.engine import Engine
        from shepherd.jobs import parse_jobs
        from shepherd.tasks.gitiles import GitilesKind
        from shepherd.tasks.noop import NoopKind
        from shepherd.tasks.registry import CONFIG_MODELS

        poller = {
            "id": POLL_JOB,
            "kind": "gitiles",
            "schedule": f"with {POLL_INTERVAL_S}s interval",
            "repo": gitiles.repo_url(POLL_PROJECT),
            "refs": refs,
            "triggers": [POLL_TARGET],
        }
        jobs = parse_jobs(
            {"jobs": [{"id": POLL_TARGET, "kind": "noop"}, poller]}, "jobs.toml", CONFIG_MODELS
        )
        self.gitiles = gitiles
        self.clock, self.queue = VirtualClock(HOUR), VirtualTimerQueue()
        self.handed: list[Any] = []
        schedule = self.queue.schedule

        def counted(tasks: Any) -> None:
            self.handed.extend(tasks)
            schedule(tasks)

        self.queue.schedule = counted  # type: ignore[method-assign]
        self.client_s = 0.0  # making each poll's Gitiles client (the kind's default, timed)

        def client(host_url: str) -> GitilesClient:
            t0 = time.perf_counter()
            try:
                return GitilesClient(host_url)
            finally:
                self.client_s += time.perf_counter() - t0

        self.engine = Engine(
            jobs=jobs,
            kinds={
                GitilesKind.name: GitilesKind(GitilesClients(client)),
                NoopKind.name: NoopKind(),
            },
            store=store,
            queue=self.queue,
            topic=EmbeddedTopic("bench"),
            clock=self.clock,
            signer=TokenSigner(b"k" * 32),
            rng=random.Random(1),
        )
        self.stats: StoreStats = store.stats

    def _deliver_due(self) -> tuple[int, StoreStats, float]:
        """Delivers every due task, the ones they hand at once included; the poller's
        deliveries, their store work and their wall time (the target's are left out)."""
        functions, work, seconds = 0, StoreStats(), 0.0
        while due := self.queue.pop_due(self.clock.now_ns()):
            for task in due:
                before = dataclasses.replace(self.stats)
                t0 = time.perf_counter()
                self.engine.handle_task(task.invocation_id, task.timer_id, task.name)
                took = time.perf_counter() - t0
                if task.timer_id.startswith(POLL_JOB + ":"):
                    functions += 1
                    seconds += took
                    work.reads += self.stats.reads - before.reads
                    work.writes += self.stats.writes - before.writes
                    work.transactions += self.stats.transactions - before.transactions
        return functions, work, seconds

    def first_poll(self) -> None:
        from shepherd.cron import run_schedules

        ticks = run_schedules(self.engine, self.clock.now_ns())
        assert [t.action for t in ticks] == ["triggered"], ticks
        self._deliver_due()
        self._last()

    def poll(self) -> _PollSample:
        """The next poll: the clock moves to the tick task's ETA, the due tasks are delivered."""
        requests = self.gitiles.request_counts()
        self.handed.clear()
        client_s = self.client_s
        eta = self.queue.next_eta()
        assert eta is not None, "no tick task waits in the queue"
        self.clock.advance_to(eta)
        functions, work, seconds = self._deliver_due()
        after = self.gitiles.request_counts()
        last = self._last()
        own = sum(t.timer_id.startswith(POLL_JOB + ":") for t in self.handed)
        return _PollSample(
            requests={k: after.get(k, 0) - requests.get(k, 0) for k in after},
            functions=functions,
            tasks=own,
            target_tasks=len(self.handed) - own,
            stats=work,
            seconds=seconds,
            client_seconds=self.client_s - client_s,
            emitted=len(last.emitted_triggers),
        )

    def scheduler_tick(self) -> StoreStats:
        """The scheduler's minute tick while the poller waits for its interval: its share of
        the tick's store work ("not due")."""
        from shepherd.cron import run_schedules

        before = dataclasses.replace(self.stats)
        ticks = run_schedules(self.engine, self.clock.now_ns() + SECOND)
        assert [t.action for t in ticks] == ["not due"], ticks
        return StoreStats(
            reads=self.stats.reads - before.reads,
            writes=self.stats.writes - before.writes,
            transactions=self.stats.transactions - before.transactions,
        )

    def _last(self) -> Any:
        last = self.engine.store.list_invocations(POLL_JOB, limit=1)[0]
        assert last.status is Status.SUCCEEDED, last
        return last


def _poll_case(samples: list[_PollSample], *, wall: bool) -> dict[str, Any]:
    n = len(samples)
    kinds = sorted({k for s in samples for k in s.requests})
    requests = {k: sum(s.requests.get(k, 0) for s in samples) / n for k in kinds}
    out: dict[str, Any] = {
        "polls": n,
        "gitiles_requests": sum(requests.values()),
        "gitiles_requests_by_kind": requests,
        "functions": sum(s.functions for s in samples) / n,
        "tasks_handed": sum(s.tasks for s in samples) / n,
        "target_tasks_handed": sum(s.target_tasks for s in samples) / n,
        "triggers_emitted": sum(s.emitted for s in samples) / n,
        "reads": sum(s.stats.reads for s in samples) / n,
        "writes": sum(s.stats.writes for s in samples) / n,
        "transactions": sum(s.stats.transactions for s in samples) / n,
    }
    if wall:
        times = [s.seconds * 1000 for s in samples]
        out["wall_ms_median"] = statistics.median(times)
        out["wall_ms_min"] = min(times)
        out["client_ms_median"] = statistics.median(s.client_seconds * 1000 for s in samples)
    return out


def _poll_run(gitiles: GitilesSimProcess, store: Any, variant: str, polls: int) -> dict[str, Any]:
    """`polls` polls that find nothing new and `polls` that find one new commit, alternately,
    after the first poll (which finds every watched ref new) and POLL_WARM_UP more; a
    scheduler tick after each."""
    refs, repo_refs = POLL_VARIANTS[variant]
    gitiles.reset()
    gitiles.create_repo(POLL_PROJECT)
    for ref in repo_refs:
        gitiles.push(POLL_PROJECT, ref)
    bench = _PollBench(gitiles, store, refs)
    bench.first_poll()
    for _ in range(POLL_WARM_UP):
        assert bench.poll().emitted == 0
    quiet, new, ticks = [], [], []
    for n in range(2 * polls):
        fresh = n % 2 == 1
        if fresh:
            gitiles.push(POLL_PROJECT, repo_refs[(n // 2) % len(repo_refs)])
        sample = bench.poll()
        assert sample.emitted == (1 if fresh else 0), (variant, n, sample)
        (new if fresh else quiet).append(sample)
        tick = bench.scheduler_tick()
        ticks.append(tick)
    wall = isinstance(store, SqliteStore)
    return {
        "quiet": _poll_case(quiet, wall=wall),
        "new_commit": _poll_case(new, wall=wall),
        "scheduler_tick": {
            "ticks": len(ticks),
            "reads": sum(t.reads for t in ticks) / len(ticks),
            "writes": sum(t.writes for t in ticks) / len(ticks),
            "transactions": sum(t.transactions for t in ticks) / len(ticks),
        },
    }


def _poll_day(quiet: dict[str, Any], new: dict[str, Any], tick: dict[str, Any]) -> dict[str, Any]:
    """A day of polls every POLL_INTERVAL_S that find nothing new, on Firestore, and what one
    new commit adds (its poll's extra work; the target's own invocation is not counted), at
    cost_model's prices and function assumptions."""
    vcpu = FUNCTION_VCPU * PRICES["function_vcpu_second"]
    compute = HANDLER_S * (vcpu + FUNCTION_GIB * PRICES["function_gib_second"])

    def priced(
        polls: float, requests: float, functions: float, tasks: float, reads: float, writes: float
    ) -> dict[str, Any]:
        cost = {
            "function_requests": functions * PRICES["function_request"],
            "function_compute": functions * compute,
            "firestore_reads": reads * PRICES["firestore_read"],
            "firestore_writes": writes * PRICES["firestore_write"],
            # cost_model's assumption: 300 bytes stored per event, kept a month
            "firestore_storage_month": functions * 300 / 2**30 * PRICES["firestore_gib_month"],
            "cloud_tasks": tasks * PRICES["cloud_tasks_operation"],
        }
        return {
            "polls": polls,
            "gitiles_requests": requests,
            "function_invocations": functions,
            "cloud_tasks": tasks,
            "firestore_reads": reads,
            "firestore_writes": writes,
            "cost_usd": cost,
            "total_usd": sum(cost.values()),
        }

    day = priced(
        POLLS_PER_DAY,
        POLLS_PER_DAY * quiet["gitiles_requests"],
        POLLS_PER_DAY * quiet["functions"],
        POLLS_PER_DAY * quiet["tasks_handed"],
        POLLS_PER_DAY * quiet["reads"] + SCHEDULER_TICKS_PER_DAY * tick["reads"],
        POLLS_PER_DAY * quiet["writes"] + SCHEDULER_TICKS_PER_DAY * tick["writes"],
    )
    per_commit = priced(
        0,
        new["gitiles_requests"] - quiet["gitiles_requests"],
        new["functions"] - quiet["functions"],
        new["tasks_handed"] + new["target_tasks_handed"] - quiet["tasks_handed"],
        new["reads"] - quiet["reads"],
        new["writes"] - quiet["writes"],
    )
    return {"quiet_day": day, "per_new_commit": per_commit}


def poll_cost(workdir: Path, polls: int = 10) -> dict[str, Any]:
    """What one poll of a gitiles job costs, on SQLite and on the Firestore emulator, and a
    day of them every 30 s."""
    from shepherd.adapters.firestore_store import FirestoreStore

    variants: dict[str, Any] = {}
    with firestore_emulator(workdir) as client, GitilesSimProcess() as gitiles:
        for variant, (refs, repo_refs) in POLL_VARIANTS.items():
            stores = {
                "sqlite": _poll_run(
                    gitiles, SqliteStore(workdir / f"polls-{variant}.db"), variant, polls
                ),
                "firestore": _poll_run(
                    gitiles, FirestoreStore(client, prefix=f"{variant}-"), variant, polls
                ),
            }
            fs = stores["firestore"]
            variants[variant] = {
                "refs": refs,
                "repo_refs": len(repo_refs),
                **stores,
                "per_day": _poll_day(fs["quiet"], fs["new_commit"], fs["scheduler_tick"]),
            }
    return {
        "interval_s": POLL_INTERVAL_S,
        "polls_per_day": POLLS_PER_DAY,
        "scheduler_ticks_per_day": SCHEDULER_TICKS_PER_DAY,
        "target": "one noop job (done at its start)",
        "prices_recorded": PRICES["recorded"],
        "variants": variants,
    }


# --- 5. Virtual-time replay of the seed --------------------------------------------------


def replay_wall_time(workdir: Path, runs: int = 5) -> dict[str, Any]:
    samples = []
    for n in range(runs):
        cmd = [
            sys.executable,
            "-m",
            "shepherd_tools.cli",
            "replay",
            "seed",
            "--state",
            str(workdir / f"seed-{n}.db"),
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        samples.append(time.perf_counter() - t0)
    return {"runs": runs, "min_s": min(samples), "median_s": statistics.median(samples)}


# --- 6. Cost model ------------------------------------------------------------------------

# Google Cloud list prices (USD) as recorded on 2026-11-25 from the public pricing pages of
# Cloud Run functions (tier 1), Firestore (regional), Cloud Tasks and Pub/Sub, before free tiers.
PRICES = {
    "recorded": "2026-11-25",
    "function_request": 0.40 / 1e6,
    "function_vcpu_second": 0.000024,
    "function_gib_second": 0.0000025,
    "firestore_read": 0.03 / 1e5,
    "firestore_write": 0.09 / 1e5,
    "firestore_gib_month": 0.15,
    "cloud_tasks_operation": 0.40 / 1e6,
    "pubsub_tib": 40.0,
}
FUNCTION_VCPU, FUNCTION_GIB, HANDLER_S = 0.333, 0.5, 0.1  # 512 MiB function, 100 ms billed


def cost_model(calls: dict[str, Any], ops: dict[str, Any]) -> dict[str, Any]:
    """1,000 six-hour invocations, from the counted events and store operations."""
    out: dict[str, Any] = {
        "prices": PRICES,
        "assumptions": {
            "handler_billed_s": HANDLER_S,
            "function_vcpu": FUNCTION_VCPU,
            "function_gib": FUNCTION_GIB,
            "notifications_per_build": 2,
            "log_bytes_per_event": 300,
            "message_bytes": 2048,
        },
    }
    per_event = ops["firestore"]
    six_hours = next(
        r for r in calls["rows"] if r["build_hours"] == 6 and r["notifications_dropped"] == 0
    )
    for policy in POLICIES:
        # Events per invocation: trigger, start, 2 notifications, and the timers, which are the
        # build's calls minus ScheduleBuild minus (for LUCI) one GetBuild per notification.
        calls_per_inv = six_hours[f"{policy}_calls_per_build_hour"] * (6 + 2 / 60)
        timers = calls_per_inv - 1 - (2 if policy == "luci" else 0)
        events = {"trigger": 1, "start": 1, "notification": 2, "timer": timers}
        n = 1000
        function_calls = n * sum(events.values())
        reads = n * sum(count * per_event.get(e, {}).get("reads", 1) for e, count in events.items())
        writes = n * sum(
            count * per_event.get(e, {}).get("writes", 2) for e, count in events.items()
        )
        storage_gib = n * sum(events.values()) * 300 / 2**30
        cost = {
            "function_requests": function_calls * PRICES["function_request"],
            "function_compute": function_calls
            * HANDLER_S
            * (
                FUNCTION_VCPU * PRICES["function_vcpu_second"]
                + FUNCTION_GIB * PRICES["function_gib_second"]
            ),
            "firestore_reads": reads * PRICES["firestore_read"],
            "firestore_writes": writes * PRICES["firestore_write"],
            "firestore_storage_month": storage_gib * PRICES["firestore_gib_month"],
            "cloud_tasks": n * (timers + 1) * PRICES["cloud_tasks_operation"],
            "pubsub": n * 2 * 2048 / 2**40 * PRICES["pubsub_tib"],
        }
        out[policy] = {
            "events_per_invocation": events,
            "cost_usd": cost,
            "total_usd": sum(cost.values()),
        }
    out["ratio"] = out["shepherd"]["total_usd"] / out["luci"]["total_usd"]
    return out


# --- report -------------------------------------------------------------------------------


def _row(figure: str, ours: str, baseline: str = "—", ratio: str = "—") -> str:
    return f"| {figure} | {ours} | {baseline} | {ratio} |"


def _span(seconds: float) -> str:
    """A duration to one decimal in the unit that suits it: 0.1 s, 21 min, 7.1 h."""
    if seconds < 60:
        value, unit = seconds, "s"
    elif seconds < 2 * 3600:
        value, unit = seconds / 60, "min"
    else:
        value, unit = seconds / 3600, "h"
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


POLICY_LABELS = {
    "greedy_batching": "greedy_batching, 1 at a time (LUCI's default)",
    "one_build_per_trigger": "one build per trigger (greedy, 100 at a time, batches of 1)",
    "logarithmic_batching": "logarithmic_batching, log_base 2, 1 at a time",
    "newest_first": "newest_first, 1 at a time",
}


def policies_markdown(p: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Triggering policies: {p['commits']} commits over {_span(p['window_s'])} "
        f"({p['arrivals']}), one trigger each, on a job whose builds wait "
        f"{_span(p['queue_s'])} in the queue and run {_span(p['build_s'])}; the same arrivals "
        "under each policy, replayed in virtual time against the Buildbucket simulator until "
        "every build is over. Latency: a commit's trigger → the ScheduleBuild of the build "
        "that includes it.",
        "",
        "| policy | builds | commits built (discarded) | commit → build start, worst / median "
        "| build-minutes | every commit built, from the hour's start |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in p["runs"].items():
        lines.append(
            f"| {POLICY_LABELS.get(name, name)} | {r['builds']} "
            f"| {r['commits_built']} ({r['discarded']}) "
            f"| {_span(r['worst_latency_s'])} / {_span(r['median_latency_s'])} "
            f"| {r['build_minutes']:.0f} | {_span(r['all_built_s'])} |"
        )
    return lines


def _ops(f: dict[str, Any]) -> str:
    return f"{f['reads']:.0f} / {f['writes']:.0f} / {f['transactions']:.0f}"


def _poll_day_row(p: dict[str, Any]) -> str:
    v = p["variants"]["main"]["per_day"]
    day, commit = v["quiet_day"], v["per_new_commit"]
    return _row(
        f"a day of Gitiles polls of `refs/heads/main` every {p['interval_s']} s "
        f"({p['polls_per_day']:,}) that find nothing new, Firestore, list prices of "
        f"{p['prices_recorded']}; 1,000 new commits add ${1000 * commit['total_usd']:.3f}",
        f"${day['total_usd']:.3f}",
    )


def polls_markdown(p: dict[str, Any]) -> list[str]:
    main = p["variants"]["main"]
    lines = [
        "",
        f'What a Gitiles poll costs: a gitiles job with `schedule = "with {p["interval_s"]}s '
        f'interval"` that triggers {p["target"]}, against the Gitiles simulator in virtual '
        "time. Each poll comes from the tick task the poll before it handed to the timer queue "
        "(the first from the scheduler tick); "
        f"{main['sqlite']['quiet']['polls']} polls of each kind, alternately, after "
        f"{POLL_WARM_UP + 1} unmeasured ones. "
        "Functions run: the poller's queue deliveries (its tick task, its start task); tasks "
        "handed: the Cloud Tasks tasks the poll creates (its start, its next tick, and the "
        "start of the invocation a trigger starts); the target's own invocation is not "
        "counted. Wall time: the poller's deliveries on the embedded stack (SQLite, the "
        "simulator on this machine), of which making the poll's Gitiles HTTP client.",
        "",
        "| poll | Gitiles requests (refs + log) | functions run | tasks handed "
        "| Firestore reads / writes / transactions | SQLite reads / writes / transactions "
        "| wall time, median (HTTP client) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, v in p["variants"].items():
        for case, label in (("quiet", "nothing new"), ("new_commit", "one new commit")):
            fs, sq = v["firestore"][case], v["sqlite"][case]
            by_kind = sq["gitiles_requests_by_kind"]
            target = sq["target_tasks_handed"]
            lines.append(
                f"| {POLL_LABELS.get(variant, variant)}, {label} "
                f"| {sq['gitiles_requests']:.0f} ({by_kind.get('refs', 0):.0f} + "
                f"{by_kind.get('log', 0):.0f}) | {sq['functions']:.0f} "
                f"| {sq['tasks_handed'] + target:.0f}"
                + (f" (the target's start: {target:.0f})" if target else "")
                + f" | {_ops(fs)} | {_ops(sq)} "
                f"| {sq['wall_ms_median']:.0f} ms ({sq['client_ms_median']:.0f} ms) |"
            )
    tick = main["firestore"]["scheduler_tick"], main["sqlite"]["scheduler_tick"]
    lines += [
        f"| the scheduler's minute tick, a job's share (not due) | 0 | — | 0 | {_ops(tick[0])} "
        f"| {_ops(tick[1])} | — |",
        "",
        f"| a day of polls every {p['interval_s']} s ({p['polls_per_day']:,}, and "
        f"{p['scheduler_ticks_per_day']:,} scheduler ticks), Firestore | Gitiles requests "
        f"| function runs | Cloud Tasks tasks | Firestore reads / writes "
        f"| list prices of {p['prices_recorded']} |",
        "|---|---|---|---|---|---|",
    ]
    for variant, v in p["variants"].items():
        day, commit = v["per_day"]["quiet_day"], v["per_day"]["per_new_commit"]
        label = POLL_LABELS.get(variant, variant)
        for name, f, scale in (
            (f"{label}, nothing new all day", day, 1),
            (f"{label}, each 1,000 new commits add", commit, 1000),
        ):
            lines.append(
                f"| {name} | {scale * f['gitiles_requests']:,.0f} "
                f"| {scale * f['function_invocations']:,.0f} | {scale * f['cloud_tasks']:,.0f} "
                f"| {scale * f['firestore_reads']:,.0f} / {scale * f['firestore_writes']:,.0f} "
                f"| ${scale * f['total_usd']:.3f} |"
            )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The report; a step missing from `results` (a file from before it existed) is left out."""
    took = f"`make bench` took {results['seconds']:.0f} s"
    lines = [
        "# Benchmark results",
        "",
        f"Run {results['when']} on {results['machine']}; {took}.",
    ]
    for step, when in results.get("measured_apart", {}).items():
        lines.append(f"`{step}` measured apart (`--only {step} --merge`): {when}.")
    lines += [
        "",
        _row("figure", "ours", "baseline (same run)", "ratio"),
        "|---|---|---|---|",
    ]
    for r in results.get("calls", {}).get("rows", []):
        lines.append(
            _row(
                f"Buildbucket calls per build-hour, {r['build_hours']} h build, "
                f"{r['notifications_dropped']:.0%} of notifications dropped; worst staleness "
                f"{r['shepherd_worst_staleness_s']:.0f} s "
                f"(LUCI {r['luci_worst_staleness_s']:.0f} s)",
                f"{r['shepherd_calls_per_build_hour']:.1f}",
                f"LUCI policy {r['luci_calls_per_build_hour']:.1f}",
                f"{r['ratio']:.2f}",
            )
        )
    for store, events in results.get("store_ops", {}).items():
        for event, f in sorted(events.items()):
            lines.append(
                _row(
                    f"{store} store per {event} ({f['events']} events): "
                    "reads / writes / transactions",
                    f"{f['reads']:.2f} / {f['writes']:.2f} / {f['transactions']:.2f}",
                    "goal ≤ 1 / ≤ 2 / 1",
                )
            )
    lines += _cold_start_rows(results["cold_start"]) if "cold_start" in results else []
    lines += _throughput_rows(results["throughput"]) if "throughput" in results else []
    if "replay" in results:
        rp = results["replay"]
        lines.append(
            _row(
                f"seed replay (the 5h46m build) wall time, median (min) of {rp['runs']}",
                f"{rp['median_s']:.2f} s ({rp['min_s']:.2f} s)",
                "goal < 2 s",
            )
        )
    if "sweep" in results:
        sw = results["sweep"]
        lines.append(
            _row(
                f"sweep per tick, {sw['stored']} running invocations, {sw['overdue']} overdue: "
                f"{sw['queries_per_tick']} query, {sw['reads_per_tick']} reads",
                f"{sw['tick_ms_median']:.1f} ms",
                f"scan of all {sw['full_scan_rows']}: {sw['full_scan_ms_median']:.1f} ms",
                f"{sw['tick_ms_median'] / sw['full_scan_ms_median']:.2f}",
            )
        )
    if "cost" in results:
        cost = results["cost"]
        lines.append(
            _row(
                f"cost of 1,000 six-hour invocations (list prices of {cost['prices']['recorded']})",
                f"${cost['shepherd']['total_usd']:.2f}",
                f"LUCI policy ${cost['luci']['total_usd']:.2f}",
                f"{cost['ratio']:.2f}",
            )
        )
    if "polls" in results:
        lines.append(_poll_day_row(results["polls"]))
    if "policies" in results:
        lines += policies_markdown(results["policies"])
    if "polls" in results:
        lines += polls_markdown(results["polls"])
    if "reruns" in results:
        lines += reruns_markdown(results["reruns"])
    lines += batched_markdown(results["batched"]) if "batched" in results else []
    return "\n".join(lines) + "\n"


# --- 9. Reruns of a builder that fails on infrastructure ------------------------------------

RERUN_CONFIGS: dict[str, dict[str, Any] | None] = {
    "no reruns": None,
    "reruns = {max = 2, on = [INFRA_FAILURE]}": {"max": 2, "on": ["INFRA_FAILURE"]},
}


def rerun_run(
    sim: SimulatorProcess,
    state_path: Path,
    reruns: dict[str, Any] | None,
    invocations: int,
    infra_failure: float,
    seed: int,
) -> dict[str, Any]:
    """`invocations` invocations, one after the other, of a builder whose builds end
    INFRA_FAILURE with probability `infra_failure` (the simulator draws each, seeded)."""
    base = load_scenario("seed")
    job = dict(base.jobs["jobs"][0])
    if reruns is not None:
        job["reruns"] = reruns
    script = [
        {"status": "SCHEDULED", "for": "2m"},
        {"status": "STARTED", "for": "1h"},
        {"outcomes": {"INFRA_FAILURE": infra_failure, "SUCCESS": 1 - infra_failure}},
    ]
    scenario_ = dataclasses.replace(
        base,
        jobs={**base.jobs, "jobs": [job]},
        simulator={**base.simulator, "script": script, "seed": seed},
    )
    stack = VirtualStack(scenario_, state_path, sim)
    finals = []
    try:
        for n in range(invocations):
            request = TriggerRequest(job["id"], request_id=f"rerun-bench-{n}")
            started = stack.engine.trigger(request).invocation
            assert started is not None
            finals.append(stack.run_until_final(started.id))
    finally:
        stack.close()
    builds = len(sim.state()["builds"])
    succeeded = sum(inv.status is Status.SUCCEEDED for inv in finals)
    per_invocation = [len(inv.task_data.get("builds", ())) for inv in finals]
    return {
        "invocations": invocations,
        "succeeded": succeeded,
        "succeeded_share": succeeded / invocations,
        "builds": builds,
        "builds_per_invocation": builds / invocations,
        "builds_per_success": builds / succeeded if succeeded else None,
        "most_builds_in_one_invocation": max(per_invocation),
    }


def rerun_benefit(
    sim: SimulatorProcess, workdir: Path, invocations: int = 300, infra_failure: float = 0.3
) -> dict[str, Any]:
    runs = {
        name: rerun_run(
            sim, _mkdir(workdir / f"reruns-{n}") / "s.db", cfg, invocations, infra_failure, 7
        )
        for n, (name, cfg) in enumerate(RERUN_CONFIGS.items())
    }
    return {
        "infra_failure": infra_failure,
        "expected": {
            "no reruns": {"succeeded_share": 1 - infra_failure, "builds_per_invocation": 1.0},
            "max 2": {
                "succeeded_share": 1 - infra_failure**3,
                "builds_per_invocation": 1 + infra_failure + infra_failure**2,
            },
        },
        "runs": runs,
    }


def reruns_markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Reruns: {r['runs']['no reruns']['invocations']} invocations of a builder whose builds "
        f"end INFRA_FAILURE {r['infra_failure']:.0%} of the time (drawn by the simulator, "
        "seeded), in virtual time, with and without reruns. Expected: "
        f"{r['expected']['no reruns']['succeeded_share']:.1%} vs "
        f"{r['expected']['max 2']['succeeded_share']:.1%} succeeded, "
        f"{r['expected']['max 2']['builds_per_invocation']:.2f} builds per invocation with "
        "reruns.",
        "",
        "| job | invocations SUCCEEDED | builds | builds per invocation | builds per success | "
        "most builds in one invocation |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in r["runs"].items():
        per_success = f["builds_per_success"]
        lines.append(
            f"| `{name}` | {f['succeeded']} ({f['succeeded_share']:.1%}) | {f['builds']} | "
            f"{f['builds_per_invocation']:.2f} | "
            f"{'—' if per_success is None else f'{per_success:.2f}'} | "
            f"{f['most_builds_in_one_invocation']} |"
        )
    return lines


def _cold_start_rows(cold: dict[str, Any]) -> list[str]:
    lines = []
    for target, f in cold["functions"].items():
        lines.append(
            _row(
                f"cold start of `{target}` to its first answer, median (min) of {cold['runs']}; "
                f"CPU time {f['cpu_median_s']:.2f} s vs {f['hello_cpu_median_s']:.2f} s "
                f"({f['cpu_ratio_median']:.2f})",
                f"{f['median_s']:.2f} s ({f['min_s']:.2f} s)",
                f"hello world {f['hello_median_s']:.2f} s",
                f"{f['ratio_median']:.2f}",
            )
        )
    lines.append(
        _row(
            f"cold start, the worst function's ratio (CPU time: {cold['worst_cpu_ratio']:.2f})",
            f"`{cold['worst']}`",
            f"goal ≤ {cold['goal_ratio']}",
            f"{cold['worst_ratio']:.2f}",
        )
    )
    return lines


def _throughput_rows(tp: dict[str, Any]) -> list[str]:
    return [
        _row(
            f"throughput, trigger to SUCCEEDED, {tp['invocations']} invocations",
            f"{tp['invocations_per_s']:.1f} /s",
        ),
        _row(
            f"notification arrival to committed state, p50 / p99 "
            f"({tp['notifications_measured']} pushes)",
            f"{tp['notification_commit_p50_ms']:.1f} / {tp['notification_commit_p99_ms']:.1f} ms",
        ),
        _row(
            f"memory per running invocation ({tp['running_held']} held in one process)",
            f"{tp['memory_per_running_invocation_kib']:.1f} KiB "
            f"(RSS {tp['rss_idle_mib']:.0f} → {tp['rss_with_running_mib']:.0f} MiB)",
        ),
    ]


def merge(step: str, fresh: dict[str, Any], seconds: float) -> None:
    """Puts one step's figures into bench/results.json beside the last full run's, and says
    when that step was measured; RESULTS.md is written again from the merged figures."""
    path = OUT / "results.json"
    results = json.loads(path.read_text())
    results[step] = fresh[step]
    apart = results.setdefault("measured_apart", {})
    apart[step] = f"{fresh['when']} on {fresh['machine']}, in {seconds:.0f} s"
    path.write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "RESULTS.md").write_text(markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=STEPS,
        help="run one benchmark and print its figures (bench/ and README.md stay as they are, "
        "unless --merge)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: also merge its figures into bench/results.json, keeping the other "
        "steps', and rewrite bench/RESULTS.md from it (README.md stays as it is)",
    )
    args = parser.parse_args()
    only = args.only
    if args.merge and not only:
        parser.error("--merge goes with --only STEP")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess() as sim:
        workdir = Path(tmp)
        steps = {
            "calls": lambda: calls_per_build_hour(sim, workdir),
            "store_ops": lambda: store_ops(sim, workdir),
            "cold_start": lambda: cold_start(sim, workdir),
            "throughput": lambda: throughput(sim, workdir),
            "replay": lambda: replay_wall_time(workdir),
            "sweep": lambda: sweep_cost(workdir),
            "policies": lambda: triggering_policies(sim, workdir),
            "polls": lambda: poll_cost(workdir),
            "reruns": lambda: rerun_benefit(sim, workdir),
            "batched": lambda: batched_checks(sim, workdir, PRICES, (FUNCTION_VCPU, FUNCTION_GIB)),
        }
        for name, step in steps.items():
            if only and name != only:
                continue
            t0 = time.perf_counter()
            results[name] = step()
            print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    if only:
        print(json.dumps(results[only], indent=2))
        if args.merge:
            merge(only, results, time.perf_counter() - started)
        return
    results["cost"] = cost_model(results["calls"], results["store_ops"])
    results["seconds"] = time.perf_counter() - started
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (OUT / "RESULTS.md").write_text(report)
    readme = ROOT / "README.md"
    start, end = "<!-- bench:start -->\n", "\n<!-- bench:end -->"
    text = readme.read_text()
    if start in text and end in text:  # the README shows the latest table
        table = report[report.index("| figure") :].rstrip("\n")
        head, rest = text.split(start, 1)
        readme.write_text(head + start + table + end + rest.split(end, 1)[1])
    print((OUT / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
