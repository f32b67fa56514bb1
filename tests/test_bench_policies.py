"""The `policies` benchmark of bench/run.py, small: 10 commits over 10 minutes, builds of 30 s in
the queue and 2 min running, against the Buildbucket simulator in virtual time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmodule import ROOT, bench
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.durations import MINUTE, SECOND
from shepherd.model import TriggerStatus
from shepherd_tools.simulator.control import SimulatorProcess

COMMITS, WINDOW, QUEUE, BUILD = 10, 10 * MINUTE, 30 * SECOND, 2 * MINUTE
# Deliveries in the replay: a start task after 100 ms, a notification after 250 ms.
DELIVERY_S = 0.35


@pytest.fixture(scope="module")
def figures(sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return bench.triggering_policies(
        sim,
        tmp_path_factory.mktemp("policies"),
        commits=COMMITS,
        window_ns=WINDOW,
        queue_ns=QUEUE,
        build_ns=BUILD,
    )


def test_commits_arrive_in_the_window_each_with_its_own_commit() -> None:
    arrivals = bench.commit_arrivals(COMMITS, WINDOW, 15)
    assert arrivals == sorted(arrivals) and arrivals[0] >= 0 and arrivals[-1] < WINDOW
    assert arrivals == bench.commit_arrivals(COMMITS, WINDOW, 15)  # seeded
    requests = [bench.commit_trigger(n) for n in range(COMMITS)]
    assert len({r.gitiles.revision for r in requests}) == COMMITS
    assert len({r.request_id for r in requests}) == COMMITS


def test_every_commit_is_built_under_every_policy(figures: dict[str, Any]) -> None:
    assert set(figures["runs"]) == set(bench.TRIGGERING_POLICIES)
    for run in figures["runs"].values():
        assert run["commits_built"] == COMMITS
        assert run["discarded"] == run["pending"] == 0
        assert run["builds"] == run["invocations"]
        assert run["build_minutes"] == pytest.approx(run["builds"] * BUILD / MINUTE)


def test_greedy_batches_where_one_per_trigger_builds_each_at_once(
    figures: dict[str, Any],
) -> None:
    greedy, each = figures["runs"]["greedy_batching"], figures["runs"]["one_build_per_trigger"]
    log, newest = figures["runs"]["logarithmic_batching"], figures["runs"]["newest_first"]
    assert each["builds"] == newest["builds"] == COMMITS
    assert each["largest_batch"] == newest["largest_batch"] == 1
    assert greedy["builds"] < COMMITS and greedy["largest_batch"] > 1
    assert greedy["builds"] <= log["builds"] <= COMMITS
    # One build per trigger: scheduled as soon as the start task comes.
    assert each["worst_latency_s"] <= 1
    # Greedy: a commit waits at most for the build in progress (queue + run) and a delivery.
    build_s = (QUEUE + BUILD) / SECOND
    assert 1 < greedy["worst_latency_s"] <= build_s + DELIVERY_S + 0.01
    assert greedy["median_latency_s"] <= greedy["worst_latency_s"]
    # newest_first leaves older commits waiting behind newer ones: the worst wait is longest.
    assert newest["worst_latency_s"] > greedy["worst_latency_s"]
    # Every commit has its result once the last build is over.
    last = figures["last_arrival_s"] + build_s
    assert last <= each["all_built_s"] <= last + 1
    assert greedy["all_built_s"] <= last + build_s + 1


def test_each_build_is_of_the_newest_commit_of_its_batch(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    arrivals = bench.commit_arrivals(COMMITS, WINDOW, 15)
    state = tmp_path / "greedy.db"
    policy = bench.TRIGGERING_POLICIES["greedy_batching"]
    run = bench.policy_run(sim, state, policy, arrivals, QUEUE, BUILD)
    built = [b["input"]["gitilesCommit"]["id"] for b in sim.state()["builds"]]
    store = SqliteStore(state)
    batches = [inv.triggers for inv in store.list_invocations(bench.POLICY_JOB, limit=100)]
    assert len(batches) == run["builds"] == len(built)
    assert max(len(b) for b in batches) > 1
    assert sorted(built) == sorted(b[-1].request.gitiles.revision for b in batches)
    taken = sorted(t.id for b in batches for t in b)
    assert taken == [f"commit-{n:03d}" for n in range(COMMITS)]  # each commit in one batch
    for n in range(COMMITS):
        trigger = store.get_trigger(bench.POLICY_JOB, f"commit-{n:03d}")
        assert trigger is not None and trigger.status is TriggerStatus.STARTED


def test_merge_keeps_the_other_steps_and_reports_the_table(
    figures: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = json.loads((ROOT / "bench" / "results.json").read_text())
    earlier.pop("policies", None)
    earlier.pop("measured_apart", None)
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    monkeypatch.setattr(bench, "OUT", tmp_path)
    fresh = {"when": "2026-11-25 16:00 UTC", "machine": "test", "policies": figures}
    bench.merge("policies", fresh, 3.0)
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged == {
        **earlier,
        "policies": figures,
        "measured_apart": {"policies": "2026-11-25 16:00 UTC on test, in 3 s"},
    }
    report = (tmp_path / "RESULTS.md").read_text()
    assert all(line in report.splitlines() for line in bench.markdown(earlier).splitlines())
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for label in bench.POLICY_LABELS.values():
        assert sum(label in row for row in rows) == 1
