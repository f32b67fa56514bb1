"""Chaos: what a deployment survives, on the three emulators and on the embedded stack.

A real `shepherd dev` runs many builds of the simulator while the test takes its parts away: the
timer queue restarted empty (every task gone) with every notification lost, enqueues failing
right after their commits, Pub/Sub unreachable, the store unavailable. The test itself ticks
`/scheduler` every TICK_S, as Cloud Scheduler does every minute when deployed, with the sweep's
margin below one tick. Every invocation must reach its final status within `status_check_max`
plus two ticks of the moment it could (its build's end, or the outage's end), with exactly one
build. `make soak` runs more builds and longer outages.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from emulators import Emulator, TcpProxy, clear_firestore, emulator_env, start_tasks
from localstack import COMMIT_TAGS, FINAL, JOB, DevProcess, Ticker, write_jobs
from shepherd import queue_policy
from shepherd.timestamps import parse_rfc3339
from shepherd_tools.simulator.control import SimulatorProcess

pytestmark = pytest.mark.stack

SOAK = os.environ.get("SHEPHERD_TESTS") == "soak"
BUILDS = 100 if SOAK else 20  # the outage scenarios run half as many
OUTAGE_S = 20.0 if SOAK else 4.0
RUN_S = 30.0 if SOAK else 8.0  # how long each build runs
STATUS_CHECK_MAX_S = 2.0  # as write_jobs sets it
TICK_S = 3.0
MARGIN = "2s"  # SHEPHERD_SWEEP_MARGIN: under one tick, so a lost check waits at most two ticks
BOUND_S = STATUS_CHECK_MAX_S + 2 * TICK_S
SECOND_NS = 1_000_000_000
# A delivery refused all through an outage of D seconds comes again within 2D of its end (its
# backoff doubles), never later than the queue's cap: 10 min, the default status_check_max.
RETRY_WAIT_S = min(2 * OUTAGE_S, queue_policy.MAX_BACKOFF_NS / SECOND_NS)


@dataclasses.dataclass
class Stack:
    """One `shepherd dev` and the parts the chaos takes away from it."""

    name: str
    dev: DevProcess
    sim: SimulatorProcess
    publish: TcpProxy  # the way from Buildbucket to Pub/Sub (or the embedded topic)
    lose_every_timer: Callable[[], None]
    store_down: Callable[[], None]
    store_up: Callable[[], None]
    queue: TcpProxy | None = None  # the way to the Cloud Tasks emulator, which may be cut
    builds_before: int = 0

    def configure(self, run_s: float, drop_notifications: float = 0.0) -> None:
        script = [
            {"status": "SCHEDULED", "for": "300ms"},
            {"status": "STARTED", "for": f"{int(run_s * 1000)}ms"},
            {"status": "SUCCESS"},
        ]
        self.sim.configure(
            {
                "publish_url": f"http://{self.publish.host}",
                "script": script,
                "drop_notifications": drop_notifications,
            }
        )
        self.builds_before = len(self.sim.state()["builds"])


def restart_empty(tasks: Emulator, workdir: Path) -> Emulator:
    """Stops the Cloud Tasks emulator and starts an empty one on the same port."""
    port = int(tasks.host.rsplit(":", 1)[1])
    tasks.stop()
    return start_tasks(workdir, port=port)


@pytest.fixture(params=["emulators", "embedded"])
def stack(request: pytest.FixtureRequest, sim: SimulatorProcess, tmp_path: Path) -> Iterator[Stack]:
    if request.param == "emulators":
        yield from _emulator_stack(request, sim, tmp_path)
    else:
        yield from _embedded_stack(sim, tmp_path)


def _emulator_stack(
    request: pytest.FixtureRequest, sim: SimulatorProcess, tmp_path: Path
) -> Iterator[Stack]:
    firestore: Emulator = request.getfixturevalue("firestore_emulator")
    pubsub: Emulator = request.getfixturevalue("pubsub_emulator")
    clear_firestore(firestore.host)
    # A Cloud Tasks emulator of this test's own, so that restarting it empty harms no other.
    tasks = [start_tasks(tmp_path)]
    store, queue, publish = TcpProxy(firestore.host), TcpProxy(tasks[0].host), TcpProxy(pubsub.host)
    env = emulator_env(
        store.host,
        pubsub.host,
        queue.host,
        f"chaos-{tmp_path.name}",
        SHEPHERD_SWEEP_MARGIN=MARGIN,
        SHEPHERD_STORE_TIMEOUT="1s",
    )

    def lose_every_timer() -> None:
        tasks[0] = restart_empty(tasks[0], tmp_path)

    dev = DevProcess(tmp_path, write_jobs(tmp_path / "jobs.toml", sim.url), env).start()
    yield Stack("emulators", dev, sim, publish, lose_every_timer, store.cut, store.restore, queue)
    dev.stop()
    for proxy in (store, queue, publish):
        proxy.close()
    tasks[0].stop()


def _embedded_stack(sim: SimulatorProcess, tmp_path: Path) -> Iterator[Stack]:
    env = {"SHEPHERD_SWEEP_MARGIN": MARGIN, "SHEPHERD_STORE_TIMEOUT": "1s"}
    dev = DevProcess(tmp_path, write_jobs(tmp_path / "jobs.toml", sim.url), env).start()
    state = tmp_path / "state.db"
    publish = TcpProxy(f"127.0.0.1:{dev.port}")  # the simulator publishes to dev's topic
    locker: list[sqlite3.Connection] = []

    def lose_every_timer() -> None:
        with sqlite3.connect(state, timeout=30) as db:
            db.execute("DELETE FROM deliveries WHERE target = 'timer'")
        db.close()

    def store_down() -> None:
        db = sqlite3.connect(state, timeout=30, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")  # every other connection now waits, then gives up
        locker.append(db)

    def store_up() -> None:
        db = locker.pop()
        db.execute("ROLLBACK")
        db.close()

    yield Stack("embedded", dev, sim, publish, lose_every_timer, store_down, store_up)
    dev.stop()
    publish.close()


# --- what every scenario checks ----------------------------------------------------------------


def trigger_many(stack: Stack, count: int) -> list[str]:
    """As a client does: a 503 (a store call past its 1 s bound on a loaded machine) is tried
    again with the same request id."""
    ids = []
    for i in range(count):
        body = {"job": JOB, "tags": COMMIT_TAGS, "request_id": f"chaos-{i}"}
        for _ in range(20):
            answer = stack.dev.http.post(stack.dev.url + "/trigger", json=body)
            if answer.status_code != 503:
                break
            time.sleep(0.2)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["invocation_id"])
    return ids


def wait_all(stack: Stack, ids: list[str], statuses: set[str], timeout_s: float) -> None:
    """Until one pass over them finds every invocation in `statuses`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [i for i in ids if status(stack, i) not in statuses]
        if not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"{len(left)} of {len(ids)} not in {statuses} after {timeout_s}s")


def status(stack: Stack, invocation_id: str) -> str | None:
    """The invocation's status; None while the store cannot be read (the api answers 503)."""
    answer = stack.dev.http.get(f"{stack.dev.url}/api/invocations/{invocation_id}")
    if answer.status_code == 503:
        return None
    assert answer.status_code == 200, answer.text
    return answer.json()["status"]


def lateness_s(stack: Stack, ids: list[str], not_before_ns: int = 0) -> list[float]:
    """For each invocation: it SUCCEEDED with a build of its own, the simulator made no other
    build since the scenario began, and how long after it could have finished (its build's end,
    or `not_before_ns`) it did."""
    builds = {b["id"]: b for b in stack.sim.state()["builds"]}
    assert len(builds) - stack.builds_before == len(ids)
    late = []
    for invocation_id in ids:
        inv = stack.dev.invocation(invocation_id)
        assert inv["status"] == "SUCCEEDED", (invocation_id, inv["status"])
        build = builds.pop(inv["build_id"])
        could = max(parse_rfc3339(build["endTime"]), not_before_ns)
        late.append((parse_rfc3339(inv["finished"]) - could) / SECOND_NS)
    return late


def report(name: str, late: list[float], ticker: Ticker) -> None:
    overdue = sum(s["overdue"] for s in ticker.sweeps)
    handed = sum(s["timers"] + s["starts"] for s in ticker.sweeps)
    print(
        f"\n{name}: {len(late)} invocations, one build each; worst {max(late):.1f}s after they "
        f"could finish (bound {BOUND_S:g}s); sweeps found {overdue} overdue, handed {handed}; "
        f"{ticker.failed} failed ticks"
    )


@pytest.fixture
def ticker(stack: Stack) -> Iterator[Ticker]:
    ticking = Ticker(stack.dev.url + "/scheduler", TICK_S)
    yield ticking
    ticking.stop()


# --- the scenarios -----------------------------------------------------------------------------


def test_timer_queue_restarted_empty_with_every_notification_lost(
    stack: Stack, ticker: Ticker
) -> None:
    stack.configure(RUN_S, drop_notifications=1.0)
    ids = trigger_many(stack, BUILDS)
    wait_all(stack, ids, {"RUNNING"}, timeout_s=60)
    stack.lose_every_timer()
    wait_all(stack, ids, FINAL, timeout_s=RUN_S + 60)
    late = lateness_s(stack, ids)
    report(f"{stack.name}, queue emptied", late, ticker)
    assert max(late) <= BOUND_S
    assert sum(s["timers"] for s in ticker.sweeps) > 0  # the sweep, not luck, brought them home


@pytest.mark.parametrize("stack", ["emulators"], indirect=True)
def test_enqueues_fail_right_after_their_commits(stack: Stack, ticker: Ticker) -> None:
    """The Cloud Tasks emulator unreachable: triggers and status checks commit, then fail to
    hand their tasks over (answered 503). The embedded queue lives in the store's own SQLite
    file, so there it fails only with the store (the next test); test_sweep.py covers the
    exact interleaving in process."""
    assert stack.queue is not None
    stack.configure(RUN_S / 2, drop_notifications=1.0)
    running = trigger_many(stack, BUILDS // 2)
    wait_all(stack, running, {"RUNNING"}, timeout_s=60)
    stack.queue.cut()
    cut_at = time.time_ns()
    stranded = 3
    for i in range(stranded):
        body = {"job": JOB, "tags": COMMIT_TAGS, "request_id": f"stranded-{i}"}
        answer = stack.dev.http.post(stack.dev.url + "/trigger", json=body)
        assert answer.status_code == 503, answer.text  # stored, its start not enqueued
    time.sleep(OUTAGE_S)
    stack.queue.restore()
    restored_ns = time.time_ns()
    listed = stack.dev.http.get(f"{stack.dev.url}/api/jobs/{quote(JOB, safe='')}/invocations")
    stored = [i["id"] for i in listed.json()["invocations"] if parse_rfc3339(i["created"]) > cut_at]
    assert len(stored) == stranded
    wait_all(stack, running + stored, FINAL, timeout_s=RUN_S + 60)
    # The stranded ones are started by the sweep once the queue is back, then build.
    late = lateness_s(stack, running + stored, not_before_ns=restored_ns)
    report(f"{stack.name}, enqueues failing", late, ticker)
    assert max(late) <= BOUND_S + RETRY_WAIT_S
    assert sum(s["starts"] for s in ticker.sweeps) >= stranded


def test_pubsub_unreachable_for_a_while(stack: Stack, ticker: Ticker) -> None:
    """Every notification of the builds that end during the outage is late or lost: the
    status checks finish them, and the notifications that come later change nothing."""
    stack.configure(OUTAGE_S)
    ids = trigger_many(stack, BUILDS // 2)
    wait_all(stack, ids, {"RUNNING"}, timeout_s=60)
    stack.publish.cut()
    time.sleep(OUTAGE_S)
    stack.publish.restore()
    wait_all(stack, ids, FINAL, timeout_s=60)
    late = lateness_s(stack, ids)
    report(f"{stack.name}, Pub/Sub down", late, ticker)
    assert max(late) <= BOUND_S


def test_store_unavailable_for_a_few_seconds(stack: Stack, ticker: Ticker) -> None:
    stack.configure(OUTAGE_S)
    ids = trigger_many(stack, BUILDS // 2)
    wait_all(stack, ids, {"RUNNING"}, timeout_s=60)
    stack.store_down()
    time.sleep(OUTAGE_S)
    stack.store_up()
    up_ns = time.time_ns()
    wait_all(stack, ids, FINAL, timeout_s=60)
    late = lateness_s(stack, ids, not_before_ns=up_ns)
    report(f"{stack.name}, store down", late, ticker)
    assert max(late) <= BOUND_S + RETRY_WAIT_S
    # The outage was felt: Cloud Scheduler's ticks failed, or the embedded queue's reads did.
    felt = (stack.dev.workdir / "dev.log").read_text().count("database is locked")
    assert ticker.failed if stack.queue else felt
