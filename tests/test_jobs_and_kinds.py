"""The job file's validation, and a task kind the engine has never heard of."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kinds import sleep_engine
from shepherd.durations import HOUR, MINUTE, SECOND
from shepherd.engine import Outcome
from shepherd.jobs import ConfigError, load_jobs, parse_jobs
from shepherd.model import QueuedTask, Status, TriggerRequest
from shepherd.policy import TriggeringPolicy
from shepherd.tasks.registry import CONFIG_MODELS

GOOD_JOB = {
    "id": "chromium/Windows deterministic",
    "server": "cr-buildbucket.appspot.com",
    "bucket": "ci",
    "builder": "Windows deterministic",
}


def parse(jobs: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> Any:
    return parse_jobs({"settings": settings or {}, "jobs": jobs}, "jobs.toml", CONFIG_MODELS)


def test_a_good_file_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(
        '[settings]\nstatus_check_min = "90s"\n\n[[jobs]]\nid = "chromium/Windows deterministic"\n'
        'server = "http://127.0.0.1:8081"\nbucket = "ci"\nbuilder = "Windows deterministic"\n'
    )
    jobs = load_jobs(path, CONFIG_MODELS)
    assert jobs.settings.status_check_min == 90 * SECOND
    assert jobs.settings.status_check_max == 10 * MINUTE
    job = jobs.job("chromium/Windows deterministic")
    assert job is not None and job.kind == "buildbucket" and job.config.tags == ()


@pytest.mark.parametrize(
    ("jobs", "settings", "message"),
    [
        (
            [{**GOOD_JOB, "tags": ["user_agent:me"]}],
            None,
            'job "chromium/Windows deterministic": field "tags": tag "user_agent" is reserved',
        ),
        (
            [{**GOOD_JOB, "tags": ["novalue"]}],
            None,
            'field "tags": tag "novalue" must be "key:value"',
        ),
        ([{**GOOD_JOB, "server": "https://x.example.com"}], None, 'field "server"'),
        ([{**GOOD_JOB, "builder": ""}], None, 'field "builder"'),
        ([{**GOOD_JOB, "bucket": "luci.chromium.ci"}], None, "legacy v1 bucket"),
        ([{**GOOD_JOB, "kind": "jenkins"}], None, 'field "kind": unknown task kind "jenkins"'),
        ([{**GOOD_JOB, "colour": "red"}], None, 'field "colour": Extra inputs are not permitted'),
        ([GOOD_JOB, GOOD_JOB], None, "duplicate job id"),
        ([{**GOOD_JOB, "id": "no-project"}], None, 'field "id"'),
        ([GOOD_JOB], {"status_check_min": "10m", "status_check_max": "1m"}, "must not exceed"),
        ([GOOD_JOB], {"status_check_min": "5 minutes"}, 'field "status_check_min"'),
        (
            [{**GOOD_JOB, "triggering_policy": {"kind": "newest"}}],
            None,
            'job "chromium/Windows deterministic": field "triggering_policy": '
            'unrecognized policy kind "newest"',
        ),
        (
            [{**GOOD_JOB, "triggering_policy": {"max_concurrent_invocations": 0}}],
            None,
            'field "triggering_policy": max_concurrent_invocations should be positive, got 0',
        ),
        (
            [{**GOOD_JOB, "triggering_policy": {"pending_timeout": "1h"}}],
            None,
            'field "triggering_policy": pending_timeout is set with kind "greedy_batching"',
        ),
        (
            [{**GOOD_JOB, "triggering_policy": {"kind": "logarithmic_batching", "log_base": 1}}],
            None,
            'field "triggering_policy": log_base should be larger or equal 1.0001, got 1.000000',
        ),
        (
            [{**GOOD_JOB, "triggering_policy": {"max_batch": 5}}],
            None,
            'field "triggering_policy": unknown key "max_batch"',
        ),
        ([{**GOOD_JOB, "triggering_policy": "greedy"}], None, 'field "triggering_policy": should'),
        (
            [{**GOOD_JOB, "triggering_policy": {}, "max_concurrent_invocations": 2}],
            None,
            'job "chromium/Windows deterministic": field "max_concurrent_invocations": '
            'not allowed beside "triggering_policy"',
        ),
        ([{**GOOD_JOB, "max_concurrent_invocations": 1001}], None, "less than or equal to 1000"),
    ],
)
def test_bad_files_are_refused_naming_file_job_and_field(
    jobs: list[dict[str, Any]], settings: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse(jobs, settings)
    assert str(error.value).startswith("jobs.toml: ")
    assert message in str(error.value)


def test_triggering_policy_and_the_older_max_concurrent_invocations(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(
        '[[jobs]]\nid = "a/newest"\nserver = "http://127.0.0.1:8081"\nbucket = "ci"\n'
        'builder = "b"\ntriggering_policy = {kind = "newest_first", max_concurrent_invocations'
        ' = 3, pending_timeout = "2h"}\n\n[[jobs]]\nid = "a/old"\nserver = "http://127.0.0.1:8081"'
        '\nbucket = "ci"\nbuilder = "b"\nmax_concurrent_invocations = 4\n\n[[jobs]]\nid = "a/plain"'
        '\nserver = "http://127.0.0.1:8081"\nbucket = "ci"\nbuilder = "b"\n'
    )
    jobs = load_jobs(path, CONFIG_MODELS).jobs
    newest = jobs["a/newest"].triggering_policy
    assert (newest.kind, newest.max_concurrent_invocations, newest.pending_timeout_ns) == (
        "newest_first",
        3,
        2 * HOUR,
    )
    assert jobs["a/newest"].max_concurrent_invocations == 3
    assert jobs["a/old"].triggering_policy == TriggeringPolicy(max_concurrent_invocations=4)
    assert jobs["a/old"].max_concurrent_invocations == 4
    assert jobs["a/plain"].triggering_policy == TriggeringPolicy()
    assert not hasattr(jobs["a/plain"].config, "triggering_policy")


def test_unreadable_and_invalid_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the job file"):
        load_jobs(tmp_path / "missing.toml", CONFIG_MODELS)
    (tmp_path / "bad.toml").write_text("[[jobs]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_jobs(tmp_path / "bad.toml", CONFIG_MODELS)


def test_a_new_kind_plugs_in_without_touching_the_engine(tmp_path: Path) -> None:
    engine, clock, queue = sleep_engine(tmp_path, seconds=90)
    inv = engine.trigger(TriggerRequest(job_id="infra/nap")).invocation
    delivered: list[QueuedTask] = []
    while (eta := queue.next_eta()) is not None:
        clock.advance_to(eta)
        for task in queue.pop_due(eta):
            delivered.append(task)
            assert (
                engine.handle_task(task.invocation_id, task.timer_id, task.name) is Outcome.HANDLED
            )
    final = engine.store.get(inv.id)
    assert final is not None and final.status is Status.SUCCEEDED
    assert [t.timer_id for t in delivered][1] == f"infra/nap:{inv.id}:1:0"
    assert [e.text for e in engine.store.read_log(inv.id)] == [
        "New invocation is queued and will start shortly",
        "Starting the invocation (attempt 1)",
        "Sleeping 90s",
        f'Scheduling timer "wake-up" (infra/nap:{inv.id}:1:0) after 1m30s',
        f'Handling timer "wake-up" (infra/nap:{inv.id}:1:0)',
        "Invocation finished in 1m30s with status SUCCEEDED",
    ]


def test_a_timer_whose_job_left_the_job_file_fails_the_invocation(tmp_path: Path) -> None:
    engine, clock, queue = sleep_engine(tmp_path, seconds=90)
    inv = engine.trigger(TriggerRequest(job_id="infra/nap")).invocation
    (start,) = queue.pop_due(clock.now_ns())
    engine.handle_task(start.invocation_id, start.timer_id, start.name)
    engine.jobs.jobs.clear()  # the job file was changed under a running invocation
    clock.advance(90 * 10**9)
    (timer,) = queue.pop_due(clock.now_ns())
    assert engine.handle_task(timer.invocation_id, timer.timer_id, timer.name) is Outcome.HANDLED
    final = engine.store.get(inv.id)
    assert final is not None and final.status is Status.FAILED
    log = [e.text for e in engine.store.read_log(inv.id)]
    assert "Failed to initialize task controller - job 'infra/nap' is not configured" in log


def test_a_redelivered_timer_hands_pending_timers_again(tmp_path: Path) -> None:
    engine, clock, queue = sleep_engine(tmp_path, seconds=90)
    inv = engine.trigger(TriggerRequest(job_id="infra/nap")).invocation
    (start,) = queue.pop_due(clock.now_ns())
    engine.handle_task(start.invocation_id, start.timer_id, start.name)
    (pending,) = engine.store.get(inv.id).pending_timers  # type: ignore[union-attr]
    handed: list[QueuedTask] = []
    engine.queue = Recorder(handed)  # a fresh queue: what the lost hand-off should have given
    outcome = engine.handle_task(inv.id, f"infra/nap:{inv.id}:0:0", "wake-up")  # already used
    assert outcome is Outcome.STALE
    assert handed == [pending.task(inv.id)]


class Recorder:
    def __init__(self, into: list[QueuedTask]) -> None:
        self.into = into

    def schedule(self, tasks: list[QueuedTask]) -> None:
        self.into.extend(tasks)


@pytest.mark.parametrize("tid", ["junk", "a:b", "infra/nap:1:start:x", "other/job:5:start:1"])
def test_malformed_start_tasks_are_ignored(tmp_path: Path, tid: str) -> None:
    engine, _, _ = sleep_engine(tmp_path, seconds=90)
    inv = engine.trigger(TriggerRequest(job_id="infra/nap")).invocation
    assert engine.handle_task(inv.id, tid, "start-invocation") is Outcome.IGNORED
    stored = engine.store.get(inv.id)
    assert stored is not None and stored.mutation_count == 0
