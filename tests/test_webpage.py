"""The operator page: drawn from the seed replay and checked in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack import DevProcess
from shepherd.model import Invocation, LogEntry, Status, TriggerRequest
from shepherd.webpage import invocation_page, timeline_svg

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
def seed_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevProcess, str]]:
    workdir = tmp_path_factory.mktemp("page")
    state = workdir / "state.db"
    replayed = subprocess.run(
        [sys.executable, "-m", "shepherd_tools.cli", "replay", "seed", "--state", str(state)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    invocation_id = re.search(r'"requestId": "(\d+)"', replayed.stdout)[1]  # type: ignore[index]
    (workdir / "jobs.toml").write_text(SEED_JOBS)
    dev = DevProcess(workdir, workdir / "jobs.toml").start()
    yield dev, invocation_id
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
    seed_page: tuple[DevProcess, str], tmp_path: Path
) -> None:
    dev, invocation_id = seed_page
    url = f"{dev.url}/api/?invocation={invocation_id}"
    dom = headless("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    assert '<svg id="timeline"' in html
    assert len(re.findall(r'class="phase"', html)) == 3  # SCHEDULED, STARTED, SUCCESS
    assert len(re.findall(r'class="mark"', html)) > 100  # timers, notifications, calls
    assert "Invocation finished in 5h46m" in html
    assert html.count("<details>") == 3  # request, scheduled build, final build: folded
    assert 'href="https://cr-buildbucket.appspot.com/build/8809024803687588913"' in html
    assert 'http-equiv="refresh"' not in html  # finished: no more refreshing
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "invocation.png"
    done = headless("--window-size=1200,1100", f"--screenshot={shot.resolve()}", url)
    assert done.returncode == 0, done.stderr
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


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
    page = invocation_page(running(), [LogEntry(0, "New invocation is queued")], now_ns=60 * 10**9)
    assert 'http-equiv="refresh"' in page and "1m0s so far" in page


def test_log_text_and_urls_are_escaped() -> None:
    entries = [LogEntry(0, '<script>alert("x")</script>'), LogEntry(1, 'Build:\n{"a": "<b>"}')]
    page = invocation_page(running('"><script>x</script>'), entries, now_ns=10**9)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert timeline_svg(running(), [], 10**9).startswith('<svg id="timeline"')
