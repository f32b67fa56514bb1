"""The operator page: drawn from the seed replay and checked in a real headless Chromium."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from counted_replay import CountedReplay, counted_replay
from localstack import DevProcess
from shepherd.model import Invocation, LogEntry, LogKind, Status, Trigger, TriggerRequest
from shepherd.webpage import invocation_page, marks, timeline_svg
from shepherd_tools.replay import load_scenario
from shepherd_tools.simulator.control import SimulatorProcess

SEED_JOBS = """[settings]
app_id = "luci-scheduler"

[[jobs]]
id = "chromium/Windows deterministic"
server = "cr-buildbucket.appspot.com"
bucket = "ci"
builder = "Windows deterministic"
"""
# `SHEPHERD_SCREENSHOT=docs/invocation.png pytest tests/test_webpage.py` refreshes the README's.
SCREENSHOT = os.environ.get("SHEPHERD_SCREENSHOT")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (`make test` installs it with apt-get as root)")
    return found


@pytest.fixture(scope="module")
def seed_replay(
    sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, CountedReplay]:
    workdir = tmp_path_factory.mktemp("page")
    return workdir, counted_replay(load_scenario("seed"), workdir / "state.db", sim)


@pytest.fixture(scope="module")
def seed_page(seed_replay: tuple[Path, CountedReplay]) -> Iterator[tuple[DevProcess, str]]:
    workdir, replayed = seed_replay
    (workdir / "jobs.toml").write_text(SEED_JOBS)
    dev = DevProcess(workdir, workdir / "jobs.toml").start()
    yield dev, str(replayed.invocation.id)
    dev.stop()


def headless(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.browser
@pytest.mark.stack
def test_the_seed_invocation_page_in_chromium(
    seed_page: tuple[DevProcess, str], seed_replay: tuple[Path, CountedReplay], tmp_path: Path
) -> None:
    dev, invocation_id = seed_page
    replayed = seed_replay[1]
    url = f"{dev.url}/api/?invocation={invocation_id}"
    dom = headless("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    assert '<svg id="timeline"' in html
    assert len(re.findall(r'class="phase"', html)) == 3  # SCHEDULED, STARTED, SUCCESS
    # One mark per timer the queue delivered, per notification, per call Buildbucket answered.
    titles = re.findall(r'class="mark"[^>]*><title>([^<]*) at ', html)
    calls = replayed.simulator_calls
    assert len(re.findall(r'class="mark"', html)) == len(titles)
    assert titles.count("timer") == replayed.handled("timer") > 10
    assert titles.count("Pub/Sub notification") == replayed.handled("notification") > 0
    for call in ("ScheduleBuild", "GetBuild", "CancelBuild"):
        assert titles.count(call) == calls[call]
    assert len(titles) == replayed.handled("timer") + replayed.handled("notification") + sum(
        calls[c] for c in ("ScheduleBuild", "GetBuild", "CancelBuild")
    )
    assert "Invocation finished in 5h46m" in html
    assert html.count("<details>") == 3  # request, scheduled build, final build: folded
    assert 'href="https://cr-buildbucket.appspot.com/build/8809024803687588913"' in html
    assert 'http-equiv="refresh"' not in html  # finished: no more refreshing
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "invocation.png"
    done = headless("--window-size=1200,1100", f"--screenshot={shot.resolve()}", url)
    assert done.returncode == 0, done.stderr
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


@pytest.mark.stack
def test_the_api_gives_each_line_its_kind_and_call(
    seed_page: tuple[DevProcess, str], seed_replay: tuple[Path, CountedReplay]
) -> None:
    dev, invocation_id = seed_page
    log = dev.invocation(invocation_id)["log"]
    entries = seed_replay[1].entries
    assert [(line["text"], line["kind"]) for line in log] == [(e.text, e.kind) for e in entries]
    assert [line.get("call") for line in log] == [e.call for e in entries]
    calls = sum(line["call"] is not None for line in log)  # every line has "call", null or not
    assert calls == 1 + seed_replay[1].simulator_calls["GetBuild"]


@pytest.mark.browser
@pytest.mark.stack
def test_the_index_lists_jobs_and_invocations(seed_page: tuple[DevProcess, str]) -> None:
    dev, invocation_id = seed_page
    dom = headless("--dump-dom", f"{dev.url}/api/")
    assert "chromium/Windows deterministic" in dom.stdout
    assert f'href="?invocation={invocation_id}"' in dom.stdout
    assert "5h46m15s" in dom.stdout


def running(view_url: str = "") -> Invocation:
    return Invocation(
        id=7,
        job_id="a/b",
        request=TriggerRequest("a/b"),
        status=Status.RUNNING,
        created_ns=0,
        view_url=view_url,
    )


def test_a_running_invocation_refreshes_and_draws_up_to_now() -> None:
    queued = LogEntry(0, "New invocation is queued", LogKind.QUEUED)
    page = invocation_page(running(), [queued], now_ns=60 * 10**9)
    assert 'http-equiv="refresh"' in page and "1m0s so far" in page


def test_log_text_and_urls_are_escaped() -> None:
    entries = [
        LogEntry(0, '<script>alert("x")</script>', LogKind.INFO),
        LogEntry(1, 'Build:\n{"a": "<b>"}', LogKind.BUILD, "GetBuild"),
    ]
    page = invocation_page(running('"><script>x</script>'), entries, now_ns=10**9)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert timeline_svg(running(), [], 10**9).startswith('<svg id="timeline"')


def _table(page: str, table_id: str) -> str:
    return page.split(f'<table id="{table_id}">', 1)[1].split("</table>", 1)[0]


def test_the_page_lists_the_triggers_it_took_and_emitted_with_their_commits() -> None:
    commit = "c" * 40
    request = TriggerRequest(
        "x/<target>",
        request_id=f"https://h/r/+/refs/heads/main@{commit}",
        title=commit,
        url=f"https://h/r/+/{commit}",
        commit_time_ns=1_700_000_000 * 10**9,
    )
    emitted = Trigger(request.request_id or "", "x/<target>", 5, request)
    bare = Trigger("a/b:7:1", "x/other", 5, TriggerRequest("x/other", url="javascript:alert(1)"))
    inv = running().evolve(triggers=(emitted.incoming(),), emitted_triggers=(emitted, bare))
    page = invocation_page(inv, [], now_ns=10**9)
    took = _table(page, "triggers")
    assert f'<a href="https://h/r/+/{commit}" rel="noreferrer">{commit}</a>' in took
    assert "2023-11-14T22:13:20Z" in took and "1970-01-01T00:00:00.000000005Z" in took
    rows = _table(page, "emitted").split("<tr>")[2:]
    assert len(rows) == 2
    # Each links to where it is now (its JSON) and to its job's page, all of it escaped.
    json_path = (
        f"jobs/x%2F%3Ctarget%3E/triggers/https%3A%2F%2Fh%2Fr%2F%2B%2Frefs%2Fheads%2Fmain%40{commit}"
    )
    assert f'<a href="{json_path}">https://h/r/+/refs/heads/main@{commit}</a>' in rows[0]
    assert '<a href="?job=x%2F%3Ctarget%3E">x/&lt;target&gt;</a>' in rows[0]
    assert f'<a href="https://h/r/+/{commit}" rel="noreferrer">{commit}</a>' in rows[0]
    assert "2023-11-14T22:13:20Z" in rows[0]
    assert "javascript:" in rows[1] and 'href="javascript:' not in rows[1]  # shown, not linked
    assert "Emitted triggers" not in invocation_page(running(), [], now_ns=10**9)


def reworded(entry: LogEntry, n: int) -> LogEntry:
    """Other words, the same kind, call and JSON."""
    _, newline, rest = entry.text.partition("\n")
    return dataclasses.replace(entry, text=f"Line {n} in other words{newline}{rest}")


def test_marks_and_phases_come_from_kinds_not_wording(
    seed_replay: tuple[Path, CountedReplay],
) -> None:
    replayed = seed_replay[1]
    entries = replayed.entries
    other_words = [reworded(e, n) for n, e in enumerate(entries)]
    assert not {e.text for e in entries} & {e.text for e in other_words}
    now = replayed.invocation.finished_ns or 0
    svg = timeline_svg(replayed.invocation, entries, now)
    assert svg.count('class="mark"') == len(marks(entries)) > 100
    assert svg.count('class="phase"') == 3
    assert timeline_svg(replayed.invocation, other_words, now) == svg


def test_a_build_a_notification_brought_is_no_get_build() -> None:
    inv = running()
    build = '{"id": "1", "status": "STARTED", "createTime": "2024-01-01T00:00:00Z"}'
    entries = [
        LogEntry(1, "Received PubSub notification with the build", LogKind.NOTIFICATION),
        LogEntry(2, "Build status: STARTED", LogKind.BUILD_STATUS),
        LogEntry(3, "Handling timer", LogKind.TIMER_HANDLED),
        LogEntry(4, "Build status: STARTED", LogKind.BUILD_STATUS, "GetBuild"),
        LogEntry(5, f"Build:\n{build}", LogKind.BUILD),
    ]
    assert [(m.row, m.label) for m in marks(entries)] == [
        ("notifications", "Pub/Sub notification"),
        ("timers", "timer"),
        ("Buildbucket calls", "GetBuild"),
    ]
    assert 'class="phase"' in timeline_svg(inv, entries, 10)
