"""The `batched` benchmark of bench/run.py, small: 1, 10 and 20 concurrent one-hour builds, every
notification lost, under each status policy, against the Buildbucket simulator in virtual time
(luci and shepherd measured up to 10 builds, their 20-builds row taken from 10's)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmodule import bench
from shepherd.durations import HOUR
from shepherd_tools.simulator.control import SimulatorProcess

STATUS_POLICIES = ("luci", "shepherd", "batched")
CHECK_MAX_S, TASK_LATENCY_S = 600, 0.1


@pytest.fixture(scope="module")
def figures(sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return bench.batched_checks(
        sim,
        tmp_path_factory.mktemp("batched"),
        bench.PRICES,
        (bench.FUNCTION_VCPU, bench.FUNCTION_GIB),
        sizes=(1, 10, 20),
        build_ns=HOUR,
        per_invocation_up_to=10,
    )


def test_every_build_ends_its_invocation_within_status_check_max(figures: dict[str, Any]) -> None:
    for n, row in figures["runs"].items():
        for policy in STATUS_POLICIES:
            run = row[policy]
            assert run["succeeded"] == run["builds"], (n, policy)
            assert 0 <= run["worst_staleness_s"] <= CHECK_MAX_S + TASK_LATENCY_S, (n, policy)
            assert run["notifications_handled"] == 0  # all dropped: only checks saw the ends


def test_one_batch_a_period_replaces_a_get_build_per_invocation(figures: dict[str, Any]) -> None:
    shepherd, ours = figures["runs"]["10"]["shepherd"], figures["runs"]["10"]["batched"]
    assert ours["calls"]["GetBuild"] == 0 and shepherd["calls"]["Batch"] == 0
    assert ours["calls"]["ScheduleBuild"] == shepherd["calls"]["ScheduleBuild"] == 10
    # A check per period for the 10 builds together: a tenth of the per-invocation checks (the
    # chain's boundaries and an invocation's own timers can differ by one check).
    assert ours["calls"]["Batch"] <= shepherd["calls"]["GetBuild"] / 10 + 1
    assert ours["check_rpcs_per_build_hour"] < shepherd["check_rpcs_per_build_hour"] / 5
    assert ours["rpcs_per_build_hour"] < shepherd["rpcs_per_build_hour"] / 2
    assert figures["runs"]["10"]["ratio_rpcs_batched_to_luci"] < 0.5
    # The same builds are read, in fewer calls, by fewer function invocations, fewer writes.
    assert ours["builds_read_per_build_hour"] == pytest.approx(
        shepherd["builds_read_per_build_hour"], rel=0.2
    )
    assert (
        ours["function_invocations_per_build_hour"]
        < shepherd["function_invocations_per_build_hour"] / 3
    )
    assert ours["store_writes_per_build_hour"] < shepherd["store_writes_per_build_hour"]
    assert ours["cost"]["total_usd"] < shepherd["cost"]["total_usd"]


def test_batched_gets_cheaper_per_build_hour_as_builds_are_added(figures: dict[str, Any]) -> None:
    runs = figures["runs"]
    per = [runs[n]["batched"]["check_rpcs_per_build_hour"] for n in ("1", "10", "20")]
    assert per[0] > per[1] > per[2]
    # Alone, a batched build costs what a shepherd one does: one check each period.
    assert per[0] == pytest.approx(runs["1"]["shepherd"]["check_rpcs_per_build_hour"], rel=0.2)


def test_per_invocation_policies_do_not_depend_on_the_number_of_builds(
    figures: dict[str, Any],
) -> None:
    # What lets the 1,000 row take their figures from a smaller run.
    runs = figures["runs"]
    for key in ("rpcs_per_build_hour", "function_invocations_per_build_hour"):
        assert runs["10"]["shepherd"][key] == pytest.approx(runs["1"]["shepherd"][key])
        assert runs["10"]["luci"][key] == pytest.approx(runs["1"]["luci"][key], rel=0.25)
    for policy in ("luci", "shepherd"):
        taken = runs["20"][policy]
        assert taken["taken_from_builds"] == 10 and taken["builds"] == 10
    assert "taken_from_builds" not in runs["20"]["batched"]
    assert runs["20"]["batched"]["builds"] == 20


def test_the_tables_show_every_size_and_mark_the_taken_rows(figures: dict[str, Any]) -> None:
    table = "\n".join(bench.batched_markdown(figures))
    assert "| 20 | luci\\* |" in table and "| 20 | batched |" in table
    assert "| 10 | luci |" in table
    ratio = figures["runs"]["10"]["ratio_rpcs_batched_to_luci"]
    assert f"| {ratio:.3f} |" in table
    assert "batched-" not in table and len(table.splitlines()) == 5 + 9 + 2 + 5 + 3
