"""The noop and url_fetch kinds through the engine in virtual time (SQLite store), and the
triggers a finished noop emits: to another noop, to a Buildbucket job, once however often its
timer comes, never to a paused job; and their job-file errors."""

from __future__ import annotations

import logging
import random
import socket
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from localstack import serving
from shepherd.adapters.embedded import EmbeddedTopic, VirtualTimerQueue
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.clock import VirtualClock
from shepherd.config import ConfigError
from shepherd.durations import SECOND
from shepherd.engine import Engine, Outcome
from shepherd.jobs import parse_jobs
from shepherd.model import Invocation, QueuedTask, Status, TriggerRequest, TriggerStatus
from shepherd.signing import TokenSigner
from shepherd.tasks.buildbucket import SCHEDULER_PROPERTY
from shepherd.tasks.registry import CONFIG_MODELS, make_kinds
from shepherd.tasks.url_fetch import Answer, dump_answer

A, B, BUILDER = "infra/a", "infra/b", "infra/builder"
BUILDBUCKET_JOB = {
    "id": BUILDER,
    "server": "cr-buildbucket.appspot.com",
    "bucket": "ci",
    "builder": "linux",
}


@dataclass
class FakeBuilds:
    """Buildbucket, as far as a launch needs it: every build is SCHEDULED."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    def schedule_build(self, server: str, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        return {
            "id": str(len(self.requests)),
            "status": "SCHEDULED",
            "updateTime": "2026-01-01T00:00:00Z",
        }

    def get_build(self, server: str, build_id: str) -> dict[str, Any]:
        return {"id": build_id, "status": "STARTED", "updateTime": "2026-01-01T00:00:01Z"}

    def cancel_build(self, server: str, build_id: str, summary: str) -> dict[str, Any]:
        return {"id": build_id, "status": "CANCELED"}

    def publisher_account(self, server: str) -> str:
        return "buildbucket@example.com"


@dataclass
class Stack:
    engine: Engine
    clock: VirtualClock
    queue: VirtualTimerQueue
    builds: FakeBuilds

    def run_due(self) -> list[str]:
        names = []
        for task in self.queue.pop_due(self.clock.now_ns()):
            self.deliver(task)
            names.append(task.name)
        return names

    def deliver(self, task: QueuedTask) -> Outcome:
        return self.engine.handle_task(task.invocation_id, task.timer_id, task.name)

    def trigger(self, job_id: str, request_id: str = "t") -> Invocation | None:
        request = TriggerRequest(job_id=job_id, request_id=request_id)
        return self.engine.trigger(request).invocation

    def invocations(self, job_id: str) -> list[Invocation]:
        return self.engine.store.list_invocations(job_id)[::-1]  # oldest first

    def only(self, job_id: str) -> Invocation:
        (inv,) = self.invocations(job_id)
        return inv

    def log(self, inv: Invocation) -> list[str]:
        return [e.text for e in self.engine.store.read_log(inv.id)]


def make_stack(tmp_path: Path, *jobs: dict[str, Any]) -> Stack:
    parsed = parse_jobs({"jobs": list(jobs)}, "jobs.toml", CONFIG_MODELS)
    clock, queue, builds = VirtualClock(0), VirtualTimerQueue(), FakeBuilds()
    engine = Engine(
        jobs=parsed,
        kinds=make_kinds(builds, random.Random(1)),
        store=SqliteStore(tmp_path / "s.db"),
        queue=queue,
        topic=EmbeddedTopic("shepherd-test"),
        clock=clock,
        signer=TokenSigner(b"k" * 32),
        rng=random.Random(1),
    )
    return Stack(engine, clock, queue, builds)


def noop(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "kind": "noop", **fields}


# --- noop ---------------------------------------------------------------------------------


def test_a_noop_without_sleep_succeeds_at_its_launch(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, noop(A))
    stack.trigger(A)
    stack.run_due()
    inv = stack.only(A)
    assert inv.status is Status.SUCCEEDED and inv.pending_timers == ()
    assert "Running noop task for 0s" in stack.log(inv)


def test_a_noop_sleeps_on_a_timer(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, noop(A, sleep="5s"))
    stack.trigger(A)
    stack.run_due()
    assert stack.only(A).status is Status.RUNNING
    stack.clock.advance(4 * SECOND)
    assert stack.run_due() == []
    stack.clock.advance(SECOND)
    assert stack.run_due() == ["noop-wake-up"]
    inv = stack.only(A)
    assert inv.status is Status.SUCCEEDED
    assert inv.finished_ns is not None and inv.finished_ns - inv.created_ns == 5 * SECOND
    assert "Running noop task for 5s" in stack.log(inv)


def test_a_noop_chain_runs_each_job_once(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, noop(A, sleep="5s", triggers=[B]), noop(B))
    stack.trigger(A)
    stack.run_due()
    stack.clock.advance(5 * SECOND)
    stack.run_due()  # A ends, and its trigger starts B at once
    a = stack.only(A)
    tid = f"{A}:{a.id}:0"
    assert f'Emitting a trigger {tid} for job "{B}"' in stack.log(a)
    assert [t.id for t in a.emitted_triggers] == [tid]
    b = stack.only(B)
    assert b.status is Status.STARTING and [t.id for t in b.triggers] == [tid]
    stack.run_due()
    assert stack.only(B).status is Status.SUCCEEDED
    emitted = stack.engine.store.get_trigger(B, tid)
    assert emitted is not None and emitted.status is TriggerStatus.STARTED


def test_one_trigger_per_target_in_order(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, noop(A, triggers=[B, BUILDER]), noop(B), BUILDBUCKET_JOB)
    stack.trigger(A)
    stack.run_due()
    a = stack.only(A)
    assert [(t.job_id, t.id, t.order) for t in a.emitted_triggers] == [
        (B, f"{A}:{a.id}:0", 0),
        (BUILDER, f"{A}:{a.id}:1", 1),
    ]


def test_an_emitted_trigger_starts_a_buildbucket_job(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, noop(A, triggers=[BUILDER]), BUILDBUCKET_JOB)
    stack.trigger(A)
    stack.run_due()  # A starts and ends: its trigger makes the builder's invocation
    stack.run_due()  # which starts: ScheduleBuild
    tid = f"{A}:{stack.only(A).id}:0"
    assert stack.only(BUILDER).status is Status.RUNNING
    (sent,) = stack.builds.requests
    assert [t["id"] for t in sent["properties"][SCHEDULER_PROPERTY]["triggers"]] == [tid]


def test_an_emitted_trigger_waits_in_a_busy_jobs_pending_set(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, noop(A, triggers=[BUILDER]), BUILDBUCKET_JOB)
    stack.trigger(BUILDER, "manual")
    stack.run_due()  # the builder's build runs
    stack.trigger(A)
    stack.run_due()
    tid = f"{A}:{stack.only(A).id}:0"
    assert [t.id for t in stack.engine.store.list_pending(BUILDER, 10)] == [tid]
    assert len(stack.invocations(BUILDER)) == 1


def _wake_up(stack: Stack) -> QueuedTask:
    """Runs A to its wake-up timer and answers with that timer's task, not yet delivered."""
    stack.trigger(A)
    stack.run_due()
    stack.clock.advance(5 * SECOND)
    (task,) = stack.queue.pop_due(stack.clock.now_ns())
    return task


def test_the_same_timer_twice_emits_once(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, noop(A, sleep="5s", triggers=[B]), noop(B, sleep="1h"))
    task = _wake_up(stack)
    assert stack.deliver(task) is Outcome.HANDLED
    assert stack.deliver(task) is Outcome.STALE
    assert len(stack.invocations(B)) == 1
    assert stack.engine.store.list_pending(B, 10) == []
    assert sum(line.startswith("Emitting") for line in stack.log(stack.only(A))) == 1


def test_triggers_stored_before_a_crash_are_added_by_the_redelivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = make_stack(tmp_path, noop(A, sleep="5s", triggers=[B]), noop(B, sleep="1h"))
    task = _wake_up(stack)

    def crash(emitter: Invocation, triggers: Any) -> None:
        raise RuntimeError("the process died after the commit")

    monkeypatch.setattr(stack.engine, "deliver_emitted", crash)
    with pytest.raises(RuntimeError):
        stack.deliver(task)
    assert stack.only(A).status is Status.SUCCEEDED and stack.invocations(B) == []
    monkeypatch.undo()
    assert stack.deliver(task) is Outcome.STALE  # the queue's redelivery
    assert stack.deliver(task) is Outcome.STALE
    assert [t.id for t in stack.only(B).triggers] == [f"{A}:{stack.only(A).id}:0"]


def test_a_paused_target_is_skipped_with_a_log_line(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, noop(A, triggers=[B]), noop(B))
    stack.engine.pause(B, "tree closed")
    stack.trigger(A)
    stack.run_due()
    a = stack.only(A)
    assert a.status is Status.SUCCEEDED and a.emitted_triggers == ()
    line = f'Discarding the trigger {A}:{a.id}:0 for job "{B}": the job is paused: tree closed'
    assert line in stack.log(a)
    assert stack.invocations(B) == [] and stack.engine.store.list_pending(B, 10) == []


def test_a_target_paused_after_the_emission_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stack = make_stack(tmp_path, noop(A, triggers=[B]), noop(B))
    stack.engine.pause(B)
    monkeypatch.setattr(stack.engine, "emit_refusal", lambda job_id: None)  # paused too late
    stack.trigger(A)
    with caplog.at_level(logging.WARNING, logger="shepherd.engine"):
        stack.run_due()
    assert stack.only(A).status is Status.SUCCEEDED
    assert f'for {B}: job "{B}" is paused' in caplog.text
    assert stack.invocations(B) == []


# --- url_fetch ----------------------------------------------------------------------------


class Server(BaseHTTPRequestHandler):
    """/ok answers 200 with text, /missing 404, /boom 500, /slow after 3 s."""

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(3)
        code = {"/ok": 200, "/missing": 404, "/boom": 500, "/slow": 200}.get(self.path, 400)
        body = f"answer to {self.path}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def fetch_once(tmp_path: Path, url: str, timeout: str = "10s") -> tuple[Invocation, list[str]]:
    stack = make_stack(tmp_path, {"id": A, "kind": "url_fetch", "url": url, "timeout": timeout})
    stack.trigger(A)
    stack.run_due()
    inv = stack.only(A)
    return inv, stack.log(inv)


@pytest.mark.parametrize(
    ("path", "status", "line"),
    [
        ("/ok", Status.SUCCEEDED, "200 OK"),
        ("/missing", Status.FAILED, "404 Not Found"),
        ("/boom", Status.FAILED, "500 Internal Server Error"),
    ],
)
def test_a_fetch_ends_with_its_answer(tmp_path: Path, path: str, status: Status, line: str) -> None:
    with serving(Server) as base:
        inv, log = fetch_once(tmp_path, base + path)
    assert inv.status is status
    at = log.index(f"GET {base}{path}")
    assert log[at + 1] == f"Finished with overall status {status} in 0s"
    answer = log[at + 2].split("\n")
    assert answer[0] == line
    assert "Content-Type: text/plain; charset=utf-8" in answer
    assert answer[-2:] == ["", f"answer to {path}"]


def test_a_refused_connection_fails(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/"
    inv, log = fetch_once(tmp_path, url)
    assert inv.status is Status.FAILED
    assert "Finished with overall status FAILED in 0s" in log
    assert any(line.startswith(f'URL fetch error: Get "{url}": ') for line in log)


def test_a_server_slower_than_the_timeout_fails(tmp_path: Path) -> None:
    with serving(Server) as base:
        began = time.monotonic()
        inv, log = fetch_once(tmp_path, base + "/slow", timeout="1s")
        took = time.monotonic() - began
    assert inv.status is Status.FAILED and took < 2.5
    assert any(line.startswith(f'URL fetch error: Get "{base}/slow": ') for line in log)


def test_the_answer_is_logged_as_luci_dumps_it() -> None:
    def answer(body: bytes, content_type: str, length: int | None = None) -> str:
        headers = [("content-type", content_type), ("x-b", "2"), ("x-a", "1")]
        return dump_answer(Answer(200, "OK", headers, body, length))

    assert answer(b"hi\n", "text/plain") == "200 OK\nContent-Type: text/plain\nX-A: 1\nX-B: 2\n\nhi"
    assert answer(b"", "text/plain").endswith("\n\n<empty body>")
    assert answer(b"\x00\x01", "image/png").endswith("\n\n<binary response>")
    assert answer(b"{}", "application/json", 9000).endswith("\n\n{}\n<truncated>")


# --- the job file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (
            noop(A, triggers=["infra/nowhere"]),
            f'jobs.toml: job "{A}": field "triggers": referencing unknown job "infra/nowhere"',
        ),
        (noop(A, triggers=[B, B]), 'field "triggers": a job must not be listed twice'),
        (noop(A, triggers=["no-slash"]), 'field "triggers": "no-slash" is not a job id'),
        (noop(A, triggers=B), 'field "triggers": Input should be a valid tuple'),
        (noop(A, sleep="soon"), f'job "{A}": field "sleep"'),
        (noop(A, sleep="-1s"), 'field "sleep": must not be negative'),
        (noop(A, url="https://x"), 'field "url": Extra inputs are not permitted'),
        (
            {"id": "a/b", "kind": "url_fetch", "url": "http://example.com/"},
            'jobs.toml: job "a/b": field "url": \'http://example.com/\': must be an https:// URL',
        ),
        ({"id": A, "kind": "url_fetch"}, 'field "url": Field required'),
        ({"id": A, "kind": "url_fetch", "url": "/abc"}, 'field "url": not an absolute url'),
        ({"id": A, "kind": "url_fetch", "url": "https://x:port/"}, 'field "url": invalid URL'),
        (
            {"id": A, "kind": "url_fetch", "url": "https://x.example.com", "timeout": "500ms"},
            'field "timeout": minimum allowed is 1s, got 500ms',
        ),
        (
            {"id": A, "kind": "url_fetch", "url": "https://x.example.com", "timeout": "10m"},
            'field "timeout": maximum allowed is 4m0s, got 10m',
        ),
    ],
)
def test_bad_job_files_name_the_job_and_field(job: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_jobs({"jobs": [noop(B), job]}, "jobs.toml", CONFIG_MODELS)
    assert message in str(refused.value)


def test_good_job_files_load() -> None:
    jobs = parse_jobs(
        {
            "jobs": [
                noop(A, sleep="1m30s", triggers=[B, A]),
                {"id": B, "kind": "url_fetch", "url": "http://localhost:8080/ping"},
            ]
        },
        "jobs.toml",
        CONFIG_MODELS,
    )
    a, b = jobs.jobs[A].config, jobs.jobs[B].config
    assert a.sleep == 90 * SECOND and a.triggers == (B, A)
    assert b.timeout == 60 * SECOND
