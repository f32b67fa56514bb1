"""`shepherd replay seed` against the real LUCI log in ../shared/spec/seed-invocation-log.txt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from counted_replay import CountedReplay, counted_replay
from seedlog import Entry, check_shape, parse_log
from shepherd.debuglog import format_log
from shepherd.durations import parse_duration
from shepherd.model import LogKind
from shepherd.timestamps import parse_rfc3339
from shepherd_tools.replay import load_scenario
from shepherd_tools.simulator.control import SimulatorProcess

SEED_LOG = Path(__file__).resolve().parents[2] / "shared" / "spec" / "seed-invocation-log.txt"
TIME_FIELDS = {"createTime", "startTime", "endTime", "updateTime"}


@pytest.fixture(scope="module")
def seed() -> list[Entry]:
    if not SEED_LOG.is_file():
        pytest.fail(f"the spec's seed log is missing: {SEED_LOG}")
    return parse_log(SEED_LOG.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> list[Entry]:
    state = tmp_path_factory.mktemp("replay") / "state.db"
    done = subprocess.run(
        [sys.executable, "-m", "shepherd_tools.cli", "replay", "seed", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return parse_log(done.stdout)


def first(entries: list[Entry], kind: str) -> Entry:
    return next(e for e in entries if e.kind == kind)


def without_times(build: dict) -> dict:
    for field in TIME_FIELDS & build.keys():
        parse_rfc3339(build[field])
        build[field] = "<time>"
    return build


def test_the_checker_accepts_the_seed_itself(seed: list[Entry]) -> None:
    check_shape(seed)


def test_replay_has_the_seed_shape(replayed: list[Entry]) -> None:
    check_shape(replayed)


@pytest.mark.parametrize(
    "kind",
    [
        "queued",
        "starting",
        "popped_buildset",
        "popped_commit",
        "preparing_topic",
        "topic",
        "task_url",
    ],
)
def test_fixed_lines_match_the_seed_exactly(
    seed: list[Entry], replayed: list[Entry], kind: str
) -> None:
    assert first(replayed, kind).text == first(seed, kind).text


def test_request_json_matches_the_seed_but_for_the_invocation_id(
    seed: list[Entry], replayed: list[Entry]
) -> None:
    ours, theirs = first(replayed, "request").json(), first(seed, "request").json()
    seed_id, our_id = theirs["requestId"], ours["requestId"]
    assert our_id != seed_id and our_id.isdigit() and 0 < int(our_id) < 2**63
    assert first(replayed, "request").groups[0] == first(seed, "request").groups[0].replace(
        seed_id, our_id
    )


@pytest.mark.parametrize("kind", ["scheduled", "final_build"])
def test_build_json_matches_the_seed_but_for_times(
    seed: list[Entry], replayed: list[Entry], kind: str
) -> None:
    ours, theirs = first(replayed, kind).json(), first(seed, kind).json()
    assert list(ours) == list(theirs), "same fields in the same order"
    assert without_times(ours) == without_times(theirs)


def test_timer_ids_name_the_job_and_invocation(replayed: list[Entry]) -> None:
    invocation_id = first(replayed, "request").json()["requestId"]
    timers = [e for e in replayed if e.kind == "timer_scheduled"]
    assert len(timers) > 10
    assert all(t.groups[1:3] == ("chromium/Windows deterministic", invocation_id) for t in timers)


def test_finish_line_duration_is_the_invocation_lifetime(
    seed: list[Entry], replayed: list[Entry]
) -> None:
    for log in (seed, replayed):
        finished = log[-1]
        assert finished.groups[1] == "SUCCEEDED"
        lifetime_ms = parse_duration(finished.groups[0]) // 1_000_000
        # The invocation starts a moment before its first line is written.
        assert 0 <= lifetime_ms - (finished.ms - log[0].ms) < 1000
    build = first(replayed, "final_build").json()
    took = parse_rfc3339(build["endTime"]) - parse_rfc3339(build["createTime"])
    assert 5 * 3600 < took / 1e9 < 6 * 3600


# What each line of the seed's form is, by its text (tests/seedlog.py), as a kind.
SEED_KINDS = {
    "queued": LogKind.QUEUED,
    "starting": LogKind.STARTED,
    "popped_buildset": LogKind.INFO,
    "popped_commit": LogKind.INFO,
    "preparing_topic": LogKind.INFO,
    "topic": LogKind.INFO,
    "request": LogKind.REQUEST,
    "scheduled": LogKind.BUILD,
    "task_url": LogKind.INFO,
    "timer_scheduled": LogKind.TIMER_SCHEDULED,
    "timer_handled": LogKind.TIMER_HANDLED,
    "status": LogKind.BUILD_STATUS,
    "notification": LogKind.NOTIFICATION,
    "final_build": LogKind.BUILD,
    "finished": LogKind.FINISHED,
}


@pytest.fixture(scope="module")
def counted(sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> CountedReplay:
    state = tmp_path_factory.mktemp("counted") / "state.db"
    return counted_replay(load_scenario("seed"), state, sim)


def test_every_entry_has_the_kind_its_text_says(counted: CountedReplay) -> None:
    by_text = parse_log(format_log(counted.entries))
    assert [SEED_KINDS[e.kind] for e in by_text] == [e.kind for e in counted.entries]


def test_kinds_count_what_was_delivered_and_called(counted: CountedReplay) -> None:
    kinds = [e.kind for e in counted.entries]
    calls = [e.call for e in counted.entries if e.call is not None]
    assert kinds.count(LogKind.TIMER_HANDLED) == counted.handled("timer") > 10
    assert kinds.count(LogKind.NOTIFICATION) == counted.handled("notification") > 0
    assert counted.deliveries.keys() <= {
        ("start", "handled"),
        ("timer", "handled"),
        ("notification", "handled"),
    }
    # The one pending when the build's end arrived is never delivered.
    assert kinds.count(LogKind.TIMER_SCHEDULED) == counted.handled("timer") + 1
    scheduled = [e for e in counted.entries if e.call == "ScheduleBuild"]
    assert len(scheduled) == 1 and scheduled[0].kind is LogKind.BUILD
    assert calls.count("ScheduleBuild") == counted.simulator_calls["ScheduleBuild"] == 1
    assert calls.count("GetBuild") == counted.simulator_calls["GetBuild"]
    assert calls.count("CancelBuild") == counted.simulator_calls["CancelBuild"] == 0
    assert kinds.count(LogKind.BUILD) == 2  # scheduled, final
    assert (kinds[0], kinds[1], kinds[-1]) == (LogKind.QUEUED, LogKind.STARTED, LogKind.FINISHED)
