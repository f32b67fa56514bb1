"""The `polls` benchmark of bench/run.py, small and on SQLite only: a poller job scheduled
`with 30s interval` against the Gitiles simulator, polled through its tick tasks in virtual time;
what a poll that finds nothing and one that finds a commit cost, and a day of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from benchmodule import bench
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd_tools.gitiles_sim.control import GitilesSimProcess


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("polls")
    with GitilesSimProcess() as gitiles:
        yield {
            variant: bench._poll_run(gitiles, SqliteStore(workdir / f"{variant}.db"), variant, 2)
            for variant in bench.POLL_VARIANTS
        }


def test_a_poll_is_one_refs_request_two_deliveries_and_two_tasks(runs: dict[str, Any]) -> None:
    for run in runs.values():  # ten branches by regexp: one +refs request as for one ref
        quiet, new = run["quiet"], run["new_commit"]
        assert quiet["gitiles_requests_by_kind"] == {"refs": 1, "log": 0, "other": 0}
        assert new["gitiles_requests_by_kind"] == {"refs": 1, "log": 1, "other": 0}
        for case, emitted in ((quiet, 0), (new, 1)):
            assert case["polls"] == 2 and case["triggers_emitted"] == emitted
            assert case["functions"] == 2  # the tick task, the start task
            assert case["tasks_handed"] == 2  # the start task, the next tick task
            assert case["target_tasks_handed"] == emitted  # the start the trigger caused
            assert case["wall_ms_median"] >= case["client_ms_median"] >= 0
        assert new["reads"] > quiet["reads"] and new["writes"] > quiet["writes"]
        # The scheduler's minute tick only reads: the job, and its 10 newest invocations.
        assert run["scheduler_tick"] == {"ticks": 4, "reads": 11, "writes": 0, "transactions": 0}


def test_a_day_of_polls_and_what_a_commit_adds(runs: dict[str, Any]) -> None:
    run = runs["main"]
    quiet, tick = run["quiet"], run["scheduler_tick"]
    day = bench._poll_day(quiet, run["new_commit"], tick)
    polls = bench.POLLS_PER_DAY
    assert polls == 2880
    assert day["quiet_day"]["gitiles_requests"] == polls
    assert day["quiet_day"]["function_invocations"] == day["quiet_day"]["cloud_tasks"] == 2 * polls
    assert day["quiet_day"]["firestore_reads"] == polls * quiet["reads"] + 1440 * tick["reads"]
    assert 0 < day["per_new_commit"]["total_usd"] < day["quiet_day"]["total_usd"]
    assert day["per_new_commit"]["function_invocations"] == 0
    results = {
        "interval_s": 30,
        "polls_per_day": polls,
        "scheduler_ticks_per_day": 1440,
        "target": "one noop job",
        "prices_recorded": bench.PRICES["recorded"],
        "variants": {
            v: {
                "sqlite": r,
                "firestore": r,
                "per_day": bench._poll_day(r["quiet"], r["new_commit"], tick),
            }
            for v, r in runs.items()
        },
    }
    lines = bench.polls_markdown(results)
    assert sum(line.startswith("| `") for line in lines) == 8
    assert bench._poll_day_row(results).startswith("| a day of Gitiles polls")
