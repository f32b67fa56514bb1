"""The `reruns` benchmark of bench/run.py, small: a builder failing on infrastructure, with and
without reruns; the figures it reports agree with each other and with what the simulator did."""

from __future__ import annotations

from pathlib import Path

from benchmodule import bench
from shepherd_tools.simulator.control import SimulatorProcess


def test_reruns_spend_builds_to_turn_infra_failures_into_successes(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    result = bench.rerun_benefit(sim, tmp_path, invocations=20, infra_failure=0.5)
    none, rerun = result["runs"].values()
    assert none["builds"] == 20 and none["most_builds_in_one_invocation"] == 1
    assert 20 <= rerun["builds"] <= 60 and rerun["most_builds_in_one_invocation"] <= 3
    # Each extra build followed an infra failure; an invocation fails only after 3 of them.
    assert rerun["builds"] - 20 >= 20 - rerun["succeeded"]
    assert rerun["succeeded"] >= none["succeeded"]
    assert none["succeeded_share"] == none["succeeded"] / 20
    table = "\n".join(bench.reruns_markdown(result))
    assert f"| {rerun['builds']} |" in table and f"({none['succeeded_share']:.1%})" in table
