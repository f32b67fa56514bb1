"""The engine end to end in virtual time: the real simulator process, SQLite and pRPC client."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.durations import SECOND
from shepherd.engine import InvocationFinished, Outcome, RetryLater
from shepherd.model import Invocation, LogKind, PubSubMessage, Status
from shepherd.timestamps import parse_rfc3339
from shepherd.views import InvocationView, to_json
from shepherd.webpage import marks
from shepherd_tools.replay import ReplayResult, Scenario, VirtualStack, load_scenario, replay
from shepherd_tools.simulator.control import SimulatorProcess

SHORT = [{"status": "SCHEDULED", "for": "2m"}, {"status": "STARTED", "for": "25m"}]


def scenario(**simulator: Any) -> Scenario:
    seed = load_scenario("seed")
    return dataclasses.replace(seed, simulator={**seed.simulator, **simulator})


def run(sim: SimulatorProcess, tmp_path: Path, **simulator: Any) -> ReplayResult:
    return replay(scenario(**simulator), tmp_path / "state.db", sim)


def texts(result: ReplayResult) -> list[str]:
    """The log's entries, JSON blocks kept with their line."""
    parts = re.split(r"^\[\d\d:\d\d:\d\d\.\d{3}\] ", result.log_text, flags=re.M)
    return [part.rstrip("\n") for part in parts[1:]]


@pytest.mark.parametrize(
    ("build_status", "final"),
    [
        ("SUCCESS", Status.SUCCEEDED),
        ("FAILURE", Status.FAILED),
        ("INFRA_FAILURE", Status.FAILED),
        ("CANCELED", Status.ABORTED),
    ],
)
def test_every_final_build_status(
    sim: SimulatorProcess, tmp_path: Path, build_status: str, final: Status
) -> None:
    result = run(sim, tmp_path, script=[*SHORT, {"status": build_status}])
    assert result.invocation.status is final
    lines = texts(result)
    assert lines[-2].startswith("Build:\n") and f'"status": "{build_status}"' in lines[-2]
    assert lines[-1].startswith("Invocation finished in ")
    assert lines[-1].endswith(f"with status {final}")
    assert result.invocation.finished_ns is not None
    assert result.simulator_calls["ScheduleBuild"] == 1


def test_unexpected_build_status_fails_with_a_log_line(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    result = run(sim, tmp_path, script=[*SHORT, {"status": "STATUS_UNSPECIFIED"}])
    assert result.invocation.status is Status.FAILED
    lines = texts(result)
    assert (
        lines[-3] == "Unexpected Build status STATUS_UNSPECIFIED, marking the invocation as failed"
    )
    assert lines[-2].startswith("Build:\n")


def test_timers_alone_finish_when_every_notification_is_lost(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    result = run(sim, tmp_path, script=[*SHORT, {"status": "SUCCESS"}], drop_notifications=1.0)
    lines = texts(result)
    assert not any(line.startswith("Received PubSub notification") for line in lines)
    assert lines[-3].startswith('Handling timer "check-buildbucket-build-status"')
    assert result.invocation.status is Status.SUCCEEDED
    # One GetBuild per timer: the 27-minute build with checks every 1-10 minutes.
    assert 3 <= result.simulator_calls["GetBuild"] <= 28


def test_duplicated_notifications_change_nothing_twice(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    result = run(
        sim, tmp_path, script=[*SHORT, {"status": "SUCCESS"}], duplicate_notifications=True
    )
    lines = texts(result)
    assert lines.count("Build status: STARTED") >= 2  # the duplicate STARTED is harmless
    assert sum(line.startswith("Invocation finished") for line in lines) == 1
    assert sum(line.startswith("Build:\n") for line in lines) == 1


def test_schedule_build_transient_errors_are_retried_in_the_client(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    result = run(
        sim, tmp_path, faults=[{"method": "ScheduleBuild", "code": "UNAVAILABLE", "times": 2}]
    )
    assert result.invocation.status is Status.SUCCEEDED
    assert result.simulator_calls["ScheduleBuild"] == 3
    assert len(sim.state()["builds"]) == 1


def test_schedule_build_still_failing_retries_the_launch(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    result = run(
        sim, tmp_path, faults=[{"method": "ScheduleBuild", "code": "UNAVAILABLE", "times": 4}]
    )
    lines = texts(result)
    failed = [line for line in lines if line.startswith("Failed to schedule Buildbucket build")]
    assert failed == [
        "Failed to schedule Buildbucket build - rpc error: code = Unavailable desc = "
        + failed[0].split("desc = ", 1)[1]
    ]
    assert "The invocation will be retried" in lines
    assert "Starting the invocation (attempt 2)" in lines
    assert result.invocation.status is Status.SUCCEEDED
    assert result.invocation.attempt == 2
    assert result.simulator_calls["ScheduleBuild"] == 5
    assert len(sim.state()["builds"]) == 1


ANONYMOUS = "anonymous (no token goes to http:// servers)"
REFUSALS = [
    # A proxy or Google's front end refusing the token: no X-Prpc-Grpc-Code.
    ({"http_status": 403}, "PermissionDenied", "was refused"),
    ({"http_status": 401}, "Unauthenticated", "was not let in"),
    # Buildbucket itself refusing the caller.
    ({"code": "PERMISSION_DENIED"}, "PermissionDenied", "was refused"),
    ({"code": "UNAUTHENTICATED"}, "Unauthenticated", "was not let in"),
]


@pytest.mark.parametrize(("fault", "go_code", "refused"), REFUSALS)
def test_a_refused_schedule_build_fails_at_once_naming_caller_and_permission(
    sim: SimulatorProcess, tmp_path: Path, fault: dict[str, Any], go_code: str, refused: str
) -> None:
    result = run(sim, tmp_path, faults=[{"method": "ScheduleBuild", **fault}])
    lines = texts(result)
    assert result.invocation.status is Status.FAILED
    failed = lines.index(next(line for line in lines if line.startswith("Failed to schedule")))
    assert lines[failed].startswith(
        f"Failed to schedule Buildbucket build - rpc error: code = {go_code} desc = "
    )
    assert lines[failed + 1] == (
        f'ScheduleBuild {refused}: it was called as "{ANONYMOUS}", which needs the Buildbucket '
        'permission buildbucket.builds.add in bucket "chromium/ci"'
    )
    assert "The invocation will be retried" not in lines
    assert lines[-1].endswith("with status FAILED")
    assert result.simulator_calls["ScheduleBuild"] == 1
    assert sim.state()["builds"] == []


@pytest.mark.parametrize(("fault", "go_code", "refused"), REFUSALS[:2])
def test_a_refused_get_build_fails_naming_caller_and_permission(
    sim: SimulatorProcess, tmp_path: Path, fault: dict[str, Any], go_code: str, refused: str
) -> None:
    result = run(sim, tmp_path, faults=[{"method": "GetBuild", **fault}], drop_notifications=1.0)
    lines = texts(result)
    assert result.invocation.status is Status.FAILED
    assert lines[-3].startswith(f"Failed to fetch build - rpc error: code = {go_code} desc = ")
    assert lines[-2] == (
        f'GetBuild {refused}: it was called as "{ANONYMOUS}", which needs the Buildbucket '
        "permission buildbucket.builds.get in the build's bucket"
    )
    assert lines[-1].endswith("with status FAILED")
    assert result.simulator_calls["GetBuild"] == 1


def test_get_build_not_found_fails_the_invocation(sim: SimulatorProcess, tmp_path: Path) -> None:
    result = run(
        sim,
        tmp_path,
        faults=[{"method": "GetBuild", "code": "NOT_FOUND", "times": 100}],
        drop_notifications=1.0,
    )
    lines = texts(result)
    assert result.invocation.status is Status.FAILED
    assert lines[-2].startswith("Failed to fetch build - rpc error: code = NotFound desc = ")
    assert lines[-1].endswith("with status FAILED")


@pytest.fixture
def stack(sim: SimulatorProcess, tmp_path: Path) -> Iterator[VirtualStack]:
    virtual = VirtualStack(scenario(script=[*SHORT, {"status": "SUCCESS"}]), tmp_path / "s.db", sim)
    yield virtual
    virtual.close()


def run_until_running(stack: VirtualStack) -> int:
    invocation_id = stack.trigger().id
    while (inv := stack.store.get(invocation_id)) and inv.status is Status.STARTING:
        assert stack.step()
    return invocation_id


def test_abort_cancels_the_build(stack: VirtualStack) -> None:
    invocation_id = run_until_running(stack)
    aborted = stack.engine.abort(invocation_id)
    assert aborted.status is Status.ABORTED
    assert stack.sim.state()["builds"][0]["status"] == "CANCELED"
    assert stack.sim.state()["calls"]["CancelBuild"] == 1
    entries = stack.store.read_log(invocation_id)
    log = [e.text for e in entries]
    assert log[-2] == "Invocation was manually aborted by user"
    assert (entries[-2].kind, entries[-2].call) == (LogKind.ABORT, "CancelBuild")
    assert [e.call for e in entries].count("CancelBuild") == 1
    assert log[-1].endswith("with status ABORTED")
    with pytest.raises(InvocationFinished):
        stack.engine.abort(invocation_id)
    # The pending timer and the CANCELED notification arrive later and change nothing.
    while stack.step():
        pass
    assert [e.text for e in stack.store.read_log(invocation_id)] == log


def test_an_abort_that_its_own_cancellation_overtakes_still_answers_aborted(
    stack: VirtualStack,
) -> None:
    invocation_id = run_until_running(stack)
    store_commit = stack.store.commit

    def cancellation_notified_first(*args: Any) -> None:
        # The CANCELED notification CancelBuild caused is handled before the abort commits.
        del stack.store.commit
        published = stack.sim.advance(stack.clock.now_ns())["published"]
        assert published
        for m in published:
            data = json.dumps(m["data"]).encode()
            stack.engine.handle_notification(PubSubMessage(data, m["attributes"], m["messageId"]))
        store_commit(*args)

    stack.store.commit = cancellation_notified_first  # type: ignore[method-assign]
    aborted = stack.engine.abort(invocation_id)
    assert aborted.status is Status.ABORTED
    assert stack.store.get(invocation_id) == aborted
    assert stack.sim.state()["calls"]["CancelBuild"] == 1


def test_forged_and_malformed_notifications_change_nothing(stack: VirtualStack) -> None:
    invocation_id = run_until_running(stack)
    before = stack.store.get(invocation_id), stack.store.read_log(invocation_id)
    forged_token = "eyJqb2IiOiJ4IiwiaW52IjoiMSJ9.c2lnbmF0dXJl"
    for data in [
        json.dumps(
            {
                "buildPubsub": {"build": {}},
                "userData": base64.b64encode(forged_token.encode()).decode(),
            }
        ),
        json.dumps({"buildPubsub": {"build": {}}, "userData": "%%% not base64"}),
        json.dumps({"build": {}, "user_data": "not-a-token"}),
        "not json at all",
        json.dumps([1, 2, 3]),
    ]:
        outcome = stack.engine.handle_notification(PubSubMessage(data.encode(), {}, "m"))
        assert outcome is Outcome.IGNORED
    assert (stack.store.get(invocation_id), stack.store.read_log(invocation_id)) == before


def test_timer_delivered_twice_is_handled_once(stack: VirtualStack) -> None:
    invocation_id = run_until_running(stack)
    inv = stack.store.get(invocation_id)
    assert inv is not None and len(inv.pending_timers) == 1
    timer = inv.pending_timers[0]
    stack.clock.advance_to(timer.eta_ns)
    stack.sim.advance(stack.clock.now_ns())
    first = stack.engine.handle_task(invocation_id, timer.id, timer.title)
    after_first = stack.store.read_log(invocation_id)
    second = stack.engine.handle_task(invocation_id, timer.id, timer.title)
    assert (first, second) == (Outcome.HANDLED, Outcome.STALE)
    assert stack.store.read_log(invocation_id) == after_first


def test_notification_while_starting_is_retried_later(stack: VirtualStack) -> None:
    invocation_id = stack.trigger().id
    token = stack.engine.signer.sign("chromium/Windows deterministic", invocation_id)
    data = json.dumps({"userData": base64.b64encode(token.encode()).decode()}).encode()
    with pytest.raises(RetryLater):
        stack.engine.handle_notification(PubSubMessage(data, {}, "early"))
    inv = stack.store.get(invocation_id)
    assert inv is not None and inv.status is Status.STARTING and inv.mutation_count == 0


def test_shepherd_policy_trusts_notifications_and_checks_every_max(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    seed = load_scenario("seed")
    settings = {**seed.jobs["settings"], "status_policy": "shepherd"}
    shepherd = dataclasses.replace(
        seed,
        jobs={**seed.jobs, "settings": settings},
        simulator={**seed.simulator, "duplicate_notifications": True},
    )
    result = replay(shepherd, tmp_path / "state.db", sim)
    lines = texts(result)
    assert result.invocation.status is Status.SUCCEEDED
    assert not any("asking Buildbucket" in line for line in lines)
    received = [
        line for line in lines if line.startswith("Received PubSub notification with the build")
    ]
    assert len(received) == 2  # STARTED and SUCCESS; their duplicates bring nothing newer
    assert lines.count("Received PubSub notification, nothing newer than what is known") == 1
    delays = [line.rsplit(" after ", 1)[1] for line in lines if line.startswith("Scheduling timer")]
    assert set(delays) == {"10m0s"}
    handled = sum(line.startswith("Handling timer") for line in lines)
    assert result.simulator_calls["GetBuild"] == handled  # none for notifications
    assert lines[-2].startswith("Build:\n")
    # The builds the notifications brought are no GetBuild, in the log and on the page.
    entries = SqliteStore(tmp_path / "state.db").read_log(result.invocation.id)
    brought = [e for e in entries if e.kind in (LogKind.BUILD_STATUS, LogKind.BUILD)][1:]
    assert [e.call for e in brought].count(None) == 2  # STARTED, SUCCESS
    labels = [m.label for m in marks(entries)]
    assert labels.count("GetBuild") == result.simulator_calls["GetBuild"]


def test_timeout_line_records_the_cancel_build(sim: SimulatorProcess, tmp_path: Path) -> None:
    seed = load_scenario("seed")
    settings = {**seed.jobs["settings"], "invocation_timeout": "1h"}
    timing_out = dataclasses.replace(seed, jobs={**seed.jobs, "settings": settings})
    result = replay(timing_out, tmp_path / "state.db", sim)
    assert result.invocation.status is Status.FAILED
    entries = SqliteStore(tmp_path / "state.db").read_log(result.invocation.id)
    timed_out = [e for e in entries if e.kind is LogKind.TIMEOUT]
    assert [e.text for e in timed_out] == ["Invocation timed out after 1h0m0s, cancelling it"]
    assert timed_out[0].call == "CancelBuild"
    assert [e.call for e in entries].count("CancelBuild") == result.simulator_calls["CancelBuild"]
    assert result.simulator_calls["CancelBuild"] == 1


ACCOUNT = "buildbucket-test@example-project.iam.gserviceaccount.com"


def test_the_topic_is_named_for_the_account_the_server_reports_asked_once(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    stack = VirtualStack(
        scenario(script=[*SHORT, {"status": "SUCCESS"}], service_account=ACCOUNT),
        tmp_path / "s.db",
        sim,
    )
    try:
        # One at a time, as the job's policy runs them.
        finals = [stack.run_until_final(stack.trigger().id) for _ in range(3)]
        invocations = [inv.id for inv in finals]
    finally:
        stack.close()
    assert [inv.status for inv in finals] == [Status.SUCCEEDED] * 3
    topic_id = "scheduler.buildbucket." + ACCOUNT.replace("@", "~")
    topic = f'PubSub topic is "projects/luci-scheduler/topics/{topic_id}"'
    for invocation_id in invocations:
        assert topic in [e.text for e in stack.store.read_log(invocation_id)]
    assert sim.state()["server_info_requests"] == 1, "asked once per server and process"


def test_a_server_that_cannot_say_who_publishes_retries_the_launch(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    result = run(sim, tmp_path, faults=[{"method": "ServerInfo", "code": "UNAVAILABLE"}])
    lines = texts(result)
    failed = [line for line in lines if line.startswith("Failed to prepare PubSub topic - ")]
    assert failed == [
        "Failed to prepare PubSub topic - rpc error: code = Unavailable desc = "
        f"{sim.url}/auth/api/v1/server/info: HTTP 503: simulated UNAVAILABLE fault"
    ]
    assert lines[lines.index(failed[0]) + 1] == "The invocation will be retried"
    assert result.invocation.status is Status.SUCCEEDED and result.invocation.attempt == 2
    assert result.simulator_calls["ScheduleBuild"] == 1
    assert sim.state()["server_info_requests"] == 2


def test_a_refused_cancel_build_names_caller_and_permission(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    stack = VirtualStack(
        scenario(
            script=[*SHORT, {"status": "SUCCESS"}],
            faults=[{"method": "CancelBuild", "http_status": 403}],
        ),
        tmp_path / "s.db",
        sim,
    )
    try:
        invocation_id = run_until_running(stack)
        stack.engine.abort(invocation_id)
    finally:
        stack.close()
    log = [e.text for e in stack.store.read_log(invocation_id)]
    assert (
        f'CancelBuild was refused: it was called as "{ANONYMOUS}", which needs the Buildbucket '
        "permission buildbucket.builds.cancel in the build's bucket"
    ) in log
    assert stack.sim.state()["calls"]["CancelBuild"] == 1


# --- aborts that always complete, launch retries that show --------------------------------


def virtual_stack(sim: SimulatorProcess, tmp_path: Path, **simulator: Any) -> VirtualStack:
    return VirtualStack(
        scenario(script=[*SHORT, {"status": "SUCCESS"}], **simulator), tmp_path / "s.db", sim
    )


def test_an_abort_before_the_launch_skips_it(stack: VirtualStack) -> None:
    invocation_id = stack.trigger().id
    recorded = stack.engine.abort(invocation_id)
    assert (recorded.status, recorded.abort_requested) == (Status.STARTING, True)
    assert stack.engine.abort(invocation_id) == recorded, "a second abort changes nothing"
    final = stack.run_until_final(invocation_id)
    assert final.status is Status.ABORTED
    assert stack.sim.state()["calls"]["ScheduleBuild"] == 0
    assert stack.sim.state()["builds"] == []
    log = [e.text for e in stack.store.read_log(invocation_id)]
    assert "Invocation was manually aborted by user" in log
    assert "Skipping the launch: the invocation was aborted" in log
    assert not any(line.startswith("Starting the invocation") for line in log)
    with pytest.raises(InvocationFinished):
        stack.engine.abort(invocation_id)


def test_an_abort_during_the_launch_cancels_the_build_it_made(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    stack = virtual_stack(sim, tmp_path)
    schedule_build = stack.client.schedule_build
    answers: list[Invocation] = []

    def aborted_meanwhile(server: str, request: dict[str, Any]) -> dict[str, Any]:
        build = schedule_build(server, request)
        # The user aborts while the launch is between its ScheduleBuild and its commit.
        answers.append(stack.engine.abort(int(request["requestId"])))
        return build

    stack.client.schedule_build = aborted_meanwhile  # type: ignore[method-assign]
    try:
        invocation_id = stack.trigger().id
        final = stack.run_until_final(invocation_id)
    finally:
        stack.close()
    assert [(a.status, a.abort_requested) for a in answers] == [(Status.STARTING, True)]
    assert final.status is Status.ABORTED
    calls = sim.state()["calls"]
    assert (calls["ScheduleBuild"], calls["CancelBuild"]) == (1, 1)
    assert [b["status"] for b in sim.state()["builds"]] == ["CANCELED"]
    entries = stack.store.read_log(invocation_id)
    cancel = next(e for e in entries if e.call == "CancelBuild")
    assert cancel.text == "The invocation was aborted while it started: cancelling its task"
    finished = [e.text for e in entries if e.kind is LogKind.FINISHED]
    assert len(finished) == 1 and finished[0].endswith("with status ABORTED")


def test_a_cancel_that_fails_transiently_is_retried_by_a_timer(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    failing = 7  # the client tries 3 times per attempt: two attempts fail, the third one with 1
    stack = virtual_stack(
        sim, tmp_path, faults=[{"method": "CancelBuild", "code": "UNAVAILABLE", "times": failing}]
    )
    try:
        invocation_id = run_until_running(stack)
        recorded = stack.engine.abort(invocation_id)
        assert (recorded.status, recorded.abort_requested) == (Status.RUNNING, True)
        assert stack.engine.abort(invocation_id) == recorded, "a second abort changes nothing"
        final = stack.run_until_final(invocation_id)
    finally:
        stack.close()
    assert final.status is Status.ABORTED
    assert sim.state()["calls"]["CancelBuild"] == failing + 1, "one cancel went through"
    assert [b["status"] for b in sim.state()["builds"]] == ["CANCELED"]
    log = [e.text for e in stack.store.read_log(invocation_id)]
    retries = [line for line in log if line.startswith('Scheduling timer "abort-invocation"')]
    assert [line.rsplit(" after ", 1)[1] for line in retries] == ["5s", "10s"]
    errors = [line for line in log if line.startswith("Transient error when aborting")]
    assert len(errors) == 2 and "code = Unavailable" in errors[0]
    assert sum(line.startswith("Invocation finished") for line in log) == 1


def test_status_checks_during_a_failing_cancel_keep_the_abort(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    # Ten minutes of failing cancels: status checks (every 1-10 min) come meanwhile.
    stack = virtual_stack(
        sim, tmp_path, faults=[{"method": "CancelBuild", "code": "UNAVAILABLE", "times": 3 * 8}]
    )
    try:
        invocation_id = run_until_running(stack)
        stack.engine.abort(invocation_id)
        seen_checks = 0
        while (inv := stack.store.get(invocation_id)) and not inv.status.final:
            assert inv.abort_requested
            assert stack.step()
        assert inv is not None
        log = [e.text for e in stack.store.read_log(invocation_id)]
        aborted_at = log.index("Invocation was manually aborted by user")
        seen_checks = sum(
            line.startswith('Handling timer "check-buildbucket-build-status"')
            for line in log[aborted_at:]
        )
    finally:
        stack.close()
    assert inv.status is Status.ABORTED
    assert seen_checks >= 1
    assert [b["status"] for b in sim.state()["builds"]] == ["CANCELED"]


def test_launch_retries_show_attempt_and_next_attempt_with_luci_backoff(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    failed_attempts = 10
    stack = virtual_stack(
        sim,
        tmp_path,
        faults=[{"method": "ScheduleBuild", "code": "UNAVAILABLE", "times": 3 * failed_attempts}],
    )
    waits: dict[int, int] = {}
    try:
        invocation_id = stack.trigger().id
        while (inv := stack.store.get(invocation_id)) and inv.status is Status.STARTING:
            if inv.next_attempt_ns is not None:
                view = to_json(InvocationView.of(inv))
                assert view["attempt"] == inv.attempt
                assert parse_rfc3339(view["next_attempt"]) == inv.next_attempt_ns
                retried = [
                    e for e in stack.store.read_log(invocation_id) if e.kind is LogKind.RETRY
                ][-1]
                waits[inv.attempt] = inv.next_attempt_ns - retried.time_ns
            assert stack.step()
        final = stack.run_until_final(invocation_id)
    finally:
        stack.close()
    assert waits == {
        1: 5 * SECOND,
        2: 10 * SECOND,
        3: 20 * SECOND,
        4: 40 * SECOND,
        5: 80 * SECOND,
        6: 160 * SECOND,
        7: 320 * SECOND,
        8: 600 * SECOND,
        9: 600 * SECOND,
        10: 600 * SECOND,
    }
    assert final.status is Status.SUCCEEDED and final.attempt == failed_attempts + 1
    assert final.next_attempt_ns is None
    assert to_json(InvocationView.of(final))["next_attempt"] is None
    assert len(sim.state()["builds"]) == 1
