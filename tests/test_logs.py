"""Structured logs for Cloud Logging: the trace headers, the formatter, the setting, and the
functions' own lines (in process, and from `shepherd dev` on the emulators)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from emulators import PROJECT, Emulator, clear_firestore, emulator_env
from localstack import COMMIT_TAGS, FINAL, JOB, QUICK, SECRET, DevProcess, write_jobs
from shepherd import logs
from shepherd.auth import TIMER_TOKEN_HEADER, timer_token
from shepherd.config import Config, ConfigError
from shepherd.engine import START_TASK
from shepherd.logs import (
    INVOCATION_FIELD,
    JOB_FIELD,
    LABELS_FIELD,
    SAMPLED_FIELD,
    SPAN_FIELD,
    TRACE_FIELD,
    CloudLoggingFormatter,
    Trace,
    parse_trace,
)
from shepherd.service import build_service, install_service
from shepherd_tools.simulator.control import SimulatorProcess

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
W3C_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{W3C_SPAN}-01"
CLOUD_TRACE = "105445aa7843bc8bf206b12000100000"
FUNCTIONS = Path(__file__).resolve().parents[1] / "functions" / "main.py"

# --- the trace headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": TRACEPARENT}, Trace(TRACE_ID, W3C_SPAN, True)),
        ({"traceparent": f"00-{TRACE_ID}-{W3C_SPAN}-00"}, Trace(TRACE_ID, W3C_SPAN, False)),
        # A later version may append fields.
        ({"traceparent": f"01-{TRACE_ID}-{W3C_SPAN}-03-more"}, Trace(TRACE_ID, W3C_SPAN, True)),
        # The legacy span id is decimal; Cloud Logging wants 16 hex digits.
        (
            {"X-Cloud-Trace-Context": f"{CLOUD_TRACE}/1;o=1"},
            Trace(CLOUD_TRACE, "0000000000000001", True),
        ),
        (
            {"X-Cloud-Trace-Context": f"{CLOUD_TRACE}/18446744073709551615;o=0"},
            Trace(CLOUD_TRACE, "ffffffffffffffff", False),
        ),
        ({"X-Cloud-Trace-Context": CLOUD_TRACE}, Trace(CLOUD_TRACE, None, False)),
        ({"X-Cloud-Trace-Context": CLOUD_TRACE.upper() + ";o=1"}, Trace(CLOUD_TRACE, None, True)),
        # Both: traceparent wins, as in Google's logging library.
        (
            {"traceparent": TRACEPARENT, "X-Cloud-Trace-Context": f"{CLOUD_TRACE}/7;o=1"},
            Trace(TRACE_ID, W3C_SPAN, True),
        ),
        # A bad traceparent falls back to the legacy header.
        (
            {"traceparent": "garbage", "X-Cloud-Trace-Context": f"{CLOUD_TRACE}/7"},
            Trace(CLOUD_TRACE, "0000000000000007", False),
        ),
    ],
)
def test_trace_headers(headers: dict[str, str], expected: Trace) -> None:
    assert parse_trace(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": ""},
        {"traceparent": f"ff-{TRACE_ID}-{W3C_SPAN}-01"},  # version ff is invalid
        {"traceparent": f"00-{'0' * 32}-{W3C_SPAN}-01"},  # all-zero trace id
        {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},  # all-zero span id
        {"traceparent": f"00-{TRACE_ID[:-1]}-{W3C_SPAN}-01"},  # short trace id
        {"traceparent": f"00-{TRACE_ID.upper()}-{W3C_SPAN}-01"},  # uppercase is not W3C
        {"traceparent": f"00-{TRACE_ID}-{W3C_SPAN}"},  # no flags
        {"X-Cloud-Trace-Context": "not-a-trace/1;o=1"},
        {"X-Cloud-Trace-Context": f"{CLOUD_TRACE}x/1"},
        {"X-Cloud-Trace-Context": f"{CLOUD_TRACE}/abc;o=1"},
        {"X-Cloud-Trace-Context": f"{CLOUD_TRACE};o=1\n{{}}"},
        {"X-Cloud-Trace-Context": "\u00e9" * 40},
    ],
)
def test_bad_trace_headers_are_ignored(headers: dict[str, str]) -> None:
    assert parse_trace(headers) is None


def test_a_span_id_out_of_range_keeps_the_trace() -> None:
    for span in ("0", "18446744073709551616", "9" * 20):
        header = {"X-Cloud-Trace-Context": f"{CLOUD_TRACE}/{span};o=1"}
        assert parse_trace(header) == Trace(CLOUD_TRACE, None, True)


# --- the formatter ----------------------------------------------------------------------


def _format(record_logger: str, level: int, message: str, project: str | None = "p") -> Any:
    record = logging.getLogger(record_logger).makeRecord(
        record_logger, level, __file__, 1, message, (), None
    )
    line = CloudLoggingFormatter(project).format(record)
    assert "\n" not in line
    return json.loads(line)


def test_a_record_outside_any_request_has_severity_and_message_only() -> None:
    entry = _format("shepherd.x", logging.WARNING, "careful")
    assert entry["severity"] == "WARNING" and entry["message"] == "careful"
    assert entry["logger"] == "shepherd.x"
    for field in (TRACE_FIELD, SPAN_FIELD, JOB_FIELD, INVOCATION_FIELD, LABELS_FIELD):
        assert field not in entry


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.WARNING, "WARNING"),
        (logging.ERROR, "ERROR"),
        (logging.CRITICAL, "CRITICAL"),
        (logging.INFO + 5, "INFO"),
        (logging.CRITICAL + 10, "CRITICAL"),
    ],
)
def test_severity(level: int, severity: str) -> None:
    assert _format("x", level, "m")["severity"] == severity


def test_a_record_in_a_request_carries_its_trace_and_invocation() -> None:
    with logs.request_scope({"traceparent": TRACEPARENT}):
        before = _format("x", logging.INFO, "before")
        logs.bind_invocation("chromium/ci", 9223372036854775807)
        after = _format("x", logging.INFO, "multi\nline \u00e9")
        unnamed = _format("x", logging.INFO, "m", project=None)
    outside = _format("x", logging.INFO, "after the request")
    assert before[TRACE_FIELD] == f"projects/p/traces/{TRACE_ID}"
    assert before[SPAN_FIELD] == W3C_SPAN and before[SAMPLED_FIELD] is True
    assert INVOCATION_FIELD not in before
    assert after[TRACE_FIELD] == before[TRACE_FIELD]
    assert after["message"] == "multi\nline \u00e9"
    assert after[INVOCATION_FIELD] == "9223372036854775807"  # a string: no float rounding
    assert after[JOB_FIELD] == "chromium/ci"
    assert after[LABELS_FIELD] == {
        JOB_FIELD: "chromium/ci",
        INVOCATION_FIELD: after[INVOCATION_FIELD],
    }
    # Without a project the trace cannot be named; the span still comes.
    assert TRACE_FIELD not in unnamed and unnamed[SPAN_FIELD] == W3C_SPAN
    assert TRACE_FIELD not in outside and INVOCATION_FIELD not in outside


def test_an_exception_folds_its_traceback_into_the_message() -> None:
    try:
        raise RuntimeError("the store broke")
    except RuntimeError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "api failed", (), sys.exc_info()
        )
    entry = json.loads(CloudLoggingFormatter("p").format(record))
    assert entry["severity"] == "ERROR"
    assert entry["message"].startswith("api failed\nTraceback (most recent call last):\n")
    assert entry["message"].endswith("RuntimeError: the store broke")


# --- the setting ------------------------------------------------------------------------


def test_text_is_the_local_default_and_json_where_cloud_run_serves() -> None:
    assert Config.from_env({}).log_format == "text"
    assert Config.from_env({"GOOGLE_CLOUD_PROJECT": "p"}).log_format == "text"  # emulators
    assert Config.from_env({"K_SERVICE": "trigger"}).log_format == "json"
    assert Config.from_env({"K_SERVICE": "trigger", "SHEPHERD_LOG_FORMAT": "text"}).log_format == (
        "text"
    )
    assert Config.from_env({"SHEPHERD_LOG_FORMAT": "json"}).log_format == "json"


def test_a_bad_log_format_is_refused() -> None:
    with pytest.raises(
        ConfigError, match='SHEPHERD_LOG_FORMAT must be "json" or "text", not "xml"'
    ):
        Config.from_env({"SHEPHERD_LOG_FORMAT": "xml"})


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was (configure() replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_leaves_logging_as_it_was(root_logger: logging.Logger) -> None:
    before = list(root_logger.handlers)
    logs.configure("text", "p")
    assert root_logger.handlers == before


def test_configuring_json_twice_installs_one_handler(root_logger: logging.Logger) -> None:
    logs.configure("json", "p")
    logs.configure("json", "p")
    assert [type(h) for h in root_logger.handlers] == [logs.JsonLinesHandler]
    assert root_logger.level == logging.INFO


# --- a function's lines, in process -----------------------------------------------------


def test_a_failing_function_logs_one_json_line_with_its_traceback_and_trace(
    tmp_path: Path, root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path / "jobs.toml", "http://127.0.0.1:9")  # never called
    service = build_service(Config(jobs=str(jobs), state=tmp_path / "state.db"))
    logs.configure("json", "my-project")

    def broken(invocation_id: int) -> None:
        raise RuntimeError(f"store lost invocation {invocation_id}")

    service.engine.store.get = broken  # type: ignore[method-assign]
    install_service(service)
    try:
        app = functions_framework.create_app("api", str(FUNCTIONS), "http")
        capsys.readouterr()
        answer = app.test_client().get(
            "/invocations/42", headers={"X-Cloud-Trace-Context": f"{CLOUD_TRACE}/12;o=1"}
        )
    finally:
        install_service(None)
    assert answer.status_code == 500
    assert answer.json == {"error": "internal error; the request changed nothing it could not redo"}
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    failed = [e for e in entries if e["message"].startswith("api failed")]
    assert len(failed) == 1, lines
    assert failed[0]["severity"] == "ERROR"
    assert "Traceback (most recent call last)" in failed[0]["message"]
    assert failed[0]["message"].endswith("RuntimeError: store lost invocation 42")
    assert failed[0][TRACE_FIELD] == f"projects/my-project/traces/{CLOUD_TRACE}"
    assert failed[0][SPAN_FIELD] == "000000000000000c"


# --- `shepherd dev` on the emulators, as deployed ----------------------------------------


@pytest.fixture
def json_dev(
    sim: SimulatorProcess,
    firestore_emulator: Emulator,
    pubsub_emulator: Emulator,
    tasks_emulator: Emulator,
    tmp_path: Path,
) -> Iterator[DevProcess]:
    clear_firestore(firestore_emulator.host)
    hosts = firestore_emulator.host, pubsub_emulator.host, tasks_emulator.host
    env = emulator_env(*hosts, "logs", SHEPHERD_LOG_FORMAT="json")
    process = DevProcess(tmp_path, write_jobs(tmp_path / "jobs.toml", sim.url), env).start()
    yield process
    process.stop()


@pytest.mark.stack
def test_every_line_of_a_deployed_stack_is_json_and_one_invocations_lines_share_its_trace(
    sim: SimulatorProcess, json_dev: DevProcess, pubsub_emulator: Emulator
) -> None:
    sim.configure(
        {"publish_url": f"http://{pubsub_emulator.host}", "script": [*QUICK, {"status": "SUCCESS"}]}
    )
    triggered = json_dev.http.post(
        json_dev.url + "/trigger",
        json={"job": JOB, "tags": COMMIT_TAGS},
        headers={"traceparent": TRACEPARENT},
    )
    assert triggered.status_code == 202, triggered.text
    invocation_id = triggered.json()["invocation_id"]
    assert json_dev.wait_for(invocation_id, FINAL)["status"] == "SUCCEEDED"
    # A late delivery of its start task, traced with the legacy header: stale, and logged so.
    job = JOB
    timer = json_dev.http.post(
        json_dev.url + "/on-timer",
        json={
            "invocation_id": invocation_id,
            "timer_id": f"{job}:{invocation_id}:start:1",
            "name": START_TASK,
        },
        headers={
            TIMER_TOKEN_HEADER: timer_token(SECRET.encode()),
            "X-Cloud-Trace-Context": f"{CLOUD_TRACE}/99;o=1",
        },
    )
    assert timer.status_code == 200 and timer.json()["outcome"] == "stale", timer.text
    bad_trace = json_dev.http.post(
        json_dev.url + "/trigger",
        json={"job": "no/such job"},
        headers={"traceparent": "00-nonsense", "X-Cloud-Trace-Context": "/;o="},
    )
    assert bad_trace.status_code == 404
    json_dev.stop()

    lines = (json_dev.workdir / "dev.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    assert entries, "shepherd dev wrote nothing"
    for entry in entries:
        assert entry["severity"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), entry
        assert isinstance(entry["message"], str) and entry["message"], entry

    by_trace = [e for e in entries if e.get(TRACE_FIELD) == f"projects/{PROJECT}/traces/{TRACE_ID}"]
    trigger_id = triggered.json()["trigger_id"]
    assert [e["message"] for e in by_trace] == [
        f"trigger {trigger_id} of {job}: invocation {invocation_id}"
    ]
    assert by_trace[0][INVOCATION_FIELD] == invocation_id and by_trace[0][JOB_FIELD] == job
    assert by_trace[0][SPAN_FIELD] == W3C_SPAN

    by_legacy = [
        e for e in entries if e.get(TRACE_FIELD) == f"projects/{PROJECT}/traces/{CLOUD_TRACE}"
    ]
    assert [e["message"] for e in by_legacy] == [f"task {job}:{invocation_id}:start:1: stale"]
    assert by_legacy[0][INVOCATION_FIELD] == invocation_id
    assert by_legacy[0][SPAN_FIELD] == f"{99:016x}"

    # The notification that finished it names it too, though Pub/Sub's push carries no trace.
    notified = [e for e in entries if e["message"].startswith("notification ")]
    assert notified and all(e[INVOCATION_FIELD] == invocation_id for e in notified)


def test_binding_outside_a_request_marks_nothing_and_leaks_nothing() -> None:
    logs.bind_invocation("a/b", 7)
    assert logs.current().invocation_id is None and logs.current().job_id is None
